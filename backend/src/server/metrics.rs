//! Prometheus metrics of the server: the one definition of their names.
//!
//! The `spec_decode_*` counters follow vLLM's semantics, so its PromQL carries
//! over: acceptance rate = rate(accepted) / rate(draft tokens); mean accepted
//! length = 1 + rate(accepted) / rate(drafts).

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::{
    AdaptiveReport, BanditReport, DrafterStats, EngineInfo, GenerationStats, PassTotals,
};
use crate::metric_names::{
    BANDIT_CHOICE_SHARE, BANDIT_TOKENS_PER_SECOND, LABEL_DRAFTER, LABEL_LANGUAGE, LABEL_LENGTH,
    LABEL_POSITION, LABEL_SAMPLING, NAMESPACE, SAMPLING_GREEDY, SAMPLING_SAMPLED,
    SPEC_DECODE_NUM_ACCEPTED_TOKENS, SPEC_DECODE_NUM_ACCEPTED_TOKENS_PER_POS,
    SPEC_DECODE_NUM_DRAFTS, SPEC_DECODE_NUM_DRAFT_TOKENS,
};

/// Label value for requests decoded without a drafter.
pub const NO_DRAFTER: &str = "none";

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    num_drafts: IntCounterVec,
    num_draft_tokens: IntCounterVec,
    num_accepted_tokens: IntCounterVec,
    num_accepted_tokens_per_pos: IntCounterVec,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    requests: IntCounterVec,
    /// Requests being generated.
    pub running: IntGauge,
    /// Requests waiting for a slot.
    pub waiting: IntGauge,
    time_to_first_token: HistogramVec,
    inter_token_latency: HistogramVec,
    request_duration: HistogramVec,
    draft_length: IntGaugeVec,
    expected_speedup: GaugeVec,
    rounds_by_draft_length: IntCounterVec,
    bandit_choice_share: GaugeVec,
    bandit_tokens_per_second: GaugeVec,
    verify_batch_max_tokens: IntGauge,
    verify_batch_exact_tokens: IntGauge,
    shared_pass_max_rows: IntGauge,
    target_passes: IntCounter,
    target_pass_rows: IntCounter,
    /// Held while the pass counters catch up with the engine's totals.
    passes_sync: std::sync::Mutex<()>,
    prompt_piece_tokens: IntGauge,
    cpu_backend: IntGaugeVec,
}

/// Register a metric and hand it back. The definitions in this file are
/// fixed, so failures here are programming errors caught at start-up.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("metric definitions are valid");
    register(registry, c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("metric definitions are valid");
    register(registry, c)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("metric definitions are valid");
    register(registry, g)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("metric definitions are valid");
    register(registry, g)
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(buckets),
        &[LABEL_DRAFTER, LABEL_LANGUAGE],
    )
    .expect("metric definitions are valid");
    register(registry, h)
}

impl Metrics {
    /// Create and register every metric. Panics only on a programming error
    /// in the definitions above (at start-up, never on a request path).
    pub fn new() -> Self {
        let registry = Registry::new();
        let spec = [LABEL_DRAFTER, LABEL_LANGUAGE];
        let num_drafts = counter_vec(
            &registry,
            SPEC_DECODE_NUM_DRAFTS,
            "Verification rounds that checked at least one drafted token.",
            &spec,
        );
        let num_draft_tokens = counter_vec(
            &registry,
            SPEC_DECODE_NUM_DRAFT_TOKENS,
            "Tokens proposed by drafters.",
            &spec,
        );
        let num_accepted_tokens = counter_vec(
            &registry,
            SPEC_DECODE_NUM_ACCEPTED_TOKENS,
            "Drafted tokens the target accepted.",
            &spec,
        );
        let num_accepted_tokens_per_pos = counter_vec(
            &registry,
            SPEC_DECODE_NUM_ACCEPTED_TOKENS_PER_POS,
            "Accepted drafted tokens by position in the draft (0 is the first).",
            &[LABEL_DRAFTER, LABEL_LANGUAGE, LABEL_POSITION],
        );
        let prompt_tokens = counter(&registry, "prompt_tokens_total", "Prompt tokens processed.");
        let generation_tokens = counter(&registry, "generation_tokens_total", "Tokens generated.");
        let running = gauge(
            &registry,
            "num_requests_running",
            "Requests being generated.",
        );
        let waiting = gauge(
            &registry,
            "num_requests_waiting",
            "Requests waiting for a slot.",
        );
        let requests = counter_vec(
            &registry,
            "requests_total",
            "Finished HTTP requests to the generation endpoints, by status code.",
            &["status"],
        );
        let latency_buckets = vec![
            0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
        ];
        let time_to_first_token = histogram_vec(
            &registry,
            "time_to_first_token_seconds",
            "Time from accepting a request to its first generated token.",
            latency_buckets.clone(),
        );
        let inter_token_latency = histogram_vec(
            &registry,
            "inter_token_latency_seconds",
            "Mean time between generated tokens of a request.",
            latency_buckets,
        );
        let request_duration = histogram_vec(
            &registry,
            "request_duration_seconds",
            "Time from accepting a request to its last token.",
            vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
            ],
        );
        let adaptive_spec = [LABEL_DRAFTER, LABEL_LANGUAGE, LABEL_SAMPLING];
        let draft_length = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "draft_length",
                    "Draft length adaptive drafting chose for the latest round (0: plain decoding).",
                )
                .namespace(NAMESPACE),
                &adaptive_spec,
            )
            .expect("metric definitions are valid"),
        );
        let expected_speedup = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "adaptive_expected_speedup",
                    "Expected tokens per second of adaptive drafting's choice over plain decoding.",
                )
                .namespace(NAMESPACE),
                &adaptive_spec,
            )
            .expect("metric definitions are valid"),
        );
        let rounds_by_draft_length = counter_vec(
            &registry,
            "draft_length_rounds_total",
            "Decoding rounds by the draft length used (0: plain decoding).",
            &[LABEL_DRAFTER, LABEL_LANGUAGE, LABEL_LENGTH],
        );
        let bandit_choice_share = gauge_vec(
            &registry,
            BANDIT_CHOICE_SHARE,
            "Share of the language's recent rounds (discounted, about the last 50) the bandit \
             gave this candidate drafter, where a language has several.",
            &[LABEL_LANGUAGE, LABEL_DRAFTER],
        );
        let bandit_tokens_per_second = gauge_vec(
            &registry,
            BANDIT_TOKENS_PER_SECOND,
            "Tokens per second of this candidate drafter's recent rounds in the language \
             (the bandit's discounted mean reward).",
            &[LABEL_LANGUAGE, LABEL_DRAFTER],
        );
        let verify_batch_max_tokens = gauge(
            &registry,
            "verify_batch_max_tokens",
            "Most tokens one target pass verifies (on CPU: the size measured exact at start-up).",
        );
        let verify_batch_exact_tokens = gauge(
            &registry,
            "verify_batch_exact_tokens",
            "Largest target pass measured at start-up to give logits bit-identical to \
             single-token decoding (0: not measured, no drafters).",
        );
        let shared_pass_max_rows = gauge(
            &registry,
            "shared_pass_max_rows",
            "Most rows one target pass holds when it serves several slots (on CPU: rows of \
             different sequences measured at start-up to stay bit-identical to single-token \
             decoding).",
        );
        let prompt_piece_tokens = gauge(
            &registry,
            "prompt_piece_tokens",
            "Prompt tokens read per engine step while other slots decode (a size measured at \
             start-up to leave the cache reading the prompt at once leaves).",
        );
        let target_passes = counter(
            &registry,
            "target_passes_total",
            "Target model passes run (prompt pieces and verification).",
        );
        let target_pass_rows = counter(
            &registry,
            "target_pass_rows_total",
            "Rows (tokens) those target passes held; rows / passes is the mean batch.",
        );
        let cpu_backend = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "cpu_backend_info",
                    "llama.cpp's CPU kernels in use (always 1): the module file and the weight \
                     buffer types it offers (separated by semicolons).",
                )
                .namespace(NAMESPACE),
                &["module", "buffer_types"],
            )
            .expect("metric definitions are valid"),
        );
        Self {
            registry,
            num_drafts,
            num_draft_tokens,
            num_accepted_tokens,
            num_accepted_tokens_per_pos,
            prompt_tokens,
            generation_tokens,
            requests,
            running,
            waiting,
            time_to_first_token,
            inter_token_latency,
            request_duration,
            draft_length,
            expected_speedup,
            rounds_by_draft_length,
            bandit_choice_share,
            bandit_tokens_per_second,
            verify_batch_max_tokens,
            verify_batch_exact_tokens,
            shared_pass_max_rows,
            target_passes,
            target_pass_rows,
            passes_sync: std::sync::Mutex::new(()),
            prompt_piece_tokens,
            cpu_backend,
        }
    }

    /// Record what the engine decided at start-up.
    pub fn observe_engine(&self, info: &EngineInfo) {
        let verification = &info.verification;
        self.verify_batch_max_tokens
            .set(verification.max_verify_batch as i64);
        self.verify_batch_exact_tokens.set(
            verification
                .exactness
                .as_ref()
                .map_or(0, |e| e.exact_tokens as i64),
        );
        self.shared_pass_max_rows
            .set(verification.shared_pass_rows as i64);
        self.prompt_piece_tokens
            .set(verification.prompt_granularity as i64);
        self.cpu_backend
            .with_label_values(&[
                info.runtime.cpu_module().as_str(),
                info.runtime.cpu_buffer_types.join(";").as_str(),
            ])
            .set(1);
    }

    /// Record the engine's latest adaptive decisions.
    pub fn observe_adaptive(&self, reports: &[AdaptiveReport]) {
        for r in reports {
            let sampling = if r.greedy {
                SAMPLING_GREEDY
            } else {
                SAMPLING_SAMPLED
            };
            let labels = [r.drafter.as_str(), r.language.as_str(), sampling];
            self.draft_length
                .with_label_values(&labels)
                .set(r.draft_length as i64);
            if r.plain_tokens_per_second > 0.0 {
                self.expected_speedup
                    .with_label_values(&labels)
                    .set(r.expected_tokens_per_second / r.plain_tokens_per_second);
            }
        }
    }

    /// Bring the target pass counters up to the engine's totals.
    pub fn observe_passes(&self, totals: PassTotals) {
        let _sync = self
            .passes_sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (counter, total) in [
            (&self.target_passes, totals.passes),
            (&self.target_pass_rows, totals.rows),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Record what the bandits know of the languages' candidate drafters.
    pub fn observe_bandits(&self, reports: &[BanditReport]) {
        for r in reports {
            let labels = [r.language.as_str(), r.drafter.as_str()];
            self.bandit_choice_share
                .with_label_values(&labels)
                .set(r.share);
            self.bandit_tokens_per_second
                .with_label_values(&labels)
                .set(r.tokens_per_second);
        }
    }

    /// Record a finished generation. The speculative counters go to the
    /// drafter each round actually used (`stats.drafters`; with several
    /// candidates a request may use several); the latency histograms to
    /// `drafter`, the one it is reported under.
    pub fn record_generation(
        &self,
        drafter: Option<&str>,
        language: &str,
        stats: &GenerationStats,
        time_to_first_token: Option<f64>,
        duration: f64,
    ) {
        let drafter = drafter.unwrap_or(NO_DRAFTER);
        let labels = [drafter, language];
        self.prompt_tokens.inc_by(stats.prompt_tokens as u64);
        self.generation_tokens
            .inc_by(stats.completion_tokens as u64);
        if stats.drafters.is_empty() {
            // Plain decoding (or a backend without the breakdown): all to `drafter`.
            self.record_rounds(
                drafter,
                language,
                &DrafterStats {
                    rounds: stats.rounds,
                    drafts: stats.drafts,
                    draft_tokens: stats.draft_tokens,
                    accepted_tokens: stats.accepted_tokens,
                    accepted_per_position: stats.accepted_per_position.clone(),
                    rounds_by_draft_length: stats.rounds_by_draft_length.clone(),
                },
            );
        }
        for (name, used) in &stats.drafters {
            self.record_rounds(name, language, used);
        }
        if let Some(ttft) = time_to_first_token {
            self.time_to_first_token
                .with_label_values(&labels)
                .observe(ttft);
            if stats.completion_tokens > 1 {
                self.inter_token_latency
                    .with_label_values(&labels)
                    .observe((duration - ttft) / (stats.completion_tokens - 1) as f64);
            }
        }
        self.request_duration
            .with_label_values(&labels)
            .observe(duration);
    }

    /// Count the rounds one drafter was used for.
    fn record_rounds(&self, drafter: &str, language: &str, stats: &DrafterStats) {
        let labels = [drafter, language];
        if stats.drafts > 0 {
            self.num_drafts
                .with_label_values(&labels)
                .inc_by(stats.drafts);
            self.num_draft_tokens
                .with_label_values(&labels)
                .inc_by(stats.draft_tokens);
            self.num_accepted_tokens
                .with_label_values(&labels)
                .inc_by(stats.accepted_tokens);
            for (position, &count) in stats.accepted_per_position.iter().enumerate() {
                self.num_accepted_tokens_per_pos
                    .with_label_values(&[drafter, language, &position.to_string()])
                    .inc_by(count);
            }
        }
        for (length, &rounds) in stats.rounds_by_draft_length.iter().enumerate() {
            if rounds > 0 {
                self.rounds_by_draft_length
                    .with_label_values(&[drafter, language, &length.to_string()])
                    .inc_by(rounds);
            }
        }
    }

    /// Count a finished HTTP request by status code (or [`CANCELLED`]).
    ///
    /// [`CANCELLED`]: super::service::CANCELLED
    pub fn record_status(&self, status: impl std::fmt::Display) {
        self.requests
            .with_label_values(&[&status.to_string()])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn rounds_count_under_the_drafter_that_ran_them() {
        let metrics = Metrics::new();
        let used = |rounds,
                    drafts,
                    draft_tokens,
                    accepted_tokens,
                    per_position: &[u64],
                    by_length: &[u64]| {
            DrafterStats {
                rounds,
                drafts,
                draft_tokens,
                accepted_tokens,
                accepted_per_position: per_position.to_vec(),
                rounds_by_draft_length: by_length.to_vec(),
            }
        };
        let stats = GenerationStats {
            completion_tokens: 12,
            rounds: 10,
            drafts: 3,
            draft_tokens: 11,
            accepted_tokens: 4,
            drafter: Some("model".into()),
            drafters: [
                ("model".to_string(), used(7, 2, 3, 3, &[2, 1], &[5, 0, 2])),
                (
                    "lookup".to_string(),
                    used(3, 1, 8, 1, &[1], &[2, 0, 0, 0, 0, 0, 0, 0, 1]),
                ),
            ]
            .into(),
            ..GenerationStats::default()
        };
        metrics.record_generation(Some("model"), "de", &stats, Some(0.1), 1.0);
        metrics.observe_bandits(&[BanditReport {
            language: "de".into(),
            drafter: "model".into(),
            share: 0.75,
            tokens_per_second: 20.0,
            rounds: 7,
        }]);
        let text = metrics.render();
        let series =
            |name: &str, labels: &str| value(&text, &format!("specdec_{name}{{{labels}}}"));
        let counter = |name: &str, drafter: &str| {
            series(name, &format!("drafter=\"{drafter}\",language=\"de\""))
        };
        assert_eq!(counter(SPEC_DECODE_NUM_DRAFTS, "model"), Some(2.0));
        assert_eq!(counter(SPEC_DECODE_NUM_DRAFTS, "lookup"), Some(1.0));
        assert_eq!(counter(SPEC_DECODE_NUM_DRAFT_TOKENS, "lookup"), Some(8.0));
        assert_eq!(counter(SPEC_DECODE_NUM_ACCEPTED_TOKENS, "model"), Some(3.0));
        assert_eq!(
            series(
                SPEC_DECODE_NUM_ACCEPTED_TOKENS_PER_POS,
                "drafter=\"model\",language=\"de\",position=\"1\""
            ),
            Some(1.0)
        );
        assert_eq!(
            series(
                "draft_length_rounds_total",
                "drafter=\"lookup\",language=\"de\",length=\"8\""
            ),
            Some(1.0)
        );
        assert_eq!(
            series(
                "draft_length_rounds_total",
                "drafter=\"model\",language=\"de\",length=\"0\""
            ),
            Some(5.0)
        );
        // The latency histograms go to the drafter the request is reported under.
        assert!(text.contains(
            "specdec_request_duration_seconds_count{drafter=\"model\",language=\"de\"} 1"
        ));
        assert!(!text.contains("request_duration_seconds_count{drafter=\"lookup\""));
        assert_eq!(
            series(BANDIT_CHOICE_SHARE, "drafter=\"model\",language=\"de\""),
            Some(0.75)
        );
        assert_eq!(
            series(
                BANDIT_TOKENS_PER_SECOND,
                "drafter=\"model\",language=\"de\""
            ),
            Some(20.0)
        );
    }

    #[test]
    fn plain_decoding_counts_under_none() {
        let metrics = Metrics::new();
        let stats = GenerationStats {
            rounds: 4,
            rounds_by_draft_length: vec![4],
            ..GenerationStats::default()
        };
        metrics.record_generation(None, "en", &stats, None, 1.0);
        let text = metrics.render();
        assert_eq!(
            value(
                &text,
                "specdec_draft_length_rounds_total{drafter=\"none\",language=\"en\",length=\"0\"}"
            ),
            Some(4.0)
        );
        assert!(!text.contains("spec_decode_num_drafts_total{"));
    }
}
