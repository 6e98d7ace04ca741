//! The one mapping from Shoal errors to HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_types::Error;

/// An error on its way to becoming an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error.
pub fn status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidInput(_)
        | Error::InvalidSql(_)
        | Error::SqlNotAllowed(_)
        | Error::NonDeterministic(_)
        | Error::LimitExceeded(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Constraint(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::NotLeader { .. } | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Io(_) | Error::InvalidData(_) | Error::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self.0);
        match &self.0 {
            // Routine: the request is redirected or forwarded to the leader.
            Error::NotLeader { leader: Some(_), .. } => {
                tracing::debug!(error = %self.0, "request sent on to the leader")
            }
            // Passing: elections, failovers, a node starting or stopping.
            Error::NotLeader { .. } | Error::Unavailable(_) | Error::Timeout(_) => {
                tracing::warn!(error = %self.0, "request failed")
            }
            _ if status.is_server_error() => tracing::error!(error = %self.0, "request failed"),
            _ => {}
        }
        let mut response = (status, Json(self.0.to_body())).into_response();
        if let Error::NotLeader { leader: Some(url), .. } = &self.0 {
            response.extensions_mut().insert(crate::headers::LeaderHint(url.clone()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A result whose error renders as JSON.
pub type ApiResult<T> = Result<T, ApiError>;
