//! Where the client sends a request: its endpoints, in turn, and the
//! leaders of buckets it has learnt about.
//!
//! The endpoints (nodes or proxies) are kept in the order the caller gave
//! them; one of them is current. When a connection to a URL cannot be made
//! the URL is marked down for a short while and, if it was the current
//! endpoint, the next one becomes current. A URL marked down is skipped
//! while another one is up; when all are down, the current one is tried
//! anyway (a down mark is a guess, not a verdict).
//!
//! Leaders are cached per bucket with the placement-map epoch of the answer
//! that named them. An answer from an older epoch never replaces a newer
//! one; any sign that the leader moved (`not_leader`, `misdirected`,
//! `unavailable`, a lost connection) drops the bucket's entry, and the next
//! request looks it up again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_types::{BucketId, Error, Result};

/// The endpoints and the leaders the client knows.
#[derive(Debug)]
pub(crate) struct Routes {
    endpoints: Vec<String>,
    current: AtomicUsize,
    down_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    leaders: HashMap<BucketId, Leader>,
    down: HashMap<String, Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Leader {
    url: String,
    epoch: u64,
}

impl Routes {
    /// Routes over `endpoints` (at least one); a URL that could not be
    /// reached is avoided for `down_for`.
    pub(crate) fn new(endpoints: Vec<String>, down_for: Duration) -> Result<Routes> {
        if endpoints.is_empty() {
            return Err(Error::InvalidInput("a client needs at least one endpoint".into()));
        }
        Ok(Routes { endpoints, current: AtomicUsize::new(0), down_for, state: Default::default() })
    }

    /// Every endpoint, in the caller's order.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The current endpoint, as last chosen.
    pub(crate) fn current(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// The endpoint to use now: the current one, or the first after it that
    /// is not marked down.
    pub(crate) fn endpoint(&self, now: Instant) -> String {
        self.endpoints_in_turn(now).swap_remove(0)
    }

    /// Every endpoint, starting at the one to use now: those that are up
    /// first (from the current one on), then those marked down.
    pub(crate) fn endpoints_in_turn(&self, now: Instant) -> Vec<String> {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.endpoints.len();
        let ordered = (0..n).map(|i| &self.endpoints[(start + i) % n]);
        let state = self.lock();
        let (up, down): (Vec<&String>, Vec<&String>) =
            ordered.partition(|url| !state.is_down(url, now));
        up.into_iter().chain(down).cloned().collect()
    }

    /// Records that `url` could not be reached: it is avoided for a while,
    /// and if it is the current endpoint the next one becomes current.
    pub(crate) fn failed(&self, url: &str, now: Instant) {
        self.lock().down.insert(url.to_string(), now + self.down_for);
        self.pass_over(url);
    }

    /// Makes the endpoint after `url` current, if `url` is the current one:
    /// for an endpoint that answers but cannot serve now.
    pub(crate) fn pass_over(&self, url: &str) {
        let n = self.endpoints.len();
        let cur = self.current.load(Ordering::Relaxed);
        if self.endpoints[cur % n] == url {
            // Only the first of several callers that saw the same failure
            // moves on; the others find the index changed already.
            let _ = self.current.compare_exchange(
                cur,
                (cur + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether `url` is marked down now.
    pub(crate) fn is_down(&self, url: &str, now: Instant) -> bool {
        self.lock().is_down(url, now)
    }

    /// The cached leader of `bucket`, unless it is marked down.
    pub(crate) fn leader(&self, bucket: BucketId, now: Instant) -> Option<String> {
        let state = self.lock();
        let leader = state.leaders.get(&bucket)?;
        (!state.is_down(&leader.url, now)).then(|| leader.url.clone())
    }

    /// Caches `url` as the leader of `bucket`, as the placement map of
    /// `epoch` has it, unless a newer epoch's leader is cached already.
    pub(crate) fn learn_leader(&self, bucket: BucketId, url: String, epoch: u64) {
        let mut state = self.lock();
        match state.leaders.get(&bucket) {
            Some(known) if known.epoch > epoch => {}
            _ => {
                state.leaders.insert(bucket, Leader { url, epoch });
            }
        }
    }

    /// Forgets the leader of `bucket`.
    pub(crate) fn forget_leader(&self, bucket: BucketId) {
        self.lock().leaders.remove(&bucket);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache: whatever a panicking thread left is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn is_down(&self, url: &str, now: Instant) -> bool {
        self.down.get(url).is_some_and(|until| now < *until)
    }
}

/// Parses endpoints: URLs separated by commas, with `http://` assumed when
/// no scheme is given and trailing slashes dropped.
pub(crate) fn parse_endpoints<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in list {
        for part in item.as_ref().split(',') {
            let part = part.trim().trim_end_matches('/');
            if part.is_empty() {
                continue;
            }
            let url =
                if part.contains("://") { part.to_string() } else { format!("http://{part}") };
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(Error::InvalidInput(format!(
                    "endpoint {part:?} is not an http:// or https:// URL"
                )));
            }
            if !out.contains(&url) {
                out.push(url);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidInput("a client needs at least one endpoint".into()));
    }
    Ok(out)
}

/// The `scheme://host:port` part of a URL (what a redirect's `Location`
/// says about where the leader is).
pub(crate) fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(n: usize) -> Routes {
        let urls = (1..=n).map(|i| format!("http://n{i}")).collect();
        Routes::new(urls, Duration::from_secs(2)).expect("routes")
    }

    #[test]
    fn a_failed_endpoint_hands_over_to_the_next_and_comes_back_later() {
        let r = routes(3);
        let t0 = Instant::now();
        assert_eq!(r.endpoint(t0), "http://n1");
        r.failed("http://n1", t0);
        assert_eq!(r.current(), "http://n2");
        assert_eq!(r.endpoint(t0), "http://n2");
        r.failed("http://n2", t0);
        assert_eq!(r.endpoint(t0), "http://n3");
        assert_eq!(r.endpoints_in_turn(t0), ["http://n3", "http://n1", "http://n2"]);
        // Everything down: still an answer, the current one.
        r.failed("http://n3", t0);
        assert_eq!(r.endpoint(t0), "http://n1");
        // Down marks run out.
        let later = t0 + Duration::from_secs(3);
        assert!(!r.is_down("http://n2", later));
        assert_eq!(r.endpoints_in_turn(later), ["http://n1", "http://n2", "http://n3"]);
    }

    #[test]
    fn a_failure_seen_twice_moves_on_once() {
        let r = routes(3);
        let t0 = Instant::now();
        r.failed("http://n1", t0);
        r.failed("http://n1", t0);
        assert_eq!(r.current(), "http://n2");
        // A failure of a URL that is not current (a leader) moves nothing.
        r.failed("http://elsewhere", t0);
        assert_eq!(r.current(), "http://n2");
        // Passing over an endpoint moves on without marking it down.
        r.pass_over("http://n2");
        assert_eq!(r.current(), "http://n3");
        assert!(!r.is_down("http://n2", t0));
        r.pass_over("http://n3");
        assert_eq!(r.current(), "http://n1");
    }

    #[test]
    fn a_down_endpoint_that_is_current_is_skipped() {
        let r = routes(3);
        let t0 = Instant::now();
        r.failed("http://n2", t0);
        assert_eq!(r.endpoint(t0), "http://n1");
        assert_eq!(r.endpoints_in_turn(t0), ["http://n1", "http://n3", "http://n2"]);
    }

    #[test]
    fn leaders_are_cached_by_epoch_and_avoided_when_down() {
        let r = routes(1);
        let (b, t0) = (BucketId(7), Instant::now());
        assert_eq!(r.leader(b, t0), None);
        r.learn_leader(b, "http://n2".into(), 5);
        assert_eq!(r.leader(b, t0).as_deref(), Some("http://n2"));
        // An older map does not win; a newer or equal one does.
        r.learn_leader(b, "http://n3".into(), 4);
        assert_eq!(r.leader(b, t0).as_deref(), Some("http://n2"));
        r.learn_leader(b, "http://n3".into(), 5);
        assert_eq!(r.leader(b, t0).as_deref(), Some("http://n3"));
        assert_eq!(r.leader(BucketId(8), t0), None);
        r.failed("http://n3", t0);
        assert_eq!(r.leader(b, t0), None);
        assert_eq!(r.leader(b, t0 + Duration::from_secs(3)).as_deref(), Some("http://n3"));
        r.forget_leader(b);
        assert_eq!(r.leader(b, t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn endpoint_lists_are_parsed() {
        assert_eq!(
            parse_endpoints(&["http://a:1/, b:2 ,,https://c", "http://a:1"]).expect("parse"),
            ["http://a:1", "http://b:2", "https://c"]
        );
        assert!(parse_endpoints(&[" , "]).is_err());
        assert!(parse_endpoints::<&str>(&[]).is_err());
        assert!(parse_endpoints(&["ftp://x"]).is_err());
        assert!(Routes::new(Vec::new(), Duration::ZERO).is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(origin("http://n2:7070/v1/bases/x?y=1").as_deref(), Some("http://n2:7070"));
        assert_eq!(origin("https://n2").as_deref(), Some("https://n2"));
        assert_eq!(origin("/v1/bases"), None);
        assert_eq!(origin("http:///x"), None);
    }
}
