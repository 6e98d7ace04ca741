//! Tokens, checked the same way by every process that serves `/v1`: the
//! admin bearer token, and a base's API tokens (SeaTable-compatible), which
//! open that base's own routes and nothing else.

use axum::http::{HeaderMap, Method, header};
use shoal_types::{BaseId, Error};

use crate::error::ApiError;

/// The prefix of the WebSocket subprotocol that carries a token.
pub const BEARER_PROTOCOL: &str = "shoal.bearer.";

/// The bearer token a request presents: `Authorization: Bearer TOKEN`, or,
/// from a browser's WebSocket, which cannot set headers, a subprotocol
/// `shoal.bearer.` followed by the token in unpadded base64url (offered
/// with `shoal.v1`, which the server picks).
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let from_protocol = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL).map(str::to_string))
            .map(|t| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t.trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            })
    };
    match headers.get(header::AUTHORIZATION) {
        Some(v) => {
            v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_string())
        }
        None => from_protocol(),
    }
}

/// Checks the token a request presents ([`presented_token`]) against
/// `token`; every process that serves `/v1` (nodes, monitors, proxies)
/// refuses the same way.
pub fn authorize(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    match presented_token(headers).as_deref() {
        None => Err(ApiError(Error::Unauthorized(
            "missing bearer token: send \"Authorization: Bearer TOKEN\"".into(),
        ))),
        Some(t) if !constant_time_eq(t.as_bytes(), token.as_bytes()) => {
            Err(ApiError(Error::Unauthorized("invalid bearer token".into())))
        }
        Some(_) => Ok(()),
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The base an API token belongs to, read off its first 32 characters.
pub fn token_base(token: &str) -> Option<BaseId> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    token[..32].parse().ok()
}

/// The token of a SeaTable-style `Authorization: Token T` (or `Bearer T`).
pub fn seatable_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Token ").or_else(|| value.strip_prefix("Bearer ")).map(str::trim)
}

/// The base of the API token a request carries (`Authorization: Token T`),
/// if it carries one: where it must be checked.
pub fn api_token_base(headers: &HeaderMap) -> Option<BaseId> {
    seatable_token(headers).and_then(token_base)
}

/// What a route needs of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads the base.
    Read,
    /// Changes the base.
    Write,
}

/// The base and access of a `/v1` request an API token may make, if any:
/// `None` for the routes only the admin token opens.
pub fn route(method: &Method, path: &str) -> Option<(BaseId, Access)> {
    let rest = path.strip_prefix("/v1/bases/")?;
    let (id, tail) = rest.split_once('/').map_or((rest, ""), |(id, t)| (id, t));
    let id: BaseId = id.parse().ok()?;
    let parts: Vec<&str> = if tail.is_empty() { Vec::new() } else { tail.split('/').collect() };
    let access = match (method, parts.as_slice()) {
        (&Method::GET, []) => Access::Read,
        (&Method::POST, ["query"]) => Access::Read,
        (&Method::POST, ["execute"]) => Access::Write,
        (&Method::GET, ["tables"]) => Access::Read,
        (&Method::GET, ["tables", _, "rows"]) | (&Method::GET, ["tables", _, "rows", _]) => {
            Access::Read
        }
        (&Method::POST, ["tables", _, "rows"]) => Access::Write,
        (&Method::PATCH | &Method::DELETE, ["tables", _, "rows", _]) => Access::Write,
        (&Method::GET, ["checksum" | "backup" | "location" | "changes"]) => Access::Read,
        _ => return None,
    };
    Some((id, access))
}

/// Whether a request carries an API token for the base its path names, on
/// a route such a token may use: a proxy passes it on (the node checks it).
pub fn may_carry(headers: &HeaderMap, method: &Method, path: &str) -> bool {
    let Some(token) = presented_token(headers) else { return false };
    match (token_base(&token), route(method, path)) {
        (Some(theirs), Some((base, _))) => theirs == base,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0a000000-0000-4000-8000-000000000001";

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn routes_name_their_base_and_access() {
        let at = |m: Method, p: &str| route(&m, &format!("/v1/bases/{ID}{p}")).map(|(_, a)| a);
        assert_eq!(at(Method::GET, ""), Some(Access::Read));
        assert_eq!(at(Method::POST, "/query"), Some(Access::Read));
        assert_eq!(at(Method::POST, "/execute"), Some(Access::Write));
        assert_eq!(at(Method::GET, "/tables/t/rows"), Some(Access::Read));
        assert_eq!(at(Method::POST, "/tables/t/rows"), Some(Access::Write));
        assert_eq!(at(Method::PATCH, "/tables/t/rows/3"), Some(Access::Write));
        assert_eq!(at(Method::GET, "/changes"), Some(Access::Read));
        // Admin only.
        assert_eq!(at(Method::DELETE, ""), None);
        assert_eq!(at(Method::GET, "/api-tokens"), None);
        assert_eq!(at(Method::POST, "/api-tokens"), None);
        assert_eq!(route(&Method::GET, "/v1/bases"), None);
        assert_eq!(route(&Method::GET, "/v1/cluster"), None);
        assert_eq!(route(&Method::GET, "/v1/bases/not-an-id/query"), None);
    }
}
