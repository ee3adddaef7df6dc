//! The pages of a login (SMART App Launch's authorization code flow): `authorize` checks the
//! app's request, then the user gives their password (`login`), their second factor (`totp`:
//! enrolment with a QR code the first time) and their consent (`consent`, where scopes can be
//! unticked); the browser goes back to the app with a code. The flow's state travels in a signed
//! cookie (see [`crate::auth::session`]); each form carries its `csrf` value.
//!
//! The pages are plain HTML forms without scripts, sent with a strict Content-Security-Policy,
//! `X-Frame-Options: DENY` (no clickjacking of the consent) and `Cache-Control: no-store`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, request};
use crate::auth::audit::{LoginFailure, record_failed_login};
use crate::auth::flow::{AuthorizeError, AuthorizeParams, LoginError, with_query};
use crate::auth::session::{COOKIE, FLOW_LIFETIME_SECS, Flow};
use crate::auth::{AuthState, Endpoints, now_secs, totp};

/// Largest form read on these pages.
const MAX_FORM_BYTES: usize = 16 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/auth/authorize", web::get().to(authorize_get))
        .route("/auth/authorize", web::post().to(authorize_post))
        .route("/auth/login", web::get().to(login_page))
        .route("/auth/login", web::post().to(login))
        .route("/auth/totp", web::get().to(totp_page))
        .route("/auth/totp", web::post().to(second_factor))
        .route("/auth/consent", web::get().to(consent_page))
        .route("/auth/consent", web::post().to(consent));
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page: `body` is trusted HTML (its variable parts escaped by the caller).
fn page(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title} · Braid</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin:.8rem 0}}input[type=text],input[type=password]{{width:100%;padding:.4rem}}\
         button{{padding:.5rem 1.2rem;margin-right:.5rem}}.error{{color:#a00}}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    let mut response = HttpResponse::build(status).content_type("text/html; charset=utf-8").body(html);
    secure_headers(&mut response);
    response
}

fn secure_headers(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    page(status, "Cannot sign in", &format!("<p class=\"error\">{}</p>", escape(message)))
}

fn redirect(location: &str) -> HttpResponse {
    let mut response = HttpResponse::Found().insert_header((header::LOCATION, location)).finish();
    secure_headers(&mut response);
    response
}

/// A redirect that also stores `flow` in the cookie (or clears it with `None`).
fn redirect_with_flow(http: &HttpRequest, auth: &AuthState, location: &str, flow: Option<&Flow>) -> HttpResponse {
    let mut response = redirect(location);
    set_flow_cookie(http, auth, &mut response, flow);
    response
}

fn set_flow_cookie(http: &HttpRequest, auth: &AuthState, response: &mut HttpResponse, flow: Option<&Flow>) {
    let secure = if http.connection_info().scheme() == "https" { "; Secure" } else { "" };
    let cookie = match flow {
        Some(flow) => format!(
            "{COOKIE}={}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={FLOW_LIFETIME_SECS}{secure}",
            auth.flow_key().seal(flow)
        ),
        None => format!("{COOKIE}=; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The flow of this browser's login, if its cookie is intact and not expired.
fn current_flow(http: &HttpRequest, auth: &AuthState) -> Option<Flow> {
    let value = http
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    auth.flow_key().open(value, now_secs())
}

fn no_flow() -> HttpResponse {
    error_page(StatusCode::BAD_REQUEST, "This sign-in has expired or was not started here. Start again from the app.")
}

fn auth_off() -> HttpResponse {
    error_page(StatusCode::NOT_FOUND, "Authorization is off on this server.")
}

/// The address the request came from, for the login limits.
fn client_address(http: &HttpRequest, state: &AppState) -> String {
    if state.trust_forwarded_headers {
        http.connection_info().realip_remote_addr().unwrap_or("unknown").to_owned()
    } else {
        http.peer_addr().map_or_else(|| "unknown".to_owned(), |address| address.ip().to_string())
    }
}

/// The decoded pairs of a form body; `None` if it is not a form or too large.
fn form_pairs(http: &HttpRequest, body: &[u8]) -> Option<Vec<(String, String)>> {
    let content_type = http.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_form =
        content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded");
    if !is_form || body.len() > MAX_FORM_BYTES {
        return None;
    }
    super::oauth::form_urlencoded_pairs(body).ok()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The flow of a POSTed form whose `csrf` field matches its cookie.
fn posted_flow(http: &HttpRequest, auth: &AuthState, pairs: &[(String, String)]) -> Option<Flow> {
    let flow = current_flow(http, auth)?;
    (field(pairs, "csrf") == Some(flow.csrf.as_str())).then_some(flow)
}

async fn authorize_get(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = web::Query::<AuthorizeParams>::from_query(http.query_string()).map(web::Query::into_inner);
    match params {
        Ok(params) => authorize(&http, &state, params),
        Err(_) => error_page(StatusCode::BAD_REQUEST, "The authorization request's parameters cannot be read."),
    }
}

async fn authorize_post(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(pairs) = form_pairs(&http, &body) else {
        return error_page(StatusCode::BAD_REQUEST, "The authorization request must be a form.");
    };
    let get = |name: &str| field(&pairs, name).map(str::to_owned);
    let params = AuthorizeParams {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        scope: get("scope"),
        state: get("state"),
        aud: get("aud"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        nonce: get("nonce"),
        launch: get("launch"),
    };
    authorize(&http, &state, params)
}

fn authorize(http: &HttpRequest, state: &web::Data<AppState>, params: AuthorizeParams) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let endpoints = Endpoints::for_base(&request::base_url(http, state));
    match auth.begin(&params, &endpoints) {
        Ok(flow) => redirect_with_flow(http, auth, "/auth/login", Some(&flow)),
        Err(AuthorizeError::Page(message)) => error_page(StatusCode::BAD_REQUEST, &message),
        Err(AuthorizeError::Redirect { redirect_uri, error, description, state }) => {
            let mut query = vec![("error", error), ("error_description", description.as_str())];
            if let Some(state) = &state {
                query.push(("state", state));
            }
            redirect(&with_query(&redirect_uri, &query))
        }
    }
}

fn login_form(flow: &Flow, error: Option<&str>) -> String {
    format!(
        "<p>Sign in to let <strong>{client}</strong> reach your health records.</p>{error}\
         <form method=\"post\" action=\"/auth/login\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>",
        client = escape(&flow.client_id),
        csrf = escape(&flow.csrf),
        error = error.map(|e| format!("<p class=\"error\">{}</p>", escape(e))).unwrap_or_default()
    )
}

async fn login_page(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    match current_flow(&http, auth) {
        Some(flow) => page(StatusCode::OK, "Sign in", &login_form(&flow, None)),
        None => no_flow(),
    }
}

async fn login(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let Some(pairs) = form_pairs(&http, &body) else { return no_flow() };
    let Some(flow) = posted_flow(&http, auth, &pairs) else { return no_flow() };
    let (username, password) = (field(&pairs, "username").unwrap_or(""), field(&pairs, "password").unwrap_or(""));
    let address = client_address(&http, &state);
    let outcome = auth.login(&flow, username, password, &address).await;
    record_if_failed(&state, username, &address, &outcome, LoginFailure::Password).await;
    match outcome {
        Ok(flow) => {
            let next = if flow.second_factor_done { "/auth/consent" } else { "/auth/totp" };
            redirect_with_flow(&http, auth, next, Some(&flow))
        }
        Err(LoginError::Wrong) => page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            &login_form(&flow, Some("The username or the password is wrong.")),
        ),
        Err(LoginError::TooMany) => error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. Wait a quarter of an hour, then try again.",
        ),
        Err(LoginError::Fault) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "Signing in failed; try again later."),
    }
}

/// Puts a wrong answer at a sign-in step in the audit trail (when the trail is on): `wrong` is
/// what it means at this step. Attempts refused because of the login limits are not recorded:
/// they cost no password check, so recording them would let anyone write without limit; the
/// failures that reached the limit are recorded.
async fn record_if_failed<T>(
    state: &AppState,
    username: &str,
    address: &str,
    outcome: &Result<T, LoginError>,
    wrong: LoginFailure,
) {
    if matches!(outcome, Err(LoginError::Wrong)) && state.audit.is_some() {
        record_failed_login(&state.store, username, address, wrong).await;
    }
}

fn code_form(flow: &Flow, error: Option<&str>) -> String {
    format!(
        "{error}<form method=\"post\" action=\"/auth/totp\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>The 6-digit code from your authenticator app <input type=\"text\" name=\"code\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" required></label><button type=\"submit\">Continue</button></form>",
        csrf = escape(&flow.csrf),
        error = error.map(|e| format!("<p class=\"error\">{}</p>", escape(e))).unwrap_or_default()
    )
}

async fn totp_page(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let Some(flow) = current_flow(&http, auth) else { return no_flow() };
    let Some(username) = flow.user.clone() else { return redirect("/auth/login") };
    match auth.enrolment_secret(&username).await {
        Ok(Some(secret)) => {
            let uri = totp::provisioning_uri(&secret, "Braid", &username);
            let qr = qr_svg(&uri);
            let body = format!(
                "<p>Protect your account with an authenticator app: scan this code, or type the key, then enter the \
                 code the app shows. The key is shown only until then.</p><div>{qr}</div>\
                 <p>Key: <code id=\"secret\" data-secret=\"{key}\">{key}</code></p>{form}",
                key = escape(&totp::base32(&secret)),
                form = code_form(&flow, None)
            );
            page(StatusCode::OK, "Set up your second factor", &body)
        }
        Ok(None) => page(StatusCode::OK, "Second factor", &code_form(&flow, None)),
        Err(_) => no_flow(),
    }
}

/// The QR code of `text` as inline SVG (no script, no external image).
fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build(),
        Err(_) => String::new(),
    }
}

async fn second_factor(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let Some(pairs) = form_pairs(&http, &body) else { return no_flow() };
    let Some(flow) = posted_flow(&http, auth, &pairs) else { return no_flow() };
    let address = client_address(&http, &state);
    let outcome = auth.second_factor(&flow, field(&pairs, "code").unwrap_or(""), &address).await;
    let username = flow.user.as_deref().unwrap_or("");
    record_if_failed(&state, username, &address, &outcome, LoginFailure::SecondFactor).await;
    match outcome {
        Ok(flow) => redirect_with_flow(&http, auth, "/auth/consent", Some(&flow)),
        Err(LoginError::Wrong) => page(
            StatusCode::UNAUTHORIZED,
            "Second factor",
            &code_form(&flow, Some("The code is wrong, or was already used. Enter the next one.")),
        ),
        Err(LoginError::TooMany) => error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. Wait a quarter of an hour, then try again.",
        ),
        Err(LoginError::Fault) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "Signing in failed; try again later."),
    }
}

async fn consent_page(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let Some(flow) = current_flow(&http, auth) else { return no_flow() };
    let Ok(user) = auth.flow_user(&flow) else {
        return redirect("/auth/login");
    };
    let picker = if crate::auth::flow::needs_patient_choice(&flow, &user) {
        let find = web::Query::<Vec<(String, String)>>::from_query(http.query_string())
            .ok()
            .and_then(|query| query.0.into_iter().find(|(name, _)| name == "find").map(|(_, value)| value))
            .map(|text| text.trim().chars().take(MAX_FIND_CHARS).collect::<String>())
            .filter(|text| !text.is_empty());
        match patient_choices(&http, &state, find.as_deref()).await {
            Ok(choices) => Some(patient_picker(find.as_deref(), &choices)),
            Err(error) if error.category == crate::fhir::Category::Incorrect => {
                return error_page(StatusCode::BAD_REQUEST, "That name cannot be searched for; try another.");
            }
            Err(_) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "The patient search failed; try again."),
        }
    } else {
        None
    };
    let boxes: String = flow
        .scope
        .split(' ')
        .map(|scope| {
            format!(
                "<label><input type=\"checkbox\" name=\"scope\" value=\"{s}\" checked> {s}</label>",
                s = escape(scope)
            )
        })
        .collect();
    let body = format!(
        "<p><strong>{client}</strong> asks for the access below. Untick what you do not want to give.</p>\
         {search}<form method=\"post\" action=\"/auth/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{choices}{boxes}\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        client = escape(&flow.client_id),
        csrf = escape(&flow.csrf),
        search = picker.as_ref().map_or("", |(search, _)| search.as_str()),
        choices = picker.as_ref().map_or("", |(_, choices)| choices.as_str()),
    );
    page(StatusCode::OK, "Allow access?", &body)
}

/// Longest name searched for in the patient picker, in characters.
const MAX_FIND_CHARS: usize = 100;

/// Most patients the picker lists.
const MAX_CHOICES: usize = 20;

/// One patient the picker offers: id, and a line naming them.
struct Choice {
    id: String,
    label: String,
}

/// The Patients whose name matches `find` (the search's `name` parameter), at most
/// [`MAX_CHOICES`]; none without a name to search for.
async fn patient_choices(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    find: Option<&str>,
) -> Result<Vec<Choice>, crate::fhir::FhirError> {
    let Some(find) = find else { return Ok(Vec::new()) };
    let patient = crate::fhir::ResourceType::PATIENT;
    let base = request::base_url(http, state);
    let pairs = [("name".to_owned(), find.to_owned()), ("_count".to_owned(), MAX_CHOICES.to_string())];
    let prepared = super::search::prepare(patient, None, &pairs, false, &base, &state.limits)?;
    let store = state.store.clone();
    let bundle = web::block(move || super::search::run(&store, &base, prepared))
        .await
        .map_err(|_| crate::fhir::FhirError::fault("patient search"))??;
    let choices = bundle
        .entry
        .iter()
        .filter_map(|entry| serde_json::from_slice::<serde_json::Value>(entry.resource.as_ref()?.as_bytes()).ok())
        .filter_map(|resource| {
            let id = resource["id"].as_str()?.to_owned();
            let name = &resource["name"][0];
            let given: Vec<&str> = name["given"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect();
            let family = name["family"].as_str().unwrap_or("");
            let written =
                name["text"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{} {family}", given.join(" ")));
            let born = resource["birthDate"].as_str().map(|date| format!(", born {date}")).unwrap_or_default();
            Some(Choice { label: format!("{}{born} (Patient/{id})", written.trim()), id })
        })
        .take(MAX_CHOICES)
        .collect();
    Ok(choices)
}

/// The picker's search form (outside the consent form) and its choices (inside it): a radio
/// button per patient found, and a field for a Patient id typed in.
fn patient_picker(find: Option<&str>, choices: &[Choice]) -> (String, String) {
    let search = format!(
        "<form method=\"get\" action=\"/auth/consent\"><p>Which patient's record should the app open?</p>\
         <label>Find by name <input name=\"find\" value=\"{find}\" maxlength=\"{MAX_FIND_CHARS}\"></label>\
         <button type=\"submit\">Search</button></form>",
        find = escape(find.unwrap_or(""))
    );
    let mut listed: String = choices
        .iter()
        .map(|choice| {
            format!(
                "<label><input type=\"radio\" name=\"patient\" value=\"{id}\"> {label}</label>",
                id = escape(&choice.id),
                label = escape(&choice.label)
            )
        })
        .collect();
    if find.is_some() && choices.is_empty() {
        listed.push_str("<p>No patient has that name.</p>");
    }
    let choices = format!(
        "<fieldset><legend>Patient</legend>{listed}<label>or Patient id <input name=\"patient\"></label></fieldset>"
    );
    (search, choices)
}

async fn consent(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let Some(pairs) = form_pairs(&http, &body) else { return no_flow() };
    let Some(flow) = posted_flow(&http, auth, &pairs) else { return no_flow() };
    if field(&pairs, "decision") != Some("allow") {
        let mut query = vec![("error", "access_denied"), ("error_description", "the user denied the request")];
        if let Some(state) = &flow.state {
            query.push(("state", state));
        }
        return redirect_with_flow(&http, auth, &with_query(&flow.redirect_uri, &query), None);
    }
    let chosen: Vec<String> =
        pairs.iter().filter(|(name, _)| name == "scope").map(|(_, value)| value.clone()).collect();
    // A radio button and the typed-in field share the name `patient`: the first one filled in.
    let picked =
        pairs.iter().filter(|(name, _)| name == "patient").map(|(_, value)| value.trim()).find(|v| !v.is_empty());
    match auth.consent(&flow, &chosen, picked).await {
        Ok(location) => redirect_with_flow(&http, auth, &location, None),
        Err(error) if error.category == crate::fhir::Category::NotFound => {
            let reason = error.issues.first().map_or("", |issue| issue.diagnostics.as_str());
            error_page(StatusCode::BAD_REQUEST, &format!("{reason}. Go back and choose again."))
        }
        Err(_) => redirect("/auth/login"),
    }
}
