//! The volume benchmark's program (`benches/cluster/src/volume.rs`, issue #16 part 4) at a small scale, for
//! correctness only: a legacy group holding 6,000 records of 1 KiB, with two of its voters in Ashburn, is
//! migrated into the EEA by `placement apply` on real node processes while a client keeps writing. Every
//! record reads back as written (checksum over the keyspace equal before and after), no acknowledged write
//! is lost, the US replicas are purged (attested, and gone from disk), no status sample ever shows the
//! group led from outside or a new member outside, and each new replica was brought up by a snapshot (its
//! status counts one installed; the leader's, one sent), not entry by entry. Timings are printed, never
//! asserted.
//!
//! The nodes take a snapshot every 2,000 applied entries and keep 4,000 behind it (production's defaults are
//! 100,000 and 200,000), so with 6,000 records the new replicas receive a snapshot — streamed in chunks,
//! several in flight, into a spool file — and then the log, as they would at volume; the benchmark runs
//! the same program at a million (`benches/volume.sh`).

// Real processes on the wall clock.
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)]
#[path = "../benches/cluster/src/volume.rs"]
mod volume;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_group_of_6000_records_migrates_into_the_eea_with_every_write_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = volume::Config {
        domicile: env!("CARGO_BIN_EXE_domicile").into(),
        dir: dir.path().to_path_buf(),
        records: 6_000,
        value_bytes: 1024,
        in_flight: 64,
        live_writers: 4,
        live_rate: None,
        baseline_s: 1.0,
        time_limit: Duration::from_secs(600),
        verbose: std::env::var_os("VOLUME_VERBOSE").is_some(),
        snapshot_policy: Some((2_000, 4_000)),
        snapshot_build_mb_per_s: None,
        copies: None,
    };
    let report = volume::run(config).await.unwrap();
    eprintln!("{}", report.render());
    assert_eq!(
        report.checksum_before,
        report.checksum_after,
        "{}",
        report.render()
    );
    assert!(report.checksum_equal);
    assert_eq!(report.records_wrong_after, 0);
    assert!(
        report.baseline.writes > 0 && report.during.writes > 0,
        "{}",
        report.render()
    );
    assert_eq!(report.live_lost, 0, "{}", report.render());
    assert_eq!(report.apply_exit_code, Some(0), "{}", report.render());
    assert_eq!(report.purges_attested, [4, 5], "{}", report.render());
    assert!(report.outside_dirs_left.is_empty(), "{}", report.render());
    assert!(report.status_samples > 0);
    assert!(report.residency_violations.is_empty(), "{}", report.render());
    assert_eq!(report.final_voters, [1, 2, 3], "{}", report.render());
    for new_replica in [2, 3] {
        let snapshots = report.snapshots.iter().find(|s| s.node == new_replica);
        assert!(
            snapshots.is_some_and(|s| s.installed >= 1),
            "n{new_replica} was not brought up by a snapshot: {}",
            report.render()
        );
    }
    let sent: u64 = report.snapshots.iter().map(|s| s.sent).sum();
    assert!(
        sent >= 2,
        "the leaders sent {sent} snapshots: {}",
        report.render()
    );
    assert!(
        report.final_leader.is_some_and(|leader| leader <= 3),
        "{}",
        report.render()
    );
    assert!(report.failures().is_empty(), "{:?}", report.failures());
}
