//! The registry's error type.
//!
//! Each variant names what the caller does next: `Unavailable` and `Timeout`
//! may succeed when retried later, `NotFound` means a lease or key is gone
//! (a session built on it is lost), `InvalidInput` and `Config` are the
//! caller's mistake and never succeed on retry.

use shoal_types::LeaseId;

/// A registry result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the registry reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// A configuration value is wrong. `key` names where it came from, e.g.
    /// `SHOAL_NODE_TTL` or `shoal.toml: node_ttl`.
    #[error("{key}: {message}")]
    Config {
        /// The offending key, spelled as the user wrote it.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request is malformed (e.g. a txn touching one key twice, a
    /// compaction of a future revision).
    #[error("invalid registry request: {0}")]
    InvalidInput(String),
    /// The lease does not exist: it expired or was revoked.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A session's lease was lost, so what depended on it (an election
    /// candidacy, leased keys) is gone.
    #[error("registry session lost: {0}")]
    SessionLost(String),
    /// The registry could not be reached, after the configured retries. The
    /// message names the endpoints that were tried.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// One operation did not finish within the operation timeout.
    #[error("registry operation timed out: {0}")]
    Timeout(String),
    /// The registry answered something that breaks its own contract.
    #[error("registry internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    /// Builds a configuration error for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { key: key.into(), message: message.into() }
    }
}

impl From<Error> for shoal_types::Error {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Config { .. } | Error::InvalidInput(_) => {
                shoal_types::Error::InvalidInput(message)
            }
            Error::LeaseNotFound(_) => shoal_types::Error::NotFound(message),
            Error::SessionLost(_) | Error::Unavailable(_) => {
                shoal_types::Error::Unavailable(message)
            }
            Error::Timeout(_) => shoal_types::Error::Timeout(message),
            Error::Internal(_) => shoal_types::Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        let e = Error::config("SHOAL_NODE_TTL", "invalid duration \"abc\"");
        assert_eq!(e.to_string(), "SHOAL_NODE_TTL: invalid duration \"abc\"");
        assert!(!e.is_retryable());
    }

    #[test]
    fn maps_to_shared_error() {
        let e: shoal_types::Error = Error::Unavailable("x".into()).into();
        assert!(matches!(e, shoal_types::Error::Unavailable(_)));
        let e: shoal_types::Error = Error::LeaseNotFound(LeaseId(5)).into();
        assert!(matches!(e, shoal_types::Error::NotFound(_)));
    }
}
