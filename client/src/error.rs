use std::time::Duration;

use wire::record::CommandError;

/// Why a call failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint `{endpoint}`: {reason} (write `n1@127.0.0.1:7101`)")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("no endpoint given")]
    NoEndpoints,
    #[error("the call did not complete within its {deadline:?} deadline (last error: {last_error})")]
    Timeout { deadline: Duration, last_error: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The data has no lawful place: no group is fenced to the jurisdiction, or the fence refused.
    #[error("residency: {0}")]
    Residency(String),
    /// A compare-and-set found another revision; re-read and try again.
    #[error("conflict: {0}")]
    Conflict(CommandError),
    /// The state machine refused the command for good (e.g. a value over the size bound).
    #[error("rejected: {0}")]
    Rejected(CommandError),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// This client's certificate does not entitle it to the call: e.g. a node's certificate used as a
    /// client's (nodes talk Raft, services talk client). The cluster counts and logs it as an incident.
    #[error("forbidden: {caller} may not call `{jurisdiction}`: {reason}")]
    Forbidden {
        caller: String,
        jurisdiction: String,
        reason: String,
    },
}

impl ClientError {
    /// True when the same call might succeed later (after a timeout, an unavailable group, or a conflict
    /// once the caller has re-read). Residency refusals and invalid requests never will.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::Unavailable(_) | ClientError::Conflict(_)
        )
    }
}
