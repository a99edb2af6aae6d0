//! The node config's `[incidents]` section: where incidents go and how hard to try.
//!
//! ```toml
//! [incidents]
//! webhook = "http://127.0.0.1:9093/domicile/incidents"
//! timeout_ms = 5000            # one POST, connection included
//! backoff_initial_ms = 200     # the first retry's delay; doubled after each failure ...
//! backoff_max_ms = 30000       # ... up to this
//! spool_incidents_max = 10000  # undelivered incidents kept; older ones are skipped with a gap notice
//! ca = "monitor-ca.pem"        # https only: trust these CAs alone (PEM), not the system's roots
//! ```
//!
//! An incident names sites, groups, jurisdictions and callers, so it never crosses a network in clear:
//! the webhook is `https://` (the server's certificate checked against the system's roots, or against
//! `ca` alone), or `http://` to a loopback address only (a receiver or TLS forwarder on the node).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Certificate, Url};
use serde::Deserialize;

/// The most undelivered incidents a node keeps in memory (each a few hundred bytes).
pub const SPOOL_INCIDENTS_BOUND: usize = 100_000;

/// As written in the node config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncidentSink {
    webhook: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_backoff_initial_ms")]
    backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    backoff_max_ms: u64,
    #[serde(default = "default_spool_incidents_max")]
    spool_incidents_max: usize,
    /// PEM certificates of the CAs an https webhook's certificate must chain to (instead of the
    /// system's roots).
    ca: Option<PathBuf>,
}

/// Bound on the `ca` file's size.
const CA_BYTES_MAX: u64 = 1 << 20;

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_backoff_initial_ms() -> u64 {
    200
}

fn default_backoff_max_ms() -> u64 {
    30_000
}

fn default_spool_incidents_max() -> usize {
    10_000
}

/// A validated `[incidents]` section.
#[derive(Debug, Clone)]
pub struct IncidentSinkConfig {
    pub webhook: Url,
    pub timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub spool_incidents_max: usize,
    /// For an https webhook: the only CAs trusted (`ca`), or `None` for the system's roots.
    pub trusted_cas: Option<Vec<Certificate>>,
}

impl IncidentSinkConfig {
    /// Checks the section (reading `ca`, relative to `base`, the config file's directory); the error says
    /// what is wrong, for the config's path to prefix.
    pub fn from_raw(raw: &RawIncidentSink, base: &Path) -> Result<IncidentSinkConfig, String> {
        let webhook = Url::parse(&raw.webhook)
            .map_err(|error| format!("webhook `{}` is not a URL: {error}", raw.webhook))?;
        check_webhook(&webhook)?;
        let trusted_cas = match &raw.ca {
            None => None,
            Some(_) if webhook.scheme() != "https" => {
                return Err(format!("ca is for an https webhook, and `{webhook}` is not one"));
            }
            Some(path) => Some(read_cas(&base.join(path))?),
        };
        if raw.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        if raw.backoff_initial_ms == 0 || raw.backoff_max_ms < raw.backoff_initial_ms {
            return Err("[incidents] needs 0 < backoff_initial_ms <= backoff_max_ms".into());
        }
        if raw.spool_incidents_max == 0 || raw.spool_incidents_max > SPOOL_INCIDENTS_BOUND {
            return Err(format!(
                "spool_incidents_max must be from 1 to {SPOOL_INCIDENTS_BOUND}, not {}",
                raw.spool_incidents_max
            ));
        }
        Ok(IncidentSinkConfig {
            webhook,
            timeout: Duration::from_millis(raw.timeout_ms),
            backoff_initial: Duration::from_millis(raw.backoff_initial_ms),
            backoff_max: Duration::from_millis(raw.backoff_max_ms),
            spool_incidents_max: raw.spool_incidents_max,
            trusted_cas,
        })
    }
}

/// The CA certificates in a PEM file: at least one, every one parsed.
fn read_cas(path: &Path) -> Result<Vec<Certificate>, String> {
    let unreadable = |error: std::io::Error| format!("ca {}: {error}", path.display());
    let length = std::fs::metadata(path).map_err(unreadable)?.len();
    if length > CA_BYTES_MAX {
        return Err(format!(
            "ca {}: {length} bytes, more than {CA_BYTES_MAX} for CA certificates",
            path.display()
        ));
    }
    let pem = std::fs::read(path).map_err(unreadable)?;
    let certificates = Certificate::from_pem_bundle(&pem)
        .map_err(|error| format!("ca {}: not PEM certificates: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("ca {}: no certificate in it", path.display()));
    }
    Ok(certificates)
}

/// `https://`, or `http://` to loopback only: see the module's documentation.
fn check_webhook(webhook: &Url) -> Result<(), String> {
    match webhook.scheme() {
        "http" => {}
        "https" => return Ok(()),
        other => {
            return Err(format!(
                "webhook `{webhook}`: `{other}` is neither https nor http"
            ));
        }
    }
    let host = webhook.host_str().unwrap_or_default();
    let loopback = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback {
        return Err(format!(
            "webhook `{webhook}`: plain http only to loopback (127.0.0.1, [::1], localhost): incidents \
             name sites, groups and callers and must not cross a network in clear; use https"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(base: &Path, text: &str) -> Result<IncidentSinkConfig, String> {
        let raw: RawIncidentSink = toml::from_str(text).map_err(|error| error.to_string())?;
        IncidentSinkConfig::from_raw(&raw, base)
    }

    fn parse(text: &str) -> Result<IncidentSinkConfig, String> {
        parse_in(Path::new("/nonexistent"), text)
    }

    #[test]
    fn a_loopback_webhook_with_defaults() {
        let config = parse("webhook = \"http://127.0.0.1:9093/incidents\"").unwrap();
        assert_eq!(config.webhook.as_str(), "http://127.0.0.1:9093/incidents");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.backoff_initial, Duration::from_millis(200));
        assert_eq!(config.backoff_max, Duration::from_secs(30));
        assert_eq!(config.spool_incidents_max, 10_000);
        assert!(config.trusted_cas.is_none());
        for good in [
            "http://[::1]:9/x",
            "http://localhost:9/x",
            "http://127.0.0.2/",
            "https://monitor.example.com/x",
            "https://10.0.0.7:9093/x",
        ] {
            assert!(parse(&format!("webhook = \"{good}\"")).is_ok(), "{good}");
        }
    }

    #[test]
    fn plain_http_beyond_loopback_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("http://10.0.0.7:9093/x", "only to loopback"),
            ("http://monitor.example.com/x", "only to loopback"),
            ("http://127.0.0.1.example.com/x", "only to loopback"),
            ("ftp://127.0.0.1/x", "neither https nor http"),
            ("127.0.0.1:9093", "not a URL"),
            ("not a url", "not a URL"),
        ] {
            let error = parse(&format!("webhook = \"{bad}\"")).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn an_https_webhook_may_trust_its_own_cas_alone() {
        use raft::identity::{ClusterCa, Validity};
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now,
            not_after: now + time::Duration::days(1),
        };
        let ca = ClusterCa::generate("monitor", validity).unwrap();
        std::fs::write(dir.path().join("monitor-ca.pem"), &ca.certified_key().cert_pem).unwrap();
        let https = "webhook = \"https://monitor.example.com/x\"\n";
        let config = parse_in(dir.path(), &format!("{https}ca = \"monitor-ca.pem\"")).unwrap();
        assert_eq!(config.trusted_cas.map(|cas| cas.len()), Some(1));

        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        std::fs::write(dir.path().join("key.pem"), &ca.certified_key().key_pem).unwrap();
        for (bad, reason) in [
            (format!("{https}ca = \"missing.pem\""), "missing.pem"),
            (format!("{https}ca = \"empty.pem\""), "no certificate"),
            (format!("{https}ca = \"key.pem\""), "no certificate"),
            (
                "webhook = \"http://127.0.0.1:9/x\"\nca = \"monitor-ca.pem\"".to_string(),
                "not one",
            ),
        ] {
            let error = parse_in(dir.path(), &bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn bounds_are_checked() {
        let base = "webhook = \"http://127.0.0.1:9/x\"\n";
        for (bad, reason) in [
            ("timeout_ms = 0", "timeout_ms"),
            ("backoff_initial_ms = 0", "backoff_initial_ms"),
            ("backoff_initial_ms = 500\nbackoff_max_ms = 100", "backoff_max_ms"),
            ("spool_incidents_max = 0", "spool_incidents_max"),
            ("spool_incidents_max = 100001", "spool_incidents_max"),
            ("bogus = 1", "bogus"),
        ] {
            let error = parse(&format!("{base}{bad}")).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }
}
