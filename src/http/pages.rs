//! The pages for people (PROTOCOL §11): `/demo` on the public listener and `/admin/` on
//! the admin listener, with their assets embedded in the binary (`rust-embed`).
//!
//! ```text
//! public listener (when TICKETGATE_DEMO=on)    admin listener (no key needed for the page)
//!   GET /demo, /demo/      pages/demo/index.html   GET /admin, /admin/   pages/admin/index.html
//!   GET /demo/<asset>      pages/demo/<asset>      GET /admin/<asset>    pages/admin/<asset>
//!   GET /demo/client/<f>   client-sdk/js/src/<f>
//!   GET /demo/page.css     pages/shared/page.css   GET /admin/page.css   pages/shared/page.css
//! ```
//!
//! Every answer of these routes, a 404 included, carries a strict
//! `Content-Security-Policy` (scripts, styles and connections to this origin only, no
//! inline script or style, no framing), `X-Content-Type-Options: nosniff`, and an
//! `ETag` with `Cache-Control: no-cache` (a browser revalidates and gets 304).
//!
//! **Invariant:** an asset name is looked up in the embedded set only, never on disk,
//! and a name with `..`, a backslash, an empty segment or a character outside
//! `[A-Za-z0-9._/-]` is refused before the lookup: no path reaches a file outside
//! these folders.

use std::borrow::Cow;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::{EmbeddedFile, RustEmbed};

use super::error::ApiError;

/// The demo page's assets.
#[derive(RustEmbed)]
#[folder = "pages/demo/"]
struct DemoAssets;

/// The browser client (`ticketgate-client`), served as-is for the demo page to import.
/// Absent (nothing served) when the client's sources are not in the tree.
#[derive(RustEmbed)]
#[folder = "client-sdk/js/src/"]
#[allow_missing = true]
struct ClientAssets;

/// The admin page's assets.
#[derive(RustEmbed)]
#[folder = "pages/admin/"]
struct AdminAssets;

/// What both pages use (the stylesheet), served under each page's own prefix: the
/// pages live on different listeners, and a page's policy admits its own origin only.
#[derive(RustEmbed)]
#[folder = "pages/shared/"]
struct SharedAssets;

/// The policy of every page answer. `default-src 'none'`: whatever is not named here
/// (fonts, frames, workers, objects) is refused. `'self'` in `connect-src` covers the
/// WebSocket of the same host and port (CSP Level 3).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The public listener's page routes: empty when the demo is switched off, so its
/// paths answer the listener's ordinary 404.
pub(crate) fn demo<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/demo", get(demo_index))
        .route("/demo/", get(demo_index))
        .route("/demo/client/{*path}", get(client_asset))
        .route("/demo/{*path}", get(demo_asset))
        .layer(middleware::map_response(page_headers))
}

/// The admin listener's page routes. The page itself needs no key (it asks for it);
/// every call it makes does.
pub(crate) fn admin<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(admin_index))
        .route("/admin/", get(admin_index))
        .route("/admin/{asset}", get(admin_asset))
        .layer(middleware::map_response(page_headers))
}

async fn demo_index(headers: HeaderMap) -> Response {
    serve(DemoAssets::get("index.html"), "index.html", &headers)
}

async fn demo_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    page_asset::<DemoAssets>(&path, &headers)
}

async fn client_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    lookup::<ClientAssets>(&path, &headers)
}

async fn admin_index(headers: HeaderMap) -> Response {
    serve(AdminAssets::get("index.html"), "index.html", &headers)
}

async fn admin_asset(Path(asset): Path<String>, headers: HeaderMap) -> Response {
    page_asset::<AdminAssets>(&asset, &headers)
}

/// The embedded asset `path` of `A`, or 404 for a name that is not a plain relative
/// path or not embedded.
fn lookup<A: RustEmbed>(path: &str, headers: &HeaderMap) -> Response {
    if !is_plain_relative(path) {
        return ApiError::NotFound.into_response();
    }
    serve(A::get(path), path, headers)
}

/// A page's asset: its own, or one both pages share.
fn page_asset<A: RustEmbed>(path: &str, headers: &HeaderMap) -> Response {
    if is_plain_relative(path) && A::get(path).is_none() {
        return lookup::<SharedAssets>(path, headers);
    }
    lookup::<A>(path, headers)
}

/// `a/b.js`, not `../x`, `/x`, `a//b`, `a\b` or anything with other characters.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// The file's answer: 200 with its type and ETag, or 304 when the browser's copy is
/// current, or 404 when there is no such file.
fn serve(file: Option<EmbeddedFile>, name: &str, headers: &HeaderMap) -> Response {
    let Some(file) = file else {
        return ApiError::NotFound.into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|given| given.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match file.data {
            Cow::Borrowed(bytes) => axum::body::Body::from(bytes),
            Cow::Owned(bytes) => axum::body::Body::from(bytes),
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        );
        response
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The media type of an asset by its extension. A table by hand rather than a crate:
/// these folders hold a handful of kinds, and an unknown kind must not be guessed
/// into something a browser would run.
fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    match extension {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The headers of every page answer, errors included. (No `Cross-Origin-Opener-Policy`:
/// the pages open no window, and Chromium reports the header as an error on a page
/// served over plain HTTP, where the demo must still say what is wrong.)
async fn page_headers(mut response: Response) -> Response {
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_names_are_looked_up() {
        for good in ["app.js", "index.html", "a/b.js", "qr-1.svg"] {
            assert!(is_plain_relative(good), "{good}");
        }
        for bad in [
            "",
            "../Cargo.toml",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./a",
            "a/.",
            "%2e%2e/x",
            "a b",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn scripts_and_pages_get_their_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
