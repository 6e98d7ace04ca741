//! What a base request says of itself, read the same way by nodes and
//! proxies.

use axum::http::HeaderMap;

/// The namespace of base ids made from idempotency keys (UUID v5): a
/// retried create with the same key names the same base on every process.
pub const KEYED_IDS: uuid::Uuid = uuid::Uuid::from_u128(0x5d7c_2f4e_8a1b_4c3d_9e6f_1a2b_3c4d_5e6f);

/// Whether a request's body is a SQLite file (a base created from one).
pub fn is_sqlite(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| shoal_types::api::SQLITE_CONTENT_TYPES.contains(&t.trim()))
}
