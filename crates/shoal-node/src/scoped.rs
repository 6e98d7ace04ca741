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

pub use shoal_http::auth::{Access, may_carry, route};

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
