//! The progress line of long work (`replay`, `setup`'s snapshot): on stderr, at most once a
//! second and only while stderr is a terminal (logs and pipes get no carriage-return noise),
//! then one summary line either way.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One line of progress, rewritten in place.
#[derive(Debug)]
pub struct ProgressLine {
    what: String,
    unit: &'static str,
    total: u64,
    started: Instant,
    last: Instant,
    live: bool,
}

impl ProgressLine {
    /// Progress of `what`, counting `unit`s up to about `total` (0: unknown).
    pub fn new(what: impl Into<String>, unit: &'static str, total: u64) -> ProgressLine {
        let now = Instant::now();
        ProgressLine {
            what: what.into(),
            unit,
            total,
            started: now,
            last: now,
            live: std::io::stderr().is_terminal(),
        }
    }

    /// `done` units so far; redraws the line if a second has passed.
    pub fn tick(&mut self, done: u64) {
        if !self.live || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let left = if rate > 0.0 && self.total > done {
            format!("{:.0} s left", (self.total - done) as f64 / rate)
        } else {
            "-".into()
        };
        eprint!(
            "\r{}: {done} / {} {}, {rate:.0}/s, {left}   ",
            self.what, self.total, self.unit
        );
    }

    /// The summary line: `done` units in how long.
    pub fn finish(&self, done: u64) {
        if self.live {
            eprintln!();
        }
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "{}: {done} {} in {secs:.1} s ({:.0}/s)",
            self.what,
            self.unit,
            done as f64 / secs.max(1e-3)
        );
    }
}
