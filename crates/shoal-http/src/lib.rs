//! The HTTP pieces every Shoal server shares, so that a process that serves
//! no bases (a proxy) needs none of the node's code: the error body and its
//! status mapping ([`error`]), bearer and API tokens ([`auth`]), request
//! metrics ([`metrics`]), the header names of forwarding ([`headers`]), the
//! relay between proxies and nodes ([`relay`]), merging base lists across
//! nodes ([`lists`]), and what a base request says of itself ([`bases`]).

pub mod auth;
pub mod bases;
pub mod error;
pub mod headers;
pub mod lists;
pub mod metrics;
pub mod relay;
