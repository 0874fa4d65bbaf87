//! Progress bars with an ETA for long work, and the same progress as log
//! lines when the output is not a terminal (CI logs, files).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known amount of work.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    position: u64,
    started: Instant,
    last_log: Instant,
}

/// How often progress is logged when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl Progress {
    /// Progress of `what` over `total` units, `done` already done (resumed work).
    pub fn new(what: &str, total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {msg} (elapsed {elapsed}, ETA {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what.to_string());
            bar.set_position(done);
            bar
        });
        Self {
            bar,
            what: what.to_string(),
            total,
            position: done,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Set the position and a status message (loss, tokens/s, ...).
    pub fn update(&mut self, position: u64, message: &str) {
        self.position = position;
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(message.to_string());
            }
            None => {
                if self.last_log.elapsed() >= LOG_EVERY || position == self.total {
                    self.last_log = Instant::now();
                    tracing::info!(
                        "{} {}/{} {} (elapsed {:.0} s, ETA {})",
                        self.what,
                        position,
                        self.total,
                        message,
                        self.started.elapsed().as_secs_f64(),
                        self.eta()
                            .map_or("-".to_string(), |eta| format!("{:.0} s", eta.as_secs_f64()))
                    );
                }
            }
        }
    }

    fn eta(&self) -> Option<Duration> {
        let done = self.position.min(self.total);
        (done > 0).then(|| {
            let per = self.started.elapsed().as_secs_f64() / done as f64;
            Duration::from_secs_f64(per * (self.total - done) as f64)
        })
    }

    /// End the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish();
        }
    }
}
