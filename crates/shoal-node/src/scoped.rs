//! A base's API tokens (made with `POST /v1/bases/{id}/api-tokens`, for
//! the SeaTable-compatible API) also open Shoal's own routes of that base,
//! and nothing else: `Authorization: Bearer API_TOKEN` reads the base
//! (`GET /v1/bases/{id}`, `/query`, `/tables`, rows, `/checksum`,
//! `/backup`, `/location`, `/changes`) and, with permission `rw`, writes
//! it (`/execute`, inserting, updating and deleting rows). Dropping the
//! base, its tokens, other bases and the cluster need the admin token.
//!
//! Each request's token is looked up in the base (by its SHA-256) on the
//! replica that takes the request, so a revoked token stops there as soon
//! as the revoke is applied (on followers, normally milliseconds after the
//! leader). A node without a replica of the base lets the request through
//! to be forwarded: the node that holds it checks.

use axum::http::{HeaderMap, Method};
use shoal_storage::seatable as st;
use shoal_types::api::Consistency;
use shoal_types::{BaseId, Error};

use crate::AppState;
use crate::seatable::{token_base, token_hash};

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
    let Some(token) = crate::presented_token(headers) else { return false };
    match (token_base(&token), route(method, path)) {
        (Some(theirs), Some((base, _))) => theirs == base,
        _ => false,
    }
}

/// Checks a request that does not carry the admin token: `None` if its
/// token is not an API token (the admin token's refusal stands), else
/// whether the token exists in its base and allows this route.
pub async fn check(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Option<Result<(), Error>> {
    let token = crate::presented_token(headers)?;
    let theirs = token_base(&token)?;
    Some(allowed(state, &token, theirs, method, path).await)
}

async fn allowed(
    state: &AppState,
    token: &str,
    theirs: BaseId,
    method: &Method,
    path: &str,
) -> Result<(), Error> {
    let Some((base, access)) = route(method, path) else {
        return Err(Error::Forbidden(format!(
            "an API token opens only its base's data routes (/v1/bases/{theirs}/...); \
             this one needs the admin token"
        )));
    };
    if base != theirs {
        return Err(Error::Forbidden(format!("this token is for base {theirs}, not {base}")));
    }
    let engine = crate::api::engine(state)?;
    let hash = token_hash(token);
    let found = engine
        // The replica here, leader or not: a follower serves reads too.
        .read(base.bucket(), Consistency::None, move |s| {
            match s.read_system(&base, |c| st::find_token(c, &hash)) {
                Err(Error::NotFound(_)) => Ok(None),
                other => other,
            }
        })
        .await;
    match found {
        Ok(Some(record)) if access == Access::Write && record.permission != "rw" => {
            Err(Error::Forbidden("this API token is read-only".into()))
        }
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::Unauthorized("invalid API token (revoked, or never made)".into())),
        // Not held here: the request is forwarded, and checked where it is.
        Err(Error::Misdirected { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0a000000-0000-4000-8000-000000000001";

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
