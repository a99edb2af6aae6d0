//! What `sim run` prints by default: Domicile's own summary of the run, and no library log; `RUST_LOG`
//! opts into the logs (openraft's and the nodes'), stamped with simulated time.

use std::process::Command;

fn run(rust_log: Option<&str>) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sim"));
    command.args(["run", "--scenario", "failover", "--seed", "7"]);
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let output = command.output().expect("the simulator runs");
    assert!(output.status.success(), "failover seed 7 passes");
    (
        String::from_utf8(output.stdout).expect("UTF-8"),
        String::from_utf8(output.stderr).expect("UTF-8"),
    )
}

#[test]
fn a_healthy_run_prints_its_summary_and_no_log() {
    let (stdout, stderr) = run(None);
    assert_eq!(stderr, "", "no log line without RUST_LOG");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("seed 7 failover: passed"), "{first}");
    for section in [
        "sites: ",
        "faults: ",
        "crash n1, leader of",
        "leaders (",
        "clients: ",
        "checkers:",
    ] {
        assert!(stdout.contains(section), "the summary has `{section}`:\n{stdout}");
    }
    for checker in [
        "linearizability",
        "lost_acked_writes",
        "residency",
        "conservation",
        "raft_safety",
        "liveness",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with(checker) && line.ends_with(" ok")),
            "{checker}'s verdict:\n{stdout}"
        );
    }
    assert!(stdout.lines().count() < 40, "a summary, not a log:\n{stdout}");
}

#[test]
fn rust_log_opts_into_the_library_logs_in_simulated_time() {
    let (_, stderr) = run(Some("warn"));
    assert!(stderr.contains("WARN"), "RUST_LOG=warn shows warnings");
    let (_, stderr) = run(Some("raft::network=info"));
    let peer_lines: Vec<&str> = stderr.lines().filter(|line| line.contains("peer")).collect();
    assert!(
        !peer_lines.is_empty(),
        "the nodes log their peers' reachability:\n{stderr}"
    );
    assert!(
        peer_lines.len() < 40,
        "a peer is logged when it changes state, not per request: {} lines",
        peer_lines.len()
    );
    assert!(
        peer_lines.iter().all(|line| line
            .trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())),
        "each line starts with simulated time:\n{stderr}"
    );
}
