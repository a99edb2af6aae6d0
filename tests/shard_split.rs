//! `domicile shard split` at a small scale, for correctness (the benchmark `benches/split.sh` runs the
//! same program, `benches/cluster/src/split.rs`, at a million records): three real node processes, a
//! group of 3,000 records of 1 KiB split into a reserve group by the CLI, as a process, while clients
//! write. The CLI is SIGKILLed once the gainer holds part of the range (mid-copy), the change is
//! aborted (`shard abort`: the gainer's copy purged), run again and SIGKILLed as the tail begins (after
//! the fence), and run again; it finishes. Afterwards every record reads back
//! with its value and revision (the keyspace's checksum is equal), every acknowledged write is readable,
//! the moved range is gone from the old group (its leader's digest), the groups' voters are unchanged and
//! inside, epoch 2 is published; bad input exits 2 and changes nothing. Then `domicile shard move` gives
//! the range back (epoch 3), and run again finds it published and exits 0. Timings are printed, never
//! asserted.

// Real processes on the wall clock.
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)]
#[path = "../benches/cluster/src/split.rs"]
mod split;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_3000_records_splits_while_written_through_two_killed_runs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let config = split::Config {
        domicile: env!("CARGO_BIN_EXE_domicile").into(),
        dir: dir.path().to_path_buf(),
        records: 3_000,
        value_bytes: 1024,
        in_flight: 32,
        live_writers: 2,
        baseline_s: 1.0,
        interrupt: true,
        move_back: true,
        time_limit: Duration::from_secs(300),
        verbose: std::env::var_os("SPLIT_VERBOSE").is_some(),
    };
    let report = split::run(config).await.unwrap();
    eprintln!("{}", report.render());
    assert_eq!(
        report.checksum_before,
        report.checksum_after,
        "{}",
        report.render()
    );
    assert_eq!(report.records_wrong_after, 0);
    assert_eq!(report.bad_input_exit_codes, [Some(2); 4], "{}", report.render());
    assert!(report.unchanged_after_bad_input, "{}", report.render());
    assert_eq!(
        report.split_exit_codes,
        [None, None, Some(0)],
        "{}",
        report.render()
    );
    // Killed mid-copy, the change stands at the copy; aborted, it starts over (the gainer holds none
    // of the range); killed after the fence, it resumes at the tail.
    assert_eq!(
        report.phases_after_kills,
        ["copy", "prepare", "tail"],
        "{}",
        report.render()
    );
    assert_eq!(report.abort_exit_code, Some(0), "{}", report.render());
    assert_eq!(report.gainer_held_after_abort, Some(0), "{}", report.render());
    assert_eq!(report.abort_after_fence_exit_code, Some(1), "{}", report.render());
    let (held, total) = report.killed_mid_copy_at.unwrap();
    assert!(held > 0 && total > 1000, "{}", report.render());
    assert!(report.during.writes > 0, "{}", report.render());
    assert_eq!(report.live_lost, 0, "{}", report.render());
    assert_eq!(report.loser_left_in_moved_range, 0, "{}", report.render());
    assert!(report.gainer_records >= total, "{}", report.render());
    assert_eq!(report.published_epoch_after, 2);
    assert!(report.members_outside.is_empty(), "{}", report.render());
    assert_eq!(report.voters_before, report.voters_after, "{}", report.render());
    // `shard move` gives the range back; run again, it finds the change published and does nothing.
    assert_eq!(
        report.move_back_exit_codes,
        [Some(0), Some(0)],
        "{}",
        report.render()
    );
    assert_eq!(
        report.checksum_after_move_back.as_ref(),
        Some(&report.checksum_before)
    );
    assert_eq!(report.gainer_left_after_move_back, Some(0), "{}", report.render());
    assert_eq!(report.published_epoch_after_move_back, Some(3));
    assert!(report.failures().is_empty(), "{:?}", report.failures());
}
