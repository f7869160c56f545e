//! Progress of long work (`sync --once` fetching content): a bar when stdout is a terminal,
//! plain lines on stderr otherwise (at most one a second, only when something changed), so
//! scripts and logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Shows how much is still needed.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The most bytes seen needed at once: the bar's length.
    total: u64,
    last: Option<(usize, u64)>,
    printed: Option<Instant>,
}

impl Progress {
    /// A bar on a terminal, lines elsewhere.
    pub fn new() -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total: 0,
            last: None,
            printed: None,
        }
    }

    /// `files` paths and `bytes` of content are still needed.
    pub fn update(&mut self, files: usize, bytes: u64) {
        self.total = self.total.max(bytes);
        if let Some(bar) = &self.bar {
            bar.set_length(self.total);
            bar.set_position(self.total - bytes);
            bar.set_message(format!("{files} files to fetch"));
            return;
        }
        if self.last == Some((files, bytes)) || files == 0 {
            return;
        }
        if self
            .printed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some((files, bytes));
        self.printed = Some(Instant::now());
        tracing::info!("{files} files and {bytes} bytes still needed");
    }

    /// The work is over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
