//! The error type shared by every Shoal crate and carried on the wire.
//!
//! A variant names what the caller must do next, not which library failed:
//! fix the input, look elsewhere, retry later. The HTTP status of each variant
//! is decided in one place (shoal-node); the client maps the `code` back.

use serde::{Deserialize, Serialize};

/// A Shoal result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error Shoal reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input is malformed: bad JSON, a bad id, a missing field.
    #[error("{0}")]
    InvalidInput(String),
    /// The SQL does not parse or refers to something that does not exist.
    #[error("{0}")]
    InvalidSql(String),
    /// The SQL is well formed but not allowed (sandbox).
    #[error("{0}")]
    SqlNotAllowed(String),
    /// A write would give different results on different replicas.
    #[error("{0}")]
    NonDeterministic(String),
    /// A configured bound was exceeded (SQL length, result rows, statement time).
    #[error("{0}")]
    LimitExceeded(String),
    /// The request body is larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    /// A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) rejected a write.
    #[error("{0}")]
    Constraint(String),
    /// The base, table or row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing being created exists already.
    #[error("{0}")]
    Conflict(String),
    /// No or a wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A good token that does not allow this (a base's token used on
    /// another base, or to write when it may only read).
    #[error("{0}")]
    Forbidden(String),
    /// This node does not lead the base's bucket: send the request to the
    /// leader (its URL, when known).
    #[error("{message}")]
    NotLeader {
        /// What happened.
        message: String,
        /// The leader's URL, if known.
        leader: Option<String>,
    },
    /// This node holds no replica of the base's bucket; the bucket lives on
    /// the nodes at `replicas`.
    #[error("{message}")]
    Misdirected {
        /// What happened.
        message: String,
        /// URLs of the nodes that hold the bucket.
        replicas: Vec<String>,
    },
    /// The server cannot serve this now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// A local I/O failure. Not the caller's fault.
    #[error("I/O error: {0}")]
    Io(String),
    /// Stored data is not what it should be. Not the caller's fault.
    #[error("invalid stored data: {0}")]
    InvalidData(String),
    /// A bug. Not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable machine-readable code of this error, as sent on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::InvalidSql(_) => "invalid_sql",
            Error::SqlNotAllowed(_) => "sql_not_allowed",
            Error::NonDeterministic(_) => "non_deterministic",
            Error::LimitExceeded(_) => "limit_exceeded",
            Error::TooLarge(_) => "too_large",
            Error::Constraint(_) => "constraint_violation",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotLeader { .. } => "not_leader",
            Error::Misdirected { .. } => "misdirected",
            Error::Unavailable(_) => "unavailable",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io",
            Error::InvalidData(_) => "invalid_data",
            Error::Internal(_) => "internal",
        }
    }

    /// Rebuilds an error from its wire form. An unknown code (a newer server)
    /// becomes `Internal` so that it is never mistaken for the caller's fault.
    pub fn from_code(code: &str, message: String) -> Error {
        match code {
            "invalid_input" => Error::InvalidInput(message),
            "invalid_sql" => Error::InvalidSql(message),
            "sql_not_allowed" => Error::SqlNotAllowed(message),
            "non_deterministic" => Error::NonDeterministic(message),
            "limit_exceeded" => Error::LimitExceeded(message),
            "too_large" => Error::TooLarge(message),
            "constraint_violation" => Error::Constraint(message),
            "not_found" => Error::NotFound(message),
            "conflict" => Error::Conflict(message),
            "unauthorized" => Error::Unauthorized(message),
            "forbidden" => Error::Forbidden(message),
            "unavailable" => Error::Unavailable(message),
            "timeout" => Error::Timeout(message),
            "io" => Error::Io(message),
            "invalid_data" => Error::InvalidData(message),
            _ => Error::Internal(format!("{code}: {message}")),
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_) | Error::NotLeader { .. })
    }

    /// Whether every replica applying the same command hits the same error.
    /// Applying a replicated command must stop the process on an error that is not.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Error::Io(_)
                | Error::InvalidData(_)
                | Error::Internal(_)
                | Error::Unavailable(_)
                | Error::Timeout(_)
                | Error::NotLeader { .. }
                | Error::Misdirected { .. }
        )
    }

    /// The wire form of this error.
    pub fn to_body(&self) -> ErrorBody {
        let (leader, replicas) = match self {
            Error::NotLeader { leader, .. } => (leader.clone(), Vec::new()),
            Error::Misdirected { replicas, .. } => (None, replicas.clone()),
            _ => (None, Vec::new()),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                leader,
                replicas,
            },
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// `{"error": {"code", "message"}}`: the body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code, see [`Error::code`].
    pub code: String,
    /// A message for humans.
    pub message: String,
    /// With `not_leader`: the leader's URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// With `misdirected`: the URLs of the nodes that hold the bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        match body.error.code.as_str() {
            "not_leader" => {
                Error::NotLeader { message: body.error.message, leader: body.error.leader }
            }
            "misdirected" => {
                Error::Misdirected { message: body.error.message, replicas: body.error.replicas }
            }
            code => Error::from_code(code, body.error.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let all = [
            Error::InvalidInput("a".into()),
            Error::InvalidSql("a".into()),
            Error::SqlNotAllowed("a".into()),
            Error::NonDeterministic("a".into()),
            Error::LimitExceeded("a".into()),
            Error::TooLarge("a".into()),
            Error::Constraint("a".into()),
            Error::NotFound("a".into()),
            Error::Conflict("a".into()),
            Error::Unauthorized("a".into()),
            Error::Forbidden("a".into()),
            Error::Unavailable("a".into()),
            Error::Timeout("a".into()),
        ];
        for e in all {
            assert_eq!(Error::from_code(e.code(), "a".into()), e);
        }
        assert!(matches!(Error::from_code("whatever", "x".into()), Error::Internal(_)));
    }

    #[test]
    fn routing_errors_carry_where_to_go() {
        let e = Error::NotLeader {
            message: "not the leader".into(),
            leader: Some("http://n2:7070".into()),
        };
        let body = serde_json::to_value(e.to_body()).unwrap();
        assert_eq!(body["error"]["leader"], "http://n2:7070");
        assert_eq!(Error::from(serde_json::from_value::<ErrorBody>(body).unwrap()), e);
        let e = Error::Misdirected {
            message: "elsewhere".into(),
            replicas: vec!["http://n3:7070".into()],
        };
        assert_eq!(Error::from(e.to_body()), e);
        // Other errors carry neither field.
        let body = serde_json::to_string(&Error::NotFound("x".into()).to_body()).unwrap();
        assert!(!body.contains("leader") && !body.contains("replicas"), "{body}");
    }
}
