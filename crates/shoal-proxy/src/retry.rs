//! When the proxy may send a request again, and where.
//!
//! The rules, from the nodes' answers:
//! - a connection that could not be opened sent nothing: always try the
//!   next replica;
//! - `307` comes from a node that did not take the request and names the
//!   leader: follow it (the same rule the nodes use when they forward);
//! - `421 misdirected` means the node holds no replica: it did nothing, try
//!   the next one;
//! - `503`/`504` and failures after the request was sent (a reset, a
//!   timeout) may hide a write that was applied: only a request that is safe
//!   to repeat is sent again. Reads are (GET, HEAD and `POST .../query`);
//!   a write is when it carries an `Idempotency-Key`, because the node
//!   answers a repeated key with the first answer instead of applying it
//!   twice;
//! - any other answer, success or error, is the answer.

use std::time::Duration;

use axum::http::{Method, StatusCode};

/// What to do with one attempt's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Give this answer to the client.
    Answer,
    /// Send the request to this URL (a redirect's target).
    Follow(String),
    /// Send the request to the next replica.
    TryNext,
}

/// Whether the same request may be sent again after it may have reached a node.
pub fn repeatable(method: &Method, path: &str, has_idempotency_key: bool) -> bool {
    *method == Method::GET
        || *method == Method::HEAD
        || (*method == Method::POST && path.ends_with("/query"))
        || has_idempotency_key
}

/// What to do after a node answered `status` (with `location` on redirects).
pub fn after_answer(status: StatusCode, location: Option<&str>, repeatable: bool) -> Next {
    match status {
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => match location {
            Some(l) if l.starts_with("http://") || l.starts_with("https://") => {
                Next::Follow(l.to_string())
            }
            _ => Next::Answer,
        },
        StatusCode::MISDIRECTED_REQUEST => Next::TryNext,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT if repeatable => {
            Next::TryNext
        }
        _ => Next::Answer,
    }
}

/// What to do after a request failed without an answer. `connect` is true
/// when no connection was made (nothing was sent).
pub fn after_failure(connect: bool, repeatable: bool) -> Next {
    if connect || repeatable { Next::TryNext } else { Next::Answer }
}

/// The pause before going over the replicas once more: doubling from
/// `first`, at most `max`.
pub fn backoff(round: u32, first: Duration, max: Duration) -> Duration {
    first.saturating_mul(2u32.saturating_pow(round.min(16))).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_keyed_writes_are_repeatable() {
        assert!(repeatable(&Method::GET, "/v1/bases/x/tables", false));
        assert!(repeatable(&Method::HEAD, "/v1/bases/x", false));
        assert!(repeatable(&Method::POST, "/v1/bases/x/query", false));
        assert!(!repeatable(&Method::POST, "/v1/bases/x/execute", false));
        assert!(repeatable(&Method::POST, "/v1/bases/x/execute", true));
        assert!(!repeatable(&Method::DELETE, "/v1/bases/x", false));
        assert!(!repeatable(&Method::PATCH, "/v1/bases/x/tables/t/rows/1", false));
    }

    #[test]
    fn answers_decide_where_to_go() {
        let l = "http://127.0.0.1:1/v1/bases/x";
        assert_eq!(
            after_answer(StatusCode::TEMPORARY_REDIRECT, Some(l), false),
            Next::Follow(l.into())
        );
        // A redirect without a usable target is passed on.
        assert_eq!(after_answer(StatusCode::TEMPORARY_REDIRECT, None, true), Next::Answer);
        assert_eq!(after_answer(StatusCode::TEMPORARY_REDIRECT, Some("/x"), true), Next::Answer);
        assert_eq!(after_answer(StatusCode::MISDIRECTED_REQUEST, None, false), Next::TryNext);
        assert_eq!(after_answer(StatusCode::SERVICE_UNAVAILABLE, None, true), Next::TryNext);
        assert_eq!(after_answer(StatusCode::GATEWAY_TIMEOUT, None, true), Next::TryNext);
        // An unkeyed write that may have been applied is not sent again.
        assert_eq!(after_answer(StatusCode::SERVICE_UNAVAILABLE, None, false), Next::Answer);
        for s in
            [StatusCode::OK, StatusCode::CREATED, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND]
        {
            assert_eq!(after_answer(s, None, true), Next::Answer);
        }
        assert_eq!(after_answer(StatusCode::INTERNAL_SERVER_ERROR, None, true), Next::Answer);
    }

    #[test]
    fn failures_are_retried_when_nothing_was_sent_or_repeating_is_safe() {
        assert_eq!(after_failure(true, false), Next::TryNext);
        assert_eq!(after_failure(false, true), Next::TryNext);
        assert_eq!(after_failure(false, false), Next::Answer);
    }

    #[test]
    fn backoff_doubles_up_to_a_bound() {
        let (first, max) = (Duration::from_millis(50), Duration::from_millis(500));
        assert_eq!(backoff(0, first, max), Duration::from_millis(50));
        assert_eq!(backoff(1, first, max), Duration::from_millis(100));
        assert_eq!(backoff(3, first, max), Duration::from_millis(400));
        assert_eq!(backoff(4, first, max), max);
        assert_eq!(backoff(u32::MAX, first, max), max);
    }
}
