//! The web console: a few static files (HTML, one ES module, CSS) compiled
//! into the binary and served at `/ui/` by every process. `/` redirects
//! there. The files need no token (they hold nothing secret); the pages
//! sign in with the admin token and call the public `/v1` API, so what the
//! console can do, a script can do too.

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

/// The console's routes, for any router's state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{*path}",
            get(|path: Result<Path<String>, PathRejection>| async move {
                match path {
                    Ok(Path(path)) => asset(&path),
                    // Not UTF-8: no file has such a name.
                    Err(_) => asset(""),
                }
            }),
        )
}

/// One file of the console, or 404.
fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        let body =
            shoal_types::Error::NotFound(format!("the console has no file {path}")).to_body();
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let mime = file.metadata.mimetype();
    let mut resp = file.data.into_owned().into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    // The files change with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Everything the pages load or call is on this origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; \
             connect-src 'self' ws: wss:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    resp
}
