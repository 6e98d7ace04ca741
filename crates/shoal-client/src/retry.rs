//! Which failed attempts are tried again, and after how long.
//!
//! The rule is about what the server may have done. A request that never
//! left the client (no connection could be made) changed nothing, so it is
//! always sent again, to the next endpoint. A request that may have reached
//! a server but got no answer (the connection broke, the answer did not come
//! in time), or that a server refused for a reason that passes (`not_leader`,
//! `misdirected`, `unavailable`, `timeout`), is sent again only if sending it
//! twice cannot do the thing twice: a read, or a write that carries an
//! idempotency key. Every other answer is the same on every try (bad SQL, a
//! missing base, a constraint) and comes back at once.

use std::time::Duration;

use shoal_types::Error;

/// What a request does, as far as retrying it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Changes nothing: `GET`s and `POST /query`.
    Read,
    /// Changes something; `keyed` when it carries an idempotency key, so
    /// that the server applies it at most once however often it arrives.
    Write {
        /// Whether the write carries an idempotency key.
        keyed: bool,
    },
}

impl Kind {
    /// Whether sending the request again is harmless even if the first
    /// attempt took effect.
    pub(crate) fn replayable(self) -> bool {
        match self {
            Kind::Read => true,
            Kind::Write { keyed } => keyed,
        }
    }
}

/// How one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made: the server never saw the request.
    NotSent(Error),
    /// The request may have reached the server, but no answer came back.
    Lost(Error),
    /// The server answered with an error.
    Answered(Error),
}

impl Failure {
    /// The error the caller sees if this is the last attempt.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::NotSent(e) | Failure::Lost(e) | Failure::Answered(e) => e,
        }
    }

    /// The error, borrowed.
    pub(crate) fn error(&self) -> &Error {
        match self {
            Failure::NotSent(e) | Failure::Lost(e) | Failure::Answered(e) => e,
        }
    }
}

/// Whether a request of `kind` that failed with `failure` may be sent again.
pub(crate) fn may_retry(kind: Kind, failure: &Failure) -> bool {
    match failure {
        Failure::NotSent(_) => true,
        Failure::Lost(_) => kind.replayable(),
        Failure::Answered(e) => passing(e) && kind.replayable(),
    }
}

/// Whether a server's error is about the moment rather than the request:
/// leadership moving, a bucket electing, a node that does not hold it.
pub(crate) fn passing(e: &Error) -> bool {
    matches!(
        e,
        Error::NotLeader { .. }
            | Error::Misdirected { .. }
            | Error::Unavailable(_)
            | Error::Timeout(_)
    )
}

/// The pause before retry number `attempt` (0 for the first retry):
/// doubling from `min` up to `max`, then scaled by `jitter` (in `[0, 1]`)
/// into its upper half, so that clients that failed together do not all
/// come back together.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let max = max.max(min);
    let full = min.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(max);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 1.0 };
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// A fresh idempotency key: a random UUID (v4), which the server accepts
/// (printable ASCII, well under 200 bytes) and no other client will pick.
pub(crate) fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks a caller's idempotency key the way the server does, so that a bad
/// one is reported before anything is sent.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(
            "an idempotency key must be 1 to 200 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Kind = Kind::Read;
    const KEYED: Kind = Kind::Write { keyed: true };
    const UNKEYED: Kind = Kind::Write { keyed: false };

    fn unavailable() -> Error {
        Error::Unavailable("x".into())
    }

    #[test]
    fn a_request_that_was_never_sent_is_always_retried() {
        for kind in [READ, KEYED, UNKEYED] {
            assert!(may_retry(kind, &Failure::NotSent(unavailable())), "{kind:?}");
        }
    }

    #[test]
    fn a_lost_answer_is_retried_only_when_replaying_is_harmless() {
        let lost = Failure::Lost(Error::Timeout("x".into()));
        assert!(may_retry(READ, &lost));
        assert!(may_retry(KEYED, &lost));
        assert!(!may_retry(UNKEYED, &lost));
    }

    #[test]
    fn passing_answers_are_retried_only_when_replaying_is_harmless() {
        let passing = [
            Error::NotLeader { message: "x".into(), leader: Some("http://n2".into()) },
            Error::Misdirected { message: "x".into(), replicas: vec!["http://n3".into()] },
            unavailable(),
            Error::Timeout("x".into()),
        ];
        for e in passing {
            let f = Failure::Answered(e.clone());
            assert!(may_retry(READ, &f), "{e:?}");
            assert!(may_retry(KEYED, &f), "{e:?}");
            assert!(!may_retry(UNKEYED, &f), "{e:?}");
        }
    }

    #[test]
    fn deterministic_answers_are_never_retried() {
        let fixed = [
            Error::InvalidInput("x".into()),
            Error::InvalidSql("x".into()),
            Error::SqlNotAllowed("x".into()),
            Error::Constraint("x".into()),
            Error::NotFound("x".into()),
            Error::Conflict("x".into()),
            Error::Unauthorized("x".into()),
            Error::TooLarge("x".into()),
            Error::LimitExceeded("x".into()),
            Error::Internal("x".into()),
        ];
        for e in fixed {
            for kind in [READ, KEYED, UNKEYED] {
                assert!(!may_retry(kind, &Failure::Answered(e.clone())), "{kind:?} {e:?}");
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_bound_and_jitters_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(1));
        assert_eq!(backoff(0, min, max, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(1, min, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, min, max, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(5, min, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, min, max, 1.0), max);
        assert_eq!(backoff(1, min, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(9, min, max, 0.5), Duration::from_millis(750));
        // Out-of-range inputs stay within bounds.
        assert_eq!(backoff(2, min, max, f64::NAN), Duration::from_millis(200));
        assert_eq!(backoff(2, min, max, -3.0), Duration::from_millis(100));
        assert_eq!(backoff(0, max, min, 1.0), max);
    }

    #[test]
    fn keys_are_fresh_and_acceptable() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(check_key(&a).is_ok() && check_key(&b).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("has space").is_err());
        assert!(check_key(&"k".repeat(201)).is_err());
        assert!(check_key(&"k".repeat(200)).is_ok());
        assert!(check_key("naïve").is_err());
    }
}
