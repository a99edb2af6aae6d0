//! The run's trace: one line per event the world decides or observes, stamped with virtual time. Its
//! hash (FNV-1a over the text) is the determinism witness: the same seed must give the same hash in
//! any process, on any machine.

use std::fmt::Write as _;

use openraft_rt_sim::SimInstant;

use crate::prng::{FNV_OFFSET_BASIS, fnv1a};

pub struct Trace {
    start: SimInstant,
    hash: u64,
    lines: u64,
    /// Kept only when asked for (`--trace`): a long run's text is large.
    kept: Option<Vec<String>>,
    /// The line being hashed, reused from line to line.
    line: String,
}

impl Trace {
    pub fn new(start: SimInstant, keep: bool) -> Trace {
        Trace {
            start,
            hash: FNV_OFFSET_BASIS,
            lines: 0,
            kept: keep.then(Vec::new),
            line: String::new(),
        }
    }

    pub fn log(&mut self, now: SimInstant, event: &str) {
        let micros = (now - self.start).as_micros();
        self.line.clear();
        write!(
            self.line,
            "{:>6}.{:06} {event}",
            micros / 1_000_000,
            micros % 1_000_000
        )
        .expect("writing to a String can't fail");
        self.hash = fnv1a(self.hash, self.line.as_bytes());
        self.hash = fnv1a(self.hash, b"\n");
        self.lines += 1;
        if let Some(kept) = &mut self.kept {
            kept.push(self.line.clone());
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn text(&self) -> Option<String> {
        self.kept
            .as_ref()
            .map(|lines| lines.iter().map(|line| format!("{line}\n")).collect())
    }
}
