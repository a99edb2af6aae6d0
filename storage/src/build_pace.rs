//! A node's snapshot builds held to a rate of bytes a second, shared by every group's builds.
//!
//! **Why.** A build reads a group's whole store and writes it into a spool: at volume a gigabyte each
//! way, as fast as the disk goes. Every write of every group on the node meanwhile waits for an fsync
//! of its log on the same disk: beside a bulk writer flat out (293 MB/s), a 4-KiB `O_DSYNC` writer's
//! p99 was 5.3× its p99 alone, beside one at 100 MB/s 2.1× (docs/storage.md, "Snapshots"). Builds come
//! together, too: the replicas of a group that installed one snapshot share its point and reach their
//! next one at the same entry, and a migration's deferred builds all resume when its membership
//! settles. Usually nothing waits for a build but the log's truncation, so a build can be slowed to
//! leave the disk to the writes; TiKV limits its snapshot I/O the same way
//! (`snap-io-max-bytes-per-sec`).
//!
//! **How.** A virtual clock: each chunk a build writes reserves the next `bytes / rate` of it, and the
//! build's thread sleeps until its reservation is less than [`BUILD_BURST`] ahead of now. Builds of
//! several groups share one pace, so together they keep to the rate. Installs are not paced: an
//! install is a copy someone waits for (a new replica, a migration).
//!
//! Only a build on a thread of its own is paced, with the real clock: the simulator builds inline,
//! in memory, on its own clock, and is never paced.

use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// How far ahead of the rate a build may write before it waits: a chunk or two, so that a build
/// alone on an idle node starts at once and the waits are few and short.
pub const BUILD_BURST: Duration = Duration::from_millis(50);

/// The pace every snapshot build of a node keeps to.
#[derive(Debug)]
pub struct BuildPace {
    bytes_per_second: u64,
    /// The end of the last reservation: when the bytes written so far are due, at the rate.
    due: Mutex<Option<Instant>>,
}

impl BuildPace {
    /// A pace of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> BuildPace {
        assert!(
            bytes_per_second > 0,
            "a build pace of 0 bytes a second would never finish"
        );
        BuildPace {
            bytes_per_second,
            due: Mutex::new(None),
        }
    }

    /// After a build wrote `bytes`: waits until the node's builds are no more than [`BUILD_BURST`]
    /// ahead of the rate. Called on the build's own thread.
    pub fn wrote(&self, bytes: u64) {
        let wait = self.reserve(bytes, now());
        if !wait.is_zero() {
            sleep(wait);
        }
    }

    /// Reserves the time `bytes` take at the rate, from `now` or the end of the last reservation,
    /// whichever is later; returns how long to wait.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second);
        let took = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let mut due = self
            .due
            .lock()
            .expect("build pace lock poisoned by an earlier panic");
        let from = due.map_or(now, |due| due.max(now));
        let until = from + took;
        *due = Some(until);
        until.saturating_duration_since(now + BUILD_BURST)
    }
}

// A build's own thread waits in real time: the simulator builds inline and never paces (above).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn sleep(wait: Duration) {
    std::thread::sleep(wait);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn a_build_within_the_burst_does_not_wait() {
        let pace = BuildPace::new(100 * MB);
        let start = now();
        // 4 MB at 100 MB/s is due in 40 ms, inside the 50-ms burst.
        assert_eq!(pace.reserve(4 * MB, start), Duration::ZERO);
    }

    #[test]
    fn writes_past_the_burst_wait_for_the_rate() {
        let pace = BuildPace::new(100 * MB);
        let start = now();
        for _ in 0..10 {
            pace.reserve(MB, start);
        }
        // 10 MB at 100 MB/s is due at 100 ms; the burst lets it be 50 ms early.
        assert_eq!(pace.reserve(MB, start), Duration::from_millis(60));
    }

    #[test]
    fn builds_sharing_a_pace_keep_to_it_together() {
        let pace = BuildPace::new(100 * MB);
        let start = now();
        // Two builds alternating chunks of 1 MB: 20 MB in all, due at 200 ms.
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = pace.reserve(MB, start);
        }
        assert_eq!(last, Duration::from_millis(150));
    }

    #[test]
    fn an_idle_pace_saves_no_credit() {
        let pace = BuildPace::new(100 * MB);
        let start = now();
        pace.reserve(MB, start);
        // A second later, 10 MB at once: the idle second is not credit, only the burst is.
        assert_eq!(
            pace.reserve(10 * MB, start + Duration::from_secs(1)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn wrote_sleeps_as_long_as_the_rate_needs() {
        let pace = BuildPace::new(100 * MB);
        let start = now();
        pace.wrote(5 * MB); // 50 ms: the burst
        pace.wrote(2 * MB); // due at 70 ms: waits about 20 ms
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
    }
}
