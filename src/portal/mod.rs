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
        // What common lab tests measure and what high and low results usually mean, in plain
        // words (curated data, in profiles/ with the rest of Braid's data).
        ("labs.json", "application/json", include_str!("../../profiles/lab-explanations.json")),
        // The questionnaire offered after a visit.
        ("feedback.json", "application/fhir+json", include_str!("../../profiles/feedback.questionnaire.json")),
    ]
    .into_iter()
    .map(|(name, content_type, body)| {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!("\"{}\"", crate::fhir::hex(&digest[..12]));
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
    // Compressed for slow connections (the script shrinks to about a quarter).
    config.service(
        web::scope("/portal")
            .wrap(actix_web::middleware::Compress::default())
            .route("", web::get().to(to_portal))
            .route("/", web::get().to(index))
            .route("/{file}", web::get().to(file)),
    );
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

    /// Whether `code` is `digits-check` with LOINC's mod-10 check digit: the digits in odd
    /// places from the right, read as a number and doubled, written after those in even places;
    /// the check digit brings the sum of all those digits to a multiple of ten.
    fn is_loinc(code: &str) -> bool {
        let Some((number, check)) = code.split_once('-') else { return false };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || check.len() != 1 {
            return false;
        }
        let from_right: Vec<u32> = number.bytes().rev().map(|b| u32::from(b - b'0')).collect();
        let odd: String = from_right.iter().step_by(2).rev().map(|d| d.to_string()).collect();
        let even: String = from_right.iter().skip(1).step_by(2).rev().map(|d| d.to_string()).collect();
        let doubled = (odd.parse::<u64>().unwrap_or(0) * 2).to_string();
        let sum: u32 = even.chars().chain(doubled.chars()).filter_map(|c| c.to_digit(10)).sum();
        check.parse::<u32>().ok() == Some((10 - sum % 10) % 10)
    }

    #[test]
    fn loinc_check_digits_are_checked() {
        for good in [
            "2345-7", "4548-4", "8867-4", "85354-9", "8480-6", "8462-4", "29463-7", "59408-5", "2708-6", "9279-1",
            "8310-5",
        ] {
            assert!(is_loinc(good), "{good}");
        }
        for bad in ["2345-8", "4548-0", "8867", "x-1", "12-34"] {
            assert!(!is_loinc(bad), "{bad}");
        }
    }

    #[test]
    fn the_lab_explanations_cover_the_common_tests_in_full() {
        let labs: serde_json::Value =
            serde_json::from_str(ASSETS.iter().find(|asset| asset.name == "labs.json").unwrap().body).unwrap();
        let tests = labs["tests"].as_object().unwrap();
        assert!(tests.len() >= 40, "at least the 40 most common lab tests: {}", tests.len());
        for common in ["2345-7", "4548-4", "2951-2", "2823-3", "2160-0", "718-7", "6690-2", "777-3", "2093-3", "3016-3"]
        {
            assert!(tests.contains_key(common), "{common}");
        }
        for (code, test) in tests {
            assert!(is_loinc(code), "{code} is not a LOINC code (its check digit is wrong)");
            for field in ["name", "measures", "high", "low"] {
                assert!(test[field].as_str().is_some_and(|text| text.len() > 3), "{code}: {field}");
            }
            assert!(test["learnMore"].as_str().unwrap().starts_with("https://medlineplus.gov/"), "{code}");
        }
    }

    #[test]
    fn the_feedback_questionnaire_is_valid_r4() {
        let body = ASSETS.iter().find(|asset| asset.name == "feedback.json").unwrap().body;
        let questionnaire: serde_json::Value = serde_json::from_str(body).unwrap();
        crate::fhir::validation::validator()
            .validate_value(crate::fhir::ResourceType::parse("Questionnaire").unwrap(), &questionnaire)
            .unwrap();
        let kinds: Vec<&str> =
            questionnaire["item"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["choice", "choice", "choice", "integer", "text"], "the kinds the portal's form draws");
    }

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
