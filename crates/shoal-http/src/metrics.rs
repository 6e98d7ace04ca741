//! Request metrics: every process counts its HTTP requests, by matched
//! route, method and status, and their latency, under one pair of names.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// The names of a process's request counter and latency histogram.
#[derive(Clone, Copy, Debug)]
pub struct RequestMetrics {
    /// Requests, by route, method and status.
    pub total: &'static str,
    /// Latency in seconds, by route and method.
    pub duration: &'static str,
}

/// What every process counts its HTTP requests under.
pub const REQUEST_METRICS: RequestMetrics = RequestMetrics {
    total: "shoal_http_requests_total",
    duration: "shoal_http_request_duration_seconds",
};

/// One route's counter and histogram for one method and status.
struct Handles {
    method: axum::http::Method,
    status: u16,
    total: metrics::Counter,
    duration: metrics::Histogram,
}

/// The handles registered so far, by metric name and route: a request finds
/// its handles with one read lock and no allocation; only the first request
/// of a route, method and status registers (and allocates) them.
type HandleCache = HashMap<&'static str, HashMap<String, Vec<Handles>>>;

static HANDLES: LazyLock<RwLock<HandleCache>> = LazyLock::new(RwLock::default);

/// Runs the request and records it, by matched route, under `names`.
pub async fn track_as(names: RequestMetrics, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    record_request(names, route, &method, response.status().as_u16(), start.elapsed());
    response
}

/// Records one request of `route` under `names` (for handlers that are not
/// behind [`track_as`]).
pub fn record_request(
    names: RequestMetrics,
    route: &str,
    method: &axum::http::Method,
    status: u16,
    elapsed: std::time::Duration,
) {
    let elapsed = elapsed.as_secs_f64();
    let record = |h: &Handles| {
        h.total.increment(1);
        h.duration.record(elapsed);
    };
    {
        let cache = HANDLES.read().unwrap_or_else(|e| e.into_inner());
        let found = cache
            .get(names.total)
            .and_then(|routes| routes.get(route))
            .and_then(|hs| hs.iter().find(|h| h.method == method && h.status == status));
        if let Some(h) = found {
            record(h);
            return;
        }
    }
    let handles = Handles {
        total: metrics::counter!(names.total, "route" => route.to_string(), "method" => method.to_string(), "status" => status.to_string()),
        duration: metrics::histogram!(names.duration, "route" => route.to_string(), "method" => method.to_string()),
        method: method.clone(),
        status,
    };
    record(&handles);
    let mut cache = HANDLES.write().unwrap_or_else(|e| e.into_inner());
    cache.entry(names.total).or_default().entry(route.to_string()).or_default().push(handles);
}
