//! Extractors whose rejections are Shoal's JSON errors, so that a bad body,
//! path or query string gets `{"error": ...}` with the right status.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use shoal_types::Error;

use crate::error::ApiError;

/// A JSON body. The content type is not checked: a body that parses is taken.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ApiBody(bytes) = ApiBody::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError(Error::InvalidInput(format!("invalid JSON body: {e}"))))
    }
}

/// A request body, as bytes.
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::TooLarge(
                    "the request body is larger than the server accepts (see --max-body-size)"
                        .into(),
                )
            } else {
                Error::InvalidInput(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        Ok(ApiBody(bytes))
    }
}

/// A query string.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| ApiQuery(q)).map_err(
            |r| ApiError(Error::InvalidInput(format!("invalid query string: {}", r.body_text()))),
        )
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|r| ApiError(Error::InvalidInput(format!("invalid path: {}", r.body_text()))))
    }
}

/// The `Idempotency-Key` header of a write, checked.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .map_err(|_| Error::InvalidInput("Idempotency-Key must be printable ASCII".into()))?
            .to_string();
        shoal_storage::idempotency::check_key(&key)?;
        Ok(IdempotencyKey(Some(key)))
    }
}
