//! The headers of forwarding, and the query-string helper the routers share.

/// Set on a request a node forwarded.
pub const FORWARDED: &str = "x-shoal-forwarded";
/// The host a client addressed, kept when a request is forwarded.
pub const FORWARDED_HOST: &str = "x-forwarded-host";
/// The scheme a client used (`https` on a TLS port), kept when a request
/// is forwarded.
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
/// Set by a client that wants a redirect instead of forwarding.
pub const NO_FORWARD: &str = "x-shoal-no-forward";

/// Where the leader of the request's bucket is: put on `not_leader`
/// responses by the error mapping, read by the forwarding middleware.
#[derive(Clone, Debug)]
pub struct LeaderHint(pub String);

/// The value of `name` in a query string, as given (not decoded).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}
