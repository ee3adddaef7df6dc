//! SMART App Launch: the authorization code flow as a browser and an app go through it (login,
//! second factor, consent, code with PKCE), refresh tokens, revocation and introspection, and
//! the refusals of the (g)(10) groups: invalid `aud`, client, redirect URI, PKCE, codes, TOTP
//! codes, and the login limits.

use std::collections::HashMap;

use braid::auth::clients::{self, NewClient, NewCredential};
use braid::auth::users::{self, NewUser, Role};
use braid::config::TotpPolicy;
use serde_json::json;

use crate::helpers::{AuthApp, Reply, TestApp};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const STYLE: &str = "https://portal.example/smart-style.json";
const PASSWORD: &str = "correct horse battery";

struct Launch {
    app: TestApp,
    store: braid::store::Store,
    data: std::path::PathBuf,
    origin: String,
    client_id: String,
    /// A client that keeps a secret (confidential, symmetric).
    confidential: (String, String),
    /// Does not follow redirects: each step is looked at.
    browser: reqwest::Client,
}

async fn spawn(totp: TotpPolicy) -> Launch {
    let server = crate::helpers::spawn_auth_app_with(|settings| {
        settings.totp = totp;
        settings.smart_style_url = Some(STYLE.into());
    })
    .await;
    let store = server.store.clone();
    let scope = "launch launch/patient openid fhirUser offline_access patient/*.cruds user/*.rs";
    let public = clients::add(
        &store,
        NewClient {
            name: "phone app".into(),
            scope: scope.into(),
            grant_types: Vec::new(),
            redirect_uris: vec![REDIRECT.into()],
            credential: NewCredential::None,
            source: None,
        },
        braid::auth::now_secs(),
    )
    .await
    .unwrap();
    let confidential = clients::add(
        &store,
        NewClient {
            name: "portal".into(),
            scope: scope.into(),
            grant_types: Vec::new(),
            redirect_uris: vec![REDIRECT.into()],
            credential: NewCredential::Secret,
            source: None,
        },
        braid::auth::now_secs(),
    )
    .await
    .unwrap();
    for (username, patient) in [("ann", "A"), ("bob", "B")] {
        let user = NewUser {
            username: username.into(),
            password: PASSWORD.into(),
            role: Role::Patient,
            patient: Some(patient.into()),
            fhir_user: None,
        };
        users::add(&store, user, braid::auth::now_secs()).await.unwrap();
    }
    let doctor = NewUser {
        username: "dr-lee".into(),
        password: PASSWORD.into(),
        role: Role::Practitioner,
        patient: None,
        fhir_user: Some("Practitioner/77".into()),
    };
    users::add(&store, doctor, braid::auth::now_secs()).await.unwrap();
    seed(&server).await;
    let (app, data) = (server.app, server.data);
    let base = app.base.clone();
    let browser = crate::helpers::client_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Launch {
        store,
        data,
        origin: base.trim_end_matches("/fhir").to_owned(),
        app,
        client_id: public.client.client_id,
        confidential: (confidential.client.client_id, confidential.secret.unwrap()),
        browser,
    }
}

/// Patients A and B, each with an observation, written with a token the tests sign.
async fn seed(server: &AuthApp) {
    let (app, admin) = (&server.app, server.token("seed", "system/*.cruds", None));
    let mut entries = Vec::new();
    for patient in ["A", "B"] {
        entries.push(json!({"resource": {"resourceType": "Patient", "id": patient, "name": [{"family": format!("Family{patient}")}]},
            "request": {"method": "PUT", "url": format!("Patient/{patient}")}}));
        entries.push(
            json!({"resource": {"resourceType": "Observation", "id": format!("{patient}-obs"), "status": "final",
            "code": {"text": "note"}, "subject": {"reference": format!("Patient/{patient}")}},
            "request": {"method": "PUT", "url": format!("Observation/{patient}-obs")}}),
        );
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let reply = app.post_with_token("", &admin, &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// A browser step's answer: status, where it redirects, the flow cookie it sets, its page.
struct Step {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    html: String,
}

impl Step {
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.html.find(&marker).unwrap_or_else(|| panic!("no {name} in {}", self.html)) + marker.len();
        self.html[start..].split('"').next().unwrap().to_owned()
    }

    fn redirect_query(&self) -> HashMap<String, String> {
        let location = self.location.as_deref().expect("a redirect");
        let query = location.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| {
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
                };
                (decode(name), decode(value))
            })
            .collect()
    }
}

impl Launch {
    async fn step(&self, request: reqwest::RequestBuilder, cookie: Option<&str>) -> Step {
        let request = match cookie {
            Some(cookie) => request.header("cookie", format!("braid_flow={cookie}")),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("braid_flow="))
            .map(|v| v.split(';').next().unwrap().to_owned());
        let html = response.text().await.unwrap();
        Step { status, location, cookie, html }
    }

    fn authorize_url(&self, client_id: &str, params: &[(&str, &str)]) -> String {
        let mut query: Vec<(String, String)> = vec![
            ("response_type".into(), "code".into()),
            ("client_id".into(), client_id.into()),
            ("redirect_uri".into(), REDIRECT.into()),
            ("scope".into(), "launch/patient openid fhirUser offline_access patient/*.rs".into()),
            ("state".into(), "st4te".into()),
            ("aud".into(), self.app.base.clone()),
            ("code_challenge".into(), braid::auth::flow::s256(VERIFIER)),
            ("code_challenge_method".into(), "S256".into()),
        ];
        for (name, value) in params {
            query.retain(|(n, _)| n != name);
            if !value.is_empty() {
                query.push((name.to_string(), value.to_string()));
            }
        }
        let encoded: Vec<String> = query
            .iter()
            .map(|(n, v)| {
                format!("{n}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
            })
            .collect();
        format!("{}/auth/authorize?{}", self.origin, encoded.join("&"))
    }

    fn form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let body: Vec<String> = fields
            .iter()
            .map(|(n, v)| {
                format!("{n}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
            })
            .collect();
        self.browser
            .post(format!("{}{path}", self.origin))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
    }

    /// Up to the consent page: authorize, password, second factor (enrolling the first time).
    /// Returns the cookie of the flow.
    async fn sign_in(&self, authorize_url: &str, username: &str) -> String {
        let start = self.step(self.browser.get(authorize_url), None).await;
        assert_eq!(start.status, 302, "{}", start.html);
        assert_eq!(start.location.as_deref(), Some("/auth/login"));
        let mut cookie = start.cookie.expect("a flow cookie");
        let login = self.step(self.browser.get(format!("{}/auth/login", self.origin)), Some(&cookie)).await;
        assert_eq!(login.status, 200);
        let csrf = login.hidden("csrf");
        let signed = self
            .step(
                self.form("/auth/login", &[("csrf", &csrf), ("username", username), ("password", PASSWORD)]),
                Some(&cookie),
            )
            .await;
        assert_eq!(signed.status, 302, "{}", signed.html);
        cookie = signed.cookie.expect("the flow moves on");
        if signed.location.as_deref() == Some("/auth/totp") {
            let code = self.totp_code(&cookie, username, 0).await;
            let passed = self.step(self.form("/auth/totp", &[("csrf", &csrf), ("code", &code)]), Some(&cookie)).await;
            assert_eq!(passed.status, 302, "{}", passed.html);
            assert_eq!(passed.location.as_deref(), Some("/auth/consent"));
            cookie = passed.cookie.unwrap();
        }
        cookie
    }

    /// A code from the user's authenticator: the key shown at enrolment, remembered per user.
    async fn totp_code(&self, cookie: &str, username: &str, steps_ahead: u64) -> String {
        let page = self.step(self.browser.get(format!("{}/auth/totp", self.origin)), Some(cookie)).await;
        assert_eq!(page.status, 200, "{}", page.html);
        let mut secrets = SECRETS.lock().unwrap();
        if page.html.contains("data-secret") {
            let marker = "data-secret=\"";
            let start = page.html.find(marker).unwrap() + marker.len();
            let key = page.html[start..].split('"').next().unwrap().to_owned();
            assert!(page.html.contains("<svg"), "the enrolment page shows a QR code");
            secrets.insert(format!("{}:{username}", self.origin), base32_decode(&key));
        }
        let secret = secrets.get(&format!("{}:{username}", self.origin)).expect("enrolled earlier").clone();
        let step = braid::auth::now_secs() / braid::auth::totp::STEP_SECS + steps_ahead;
        braid::auth::totp::code_at(&secret, step)
    }

    /// Consents to `scopes` (all offered when `None`) and returns the redirect's parameters.
    async fn consent(&self, cookie: &str, scopes: Option<&[&str]>) -> HashMap<String, String> {
        let page = self.step(self.browser.get(format!("{}/auth/consent", self.origin)), Some(cookie)).await;
        assert_eq!(page.status, 200, "{}", page.html);
        let csrf = page.hidden("csrf");
        let offered: Vec<String> = page
            .html
            .split("name=\"scope\" value=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().replace("&#39;", "'"))
            .collect();
        let chosen: Vec<&str> = match scopes {
            Some(scopes) => scopes.to_vec(),
            None => offered.iter().map(String::as_str).collect(),
        };
        let mut fields = vec![("csrf", csrf.as_str()), ("decision", "allow")];
        fields.extend(chosen.iter().map(|s| ("scope", *s)));
        let done = self.step(self.form("/auth/consent", &fields), Some(cookie)).await;
        assert_eq!(done.status, 302, "{}", done.html);
        assert!(done.location.as_deref().unwrap().starts_with(REDIRECT));
        done.redirect_query()
    }

    async fn token(&self, fields: &[(&str, &str)]) -> Reply {
        self.app.send(self.form("/auth/token", fields)).await
    }

    async fn exchange(&self, code: &str) -> Reply {
        self.exchange_as(code, &self.client_id).await
    }

    /// Exchanges `code` as the public client `client_id` (no credentials, `client_id` in the form).
    async fn exchange_as(&self, code: &str, client_id: &str) -> Reply {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", client_id),
        ])
        .await
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.app.send(self.app.client.get(self.app.url(path)).bearer_auth(token)).await
    }
}

const VERIFIER: &str = "dBjftJeZ4CVP-mJ0kDfzDNWoEM0ryoDAW5UmfPmEyW8-the-verifier";

static SECRETS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Vec<u8>>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

pub(crate) fn base32_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let value = alphabet.iter().position(|&a| a == c).unwrap() as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_standalone_patient_launch_yields_a_token_for_the_patients_record_with_a_rotating_refresh_token() {
    let launch = spawn(TotpPolicy::Required).await;
    let cookie = launch.sign_in(&launch.authorize_url(&launch.client_id, &[("nonce", "n0nce")]), "ann").await;
    let back = launch.consent(&cookie, None).await;
    assert_eq!(back["state"], "st4te");
    let reply = launch.exchange(&back["code"]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = &reply.body;
    assert_eq!(body["patient"], "A");
    assert_eq!(body["need_patient_banner"], true);
    assert_eq!(body["smart_style_url"], STYLE);
    assert_eq!(body["fhirUser"], format!("{}/Patient/A", launch.app.base));
    assert_eq!(body["scope"], "launch/patient openid fhirUser offline_access patient/*.rs");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    // The id_token: RS256, signed by a key of the JWKS, for this client, with the nonce and the
    // user's fhirUser, which the access token can read.
    let id_token = body["id_token"].as_str().expect("an id_token for openid");
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(
        launch.app.send(launch.app.client.get(format!("{}/auth/jwks", launch.origin))).await.body,
    )
    .unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).expect("the kid is published"))
            .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&launch.client_id]);
    validation.set_issuer(&[&launch.app.base]);
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &validation).expect("a valid id_token").claims;
    assert_eq!(claims["nonce"], "n0nce");
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["fhirUser"], body["fhirUser"]);
    let fhir_user = body["fhirUser"].as_str().unwrap();
    let own_record = launch.get(fhir_user.strip_prefix(&launch.app.base).unwrap(), &access).await;
    assert_eq!(own_record.status, 200);

    // The token reaches A's record and nothing of B's.
    let own = launch.get("/Observation", &access).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["entry"].as_array().unwrap().len(), 1);
    assert_eq!(own.body["entry"][0]["resource"]["id"], "A-obs");
    assert_eq!(launch.get("/Patient/B", &access).await.status, 404);
    assert_eq!(launch.get("/Patient/A", &access).await.status, 200);

    // The code works once.
    let again = launch.exchange(&back["code"]).await;
    assert_eq!((again.status, again.body["error"].as_str()), (400, Some("invalid_grant")));

    // Refresh: a new pair; a narrower scope is allowed, a wider one is not.
    let refreshed = launch
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", &launch.client_id)])
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let second = refreshed.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, refresh);
    let narrower = launch
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &second),
            ("client_id", &launch.client_id),
            ("scope", "patient/Observation.rs"),
        ])
        .await;
    assert_eq!(narrower.status, 200, "{}", narrower.text);
    assert_eq!(narrower.body["scope"], "patient/Observation.rs");
    let third = narrower.body["refresh_token"].as_str().unwrap().to_owned();
    let narrow_access = narrower.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(launch.get("/Patient/A", &narrow_access).await.status, 403);
    let wider = launch
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &third),
            ("client_id", &launch.client_id),
            ("scope", "patient/*.cruds"),
        ])
        .await;
    assert_eq!(wider.body["error"], "invalid_scope");

    // Reusing a refresh token already rotated revokes the whole grant: the current access
    // token stops working at once, and so does the current refresh token.
    let reused = launch
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", &launch.client_id)])
        .await;
    assert_eq!(reused.body["error"], "invalid_grant");
    assert_eq!(launch.get("/Observation", &narrow_access).await.status, 401);
    let after = launch
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &third), ("client_id", &launch.client_id)])
        .await;
    assert_eq!(after.body["error"], "invalid_grant");
}

#[tokio::test]
async fn unticked_scopes_are_not_granted_and_a_denial_goes_back_with_the_state() {
    let launch = spawn(TotpPolicy::Off).await;
    let cookie = launch.sign_in(&launch.authorize_url(&launch.client_id, &[]), "ann").await;
    let back = launch.consent(&cookie, Some(&["launch/patient", "patient/*.rs"])).await;
    let reply = launch.exchange(&back["code"]).await;
    assert_eq!(reply.body["scope"], "launch/patient patient/*.rs");
    assert!(reply.body.get("refresh_token").is_none(), "no offline_access, no refresh token");

    let limited = launch
        .authorize_url(&launch.client_id, &[("scope", "launch/patient patient/Patient.rs patient/Observation.rs")]);
    let cookie = launch.sign_in(&limited, "ann").await;
    let back = launch.consent(&cookie, Some(&["launch/patient", "patient/Patient.rs"])).await;
    let token = launch.exchange(&back["code"]).await.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(launch.get("/Patient/A", &token).await.status, 200);
    assert_eq!(launch.get("/Observation?patient=A", &token).await.status, 403);

    let cookie = launch.sign_in(&launch.authorize_url(&launch.client_id, &[]), "ann").await;
    let page = launch.step(launch.browser.get(format!("{}/auth/consent", launch.origin)), Some(&cookie)).await;
    let csrf = page.hidden("csrf");
    let denied =
        launch.step(launch.form("/auth/consent", &[("csrf", &csrf), ("decision", "deny")]), Some(&cookie)).await;
    let query = denied.redirect_query();
    assert_eq!((query["error"].as_str(), query["state"].as_str()), ("access_denied", "st4te"));
    // A form without the flow's csrf value is refused.
    let forged =
        launch.step(launch.form("/auth/consent", &[("csrf", "guess"), ("decision", "allow")]), Some(&cookie)).await;
    assert_eq!(forged.status, 400);
    assert!(forged.location.is_none());
}

#[tokio::test]
async fn bad_authorization_requests_are_refused_without_redirecting_when_the_client_or_audience_is_wrong() {
    let launch = spawn(TotpPolicy::Off).await;
    for (params, why) in [
        (vec![("aud", "https://elsewhere.example/fhir")], "aud"),
        (vec![("redirect_uri", "https://evil.example/cb")], "redirect"),
    ] {
        let step = launch.step(launch.browser.get(launch.authorize_url(&launch.client_id, &params)), None).await;
        assert_eq!(step.status, 400, "{why}");
        assert!(step.location.is_none(), "{why}: no redirect");
        assert!(step.cookie.is_none(), "{why}: no flow");
    }
    let unknown = launch.step(launch.browser.get(launch.authorize_url("no-such-client", &[])), None).await;
    assert_eq!((unknown.status, unknown.location.is_none()), (400, true));
    for (params, error) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (vec![("scope", "system/*.rs")], "invalid_scope"),
        (vec![("response_type", "token")], "unsupported_response_type"),
    ] {
        let step = launch.step(launch.browser.get(launch.authorize_url(&launch.client_id, &params)), None).await;
        assert_eq!(step.status, 302, "{params:?}");
        let query = step.redirect_query();
        assert_eq!(query["error"], error, "{params:?}");
        assert_eq!(query["state"], "st4te");
    }
}

#[tokio::test]
async fn codes_need_the_right_verifier_client_and_redirect_uri() {
    let launch = spawn(TotpPolicy::Off).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let cookie = launch.sign_in(&launch.authorize_url(&launch.client_id, &[]), "ann").await;
        codes.push(launch.consent(&cookie, None).await["code"].clone());
    }
    let base = |code: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), REDIRECT.to_owned()),
            ("code_verifier".to_owned(), VERIFIER.to_owned()),
            ("client_id".to_owned(), launch.client_id.clone()),
        ]
    };
    let with = |code: &str, name: &str, value: &str| {
        let mut fields = base(code);
        fields.retain(|(n, _)| n != name);
        if !value.is_empty() {
            fields.push((name.to_owned(), value.to_owned()));
        }
        fields
    };
    for (fields, why) in [
        (with(&codes[0], "code_verifier", "the-wrong-verifier-of-enough-length-0123456789"), "wrong verifier"),
        (with(&codes[1], "code_verifier", ""), "no verifier"),
        (with(&codes[2], "code_verifier", " "), "blank verifier"),
        (with(&codes[3], "redirect_uri", "http://127.0.0.1:9/other"), "another redirect_uri"),
        (with("made-up-code", "code", "made-up-code"), "invalid code"),
    ] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let reply = launch.token(&fields).await;
        assert_eq!((reply.status, reply.body["error"].as_str()), (400, Some("invalid_grant")), "{why}: {}", reply.text);
    }
    // A failed exchange used the code up.
    let retried = launch.exchange(&codes[0]).await;
    assert_eq!(retried.body["error"], "invalid_grant");
    // A code of the public client, claimed by another client.
    let (other, secret) = &launch.confidential;
    let stolen = launch
        .app
        .send(
            launch
                .form(
                    "/auth/token",
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &codes[4]),
                        ("redirect_uri", REDIRECT),
                        ("code_verifier", VERIFIER),
                    ],
                )
                .basic_auth(other, Some(secret)),
        )
        .await;
    assert_eq!(stolen.body["error"], "invalid_grant");
    // An unknown client id.
    let unknown = launch.token(&[("grant_type", "authorization_code"), ("code", "x"), ("client_id", "nobody")]).await;
    assert_eq!(unknown.body["error"], "invalid_client");
}

#[tokio::test]
async fn a_confidential_client_authenticates_and_revocation_and_introspection_answer_it() {
    let launch = spawn(TotpPolicy::Off).await;
    let (client_id, secret) = launch.confidential.clone();
    let cookie = launch.sign_in(&launch.authorize_url(&client_id, &[]), "ann").await;
    let code = launch.consent(&cookie, None).await["code"].clone();
    // Without its secret, a confidential client gets nothing.
    let unauthenticated = launch.exchange_as(&code, &client_id).await;
    assert_eq!(unauthenticated.body["error"], "invalid_client");
    let cookie = launch.sign_in(&launch.authorize_url(&client_id, &[]), "ann").await;
    let code = launch.consent(&cookie, None).await["code"].clone();
    let reply = launch
        .app
        .send(
            launch
                .form(
                    "/auth/token",
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", REDIRECT),
                        ("code_verifier", VERIFIER),
                    ],
                )
                .basic_auth(&client_id, Some(&secret)),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let access = reply.body["access_token"].as_str().unwrap().to_owned();
    let refresh = reply.body["refresh_token"].as_str().unwrap().to_owned();

    let introspect = |token: String| {
        let launch = &launch;
        let (client_id, secret) = (client_id.clone(), secret.clone());
        async move {
            launch
                .app
                .send(launch.form("/auth/introspect", &[("token", &token)]).basic_auth(&client_id, Some(&secret)))
                .await
        }
    };
    let active = introspect(access.clone()).await;
    assert_eq!(active.status, 200, "{}", active.text);
    assert_eq!(active.body["active"], true);
    assert_eq!(active.body["patient"], "A");
    assert_eq!(active.body["client_id"], client_id.as_str());
    assert_eq!(active.body["sub"], "ann");
    assert!(active.body["scope"].as_str().unwrap().contains("patient/*.rs"));
    assert!(active.body["exp"].as_u64().unwrap() > braid::auth::now_secs());
    assert_eq!(introspect("garbage".into()).await.body, json!({"active": false}));
    // Nobody else may ask.
    let anonymous = launch.app.send(launch.form("/auth/introspect", &[("token", &access)])).await;
    assert!(anonymous.status == 400 || anonymous.status == 401, "{}", anonymous.text);

    // Revoking the access token: it stops working at once; its refresh token too.
    let revoked =
        launch.app.send(launch.form("/auth/revoke", &[("token", &access)]).basic_auth(&client_id, Some(&secret))).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(launch.get("/Patient/A", &access).await.status, 401);
    assert_eq!(introspect(access.clone()).await.body["active"], false);
    let refreshed = launch
        .app
        .send(
            launch
                .form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
                .basic_auth(&client_id, Some(&secret)),
        )
        .await;
    assert_eq!(refreshed.body["error"], "invalid_grant");
    // Unknown tokens: 200 all the same.
    let unknown = launch
        .app
        .send(launch.form("/auth/revoke", &[("token", "nothing")]).basic_auth(&client_id, Some(&secret)))
        .await;
    assert_eq!(unknown.status, 200);
}

#[tokio::test]
async fn second_factor_codes_must_be_right_and_fresh_and_failed_logins_are_limited() {
    let launch = spawn(TotpPolicy::Required).await;
    // Enrol once (the key is shown), then sign in again: the key is not shown any more.
    let cookie = launch.sign_in(&launch.authorize_url(&launch.client_id, &[]), "ann").await;
    launch.consent(&cookie, None).await;

    let start = launch.step(launch.browser.get(launch.authorize_url(&launch.client_id, &[])), None).await;
    let cookie = start.cookie.unwrap();
    let login = launch.step(launch.browser.get(format!("{}/auth/login", launch.origin)), Some(&cookie)).await;
    let csrf = login.hidden("csrf");
    let signed = launch
        .step(
            launch.form("/auth/login", &[("csrf", &csrf), ("username", "ann"), ("password", PASSWORD)]),
            Some(&cookie),
        )
        .await;
    let cookie = signed.cookie.unwrap();
    let page = launch.step(launch.browser.get(format!("{}/auth/totp", launch.origin)), Some(&cookie)).await;
    assert!(!page.html.contains("data-secret"), "the key is shown only until enrolment");
    // The code just used at enrolment (same time step) is refused, as is a wrong one.
    let used = launch.totp_code(&cookie, "ann", 0).await;
    let replay = launch.step(launch.form("/auth/totp", &[("csrf", &csrf), ("code", &used)]), Some(&cookie)).await;
    assert_eq!(replay.status, 401, "a replayed code");
    let wrong = launch.step(launch.form("/auth/totp", &[("csrf", &csrf), ("code", "000000")]), Some(&cookie)).await;
    assert_eq!(wrong.status, 401);
    // The next step's code is accepted.
    let next = launch.totp_code(&cookie, "ann", 1).await;
    let passed = launch.step(launch.form("/auth/totp", &[("csrf", &csrf), ("code", &next)]), Some(&cookie)).await;
    assert_eq!(passed.location.as_deref(), Some("/auth/consent"), "{}", passed.html);
    // A flow cookie cannot skip the second factor: the consent page wants both.
    let skip = launch.step(launch.browser.get(format!("{}/auth/consent", launch.origin)), Some(&cookie)).await;
    assert_eq!(skip.status, 302);

    // Failed logins: five per account, then 429 for it, while another account from the same
    // address may still try.
    let start = launch.step(launch.browser.get(launch.authorize_url(&launch.client_id, &[])), None).await;
    let cookie = start.cookie.unwrap();
    let login = launch.step(launch.browser.get(format!("{}/auth/login", launch.origin)), Some(&cookie)).await;
    let csrf = login.hidden("csrf");
    for attempt in 0..5 {
        let failed = launch
            .step(
                launch.form("/auth/login", &[("csrf", &csrf), ("username", "bob"), ("password", "wrong password")]),
                Some(&cookie),
            )
            .await;
        assert_eq!(failed.status, 401, "attempt {attempt}");
        assert!(failed.html.contains("wrong"));
    }
    let limited = launch
        .step(
            launch.form("/auth/login", &[("csrf", &csrf), ("username", "bob"), ("password", PASSWORD)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(limited.status, 429, "even the right password, once the account is limited");
    let other = launch
        .step(
            launch.form("/auth/login", &[("csrf", &csrf), ("username", "ann"), ("password", PASSWORD)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(other.status, 302, "{}", other.html);
    // An unknown account fails like a wrong password.
    let unknown = launch
        .step(
            launch.form("/auth/login", &[("csrf", &csrf), ("username", "nobody"), ("password", PASSWORD)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.html.contains("The username or the password is wrong."));

    // Every wrong answer is in the trail, for the operator: wrong codes, wrong passwords and the
    // unknown account, each with the address it came from (not the attempts the limit refused).
    let operator = crate::helpers::sign_token(&launch.store, &launch.app.base, "ops", "system/AuditEvent.rs", None);
    let trail = launch.get("/AuditEvent?subtype=110122&_count=100", &operator).await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    let events: Vec<(String, String, String)> = trail.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .map(|e| {
            assert_eq!(e["outcome"], "4");
            assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1", "{e}");
            let who = e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap().to_owned();
            (who, e["outcomeDesc"].as_str().unwrap().to_owned(), e["type"]["code"].as_str().unwrap().to_owned())
        })
        .collect();
    let count = |who: &str, why: &str| events.iter().filter(|(w, d, _)| w == who && d.contains(why)).count();
    assert_eq!(count("ann", "second-factor"), 2, "{events:?}");
    assert_eq!(count("bob", "password"), 5, "{events:?}");
    assert_eq!(events.iter().filter(|(who, _, _)| who == "bob").count(), 5, "{events:?}");
    assert_eq!(count("nobody", "password"), 1, "{events:?}");
    assert!(events.iter().all(|(_, _, code)| code == "110114"));
}

#[tokio::test]
async fn an_ehr_launch_puts_its_patient_in_context_for_a_practitioner() {
    let launch = spawn(TotpPolicy::Off).await;
    let store_request = |client: &str, patient: &str| braid::auth::admin::AdminRequest::CreateLaunch {
        client_id: client.to_owned(),
        patient: patient.to_owned(),
    };
    let socket = braid::auth::admin::socket_path(&launch.data);
    let send = |request| match braid::auth::admin::send(&socket, &request).unwrap() {
        braid::auth::admin::Sent::Answered(answer) => answer,
        braid::auth::admin::Sent::NoServer => panic!("the server answers on its socket"),
    };
    let issued = send(store_request(&launch.client_id, "B")).unwrap();
    let launch_value = issued["launch"].as_str().unwrap().to_owned();
    assert!(send(store_request("nobody", "B")).is_err());

    let scope = "launch openid fhirUser patient/*.rs";
    let url = launch.authorize_url(&launch.client_id, &[("launch", &launch_value), ("scope", scope)]);
    let cookie = launch.sign_in(&url, "dr-lee").await;
    let back = launch.consent(&cookie, None).await;
    let reply = launch.exchange(&back["code"]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["patient"], "B");
    assert_eq!(reply.body["need_patient_banner"], false);
    assert_eq!(reply.body["fhirUser"], format!("{}/Practitioner/77", launch.app.base));
    let token = reply.body["access_token"].as_str().unwrap();
    assert_eq!(launch.get("/Observation", token).await.body["entry"][0]["resource"]["id"], "B-obs");
    assert_eq!(launch.get("/Patient/A", token).await.status, 404);

    // A launch of another client, or a made-up one, goes back to the app as an error.
    let (other, _) = launch.confidential.clone();
    let foreign = send(store_request(&other, "A")).unwrap()["launch"].as_str().unwrap().to_owned();
    for value in [foreign.as_str(), "made-up"] {
        let step = launch
            .step(
                launch.browser.get(launch.authorize_url(&launch.client_id, &[("launch", value), ("scope", scope)])),
                None,
            )
            .await;
        assert_eq!(step.status, 302);
        assert_eq!(step.redirect_query()["error"], "invalid_request");
    }
}

#[tokio::test]
async fn apps_register_themselves_patient_facing_anonymously_and_anything_more_with_an_initial_token() {
    let launch = spawn(TotpPolicy::Off).await;
    let register = |body: serde_json::Value, token: Option<String>| {
        let launch = &launch;
        async move {
            let mut request = launch
                .app
                .client
                .post(format!("{}/auth/register", launch.origin))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            launch.app.send(request).await
        }
    };
    let patient_app = json!({"client_name": "my phone", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"], "scope": "launch/patient openid fhirUser offline_access patient/*.rs"});
    let registered = register(patient_app, None).await;
    assert_eq!(registered.status, 201, "{}", registered.text);
    let client_id = registered.body["client_id"].as_str().unwrap().to_owned();
    assert!(registered.body.get("client_secret").is_none());
    // The new app goes through a launch like any other.
    let cookie = launch.sign_in(&launch.authorize_url(&client_id, &[]), "ann").await;
    let code = launch.consent(&cookie, None).await["code"].clone();
    let token = launch.exchange_as(&code, &client_id).await;
    assert_eq!(token.body["patient"], "A", "{}", token.text);

    // More than patient-facing access needs an initial access token.
    for body in [
        json!({"redirect_uris": [REDIRECT], "grant_types": ["client_credentials"], "scope": "system/*.rs", "token_endpoint_auth_method": "client_secret_basic"}),
        json!({"redirect_uris": [REDIRECT], "scope": "user/*.rs", "token_endpoint_auth_method": "none"}),
        json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://app.example.org/jwks"}),
    ] {
        let refused = register(body.clone(), None).await;
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (401, Some("invalid_token")),
            "{body}: {}",
            refused.text
        );
    }
    let bad_redirect =
        register(json!({"redirect_uris": ["http://app.example.org/cb"], "token_endpoint_auth_method": "none"}), None)
            .await;
    assert_eq!((bad_redirect.status, bad_redirect.body["error"].as_str()), (400, Some("invalid_redirect_uri")));
    let malformed = launch
        .app
        .send(
            launch
                .app
                .client
                .post(format!("{}/auth/register", launch.origin))
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!((malformed.status, malformed.body["error"].as_str()), (400, Some("invalid_client_metadata")));

    // The operator's token allows one registration of a backend service.
    let socket = braid::auth::admin::socket_path(&launch.data);
    let request = braid::auth::admin::AdminRequest::RegistrationToken { uses: 1, hours: 1 };
    let braid::auth::admin::Sent::Answered(Ok(issued)) = braid::auth::admin::send(&socket, &request).unwrap() else {
        panic!("the server issues a registration token")
    };
    let initial = issued["initial_access_token"].as_str().unwrap().to_owned();
    let backend = json!({"client_name": "etl", "grant_types": ["client_credentials"], "scope": "system/Patient.rs", "token_endpoint_auth_method": "client_secret_basic"});
    let registered = register(backend.clone(), Some(initial.clone())).await;
    assert_eq!(registered.status, 201, "{}", registered.text);
    let (id, secret) =
        (registered.body["client_id"].as_str().unwrap(), registered.body["client_secret"].as_str().unwrap());
    let token = launch
        .app
        .send(
            launch
                .form("/auth/token", &[("grant_type", "client_credentials"), ("scope", "system/Patient.rs")])
                .basic_auth(id, Some(secret)),
        )
        .await;
    assert_eq!(token.status, 200, "{}", token.text);
    let again = register(backend, Some(initial)).await;
    assert_eq!(again.status, 401, "the token allowed one registration");
}

#[tokio::test]
async fn a_practitioner_picks_the_patient_of_a_standalone_launch_and_a_patient_cannot() {
    let launch = spawn(TotpPolicy::Off).await;
    let scope = "launch/patient openid fhirUser patient/*.rs";
    let url = launch.authorize_url(&launch.client_id, &[("scope", scope)]);
    let cookie = launch.sign_in(&url, "dr-lee").await;
    let page = |query: &'static str| {
        let launch = &launch;
        let cookie = cookie.clone();
        async move {
            let url = format!("{}/auth/consent{query}", launch.origin);
            launch.step(launch.browser.get(url), Some(&cookie)).await
        }
    };
    let empty = page("").await;
    assert_eq!(empty.status, 200, "{}", empty.html);
    assert!(empty.html.contains("name=\"find\""), "a practitioner is asked whose record: {}", empty.html);
    let found = page("?find=FamilyB").await;
    assert!(found.html.contains("type=\"radio\" name=\"patient\" value=\"B\""), "{}", found.html);
    assert!(!found.html.contains("value=\"A\""), "only the patients the name matches: {}", found.html);
    let none = page("?find=Nobody%3Cscript%3E").await;
    assert!(none.html.contains("No patient has that name"), "{}", none.html);
    assert!(!none.html.contains("Nobody<script>"), "what was searched for is escaped: {}", none.html);

    let csrf = empty.hidden("csrf");
    let consent_with = |patient: &'static str| {
        let fields = [
            ("csrf", csrf.clone()),
            ("decision", "allow".to_owned()),
            ("patient", patient.to_owned()),
            ("scope", "launch/patient".to_owned()),
            ("scope", "patient/*.rs".to_owned()),
        ];
        let launch = &launch;
        let cookie = cookie.clone();
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            launch.step(launch.form("/auth/consent", &fields), Some(&cookie)).await
        }
    };
    let ghost = consent_with("ghost").await;
    assert_eq!((ghost.status, ghost.location.as_deref()), (400, None), "{}", ghost.html);
    assert!(ghost.html.contains("There is no Patient"), "{}", ghost.html);
    let chosen = consent_with("B").await;
    assert_eq!(chosen.status, 302, "{}", chosen.html);
    let reply = launch.exchange(&chosen.redirect_query()["code"]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["patient"], "B");
    assert_eq!(reply.body["need_patient_banner"], true);
    let token = reply.body["access_token"].as_str().unwrap();
    assert_eq!(launch.get("/Observation", token).await.body["entry"][0]["resource"]["id"], "B-obs");
    assert_eq!(launch.get("/Patient/A", token).await.status, 404);

    // A patient has no picker, and a patient field slipped into the form changes nothing.
    let cookie = launch.sign_in(&url, "ann").await;
    let own = launch.step(launch.browser.get(format!("{}/auth/consent", launch.origin)), Some(&cookie)).await;
    assert!(!own.html.contains("name=\"find\""), "{}", own.html);
    let csrf = own.hidden("csrf");
    let fields = [
        ("csrf", csrf.as_str()),
        ("decision", "allow"),
        ("patient", "B"),
        ("scope", "launch/patient"),
        ("scope", "patient/*.rs"),
    ];
    let done = launch.step(launch.form("/auth/consent", &fields), Some(&cookie)).await;
    assert_eq!(done.status, 302, "{}", done.html);
    let reply = launch.exchange(&done.redirect_query()["code"]).await;
    assert_eq!(reply.body["patient"], "A", "{}", reply.text);
}
