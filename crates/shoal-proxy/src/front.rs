//! The proxy's front door: the hot route without the router's layers.
//!
//! Almost every request a proxy takes is a base request it passes on
//! (`/v1/bases/{id}/query`, `/execute`, rows). Through the router such a
//! request crosses the process's request metrics, body limit and panic
//! guard, then the proxy routes' own metrics, panic guard and token check,
//! each a boxed service cloned per request. On a machine the proxy shares
//! with its nodes, that CPU is taken from them. [`Front`] recognises these
//! requests first and handles them in one function that does the same
//! things in a row (token check, forward, both request metrics, panic
//! guard); everything else goes to the router unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use shoal_http::error::ApiError;
use shoal_http::metrics::{REQUEST_METRICS, RequestMetrics};
use shoal_types::{BaseId, BucketId, Error};
use tower::Service;

use crate::Proxy;
use crate::forward;

/// The proxy's own request metrics.
pub(crate) const PROXY_METRICS: RequestMetrics = RequestMetrics {
    total: "shoal_proxy_requests_total",
    duration: "shoal_proxy_request_duration_seconds",
};

/// The route names the router gives these requests (metrics labels).
const BASE_ROUTE: &str = "/v1/bases/{id}";
const BASE_REST_ROUTE: &str = "/v1/bases/{id}/{*rest}";

/// A service that passes base requests straight on and gives every other
/// request to the router.
#[derive(Clone)]
pub struct Front {
    proxy: Arc<Proxy>,
    app: Router,
}

impl Front {
    /// `app` (the process's whole router, the proxy's routes merged in)
    /// behind the fast path for `proxy`'s base requests.
    pub fn new(proxy: Arc<Proxy>, app: Router) -> Front {
        Front { proxy, app }
    }
}

/// What the fast path takes: the base's bucket and the route's name. `None`
/// sends the request through the router (which also answers every bad
/// path, with the same errors as before).
fn fast_route(req: &Request) -> Option<(BucketId, &'static str)> {
    let rest = req.uri().path().strip_prefix("/v1/bases/")?;
    let (id, tail) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if id.len() != 36 || tail == "/" || tail == "/location" {
        return None;
    }
    let id: BaseId = id.parse().ok()?;
    if forward::is_upgrade(req.headers()) {
        return None;
    }
    Some((id.bucket(), if tail.is_empty() { BASE_ROUTE } else { BASE_REST_ROUTE }))
}

type Fast = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The future of either path.
// The router's future is kept inline: boxing it would cost every other
// request an allocation.
#[allow(clippy::large_enum_variant)]
pub enum FrontFuture {
    /// The router's.
    Router(<Router as Service<Request>>::Future),
    /// The fast path's.
    Fast(Fast),
}

impl Future for FrontFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            FrontFuture::Router(f) => Pin::new(f).poll(cx),
            FrontFuture::Fast(f) => f.as_mut().poll(cx),
        }
    }
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as Service<Request>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, req: Request) -> FrontFuture {
        match fast_route(&req) {
            Some((bucket, route)) => {
                let proxy = self.proxy.clone();
                FrontFuture::Fast(Box::pin(
                    async move { Ok(handle(proxy, bucket, route, req).await) },
                ))
            }
            None => FrontFuture::Router(self.app.call(req)),
        }
    }
}

/// What the router would do for a base request: check the token, pass it
/// on, count it, and turn a panic into a 500.
async fn handle(
    proxy: Arc<Proxy>,
    bucket: BucketId,
    route: &'static str,
    req: Request,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let handled = std::panic::AssertUnwindSafe(async {
        if let Err(refused) = crate::check_token(&proxy, &req) {
            return refused.into_response();
        }
        forward::pass_on(&proxy, bucket, req).await
    })
    .catch_unwind()
    .await;
    let response = handled.unwrap_or_else(|_| {
        ApiError(Error::Internal("the proxy failed while handling this request".into()))
            .into_response()
    });
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    shoal_http::metrics::record_request(PROXY_METRICS, route, &method, status, elapsed);
    shoal_http::metrics::record_request(REQUEST_METRICS, route, &method, status, elapsed);
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).expect("request")
    }

    #[test]
    fn only_base_requests_take_the_fast_path() {
        let id = "5f0c2a1e-9b7d-4c3a-8e21-0d9f6b4a7c11";
        let base: BaseId = id.parse().expect("id");
        for (path, route) in [
            (format!("/v1/bases/{id}"), BASE_ROUTE),
            (format!("/v1/bases/{id}/query"), BASE_REST_ROUTE),
            (format!("/v1/bases/{id}/tables/t/rows?limit=5"), BASE_REST_ROUTE),
        ] {
            assert_eq!(fast_route(&request(&path)), Some((base.bucket(), route)), "{path}");
        }
        for path in [
            "/v1/bases".to_string(),
            "/v1/bases/".to_string(),
            "/v1/bases/not-a-uuid/query".to_string(),
            format!("/v1/bases/{id}/"),
            format!("/v1/bases/{id}/location"),
            format!("/v1/bases/{}/query", id.replace('5', "%35")),
            "/v1/cluster".to_string(),
            "/ui/".to_string(),
        ] {
            assert_eq!(fast_route(&request(&path)), None, "{path}");
        }
        let mut upgrade = request(&format!("/v1/bases/{id}/changes"));
        upgrade.headers_mut().insert("upgrade", "websocket".parse().expect("value"));
        assert_eq!(fast_route(&upgrade), None);
    }
}
