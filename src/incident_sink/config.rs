//! The node config's `[incidents]` section: where incidents go and how hard to try.
//!
//! ```toml
//! [incidents]
//! webhook = "http://127.0.0.1:9093/domicile/incidents"
//! timeout_ms = 5000            # one POST, connection included
//! backoff_initial_ms = 200     # the first retry's delay; doubled after each failure ...
//! backoff_max_ms = 30000       # ... up to this
//! spool_incidents_max = 10000  # undelivered incidents kept; older ones are skipped with a gap notice
//! ```
//!
//! The webhook must be `http://` to a loopback address: this build's HTTP client has no TLS, and an
//! incident names sites, groups, jurisdictions and callers, which must not cross a network in clear. A
//! monitor elsewhere is reached through a TLS-terminating forwarder on the node's loopback (a sidecar).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
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
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentSinkConfig {
    pub webhook: Url,
    pub timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub spool_incidents_max: usize,
}

impl IncidentSinkConfig {
    /// Checks the section; the error says what is wrong, for the config's path to prefix.
    pub fn from_raw(raw: &RawIncidentSink) -> Result<IncidentSinkConfig, String> {
        let webhook = Url::parse(&raw.webhook)
            .map_err(|error| format!("webhook `{}` is not a URL: {error}", raw.webhook))?;
        check_webhook(&webhook)?;
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
        })
    }
}

/// `http://` to loopback only: see the module's documentation.
fn check_webhook(webhook: &Url) -> Result<(), String> {
    match webhook.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "webhook `{webhook}`: https is not supported by this build (its HTTP client has no TLS); \
                 run a TLS-terminating forwarder on loopback and give its http://127.0.0.1 address"
            ));
        }
        other => return Err(format!("webhook `{webhook}`: `{other}` is not http")),
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
             name sites, groups and callers and must not cross a network in clear; run a \
             TLS-terminating forwarder on loopback"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IncidentSinkConfig, String> {
        let raw: RawIncidentSink = toml::from_str(text).map_err(|error| error.to_string())?;
        IncidentSinkConfig::from_raw(&raw)
    }

    #[test]
    fn a_loopback_webhook_with_defaults() {
        let config = parse("webhook = \"http://127.0.0.1:9093/incidents\"").unwrap();
        assert_eq!(config.webhook.as_str(), "http://127.0.0.1:9093/incidents");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.backoff_initial, Duration::from_millis(200));
        assert_eq!(config.backoff_max, Duration::from_secs(30));
        assert_eq!(config.spool_incidents_max, 10_000);
        for good in ["http://[::1]:9/x", "http://localhost:9/x", "http://127.0.0.2/"] {
            assert!(parse(&format!("webhook = \"{good}\"")).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_webhook_beyond_loopback_or_over_tls_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("http://10.0.0.7:9093/x", "only to loopback"),
            ("http://monitor.example.com/x", "only to loopback"),
            ("https://monitor.example.com/x", "https is not supported"),
            ("ftp://127.0.0.1/x", "is not http"),
            ("127.0.0.1:9093", "not a URL"),
            ("not a url", "not a URL"),
        ] {
            let error = parse(&format!("webhook = \"{bad}\"")).unwrap_err();
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
