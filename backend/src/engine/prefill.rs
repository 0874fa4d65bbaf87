//! How many prompt rows ride in a step's shared pass beside slots that
//! decode (a unified cache, where llama.cpp computes any pass at once).
//!
//! A row of prompt in a pass that is read anyway costs little next to the
//! pass itself, until the pass grows compute-bound; a slot whose prompt is
//! still being read produces nothing. So the pacer reads as many prompt
//! rows per step as cost about what the step's decoding costs: a long
//! prompt then at most about doubles the other slots' time between tokens,
//! and a short one is read in a step or two. What a row and a step cost is
//! learnt from the steps themselves, never assumed.

/// Weight of an estimate against a new measurement.
const SMOOTHING: f64 = 0.7;

/// The share of a step's decoding time its prompt rows may add.
const PROMPT_SHARE: f64 = 1.0;

/// What the pacer has learnt of this machine's steps.
#[derive(Debug, Clone, Default)]
pub(super) struct PromptPacer {
    /// Milliseconds of a step that reads no prompt.
    plain_step_ms: Option<f64>,
    /// Milliseconds of a shared first pass without prompt rows.
    plain_pass_ms: Option<f64>,
    /// Milliseconds one more prompt row adds to a shared pass.
    row_ms: Option<f64>,
}

impl PromptPacer {
    /// A pacer whose cost of a prompt row starts at `row_ms` (from the
    /// start-up calibration, where there is one), until steps say better.
    pub(super) fn seeded(row_ms: Option<f64>) -> Self {
        Self {
            row_ms: row_ms.filter(|ms| ms.is_finite() && *ms > 0.0),
            ..Self::default()
        }
    }

    /// Prompt rows for the next step's shared pass: what the step's
    /// decoding time affords, in whole multiples of `granularity`, at
    /// least one, at most `most` (rounded down to a multiple). Until both
    /// costs are known, one multiple.
    pub(super) fn riding_rows(&self, granularity: usize, most: usize) -> usize {
        let g = granularity.max(1);
        let most = (most / g * g).max(g);
        let affordable = match (self.plain_step_ms, self.row_ms) {
            (Some(step), Some(row)) if row > 0.0 => (step * PROMPT_SHARE / row) as usize,
            _ => g,
        };
        (affordable / g * g).clamp(g, most)
    }

    /// A step's first shared pass took `pass_ms` with `riding` prompt
    /// rows in it (0: none), and the whole step `step_ms`.
    pub(super) fn observe(&mut self, riding: usize, pass_ms: f64, step_ms: f64) {
        if !(pass_ms.is_finite() && step_ms.is_finite() && pass_ms >= 0.0 && step_ms >= 0.0) {
            return;
        }
        if riding == 0 {
            self.plain_pass_ms = Some(smooth(self.plain_pass_ms, pass_ms));
            self.plain_step_ms = Some(smooth(self.plain_step_ms, step_ms));
            return;
        }
        if let Some(plain) = self.plain_pass_ms {
            // A pass is never cheaper for its extra rows: noise below the
            // plain pass teaches a small positive cost, not a negative one.
            let row = ((pass_ms - plain) / riding as f64).max(plain * 0.01 / riding as f64);
            self.row_ms = Some(smooth(self.row_ms, row));
        }
        if let Some(row) = self.row_ms {
            let plain_step = (step_ms - row * riding as f64).max(0.0);
            self.plain_step_ms = Some(smooth(self.plain_step_ms, plain_step));
        }
    }
}

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(old) => SMOOTHING * old + (1.0 - SMOOTHING) * new,
        None => new,
    }
}

/// The cost of one more row in a large pass, from start-up's pass timings
/// (`(tokens, ms)` by size): the slope between its two largest sizes.
pub(super) fn row_ms_from_calibration(passes: &[(usize, f64)]) -> Option<f64> {
    let mut sorted: Vec<(usize, f64)> = passes.to_vec();
    sorted.sort_by_key(|(n, _)| *n);
    let [.., (n0, ms0), (n1, ms1)] = sorted.as_slice() else {
        return None;
    };
    (n1 > n0).then(|| (ms1 - ms0) / (n1 - n0) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_costs_are_known_one_piece_rides() {
        let pacer = PromptPacer::default();
        assert_eq!(pacer.riding_rows(4, 128), 4);
        assert_eq!(PromptPacer::seeded(Some(10.0)).riding_rows(4, 128), 4);
    }

    #[test]
    fn rows_cost_about_what_the_step_decodes() {
        // A 2-core CPU: a step of 150 ms, a pass of 100 ms, 10 ms a row.
        let mut pacer = PromptPacer::seeded(Some(10.0));
        pacer.observe(0, 100.0, 150.0);
        assert_eq!(pacer.riding_rows(4, 128), 12);
        // Whole multiples of the granularity, within the most allowed.
        assert_eq!(pacer.riding_rows(8, 128), 8);
        assert_eq!(pacer.riding_rows(4, 10), 8);
        // A GPU: rows nearly free, the most allowed rides.
        let mut gpu = PromptPacer::seeded(Some(0.01));
        gpu.observe(0, 8.0, 12.0);
        assert_eq!(gpu.riding_rows(128, 128), 128);
    }

    #[test]
    fn the_cost_of_a_row_is_learnt_from_passes_that_carry_prompt() {
        let mut pacer = PromptPacer::seeded(Some(1.0));
        pacer.observe(0, 100.0, 150.0);
        // Rows turn out to cost 10 ms each: 12 rows make the pass 220 ms.
        for _ in 0..30 {
            pacer.observe(12, 220.0, 270.0);
        }
        let row = pacer.row_ms.unwrap();
        assert!((row - 10.0).abs() < 0.1, "{row}");
        // The step without its prompt rows still costs 150 ms.
        let step = pacer.plain_step_ms.unwrap();
        assert!((step - 150.0).abs() < 1.0, "{step}");
        assert_eq!(pacer.riding_rows(4, 128), 12);
    }

    #[test]
    fn noise_never_makes_rows_free() {
        let mut pacer = PromptPacer::default();
        pacer.observe(0, 100.0, 150.0);
        pacer.observe(8, 90.0, 140.0);
        assert!(pacer.row_ms.unwrap() > 0.0);
        assert!(pacer.riding_rows(4, 128) <= 128);
        // Nonsense measurements teach nothing.
        pacer.observe(0, f64::NAN, 1.0);
        pacer.observe(0, -1.0, 1.0);
        assert!(pacer.plain_pass_ms.unwrap().is_finite());
    }

    #[test]
    fn calibration_gives_the_slope_of_the_largest_passes() {
        let passes = [(1, 90.0), (2, 95.0), (16, 250.0), (65, 740.0)];
        assert_eq!(row_ms_from_calibration(&passes), Some(10.0));
        assert_eq!(row_ms_from_calibration(&[(1, 90.0)]), None);
    }
}
