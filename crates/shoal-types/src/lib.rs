//! Shoal's shared vocabulary: identifiers, the wire types of the HTTP API and
//! the error type. No I/O lives here, so every other crate can depend on it.

pub mod api;
mod error;
mod ids;
pub mod placement;

pub use error::{Error, ErrorBody, ErrorDetail, Result};
pub use ids::{BUCKET_COUNT, BaseId, BucketId, LeaseId, NodeId, Revision};
