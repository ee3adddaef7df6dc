//! The patient portal: a single-page SMART app served at `/portal/`.
//!
//! The Rust side only serves the app's files, compiled into the binary (no Node toolchain, no
//! CDN). The app itself (`assets/portal.js`) signs in through Braid's authorization server as the
//! built-in public client `braid-portal` (standalone launch, PKCE; see
//! [`crate::auth::clients::portal`]) and reads the person's unified record through the FHIR API
//! with the patient's token, exactly as a third-party app would: the portal has no access of its
//! own.
//!
//! The files are sent with a strict Content-Security-Policy (scripts, styles and connections to
//! this origin only, no inline code, no framing) and an ETag, so that a slow phone fetches each
//! file once and then only revalidates it.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

/// One file of the app.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// A strong validator: the body's SHA-256, quoted.
    etag: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        ("index.html", "text/html; charset=utf-8", include_str!("assets/index.html")),
        ("portal.js", "text/javascript; charset=utf-8", include_str!("assets/portal.js")),
        ("portal.css", "text/css; charset=utf-8", include_str!("assets/portal.css")),
    ]
    .into_iter()
    .map(|(name, content_type, body)| {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!("\"{}\"", digest.iter().take(12).map(|byte| format!("{byte:02x}")).collect::<String>());
        Asset { name, content_type, body, etag }
    })
    .collect()
});

/// What the portal's pages may load and reach: this origin only. `img-src data:` is for the
/// charts' and icons' inline SVG images; `media-src blob:` and `mediastream:` for the camera.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; media-src 'self' blob: mediastream:; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/portal", web::get().to(to_portal))
        .route("/portal/", web::get().to(index))
        .route("/portal/{file}", web::get().to(file));
}

/// `/portal` without its slash: the app's relative links need the folder form.
async fn to_portal() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/portal/")).finish()
}

async fn index(http: HttpRequest) -> HttpResponse {
    serve(&http, "index.html")
}

async fn file(http: HttpRequest, name: web::Path<String>) -> HttpResponse {
    serve(&http, &name)
}

fn serve(http: &HttpRequest, name: &str) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|asset| asset.name == name) else {
        return HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("no such file in the portal");
    };
    let fresh = http
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag));
    let mut response = if fresh {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok().content_type(asset.content_type).body(asset.body)
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    // Revalidated on every use: a new release's files are picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The authorization code arrives in the portal's URL: never pass it on.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_served() {
        let index = ASSETS.iter().find(|asset| asset.name == "index.html").unwrap().body;
        for name in ["portal.js", "portal.css"] {
            assert!(index.contains(name), "index.html loads {name}");
            assert!(ASSETS.iter().any(|asset| asset.name == name));
        }
        // No inline script or style: the policy would refuse them.
        assert!(!index.contains("<script>") && !index.contains("style="), "no inline code in index.html");
    }
}
