//! `domicile audit`: an auditor's and a monitor's view of a node's audit trail, offline.
//!
//! `verify DIR|FILE --ca ca.pem` checks a trail with the cluster CA's certificate alone and names the
//! first entry that is missing, altered, reordered, unsigned or truncated, by position; exit 0 intact, 1
//! broken, 2 bad input (no such trail, an unreadable CA). `export DIR|FILE [--since T] [--from N]
//! [-o json]` prints the entries, one a line, for a monitor to ship off the node; each JSON line carries
//! the entry's hash and the previous one's, so the monitor can keep the chain's head and later hand it to
//! `verify --expect-entries`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use audit::entry::hex;
use audit::{ClusterCa, ReadEntry, Report, VerifyOptions};
use clap::{Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check a node's audit trail (its directory, or one segment file) with the cluster CA's certificate:
    /// exit 0 intact, 1 broken (the first bad entry named by position), 2 bad input.
    Verify {
        path: PathBuf,
        /// The cluster CA's certificate (PEM): the only thing the auditor needs to trust.
        #[arg(long)]
        ca: PathBuf,
        /// The trail must hold at least this many entries: a monitor's count, which shows a trail cut
        /// at an entry boundary.
        #[arg(long)]
        expect_entries: Option<u64>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Format,
    },
    /// Print the trail's entries, one a line: all, those recorded since a time, or from a sequence on.
    Export {
        path: PathBuf,
        /// Only entries recorded at or after this time (RFC 3339, e.g. 2026-12-04T09:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only entries from this sequence on (where a monitor left off).
        #[arg(long)]
        from: Option<u64>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Format,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            path,
            ca,
            expect_entries,
            output,
        } => {
            let report = verify(&path, &ca, VerifyOptions { expect_entries })?;
            match output {
                Format::Text => println!("{}: {report}", path.display()),
                Format::Json => println!("{}", report_json(&report)),
            }
            Ok(if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Export {
            path,
            since,
            from,
            output,
        } => export(&path, since.as_deref(), from, output),
    }
}

/// Verifies the trail in `path` against the CA certificate in `ca`.
pub fn verify(path: &Path, ca: &Path, options: VerifyOptions) -> anyhow::Result<Report> {
    let pem = std::fs::read_to_string(ca)
        .with_context(|| format!("can't read the cluster CA certificate {}", ca.display()))?;
    let ca = ClusterCa::from_pem(&pem)
        .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    audit::verify(path, &ca, options).map_err(|error| anyhow!("{error}"))
}

fn report_json(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "intact": report.is_intact(),
        "identity": report.identity,
        "segments": report.segments,
        "entries": report.entries,
        "first_sequence": report.first_sequence,
        "last_sequence": report.last.map(|(sequence, _)| sequence),
        "last_hash": report.last.map(|(_, hash)| hex(&hash)),
        "break": report.broken.as_ref().map(|broken| serde_json::json!({
            "position": broken.position,
            "kind": broken.kind.to_string(),
            "file": broken.file.display().to_string(),
            "offset": broken.offset,
            "detail": broken.detail,
        })),
    })
}

fn export(path: &Path, since: Option<&str>, from: Option<u64>, output: Format) -> anyhow::Result<ExitCode> {
    let since_unix_ms = match since {
        None => 0,
        Some(text) => {
            let at = OffsetDateTime::parse(text, &Rfc3339).with_context(|| {
                format!("--since `{text}` is not an RFC 3339 time (2026-12-04T09:00:00Z)")
            })?;
            u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
        }
    };
    if !path.exists() {
        return Err(anyhow!("{}: no such file or directory", path.display()));
    }
    let mut write_failed = None;
    let read = audit::read_entries(path, |read| {
        let shown = read.entry.time_unix_ms >= since_unix_ms && read.entry.sequence >= from.unwrap_or(0);
        if shown && write_failed.is_none() {
            let line = match output {
                Format::Text => text_line(&read),
                Format::Json => json_line(&read).to_string(),
            };
            if let Err(error) = print_line(&line) {
                write_failed = Some(error);
            }
        }
    });
    if let Some(error) = write_failed {
        // A monitor that closed the pipe has what it wanted.
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(error.into());
    }
    match read {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("the trail is damaged here (run `domicile audit verify`): {error}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
}

fn rfc3339(unix_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}

fn text_line(read: &ReadEntry) -> String {
    let entry = &read.entry;
    format!(
        "#{} {} {:<32} {}",
        entry.sequence,
        rfc3339(entry.time_unix_ms),
        entry.event.kind(),
        entry.event.describe()
    )
}

fn json_line(read: &ReadEntry) -> serde_json::Value {
    let entry = &read.entry;
    serde_json::json!({
        "sequence": entry.sequence,
        "time": rfc3339(entry.time_unix_ms),
        "time_unix_ms": entry.time_unix_ms,
        "node": read.identity,
        "kind": entry.event.kind(),
        "summary": entry.event.describe(),
        "event": entry.event,
        "previous": hex(&entry.previous),
        "hash": hex(&read.hash),
    })
}

/// One line per node for the demo's residency report: whether its trail verifies, how many entries and
/// refusals it holds.
pub fn summary(path: &Path, ca: &Path) -> (bool, String) {
    let report = match verify(path, ca, VerifyOptions::default()) {
        Ok(report) => report,
        Err(error) => return (false, format!("can't verify: {error:#}")),
    };
    if let Some(broken) = &report.broken {
        return (false, format!("BROKEN at {broken}"));
    }
    let mut refusals = 0;
    let _ = audit::read_entries(path, |read| {
        if read.entry.event.kind().contains("refused") {
            refusals += 1;
        }
    });
    (
        true,
        format!(
            "intact: {} entries, {refusals} of them refusals, {} segment(s), signed by {}",
            report.entries,
            report.segments,
            report.identity.as_deref().unwrap_or("?")
        ),
    )
}
