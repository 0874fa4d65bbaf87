//! Adaptive draft length: each round, draft as many tokens as maximise the
//! expected tokens per second, zero (plain decoding) included.
//!
//! Two models feed the choice. The cost model holds the time of a target
//! pass by its size and of one draft step, measured at start-up on the
//! actual hardware and refined with every round. Costs are kept relative to
//! a single-token pass, whose time every observed pass re-measures (through
//! the pass's relative cost), so a change of machine load moves every size
//! together, and a larger pass never costs less than a smaller one. The acceptance model holds,
//! per drafter and language, the probability that the target accepts the
//! drafted token at each position given that it accepted all before it,
//! forgetting old rounds at a fixed rate.
//!
//! With conditional acceptances `a_1..a_k`, the first `i` drafted tokens all
//! survive with probability `P_i = a_1 * … * a_i`, a round yields
//! `1 + P_1 + … + P_k` tokens on average, and it costs `k` draft steps plus
//! the target passes that verification reaches: the batch of `k + 1` tokens
//! is evaluated in passes of at most `chunk` tokens, and pass `m` runs only
//! when the `m * chunk` tokens before it were accepted (probability
//! `P_{m*chunk}`). Verification samples the target at each position it
//! reaches, `1 + P_1 + … + P_k` of them on average, each costing the
//! request's sampling time (an argmax, or a softmax over the vocabulary).
//! All times are measured through the completion of the logits they read,
//! and a draft step includes choosing its token.
//!
//! When plain decoding wins, acceptance is no longer observed, so the policy
//! probes: after an interval of plain rounds it drafts once at the best
//! speculative length, and doubles the interval each time the probe does no
//! better than expected (by more than the spread of the expectation). A
//! probe also waits until what the drafter must first read (the tokens it
//! missed, a new request's prompt too) costs at most a quarter of the plain
//! rounds since the last one; every decision counts that catch-up as the
//! cost of the round that would draft. A drafter that even at perfect acceptance would not
//! beat plain decoding by a margin (as the costs stand) is probed far more
//! rarely, at intervals from 64 rounds doubling to 1,024: only a draft
//! re-measures its cost, and the costs it was judged by may have been taken
//! under a passing load.

use serde::Serialize;

/// How much of the previous estimate survives one new observation.
const COST_SMOOTHING: f64 = 0.9;
/// The same for the shape of the cost curve (a pass's cost relative to a
/// one-token pass), which changes with the hardware, not with the load.
const SHAPE_SMOOTHING: f64 = 0.98;
/// Decay of acceptance counts per observed round: about the last 50 rounds count.
const ACCEPTANCE_DECAY: f64 = 0.98;
/// Weight, in rounds, of the prior of a position's acceptance.
const PRIOR_WEIGHT: f64 = 2.0;
/// Prior acceptance of the first drafted token before any observation:
/// optimistic, so that a drafter that can pay on this hardware is tried at
/// once and a poor one is found out within a few rounds.
const PRIOR_FIRST: f64 = 0.8;
/// First and longest probe intervals, in plain rounds.
const PROBE_FIRST: u32 = 8;
const PROBE_LONGEST: u32 = 1024;
/// Most of the time of the plain rounds since the last probe that the next
/// probe's catch-up may cost (reading what the drafter missed).
const PROBE_CATCH_UP_SHARE: f64 = 0.25;
/// First probe interval of a drafter that could not pay even at perfect
/// acceptance as the costs stand; it doubles with every such probe.
const HOPELESS_PROBE_FIRST: u32 = 64;
/// How much faster than plain decoding a drafter must be at perfect
/// acceptance to be probed at the usual intervals. Real acceptance is far
/// from perfect, and a probe after plain rounds first makes the drafter read
/// every token it missed: a drafter that gains less than this even when
/// always right gains nothing at real acceptance, and its probes cost more
/// than they find (on a 2-core CPU, where a 0.5B drafter's step costs 0.4 of
/// a target pass and a 2-token pass 1.5, perfect acceptance gains 6 %).
const PROBE_MARGIN: f64 = 0.25;

/// Time of target passes and draft steps, relative to a one-token pass.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    /// Milliseconds of a one-token target pass (smoothed).
    unit_ms: f64,
    /// `relative[n - 1]`: a pass of `n` tokens in units of a one-token pass.
    relative: Vec<f64>,
    /// One draft step in units of a one-token target pass.
    draft_step: f64,
    /// Draft steps measured while serving (start-up's not counted).
    draft_samples: u32,
}

impl CostModel {
    /// A model from start-up measurements: `passes` holds (tokens, ms) of
    /// target passes and must include one token; sizes in between are
    /// interpolated and larger ones extrapolated linearly, up to `largest`.
    /// `draft_step_ms` is one draft step (0 for a model-free drafter).
    pub fn calibrated(passes: &[(usize, f64)], draft_step_ms: f64, largest: usize) -> Option<Self> {
        let mut points: Vec<(usize, f64)> = passes
            .iter()
            .copied()
            .filter(|&(n, ms)| n > 0 && ms.is_finite() && ms > 0.0)
            .collect();
        points.sort_by_key(|&(n, _)| n);
        points.dedup_by_key(|p| p.0);
        let &(first, unit_ms) = points.first()?;
        if first != 1 {
            return None;
        }
        let relative = (1..=largest.max(1))
            .map(|n| interpolate(&points, n) / unit_ms)
            .collect();
        let mut model = Self {
            unit_ms,
            relative,
            draft_step: (draft_step_ms / unit_ms).max(0.0),
            draft_samples: 0,
        };
        model.keep_monotone();
        Some(model)
    }

    /// The costs one sequence adds to passes that `others` rows of other
    /// sequences already fill: a pass of `n` of its tokens costs what a pass
    /// of `others + n` costs beyond one of `others`, and a draft step (also
    /// shared by the sequences drafting with the same model) its share in
    /// the same proportion. With no others, the costs themselves.
    pub fn shared_by(&self, others: usize) -> CostModel {
        if others == 0 {
            return self.clone();
        }
        let base = self.relative_pass(others);
        let relative: Vec<f64> = (1..=self.relative.len())
            .map(|n| (self.relative_pass(others + n) - base).max(f64::EPSILON))
            .collect();
        let marginal = relative[0];
        CostModel {
            unit_ms: self.unit_ms,
            draft_step: self.draft_step * marginal.min(1.0),
            relative,
            draft_samples: self.draft_samples,
        }
    }

    /// Milliseconds a drafter model's first draft step costs beyond a
    /// step when it must first read `unseen` tokens (the tokens generated
    /// since it last drafted, or the prompt): a draft step scaled as a
    /// target pass of that many tokens is, as no drafter pass of that size
    /// is measured.
    pub fn catch_up_ms(&self, unseen: usize) -> f64 {
        if unseen <= 1 {
            return 0.0;
        }
        self.draft_step_ms() * (self.relative_pass(unseen) - self.relative_pass(1)).max(0.0)
    }

    /// Milliseconds of a one-token target pass.
    pub fn unit_ms(&self) -> f64 {
        self.unit_ms
    }

    /// Milliseconds of a target pass of `tokens` tokens.
    pub fn pass_ms(&self, tokens: usize) -> f64 {
        self.unit_ms * self.relative_pass(tokens)
    }

    /// Milliseconds of one draft step.
    pub fn draft_step_ms(&self) -> f64 {
        self.unit_ms * self.draft_step
    }

    fn relative_pass(&self, tokens: usize) -> f64 {
        match tokens {
            0 => 0.0,
            n if n <= self.relative.len() => self.relative[n - 1],
            n => {
                // Beyond the table: continue the last step linearly.
                let last = self.relative.len();
                let step = if last >= 2 {
                    self.relative[last - 1] - self.relative[last - 2]
                } else {
                    1.0
                };
                self.relative[last - 1] + step * (n - last) as f64
            }
        }
    }

    /// Refine with a measured target pass. Any size tells the current
    /// load: the pass implies a one-token time through its relative cost,
    /// and that moves every size together; what the implied time leaves
    /// unexplained slowly reshapes the pass's relative cost. So the unit
    /// stays current while only larger passes run (as when drafting every
    /// round), and a load change cannot pass for cheap batches.
    pub fn observe_pass(&mut self, tokens: usize, ms: f64) {
        if tokens == 0 || !ms.is_finite() || ms <= 0.0 {
            return;
        }
        let relative = self.relative_pass(tokens);
        self.unit_ms = smooth(self.unit_ms, ms / relative);
        if tokens > 1 && tokens <= self.relative.len() {
            let r = &mut self.relative[tokens - 1];
            *r = SHAPE_SMOOTHING * *r + (1.0 - SHAPE_SMOOTHING) * (ms / self.unit_ms);
            self.keep_monotone();
        }
    }

    /// A pass of more tokens never costs less than one of fewer, and none
    /// less than a one-token pass: measurement noise must not make a batch
    /// look cheaper than its parts.
    fn keep_monotone(&mut self) {
        let mut floor = 1.0;
        for r in &mut self.relative {
            *r = r.max(floor);
            floor = *r;
        }
    }

    /// Refine with `steps` draft steps that took `ms` in all.
    pub fn observe_draft(&mut self, steps: usize, ms: f64) {
        if steps == 0 || !ms.is_finite() || ms < 0.0 {
            return;
        }
        // Start-up's measurement stands until a real draft step replaces
        // it; then the mean of the first measurements, then exponential
        // smoothing. The first drafts of a drafter judged hopeless are rare
        // probes: each must count.
        self.draft_samples = self.draft_samples.saturating_add(1);
        let weight = (1.0 / f64::from(self.draft_samples)).max(1.0 - COST_SMOOTHING);
        let observed = ms / steps as f64 / self.unit_ms;
        self.draft_step += weight * (observed - self.draft_step);
    }

    /// Expected tokens and milliseconds of a round drafting `k` tokens with
    /// conditional acceptances `acceptance` (at least `k` of them), verified
    /// in passes of at most `chunk` tokens, sampling a position costing
    /// `sample_ms`.
    pub fn expected_round(
        &self,
        k: usize,
        acceptance: &[f64],
        chunk: usize,
        sample_ms: f64,
    ) -> (f64, f64) {
        self.expected_round_with_step(k, acceptance, chunk, self.draft_step_ms(), sample_ms)
    }

    /// [`CostModel::expected_round`] for a proposer whose step costs `step_ms`
    /// (prompt lookup costs next to nothing).
    pub fn expected_round_with_step(
        &self,
        k: usize,
        acceptance: &[f64],
        chunk: usize,
        step_ms: f64,
        sample_ms: f64,
    ) -> (f64, f64) {
        let chunk = chunk.max(1);
        let survive = survival(acceptance, k);
        let tokens = survive.iter().sum::<f64>();
        let batch = k + 1;
        // Position i is sampled when the i drafted tokens before it were accepted.
        let mut ms = k as f64 * step_ms + tokens * sample_ms.max(0.0);
        let mut start = 0;
        while start < batch {
            let size = chunk.min(batch - start);
            ms += survive[start] * self.pass_ms(size);
            start += size;
        }
        (tokens, ms)
    }
}

/// `survive[i]` for i in 0..=k: the probability that the first `i` drafted
/// tokens are all accepted, given conditional acceptances (missing ones 0).
fn survival(acceptance: &[f64], k: usize) -> Vec<f64> {
    let mut survive = Vec::with_capacity(k + 1);
    survive.push(1.0);
    for i in 0..k {
        let a = acceptance.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        survive.push(survive[i] * a);
    }
    survive
}

fn smooth(old: f64, new: f64) -> f64 {
    COST_SMOOTHING * old + (1.0 - COST_SMOOTHING) * new
}

/// Piecewise-linear value at `n` through sorted `points` (extrapolated past the last two).
fn interpolate(points: &[(usize, f64)], n: usize) -> f64 {
    if let Some(&(_, ms)) = points.iter().find(|&&(m, _)| m == n) {
        return ms;
    }
    if points.len() < 2 {
        return points[0].1 * n as f64;
    }
    let upper = points
        .iter()
        .position(|&(m, _)| m > n)
        .unwrap_or(points.len())
        .clamp(1, points.len() - 1);
    let (lo, hi) = (points[upper - 1], points[upper]);
    let slope = (hi.1 - lo.1) / (hi.0 - lo.0) as f64;
    (lo.1 + slope * (n as f64 - lo.0 as f64)).max(points[0].1)
}

/// Online estimate of per-position conditional acceptance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcceptanceModel {
    /// Decayed count of rounds in which position i was verified.
    offered: Vec<f64>,
    /// Decayed count of those in which it was accepted.
    accepted: Vec<f64>,
}

impl AcceptanceModel {
    /// Record a round that drafted `drafted` tokens of which the target
    /// accepted the first `accepted`.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        let accepted = accepted.min(drafted);
        // Positions 0..accepted were accepted; the next one, if drafted, was refused.
        let verified = (accepted + 1).min(drafted);
        if self.offered.len() < verified {
            self.offered.resize(verified, 0.0);
            self.accepted.resize(verified, 0.0);
        }
        for i in 0..verified {
            self.offered[i] = self.offered[i] * ACCEPTANCE_DECAY + 1.0;
            self.accepted[i] *= ACCEPTANCE_DECAY;
            if i < accepted {
                self.accepted[i] += 1.0;
            }
        }
    }

    /// Mean and standard deviation of the number `X` of the first `len`
    /// drafted tokens accepted. With `P_i` the probability that the first
    /// `i` all are, `P(X >= i) = P_i`: the mean is `P_1 + … + P_len` and
    /// `E[X^2]` the sum of `(2i - 1) P_i`.
    pub fn accepted_spread(&self, len: usize) -> (f64, f64) {
        let survive = survival(&self.conditional(len), len);
        let mean: f64 = survive[1..].iter().sum();
        let square: f64 = survive
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, p)| (2 * i - 1) as f64 * p)
            .sum();
        (mean, (square - mean * mean).max(0.0).sqrt())
    }

    /// Conditional acceptance of positions 0..len. A position seldom seen
    /// leans on the estimate of the one before it.
    pub fn conditional(&self, len: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(len);
        let mut prior = PRIOR_FIRST;
        for i in 0..len {
            let (acc, off) = match (self.accepted.get(i), self.offered.get(i)) {
                (Some(&a), Some(&o)) => (a, o),
                _ => (0.0, 0.0),
            };
            let estimate = (acc + PRIOR_WEIGHT * prior) / (off + PRIOR_WEIGHT);
            out.push(estimate);
            prior = estimate;
        }
        out
    }
}

/// The draft length that maximises expected throughput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Choice {
    /// Tokens to draft (0: plain decoding).
    pub draft_length: usize,
    /// Expected tokens per second at that length.
    pub tokens_per_second: f64,
    /// Expected tokens per second of plain decoding.
    pub plain_tokens_per_second: f64,
}

/// Best length in `{0} ∪ [max(min, 1), max]`; ties go to the shorter draft.
pub fn best_length(
    cost: &CostModel,
    acceptance: &[f64],
    min: usize,
    max: usize,
    chunk: usize,
    sample_ms: f64,
) -> Choice {
    let plain = rate(cost.expected_round(0, acceptance, chunk, sample_ms));
    let best = best_speculative(
        cost,
        acceptance,
        (min, max),
        chunk,
        (cost.draft_step_ms(), 0.0),
        sample_ms,
    )
    .filter(|&(_, r)| r > plain * (1.0 + 1e-9));
    Choice {
        draft_length: best.map_or(0, |(k, _)| k),
        tokens_per_second: best.map_or(plain, |(_, r)| r),
        plain_tokens_per_second: plain,
    }
}

fn rate((tokens, ms): (f64, f64)) -> f64 {
    if ms > 0.0 {
        tokens * 1000.0 / ms
    } else {
        0.0
    }
}

/// Where a round's draft comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proposer {
    /// No draft: plain decoding.
    None,
    /// The drafter model.
    Model,
    /// Prompt lookup (n-grams of the sequence so far), which costs next to
    /// nothing and pays where the output repeats the input.
    Lookup,
}

/// What a round does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// Who drafts.
    pub proposer: Proposer,
    /// How many tokens (0 with [`Proposer::None`]).
    pub draft_length: usize,
    /// Expected tokens per second of this decision.
    pub tokens_per_second: f64,
    /// Expected tokens per second of plain decoding.
    pub plain_tokens_per_second: f64,
}

/// What may draft in the coming round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Whether a drafter model is there.
    pub model: bool,
    /// Tokens prompt lookup has proposed for this round (0: no match).
    pub lookup: usize,
    /// Shortest draft worth verifying.
    pub min: usize,
    /// Longest draft allowed.
    pub max: usize,
    /// Most tokens per target pass.
    pub chunk: usize,
    /// Milliseconds of sampling the target at one position for this request.
    pub sample_ms: f64,
    /// Whether a probe of the drafter model must wait: it would first read
    /// every token the drafter has not seen, in a step other sequences share
    /// and pay for. A probe due then is taken by a later round.
    pub defer_probe: bool,
    /// Milliseconds the drafter model needs to read what it has not seen
    /// before it can draft (see [`CostModel::catch_up_ms`]): paid once, by
    /// the round that drafts with it next, so a drafter that lags far
    /// behind is not switched to on a guess that a few tokens repay it.
    pub catch_up_ms: f64,
}

/// The adaptive state of one drafter for one language. The drafter model's
/// acceptance is a property of the drafter and the language, so it is
/// learned across requests; prompt lookup's is a property of the request
/// (does the output repeat the input?), so the caller keeps one
/// [`AcceptanceModel`] per request for it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaptiveState {
    model: AcceptanceModel,
    /// Plain rounds since the last speculative one.
    plain_rounds: u32,
    /// Plain rounds to wait before the next probe.
    probe_interval: u32,
    /// Whether the round in flight is a probe.
    probing: bool,
    /// Plain rounds before the next probe of a drafter judged unable to pay.
    hopeless_interval: u32,
    /// Whether the probe in flight is of such a drafter.
    probing_hopeless: bool,
    /// The last decision.
    last: Option<Decision>,
}

/// The best length in `[max(min, 1), max]` for one proposer and its rate.
fn best_speculative(
    cost: &CostModel,
    acceptance: &[f64],
    (min, max): (usize, usize),
    chunk: usize,
    (step_ms, once_ms): (f64, f64),
    sample_ms: f64,
) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for k in min.max(1)..=max {
        let (tokens, ms) = cost.expected_round_with_step(k, acceptance, chunk, step_ms, sample_ms);
        let r = rate((tokens, ms + once_ms));
        if best.is_none_or(|(_, b)| r > b * (1.0 + 1e-9)) {
            best = Some((k, r));
        }
    }
    best
}

impl AdaptiveState {
    /// Decide the next round: plain decoding, or which proposer drafts how
    /// many tokens, whichever promises the most tokens per second; when that
    /// is plain decoding, now and then a probe.
    pub fn decide(
        &mut self,
        cost: &CostModel,
        options: &Options,
        lookup: &AcceptanceModel,
    ) -> Decision {
        let plain_round = cost.expected_round(0, &[], options.chunk, options.sample_ms);
        let plain = rate(plain_round);
        let mut candidates = Vec::with_capacity(2);
        if options.model {
            candidates.push((
                Proposer::Model,
                options.max,
                (cost.draft_step_ms(), options.catch_up_ms.max(0.0)),
            ));
        }
        if options.lookup > 0 {
            candidates.push((
                Proposer::Lookup,
                options.max.min(options.lookup),
                (0.0, 0.0),
            ));
        }
        let mut decision = Decision {
            proposer: Proposer::None,
            draft_length: 0,
            tokens_per_second: plain,
            plain_tokens_per_second: plain,
        };
        // The drafter model's probe: its best length and rate, and whether
        // even perfect acceptance would beat plain decoding.
        let mut probe: Option<(usize, f64, bool)> = None;
        for &(proposer, max, step_ms) in &candidates {
            let acceptance = match proposer {
                Proposer::Lookup => lookup.conditional(max),
                _ => self.model.conditional(max),
            };
            let Some((k, r)) = best_speculative(
                cost,
                &acceptance,
                (options.min, max),
                options.chunk,
                step_ms,
                options.sample_ms,
            ) else {
                continue;
            };
            if r > decision.tokens_per_second * (1.0 + 1e-9) {
                decision = Decision {
                    proposer,
                    draft_length: k,
                    tokens_per_second: r,
                    plain_tokens_per_second: plain,
                };
            }
            // Prompt lookup is judged per request, from a fresh estimate:
            // only the drafter model, learned across requests, is probed,
            // at the usual intervals if it could pay by PROBE_MARGIN (once
            // caught up: what a probe pays to catch up it pays once).
            if proposer == Proposer::Model {
                let perfect = vec![1.0; max];
                let could_pay = best_speculative(
                    cost,
                    &perfect,
                    (options.min, max),
                    options.chunk,
                    (step_ms.0, 0.0),
                    options.sample_ms,
                )
                .is_some_and(|(_, best)| best > plain * (1.0 + PROBE_MARGIN));
                probe = Some((k, r, could_pay));
            }
        }
        // A probe decided here stays marked until a drafting round of this
        // state is observed: with several sequences deciding in one engine
        // step, the others' decisions come between a probe and its outcome.
        if decision.proposer == Proposer::None {
            if let Some((k, r, could_pay)) = probe {
                if self.probe_interval == 0 {
                    self.probe_interval = PROBE_FIRST;
                }
                // A drafter that cannot pay even at perfect acceptance, as the
                // costs stand, is still probed, ever more rarely: the costs
                // it was judged by may have been measured under a passing
                // load, and only a draft re-measures its step.
                let interval = if could_pay {
                    self.probe_interval
                } else {
                    self.hopeless_interval.max(HOPELESS_PROBE_FIRST)
                };
                // A probe first catches the drafter up on what it missed
                // (the prompt too, in a new request): it waits until that
                // costs at most a share of the plain rounds since the last.
                let affordable = options.catch_up_ms
                    <= PROBE_CATCH_UP_SHARE * f64::from(self.plain_rounds) * plain_round.1;
                if self.plain_rounds >= interval && !options.defer_probe && affordable {
                    self.probing = true;
                    self.probing_hopeless = !could_pay;
                    // One probe per interval: the sequences deciding next,
                    // in the same step, wait for the next interval.
                    self.plain_rounds = 0;
                    decision = Decision {
                        proposer: Proposer::Model,
                        draft_length: k,
                        tokens_per_second: r,
                        plain_tokens_per_second: plain,
                    };
                }
            }
        }
        self.last = Some(decision);
        decision
    }

    /// Record the round that followed `decide`: `proposer` drafted `drafted`
    /// tokens (fewer than decided when it stopped early) and the target
    /// accepted the first `accepted`. A drafter model that `stopped_early`
    /// (unsure of its next token, `p_min`) gave up a position it was asked
    /// for, which costs the round as a refusal there would: it is counted
    /// as one, so a drafter that keeps stopping at once is judged by it
    /// instead of each such round teaching nothing while costing a step.
    pub fn observe(
        &mut self,
        proposer: Proposer,
        drafted: usize,
        accepted: usize,
        stopped_early: bool,
        lookup: &mut AcceptanceModel,
    ) {
        match proposer {
            Proposer::None => self.plain_rounds = self.plain_rounds.saturating_add(1),
            // Lookup's estimate is the request's; the model's probe state is
            // untouched, and for the model this round was not its own.
            Proposer::Lookup => {
                if drafted > 0 {
                    lookup.observe(drafted, accepted);
                }
                self.plain_rounds = self.plain_rounds.saturating_add(1);
            }
            Proposer::Model => {
                let accepted = accepted.min(drafted);
                let offered = if stopped_early && accepted == drafted {
                    drafted + 1
                } else {
                    drafted
                };
                if offered == 0 {
                    self.plain_rounds = self.plain_rounds.saturating_add(1);
                    return;
                }
                let (expected, spread) = self.model.accepted_spread(offered);
                self.model.observe(offered, accepted);
                // After a probe, look again soon only if it did clearly
                // better than expected (by more than the spread of what was
                // expected: acceptance may be rising), else wait twice as
                // long: a drafter that keeps meeting a low expectation is
                // not probed at the first interval for ever.
                self.probe_interval = if self.probing && (accepted as f64) <= expected + spread {
                    (self.probe_interval.max(PROBE_FIRST / 2) * 2).min(PROBE_LONGEST)
                } else {
                    PROBE_FIRST
                };
                if self.probing_hopeless {
                    self.hopeless_interval = (self.hopeless_interval.max(HOPELESS_PROBE_FIRST / 2)
                        * 2)
                    .min(PROBE_LONGEST);
                }
                self.probing = false;
                self.probing_hopeless = false;
                self.plain_rounds = 0;
            }
        }
    }

    /// The last decision, if any.
    pub fn last_decision(&self) -> Option<Decision> {
        self.last
    }

    /// Estimated conditional acceptance of the drafter model's positions 0..len.
    pub fn acceptance(&self, len: usize) -> Vec<f64> {
        self.model.conditional(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs in the shape measured with llama-bench on a 2-core CPU:
    /// passes of 1..6 tokens take 25/38/49/61/73/87 ms; a 0.5B draft step 14 ms.
    fn cpu_with_cheap_batches() -> CostModel {
        let passes = [
            (1, 25.0),
            (2, 38.0),
            (3, 49.0),
            (4, 61.0),
            (5, 73.0),
            (6, 87.0),
        ];
        CostModel::calibrated(&passes, 14.0, 8).unwrap()
    }

    /// A GPU-like shape: batches up to 16 cost about as much as one token.
    fn gpu() -> CostModel {
        CostModel::calibrated(&[(1, 10.0), (16, 11.0), (65, 14.0)], 1.5, 65).unwrap()
    }

    /// A CPU whose batches cost as much per token as single tokens.
    fn linear_cpu() -> CostModel {
        CostModel::calibrated(&[(1, 50.0), (2, 100.0), (4, 200.0), (7, 350.0)], 20.0, 7).unwrap()
    }

    #[test]
    fn a_shared_pass_costs_a_sequence_what_its_rows_add() {
        let alone = cpu_with_cheap_batches();
        let shared = alone.shared_by(2);
        // Two rows of others already pay 38 ms: one more row adds 11 ms,
        // two more add 23 ms.
        assert!((shared.pass_ms(1) - 11.0).abs() < 1e-9);
        assert!((shared.pass_ms(2) - 23.0).abs() < 1e-9);
        // The draft step is shared in the same proportion.
        assert!((shared.draft_step_ms() - 14.0 * 11.0 / 25.0).abs() < 1e-9);
        assert_eq!(alone.shared_by(0), alone);
        // Cheap shared rows make plain decoding relatively cheaper: the
        // expected gain of a draft shrinks under load.
        let acceptance = [0.7; 8];
        let gain = |c: &CostModel| {
            rate(c.expected_round(3, &acceptance, 8, 0.0))
                / rate(c.expected_round(0, &acceptance, 8, 0.0))
        };
        assert!(
            gain(&shared) < gain(&alone),
            "{} vs {}",
            gain(&shared),
            gain(&alone)
        );
    }

    #[test]
    fn calibration_interpolates_and_extrapolates() {
        let c = CostModel::calibrated(&[(4, 40.0), (1, 10.0), (2, 20.0)], 5.0, 8).unwrap();
        assert_eq!(c.pass_ms(1), 10.0);
        assert!((c.pass_ms(3) - 30.0).abs() < 1e-9);
        assert!((c.pass_ms(8) - 80.0).abs() < 1e-9);
        assert!((c.pass_ms(10) - 100.0).abs() < 1e-9, "beyond the table");
        assert_eq!(c.draft_step_ms(), 5.0);
        assert!(
            CostModel::calibrated(&[(2, 20.0)], 5.0, 8).is_none(),
            "needs one token"
        );
        assert!(CostModel::calibrated(&[], 5.0, 8).is_none());
    }

    #[test]
    fn expected_round_counts_survival_and_lazy_passes() {
        let c = linear_cpu();
        let a = [0.5, 0.5, 0.5, 0.5];
        let (tokens, _) = c.expected_round(0, &a, 7, 0.0);
        assert_eq!(tokens, 1.0);
        let (tokens, ms) = c.expected_round(2, &a, 7, 0.0);
        assert!((tokens - 1.75).abs() < 1e-12);
        assert!((ms - (2.0 * 20.0 + 150.0)).abs() < 1e-9);
        // Passes of 2: the second pass (tokens 3..4) runs with probability 0.25.
        let (_, ms) = c.expected_round(3, &a, 2, 0.0);
        assert!((ms - (3.0 * 20.0 + 100.0 + 0.25 * 100.0)).abs() < 1e-9);
    }

    #[test]
    fn sampling_is_paid_at_every_position_verification_reaches() {
        let c = linear_cpu();
        let a = [0.5, 0.5, 0.5, 0.5];
        let (_, without) = c.expected_round(2, &a, 7, 0.0);
        let (tokens, with) = c.expected_round(2, &a, 7, 4.0);
        // Positions 0, 1 and 2 are reached with probability 1, 0.5, 0.25.
        assert!((with - without - 4.0 * 1.75).abs() < 1e-9);
        assert!((tokens - 1.75).abs() < 1e-12);
        let (_, plain) = c.expected_round(0, &a, 7, 4.0);
        assert!((plain - (50.0 + 4.0)).abs() < 1e-9);
    }

    #[test]
    fn sampling_costs_dilute_the_speed_up() {
        // Plain decoding pays a pass and a sampling per token; a round of k
        // drafted tokens pays one cheaper-per-token pass and a sampling per
        // position reached. Sampling costs every token alike, so the more
        // it costs, the less the saved passes matter.
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        let cheap = best_length(&free, &[0.8; 8], 0, 8, 8, 0.0);
        let costly = best_length(&free, &[0.8; 8], 0, 8, 8, 8.0);
        assert!(cheap.draft_length > 0 && costly.draft_length > 0);
        assert!(costly.tokens_per_second < cheap.tokens_per_second);
        assert!(
            costly.tokens_per_second / costly.plain_tokens_per_second
                < cheap.tokens_per_second / cheap.plain_tokens_per_second,
            "sampling costs dilute the speed-up: {cheap:?} {costly:?}"
        );
    }

    #[test]
    fn plain_decoding_wins_when_batches_cost_linearly() {
        let perfect = vec![1.0; 8];
        let choice = best_length(&linear_cpu(), &perfect, 0, 7, 7, 0.0);
        assert_eq!(choice.draft_length, 0, "even perfect acceptance cannot pay");
        assert!((choice.plain_tokens_per_second - 20.0).abs() < 1e-9);
    }

    #[test]
    fn the_choice_follows_acceptance_on_cheap_batches() {
        let c = cpu_with_cheap_batches();
        // A free drafter (n-gram) pays at decent acceptance.
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        assert!(best_length(&free, &[0.8; 8], 0, 8, 8, 0.0).draft_length > 0);
        assert_eq!(best_length(&free, &[0.3; 8], 0, 8, 8, 0.0).draft_length, 0);
        // A 0.5B drafter at 0.56 of the target's cost does not pay even at
        // 99 % (what llama.cpp's own draft-and-verify shows on such a CPU),
        // a drafter at 0.2 of it does at 90 %.
        assert_eq!(best_length(&c, &[0.99; 8], 0, 8, 8, 0.0).draft_length, 0);
        let small = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 5.0, 8).unwrap();
        assert!(best_length(&small, &[0.9; 8], 0, 8, 8, 0.0).draft_length > 0);
    }

    #[test]
    fn gpu_costs_favour_long_drafts_at_high_acceptance() {
        let c = gpu();
        let long = best_length(&c, &[0.9; 16], 0, 16, 65, 0.0);
        assert!(long.draft_length >= 6, "{long:?}");
        let short = best_length(&c, &[0.4; 16], 0, 16, 65, 0.0);
        assert!(short.draft_length < long.draft_length, "{short:?}");
        assert!(long.tokens_per_second > long.plain_tokens_per_second);
    }

    #[test]
    fn min_is_respected() {
        let c = gpu();
        let choice = best_length(&c, &[0.6; 16], 5, 16, 65, 0.0);
        assert!(choice.draft_length == 0 || choice.draft_length >= 5);
    }

    #[test]
    fn acceptance_estimates_per_position_with_forgetting() {
        let mut m = AcceptanceModel::default();
        assert_eq!(m.conditional(2), vec![PRIOR_FIRST, PRIOR_FIRST]);
        for _ in 0..200 {
            m.observe(4, 1); // first accepted, second refused, 3rd and 4th unseen
        }
        let a = m.conditional(4);
        assert!(a[0] > 0.98, "{a:?}");
        assert!(a[1] < 0.05, "{a:?}");
        assert_eq!(a[2], a[1], "unseen positions lean on the previous one");
        for _ in 0..300 {
            m.observe(1, 0);
        }
        assert!(m.conditional(1)[0] < 0.05, "old rounds are forgotten");
    }

    fn model_only(max: usize, chunk: usize) -> Options {
        Options {
            model: true,
            lookup: 0,
            min: 0,
            max,
            chunk,
            sample_ms: 0.0,
            defer_probe: false,
            catch_up_ms: 0.0,
        }
    }

    #[test]
    fn a_drafter_that_cannot_pay_is_probed_ever_more_rarely() {
        let c = linear_cpu();
        let mut state = AdaptiveState::default();
        let mut probes = Vec::new();
        for round in 0..5000 {
            let mut lookup = AcceptanceModel::default();
            let d = state.decide(&c, &model_only(7, 7), &lookup);
            if d.draft_length > 0 {
                assert_eq!(d.proposer, Proposer::Model);
                probes.push(round);
            }
            // Even perfect acceptance leaves it hopeless on these costs.
            state.observe(
                d.proposer,
                d.draft_length,
                d.draft_length,
                false,
                &mut lookup,
            );
        }
        assert!(probes.first().is_some_and(|&r| r >= 64), "{probes:?}");
        let gaps: Vec<_> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(probes.len() <= 10, "{probes:?}");
    }

    #[test]
    fn a_cold_request_on_a_2_core_cpu_does_not_probe_the_0_5b_drafter() {
        // Start-up's costs on an Intel Xeon (2 cores): target passes of
        // 1/2/3 tokens, the 0.5B drafter's step, greedy sampling.
        let c = CostModel::calibrated(&[(1, 69.3), (2, 101.9), (3, 132.4)], 28.8, 3).unwrap();
        let mut state = AdaptiveState::default();
        let options = Options {
            sample_ms: 0.1,
            ..model_only(8, 3)
        };
        for round in 0..64 {
            let mut lookup = AcceptanceModel::default();
            let d = state.decide(&c, &options, &lookup);
            assert_eq!(d.proposer, Proposer::None, "round {round}: {d:?}");
            state.observe(d.proposer, 0, 0, false, &mut lookup);
        }
    }

    #[test]
    fn a_drafter_misjudged_at_start_up_is_found_out_by_probes() {
        // Start-up timed the draft step at three times its cost: hopeless.
        let mut c = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 15.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        let mut drafted = Vec::new();
        for round in 0..3000 {
            let d = state.decide(&c, &model_only(2, 3), &lookup);
            if d.proposer == Proposer::Model {
                drafted.push(round);
                c.observe_draft(d.draft_length, 5.0 * d.draft_length as f64);
            }
            // The drafter is right nine times in ten.
            let accepted = (0..d.draft_length)
                .take_while(|i| (round + i) % 10 != 0)
                .count();
            state.observe(d.proposer, d.draft_length, accepted, false, &mut lookup);
        }
        assert!(drafted.first().is_some_and(|&r| r >= 64), "{drafted:?}");
        let late = drafted.iter().filter(|&&r| r >= 2000).count();
        assert!(late > 900, "drafting every round by the end: {late}");
    }

    #[test]
    fn early_stops_count_as_refusals_and_lookup_leaves_the_model_alone() {
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        // The model stops at once, unsure, every round: it is given up.
        let mut model_rounds = 0;
        for _ in 0..200 {
            let d = state.decide(&free, &model_only(4, 4), &lookup);
            if d.proposer == Proposer::Model {
                model_rounds += 1;
            }
            state.observe(d.proposer, 0, 0, d.proposer == Proposer::Model, &mut lookup);
        }
        assert!(model_rounds < 30, "{model_rounds}");
        assert!(state.acceptance(1)[0] < 0.3, "{:?}", state.acceptance(1));
        // Lookup rounds teach lookup's estimate, not the model's, and do not
        // reset the model's probe schedule.
        let before = state.clone();
        state.observe(Proposer::Lookup, 3, 3, false, &mut lookup);
        assert_eq!(state.model, before.model);
        assert_eq!(state.probe_interval, before.probe_interval);
        assert_eq!(state.plain_rounds, before.plain_rounds + 1);
        assert!(lookup.conditional(1)[0] > PRIOR_FIRST);
    }

    #[test]
    fn the_spread_of_accepted_tokens_follows_survival() {
        let mut m = AcceptanceModel::default();
        // One position at the prior 0.8: a Bernoulli count.
        let (mean, sd) = m.accepted_spread(1);
        assert!((mean - 0.8).abs() < 1e-9 && (sd - (0.8f64 * 0.2).sqrt()).abs() < 1e-9);
        // Always accepted: no spread.
        for _ in 0..2000 {
            m.observe(4, 4);
        }
        let (mean, sd) = m.accepted_spread(4);
        assert!(mean > 3.9 && sd < 0.5, "{mean} {sd}");
    }

    #[test]
    fn expected_accepted_sums_survival() {
        let mut m = AcceptanceModel::default();
        let p = PRIOR_FIRST;
        assert!((m.accepted_spread(2).0 - (p + p * p)).abs() < 1e-12);
        m.observe(1, 0);
        assert!(m.accepted_spread(1).0 < p);
        assert_eq!(m.accepted_spread(0).0, 0.0);
    }

    #[test]
    fn lookup_is_chosen_where_the_model_cannot_pay() {
        // CPU costs: the 0.5B model never pays, free lookup does when it matches well.
        let c = cpu_with_cheap_batches();
        let mut state = AdaptiveState::default();
        let options = Options {
            model: true,
            lookup: 4,
            min: 0,
            max: 4,
            chunk: 3,
            sample_ms: 0.0,
            defer_probe: false,
            catch_up_ms: 0.0,
        };
        let mut lookup = AcceptanceModel::default();
        let mut lookup_rounds = 0;
        for _ in 0..200 {
            let d = state.decide(&c, &options, &lookup);
            assert_ne!(d.proposer, Proposer::Model);
            if d.proposer == Proposer::Lookup {
                lookup_rounds += 1;
                assert!(d.draft_length <= 4);
                assert!(d.tokens_per_second > d.plain_tokens_per_second);
            }
            state.observe(
                d.proposer,
                d.draft_length,
                d.draft_length,
                false,
                &mut lookup,
            );
        }
        assert!(lookup_rounds > 190, "{lookup_rounds}");
        // No match this round: plain decoding.
        let none = Options {
            lookup: 0,
            ..options
        };
        // (The model, given up long ago, may be probed instead.)
        assert_ne!(state.decide(&c, &none, &lookup).proposer, Proposer::Lookup);
        // Lookup that is always wrong is given up.
        let mut bad = AdaptiveState::default();
        let mut bad_lookup = AcceptanceModel::default();
        let mut speculative = 0;
        for _ in 0..500 {
            let d = bad.decide(&c, &options, &bad_lookup);
            if d.draft_length > 0 {
                speculative += 1;
            }
            bad.observe(d.proposer, d.draft_length, 0, false, &mut bad_lookup);
        }
        assert!(speculative < 30, "{speculative}");
        // A new request starts with fresh lookup estimates.
        let fresh = AcceptanceModel::default();
        assert_eq!(bad.decide(&c, &options, &fresh).proposer, Proposer::Lookup);
    }

    #[test]
    fn probes_back_off_and_switch_on_when_acceptance_rises() {
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        // A drafter that is always wrong: mostly plain rounds, rarer probes.
        let mut lookup = AcceptanceModel::default();
        let mut probes = Vec::new();
        for round in 0..2000 {
            let d = state.decide(&free, &model_only(8, 8), &lookup);
            if d.draft_length > 0 {
                probes.push(round);
            }
            state.observe(d.proposer, d.draft_length, 0, false, &mut lookup);
        }
        assert!(probes.len() >= 3 && probes.len() < 20, "{probes:?}");
        let gaps: Vec<_> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        // It turns good: the next probe sees it and speculation switches on.
        let mut speculative = 0;
        for _ in 0..3000 {
            let d = state.decide(&free, &model_only(8, 8), &lookup);
            if d.draft_length > 0 {
                speculative += 1;
            }
            state.observe(
                d.proposer,
                d.draft_length,
                d.draft_length,
                false,
                &mut lookup,
            );
        }
        assert!(speculative > 2000, "{speculative}");
    }

    #[test]
    fn sequences_deciding_in_one_step_probe_one_at_a_time() {
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        let mut probes_per_step = Vec::new();
        // Eight sequences share the state; each engine step, all decide,
        // then all rounds are observed. The drafter is always wrong.
        for _ in 0..400 {
            let decisions: Vec<Decision> = (0..8)
                .map(|_| state.decide(&free, &model_only(8, 8), &lookup))
                .collect();
            probes_per_step.push(decisions.iter().filter(|d| d.draft_length > 0).count());
            for d in decisions {
                state.observe(d.proposer, d.draft_length, 0, false, &mut lookup);
            }
        }
        // The first step drafts everywhere on the optimistic prior (a
        // decision, not a probe); after it, at most one probe a step.
        assert!(
            probes_per_step[1..].iter().all(|&n| n <= 1),
            "{probes_per_step:?}"
        );
        // And the failed probes still back off: probes grow rarer.
        let steps: Vec<usize> = (1..probes_per_step.len())
            .filter(|&i| probes_per_step[i] > 0)
            .collect();
        assert!(steps.len() >= 3, "{steps:?}");
        let gaps: Vec<usize> = steps.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.last() > gaps.first(), "{gaps:?}");
    }

    #[test]
    fn a_probe_that_must_wait_is_taken_by_a_later_round() {
        let free = CostModel::calibrated(&[(1, 25.0), (2, 38.0), (3, 49.0)], 0.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        // The drafter is always wrong: after the first rounds, plain rounds
        // and probes.
        let mut probes = 0;
        for _ in 0..200 {
            let d = state.decide(&free, &model_only(8, 8), &lookup);
            probes += usize::from(d.draft_length > 0);
            state.observe(d.proposer, d.draft_length, 0, false, &mut lookup);
        }
        assert!(probes > 0);
        // Probes must wait: none is taken, however many plain rounds pass.
        let waiting = Options {
            defer_probe: true,
            catch_up_ms: 0.0,
            ..model_only(8, 8)
        };
        for round in 0..2000 {
            let d = state.decide(&free, &waiting, &lookup);
            assert_eq!(d.draft_length, 0, "round {round}: {d:?}");
            state.observe(d.proposer, 0, 0, false, &mut lookup);
        }
        // The first round allowed to probe does.
        assert!(state.decide(&free, &model_only(8, 8), &lookup).draft_length > 0);
    }

    #[test]
    fn a_probe_waits_until_its_catch_up_is_a_small_share_of_the_plain_rounds() {
        // A 2-core CPU: 75 ms plain rounds; the drafter can pay at perfect
        // acceptance but is always wrong, so plain rounds and probes.
        let cpu = CostModel::calibrated(&[(1, 75.0), (2, 80.0), (3, 85.0)], 10.0, 8).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        for _ in 0..200 {
            let d = state.decide(&cpu, &model_only(4, 8), &lookup);
            state.observe(d.proposer, d.draft_length, 0, false, &mut lookup);
        }
        // A new request: the drafter has not read its prompt (600 ms to
        // catch up) and falls one more token behind each plain round.
        let mut rounds = 0;
        let plain_since = loop {
            rounds += 1;
            let options = Options {
                catch_up_ms: 600.0 + 7.5 * rounds as f64,
                ..model_only(4, 8)
            };
            let plain_since = f64::from(state.plain_rounds) * 75.0;
            let d = state.decide(&cpu, &options, &lookup);
            if d.draft_length > 0 {
                break plain_since;
            }
            state.observe(d.proposer, 0, 0, false, &mut lookup);
            assert!(rounds < 10_000);
        };
        // Not before the catch-up is at most a quarter of the plain time
        // since the last probe.
        assert!(600.0 + 7.5 * rounds as f64 <= 0.25 * plain_since + 1e-9);
        assert!(rounds > 30, "{rounds}");
    }

    #[test]
    fn a_batch_never_looks_cheaper_than_its_parts() {
        let noisy =
            CostModel::calibrated(&[(1, 50.0), (2, 40.0), (3, 60.0), (4, 55.0)], 5.0, 4).unwrap();
        assert_eq!(noisy.pass_ms(2), 50.0);
        assert_eq!(noisy.pass_ms(3), 60.0);
        assert_eq!(noisy.pass_ms(4), 60.0);
        let mut c = cpu_with_cheap_batches();
        for _ in 0..500 {
            c.observe_pass(2, 20.0);
        }
        assert!(c.pass_ms(2) >= c.pass_ms(1) - 1e-9);
        assert!(c.pass_ms(3) >= c.pass_ms(2) - 1e-9);
    }

    #[test]
    fn the_unit_follows_the_load_while_only_larger_passes_run() {
        // Start-up timed the one-token pass under a burst of load; then
        // every round drafts with a drafter as costly as the target, so no
        // one-token pass runs again. The verification passes and draft steps
        // of those rounds must still reveal that drafting cannot pay.
        let mut c = CostModel::calibrated(&[(1, 250.0), (2, 260.0), (3, 270.0)], 140.0, 3).unwrap();
        let mut state = AdaptiveState::default();
        let mut lookup = AcceptanceModel::default();
        let mut drafting_rounds = Vec::new();
        for round in 0..200 {
            let d = state.decide(&c, &model_only(2, 3), &lookup);
            if d.proposer == Proposer::Model {
                drafting_rounds.push(round);
                c.observe_pass(d.draft_length + 1, 100.0 + 4.0 * d.draft_length as f64);
                c.observe_draft(d.draft_length, 140.0 * d.draft_length as f64);
            } else {
                c.observe_pass(1, 100.0);
            }
            state.observe(
                d.proposer,
                d.draft_length,
                d.draft_length,
                false,
                &mut lookup,
            );
        }
        assert_eq!(
            drafting_rounds.first(),
            Some(&0),
            "the inflated unit made drafting look cheap"
        );
        // Then only rare probes.
        let late = drafting_rounds.iter().filter(|&&r| r >= 60).count();
        assert!(late <= 3, "{drafting_rounds:?}: {c:?}");
        assert!((c.unit_ms() - 100.0).abs() < 5.0, "{c:?}");
    }

    #[test]
    fn costs_track_load_changes() {
        let mut c = cpu_with_cheap_batches();
        for _ in 0..100 {
            c.observe_pass(1, 50.0);
        }
        assert!((c.unit_ms() - 50.0).abs() < 0.1);
        assert!(
            (c.pass_ms(2) - 76.0).abs() < 0.2,
            "larger passes scale with the unit"
        );
        for _ in 0..100 {
            c.observe_pass(2, 100.0);
        }
        assert!((c.pass_ms(2) - 100.0).abs() < 0.5);
        c.observe_draft(4, 80.0);
        assert!(c.draft_step_ms() > 14.0);
    }
}
