//! The patient portal in a real browser (headless Chromium): a person registered at three
//! providers signs in (password, authenticator code, consent), sees their one record with each
//! item marked with its provider, pages through the merged timeline, filters it, and signs out.
//! Screenshots of each page go to `target/portal-screenshots/`.

use std::collections::BTreeSet;

use braid::auth::users::{self, NewUser, Role};
use braid::ingest::rppg::synth::{Clip, ClipOptions};
use serde_json::{Value, json};

use crate::browser::{self, Browser};
use crate::helpers::{AuthApp, spawn_auth_app_with};
use crate::smtp_sink::SmtpSink;

const PASSWORD: &str = "correct horse battery staple";

/// The same person as each provider registers them.
fn person(id: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": "Okafor", "given": ["Adaeze"]}],
           "gender": "female", "birthDate": "1979-04-12",
           "address": [{"line": ["12 Harbour Road"], "city": "Leith", "postalCode": "EH6 6LX"}]})
}

/// `hours` from now, to the second.
fn from_now(hours: i64, minutes: i64) -> String {
    let at =
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(hours) + jiff::SignedDuration::from_mins(minutes);
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn heart_rate(id: &str, patient: &str, time: &str, value: u32) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
           "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": time,
           "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// A laboratory result, with a reference range and the lab's own interpretation when given.
#[allow(clippy::too_many_arguments)]
fn lab_result(
    id: &str,
    patient: &str,
    code: &str,
    name: &str,
    time: &str,
    value: f64,
    unit: &str,
    range: Option<(f64, f64)>,
    flag: Option<&str>,
) -> Value {
    let mut result = json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": time,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}});
    if let Some((low, high)) = range {
        result["referenceRange"] = json!([{"low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                                           "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}]);
    }
    if let Some(flag) = flag {
        result["interpretation"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}]}]);
    }
    result
}

fn encounter(id: &str, patient: &str, start: &str, what: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "type": [{"text": what}], "subject": {"reference": format!("Patient/{patient}")},
           "period": {"start": start, "end": start}})
}

fn condition(id: &str, patient: &str, onset: &str, what: &str) -> Value {
    json!({"resourceType": "Condition", "id": id,
           "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
           "code": {"text": what}, "subject": {"reference": format!("Patient/{patient}")}, "onsetDateTime": onset})
}

fn appointment(id: &str, patient: &str, start: &str, what: &str) -> Value {
    let end = (start.parse::<jiff::Timestamp>().unwrap() + jiff::SignedDuration::from_mins(30)).to_string();
    json!({"resourceType": "Appointment", "id": id, "status": "booked", "description": what,
           "start": start, "end": end,
           "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]})
}

/// Three providers' records of one person: 34 items in all, none the same fact twice. Two
/// appointments of two providers overlap, in two days; the clinic knows the person's email.
fn records() -> Vec<(&'static str, Vec<Value>)> {
    let mut registered = person("p1");
    registered["telecom"] = json!([{"system": "email", "value": "adaeze@example.org"}]);
    let mut clinic = vec![
        registered,
        appointment("a2", "p1", &from_now(48, 0), "Blood test"),
        encounter("e1", "p1", "2026-03-02T09:00:00Z", "General practice check-up"),
        condition("c1", "p1", "2025-11-20", "Essential hypertension"),
        appointment("a1", "p1", "2027-02-01T10:00:00Z", "Blood pressure review"),
    ];
    clinic.extend(
        (0..10).map(|i| heart_rate(&format!("hr{i}"), "p1", &format!("2026-04-{:02}T08:00:00Z", i + 1), 60 + i)),
    );
    let mut hospital = vec![
        person("mrn-77"),
        encounter("adm", "mrn-77", "2026-01-15T14:30:00Z", "Emergency admission"),
        appointment("fu", "mrn-77", "2027-01-20T15:00:00Z", "Cardiology follow-up"),
        appointment("echo", "mrn-77", &from_now(48, 15), "Echocardiogram"),
    ];
    hospital.extend(
        (0..8).map(|i| heart_rate(&format!("v{i}"), "mrn-77", &format!("2026-01-{:02}T12:00:00Z", i + 15), 80 + i)),
    );
    let mut lab = vec![
        person("L-5"),
        lab_result(
            "g1",
            "L-5",
            "2345-7",
            "Glucose [Mass/volume] in Serum or Plasma",
            "2025-09-05T08:00:00Z",
            95.0,
            "mg/dL",
            Some((70.0, 99.0)),
            None,
        ),
        lab_result(
            "g2",
            "L-5",
            "2345-7",
            "Glucose [Mass/volume] in Serum or Plasma",
            "2026-03-05T08:00:00Z",
            130.0,
            "mg/dL",
            Some((70.0, 99.0)),
            None,
        ),
        lab_result(
            "hb",
            "L-5",
            "718-7",
            "Hemoglobin [Mass/volume] in Blood",
            "2026-03-05T08:00:00Z",
            13.1,
            "g/dL",
            None,
            Some("N"),
        ),
    ];
    lab.extend((0..6).map(|i| heart_rate(&format!("r{i}"), "L-5", &format!("2025-{:02}-10T07:30:00Z", i + 5), 70 + i)));
    vec![("clinic", clinic), ("hospital", hospital), ("lab", lab)]
}

/// Pushes each provider's records as that source and waits for the index to link the person;
/// returns the golden Patient's id.
async fn braid_three_providers(server: &AuthApp) -> String {
    let operator = server.token("ops", "system/*.cruds", None);
    for (name, resources) in records() {
        let source = crate::sources::add_source(server, name, false).await;
        for resource in resources {
            let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
            let reply = server.app.put_with_token(&path, &source.token, &resource).await;
            assert!(reply.status == 201 || reply.status == 200, "{name} {path}: {}", reply.text);
        }
    }
    crate::mpi::settled(&server.app, Some(&operator)).await;
    let app = &server.app;
    let read = app.send(app.client.get(app.url("/Patient/clinic-p1")).bearer_auth(&operator)).await;
    let golden = read.body["link"][0]["other"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned();
    for member in ["hospital-mrn-77", "lab-L-5"] {
        let read = app.send(app.client.get(app.url(&format!("/Patient/{member}"))).bearer_auth(&operator)).await;
        assert_eq!(
            read.body["link"][0]["other"]["reference"],
            format!("Patient/{golden}"),
            "{member} is the same person"
        );
    }
    golden
}

/// Signs in as `username` through the authorization server's pages: password, the
/// authenticator code (enrolling with the key the page shows), consent. Returns the key and the
/// time step of the code used (a code is accepted once).
async fn sign_in(browser: &Browser, origin: &str, username: &str) -> (Vec<u8>, u64) {
    browser.goto(&format!("{origin}/portal/")).await;
    check_page(browser, "sign-in", "the portal's sign-in page").await;
    // What a first visit loads, and when it first shows something (reported; the weight is
    // bounded: no framework, no images, no fonts).
    let load = browser
        .run(
            "const entries = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')); \
             const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint'); \
             return {bytes: entries.reduce((sum, e) => sum + (e.encodedBodySize || 0), 0), \
                     files: entries.filter(e => !e.name.includes('/fhir/')).map(e => [e.name.split('/').pop(), e.encodedBodySize]), \
                     firstPaint: paint ? paint.startTime : null};",
            json!([]),
        )
        .await;
    eprintln!("portal first load: {load}");
    let weight: u64 = load["files"].as_array().unwrap().iter().map(|file| file[1].as_u64().unwrap_or(0)).sum();
    assert!(weight < 150 * 1024, "the portal's own files weigh {weight} bytes: {load}");
    // By keyboard: the skip link first, then the sign-in button, pressed with Enter.
    browser.tab_to("a.skip", 3).await;
    browser.tab_to("#sign-in", 10).await;
    browser.press(browser::ENTER).await;
    browser.wait_for("input[name=username]").await;
    browser.assert_accessible("the login page").await;
    browser.type_into("input[name=username]", username).await;
    browser.type_into("input[name=password]", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    let key = browser.attribute("#secret", "data-secret").await;
    browser.assert_accessible("the authenticator enrolment page").await;
    let secret = crate::smart_launch::base32_decode(&key);
    let step = braid::auth::now_secs() / braid::auth::totp::STEP_SECS;
    browser.type_into("input[name=code]", &braid::auth::totp::code_at(&secret, step)).await;
    browser.click("form button[type=submit]").await;
    browser.wait_for("button[value=allow]").await;
    check_page(browser, "consent", "the consent page").await;
    browser.click("button[value=allow]").await;
    (secret, step)
}

/// Another app (a public client the operator registered) gets the user's consent through the
/// same pages in the same browser, and trades the code for a token as the app would.
async fn authorise_another_app(server: &AuthApp, browser: &Browser, origin: &str, secret: &[u8], step: u64) -> String {
    let redirect = format!("{origin}/pocket/callback");
    let new = braid::auth::clients::NewClient {
        name: "Pocket Health".into(),
        scope: "launch/patient openid patient/*.rs".into(),
        grant_types: Vec::new(),
        redirect_uris: vec![redirect.clone()],
        credential: braid::auth::clients::NewCredential::None,
        source: None,
    };
    let client_id =
        braid::auth::clients::add(&server.store, new, braid::auth::now_secs()).await.unwrap().client.client_id;
    let query = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("scope", "launch/patient openid patient/*.rs"),
        ("state", "pocket"),
        ("aud", server.app.base.as_str()),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
    ];
    let url = reqwest::Url::parse_with_params(&format!("{origin}/auth/authorize"), &query).unwrap();
    browser.goto(url.as_str()).await;
    browser.type_into("input[name=username]", "adaeze").await;
    browser.type_into("input[name=password]", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    browser.type_into("input[name=code]", &braid::auth::totp::code_at(secret, step + 1)).await;
    browser.click("form button[type=submit]").await;
    browser.click("button[value=allow]").await;
    let mut landed = browser.url().await;
    for _ in 0..100 {
        if landed.starts_with(&redirect) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        landed = browser.url().await;
    }
    let landed = reqwest::Url::parse(&landed).unwrap();
    let code = landed.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("a code");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("client_id", client_id.as_str()),
        ("code_verifier", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
    ];
    let reply = server.app.client.post(format!("{origin}/auth/token")).form(&form).send().await.unwrap();
    let body: Value = reply.json().await.unwrap();
    body["access_token"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
}

/// Writes a screenshot of the page, runs axe-core on it, and checks that no JavaScript value
/// leaked into its text in place of data.
async fn check_page(browser: &Browser, screenshot: &str, page: &str) {
    browser.screenshot(screenshot).await;
    browser.assert_accessible(page).await;
    let text = browser.run("return (document.getElementById('main') || document.body).innerText;", json!([])).await;
    let text = text.as_str().unwrap();
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
    for placeholder in ["undefined", "null", "NaN"] {
        assert!(!words.contains(&placeholder), "'{placeholder}' on {page}: {text}");
    }
    assert!(!text.contains("[object Object]"), "an object written as text on {page}: {text}");
}

/// The timeline's rows now: (type, provider, date).
async fn timeline_rows(browser: &Browser) -> Vec<(String, String, String)> {
    let rows = browser
        .run(
            "return [...document.querySelectorAll('#timeline li')].map(li => [li.dataset.type, li.dataset.source, li.dataset.date]);",
            json!([]),
        )
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().into(), row[1].as_str().unwrap().into(), row[2].as_str().unwrap().into()))
        .collect()
}

/// Waits until the timeline's status line stops saying it is loading.
async fn timeline_loaded(browser: &Browser) -> String {
    for _ in 0..400 {
        let status = browser.text("main section.card p.status").await;
        if !status.starts_with("Loading") {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the timeline did not load");
}

/// A date or dateTime of the test's records as an instant (a date is its midnight UTC).
fn instant(date: &str) -> jiff::Timestamp {
    let full = if date.len() == 10 { format!("{date}T00:00:00Z") } else { date.to_owned() };
    full.parse().unwrap_or_else(|_| panic!("{date} is a date"))
}

#[tokio::test]
async fn a_patient_signs_in_and_sees_one_timeline_from_three_providers() {
    if browser::skipped() {
        return;
    }
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let server = spawn_auth_app_with(move |settings| {
        settings.totp = braid::config::TotpPolicy::Required;
        settings.reminder_interval_secs = 1;
        settings.reminder_lead_times = "3d,1d".into();
        settings.smtp_url = Some(smtp);
    })
    .await;
    let golden = braid_three_providers(&server).await;
    // Both appointments in two days are reminded of three days ahead: now, by email (the
    // hospital's registration has no address; the person's golden Patient has the clinic's).
    let mails = sink.wait_for(2, std::time::Duration::from_secs(20)).await;
    assert!(mails.iter().all(|mail| mail.to == ["adaeze@example.org"]), "{mails:?}");
    let user = NewUser {
        username: "adaeze".into(),
        password: PASSWORD.into(),
        role: Role::Patient,
        patient: Some(golden.clone()),
        fhir_user: None,
    };
    users::add(&server.store, user, braid::auth::now_secs()).await.unwrap();
    let origin = server.app.base.trim_end_matches("/fhir").to_owned();
    // The camera: a synthetic face video with a known pulse, 30 seconds at 30 frames a second.
    let media = tempfile::tempdir().unwrap();
    let video = media.path().join("face.y4m");
    let mut clip = Clip::new(ClipOptions::clean(11, 160, 120));
    let pulse = clip.truth().heart_rate;
    clip.write_y4m(&mut std::io::BufWriter::new(std::fs::File::create(&video).unwrap())).unwrap();
    let browser = Browser::with_camera(&video).await;

    // Signed in, the portal shows the person and the three providers their record comes from.
    let (secret, step) = sign_in(&browser, &origin, "adaeze").await;
    let name = browser.text(".banner .name").await;
    assert_eq!(name, "Adaeze Okafor");
    let url = browser.url().await;
    assert!(!url.contains("code=") && !url.contains("state="), "the code left the address bar: {url}");
    let providers = browser
        .run("return [...document.querySelectorAll('.providers li')].map(li => li.textContent);", json!([]))
        .await;
    assert_eq!(providers, json!(["clinic", "hospital", "lab"]));
    // Home: the upcoming appointments of two providers, soonest first, each marked with its provider.
    browser.wait_for(".grid section").await;
    let upcoming = browser
        .run("return [...document.querySelectorAll('.grid section')[0].querySelectorAll('li')].map(li => li.dataset.source);", json!([]))
        .await;
    assert_eq!(upcoming, json!(["clinic", "hospital", "hospital", "clinic"]));
    check_page(&browser, "home", "home").await;

    // The token is kept for the session only, never in localStorage.
    let stored =
        browser.run("return [localStorage.length, sessionStorage.getItem('braid.portal.session')];", json!([])).await;
    assert_eq!(stored[0], 0, "nothing in localStorage");
    let session: Value = serde_json::from_str(stored[1].as_str().expect("a session is kept")).unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    assert_eq!(session["patient"], golden.as_str(), "the token is for the person's golden Patient");

    // The timeline, reached by keyboard: the first page holds the 20 newest items of all three
    // providers.
    // (From the top of the page, where a Tab from the address bar lands: the skip link.)
    browser.run("document.querySelector('a.skip').focus();", json!([])).await;
    browser.tab_to("#nav a[data-page=timeline]", 10).await;
    browser.press(browser::ENTER).await;
    browser.wait_for("#timeline li").await;
    timeline_loaded(&browser).await;
    let first = timeline_rows(&browser).await;
    assert_eq!(first.len(), 20, "{first:?}");
    check_page(&browser, "timeline", "the timeline").await;
    browser.click("main button.more").await;
    let status = timeline_loaded(&browser).await;
    let rows = timeline_rows(&browser).await;
    assert_eq!(rows.len(), 34, "every item once: {rows:?}");
    assert!(status.contains("the whole record"), "{status}");
    assert_eq!(rows[..20], first[..], "the first page stays as it was");
    let dates: Vec<_> = rows.iter().map(|(_, _, date)| instant(date)).collect();
    assert!(dates.windows(2).all(|pair| pair[0] >= pair[1]), "newest first: {rows:?}");
    let sources: BTreeSet<&str> = rows.iter().map(|(_, source, _)| source.as_str()).collect();
    assert_eq!(sources, BTreeSet::from(["clinic", "hospital", "lab"]));
    let count = |kind: &str| rows.iter().filter(|(t, _, _)| t == kind).count();
    assert_eq!((count("Observation"), count("Encounter"), count("Condition"), count("Appointment")), (27, 2, 1, 4));

    // Filtered to one provider and to results only.
    browser.run("document.getElementById('provider').value = 'hospital';", json!([])).await;
    for kind in ["Encounter", "Condition", "Appointment", "MedicationRequest", "DocumentReference"] {
        browser.click(&format!("input[name=type][value={kind}]")).await;
    }
    browser.click("form.filters button[type=submit]").await;
    browser.wait_for("#timeline li").await;
    timeline_loaded(&browser).await;
    let filtered = timeline_rows(&browser).await;
    assert_eq!(filtered.len(), 8, "{filtered:?}");
    assert!(filtered.iter().all(|(t, s, _)| t == "Observation" && s == "hospital"), "{filtered:?}");
    assert!(browser.url().await.ends_with("#/timeline?types=Observation&provider=hospital"));
    check_page(&browser, "timeline-filtered", "the filtered timeline").await;

    // Appointments: the two in two days overlap, each is flagged, and each shows its reminders:
    // the three-day one sent by email, the one-day one scheduled.
    browser.click("#nav a[data-page=appointments]").await;
    browser.wait_for("#upcoming li.appointment").await;
    let upcoming = browser
        .run(
            "return [...document.querySelectorAll('#upcoming li.appointment')].map(li => ({source: li.dataset.source, \
             conflict: (li.querySelector('.conflict') || {}).textContent || null, \
             reminders: [...li.querySelectorAll('li.reminder')].map(r => [r.dataset.lead, r.dataset.status, r.textContent])}));",
            json!([]),
        )
        .await;
    let upcoming = upcoming.as_array().unwrap();
    assert_eq!(upcoming.len(), 4, "{upcoming:?}");
    assert_eq!(upcoming[0]["source"], "clinic");
    assert_eq!(upcoming[0]["conflict"], "Overlaps an appointment from hospital. Check with both providers.");
    assert_eq!(upcoming[1]["conflict"], "Overlaps an appointment from clinic. Check with both providers.");
    assert!(upcoming[2]["conflict"].is_null() && upcoming[2]["reminders"] == json!([]), "{:?}", upcoming[2]);
    for soon in &upcoming[..2] {
        let reminders = soon["reminders"].as_array().unwrap();
        assert_eq!(reminders.len(), 2, "{soon:?}");
        assert_eq!((&reminders[0][0], &reminders[0][1]), (&json!("3d"), &json!("completed")));
        assert!(reminders[0][2].as_str().unwrap().ends_with("by email"), "{reminders:?}");
        assert_eq!((&reminders[1][0], &reminders[1][1]), (&json!("1d"), &json!("preparation")));
        assert_eq!(reminders[1][2], "Reminder 1 day before: scheduled");
    }
    check_page(&browser, "appointments", "appointments").await;
    assert_eq!(sink.messages().len(), 2, "each reminder is emailed once");

    // Vital signs: the heart-rate chart has a point per measurement in the range, each marked
    // with its provider; a wider range shows more.
    browser.click("#nav a[data-page=vitals]").await;
    browser.wait_for("[data-vital=heart-rate] svg.chart").await;
    let points = |origin: Option<&str>| {
        let selector = match origin {
            Some(origin) => format!("[data-vital=heart-rate] g.point[data-origin={origin}]"),
            None => "[data-vital=heart-rate] g.point".to_owned(),
        };
        browser.run("return document.querySelectorAll(arguments[0]).length;", json!([selector]))
    };
    assert_eq!(points(None).await, 18, "the last 12 months: the clinic's 10 and the hospital's 8");
    assert_eq!((points(Some("clinic")).await, points(Some("hospital")).await), (json!(10), json!(8)));
    check_page(&browser, "vitals", "vital signs").await;
    browser.click("nav.ranges a[href='#/vitals?range=all']").await;
    browser.wait_for("nav.ranges a[aria-current=true][href='#/vitals?range=all']").await;
    browser.wait_for("[data-vital=heart-rate] g.point[data-origin=lab]").await;
    assert_eq!(points(None).await, 24);
    let legend = browser.run("return [...document.querySelectorAll('[data-vital=heart-rate] .legend li')].map(li => li.textContent.trim());", json!([])).await;
    assert_eq!(legend, json!(["clinic", "hospital", "lab"]));

    // Lab results: the latest glucose with its range, flagged high from the range (the lab sent
    // no interpretation), its earlier result, and what the test means.
    browser.click("#nav a[data-page=labs]").await;
    browser.wait_for("section.lab[data-code='2345-7']").await;
    let glucose = browser
        .run(
            "const card = document.querySelector(\"section.lab[data-code='2345-7']\"); \
             return {value: card.querySelector('.value').textContent, flag: card.querySelector('.flag').textContent, \
             computed: card.querySelector('.flag').dataset.computed, range: card.querySelector('.range').textContent, \
             earlier: [...card.querySelectorAll('ul.earlier li')].map(li => li.dataset.date), \
             explained: card.querySelector('details.explain').textContent, link: card.querySelector('details.explain a').href};",
            json!([]),
        )
        .await;
    assert_eq!(glucose["value"], "130 mg/dL");
    assert_eq!(glucose["flag"], "High (from the reference range)");
    assert_eq!(glucose["computed"], "true");
    assert_eq!(glucose["range"], "Reference range: 70–99 mg/dL");
    assert_eq!(glucose["earlier"], json!(["2025-09-05T08:00:00Z"]));
    let curated: Value = serde_json::from_str(include_str!("../../profiles/lab-explanations.json")).unwrap();
    let explained = glucose["explained"].as_str().unwrap();
    assert!(explained.contains(curated["tests"]["2345-7"]["measures"].as_str().unwrap()), "{explained}");
    assert!(
        explained.contains(curated["tests"]["2345-7"]["high"].as_str().unwrap()),
        "a high result's meaning: {explained}"
    );
    assert_eq!(glucose["link"], curated["tests"]["2345-7"]["learnMore"]);
    let hemoglobin = browser.text("section.lab[data-code='718-7'] .flag").await;
    assert_eq!(hemoglobin, "Normal", "the lab's own interpretation");
    check_page(&browser, "labs", "lab results").await;

    // Measure at home: a 30-second camera scan (the fake camera plays the synthetic face) gives
    // the pulse within 3 beats a minute; a wearable's export adds its readings once.
    browser.click("#nav a[data-page=measure]").await;
    check_page(&browser, "measure", "measure at home").await;
    browser.click("#scan-start").await;
    browser.wait_for(".stage:not([hidden]) video").await;
    browser.screenshot("camera-scan").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let measured = loop {
        let found = browser
            .run("const hr = document.getElementById('scan-heart-rate'); const none = document.getElementById('scan-none'); \
                  const error = document.querySelector('#scan-status.error'); \
                  return hr ? hr.dataset.value : none ? 'none: ' + none.textContent : error ? 'error: ' + error.textContent : null;", json!([]))
            .await;
        if let Some(found) = found.as_str() {
            break found.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the scan did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let measured: f64 = measured.parse().unwrap_or_else(|_| panic!("no heart rate from the scan: {measured}"));
    eprintln!("camera scan: {measured:.1} beats a minute read, {pulse:.1} in the video");
    assert!(
        (measured - pulse).abs() <= 3.0,
        "the scan read {measured:.1} beats a minute, the video's pulse is {pulse:.1}"
    );
    let quality = browser.text("#scan-quality").await;
    assert!(quality.ends_with("(good)") || quality.ends_with("(fair)"), "{quality}");
    check_page(&browser, "camera-scan-result", "the scan's result").await;
    let export = media.path().join("watch.json");
    let readings: Vec<String> = (0..3)
        .map(|i| {
            json!({"heart_rate": {"value": 61 + i, "unit": "beats/min"},
                         "effective_time_frame": {"date_time": from_now(-(i + 1) * 24, 0)}})
            .to_string()
        })
        .collect();
    std::fs::write(&export, readings.join("\n")).unwrap();
    browser.run("document.getElementById('upload-format').value = 'mhealth';", json!([])).await;
    browser.type_into("#upload-file", &export.display().to_string()).await;
    browser.click("form.upload button[type=submit]").await;
    browser.wait_for("#upload-status[data-created]").await;
    assert_eq!(
        browser.attribute("#upload-status", "data-created").await,
        "3",
        "{}",
        browser.text("#upload-status").await
    );
    browser.click("form.upload button[type=submit]").await;
    for _ in 0..100 {
        if browser.text("#upload-status").await.contains("already there") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(browser.text("#upload-status").await, "0 new measurements added to your record, 3 already there.");
    // On the heart-rate chart, the scan's reading and the export's are named as such.
    browser.goto(&format!("{origin}/portal/#/vitals?range=30d")).await;
    browser.wait_for("[data-vital=heart-rate] g.point[data-origin='Open mHealth']").await;
    let origins = browser
        .run("return [...new Set([...document.querySelectorAll('[data-vital=heart-rate] g.point')].map(p => p.dataset.origin))].sort();", json!([]))
        .await;
    assert_eq!(origins, json!(["Camera scan", "Open mHealth"]), "the last 30 days: measurements from home only");

    // Feedback on a past visit: the questionnaire's form, answers stored as a
    // QuestionnaireResponse about that visit and its provider; a visit is answered once.
    browser.click("#nav a[data-page=feedback]").await;
    browser.wait_for("#visits li.visit").await;
    let visits = browser
        .run("return [...document.querySelectorAll('#visits li.visit')].map(li => li.dataset.visit);", json!([]))
        .await;
    assert_eq!(visits, json!(["Encounter/clinic-e1", "Encounter/hospital-adm"]));
    let visit = "#visits li.visit[data-visit='Encounter/clinic-e1']";
    browser.click(&format!("{visit} button.give")).await;
    browser.click(&format!("{visit} fieldset[data-link=overall] input[value='1']")).await;
    browser.click(&format!("{visit} fieldset[data-link=listened] input[value='0']")).await;
    browser.type_into(&format!("{visit} div[data-link=recommend] input"), "9").await;
    browser.type_into(&format!("{visit} div[data-link=comments] textarea"), "Kind staff, short wait.").await;
    check_page(&browser, "feedback", "feedback").await;
    browser.click(&format!("{visit} form button[type=submit]")).await;
    browser.wait_for(&format!("{visit} .sent")).await;
    let operator = server.token("ops", "system/*.cruds", None);
    let app = &server.app;
    let stored = app
        .send(
            app.client
                .get(app.url("/QuestionnaireResponse?identifier=urn:braid:feedback|Encounter/clinic-e1"))
                .bearer_auth(&operator),
        )
        .await;
    assert_eq!(stored.body["entry"].as_array().map(Vec::len), Some(1), "{}", stored.text);
    let response = &stored.body["entry"][0]["resource"];
    assert_eq!(response["questionnaire"], "urn:braid:questionnaire:visit-feedback");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["subject"]["reference"], format!("Patient/{golden}"));
    assert_eq!(response["encounter"]["reference"], "Encounter/clinic-e1");
    assert_eq!(response["extension"][0]["valueReference"]["display"], "clinic", "the provider it is for");
    let answers: Vec<(String, Value)> = response["item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["linkId"].as_str().unwrap().to_owned(), item["answer"][0].clone()))
        .collect();
    assert_eq!(
        answers,
        vec![
            (
                "overall".to_owned(),
                json!({"valueCoding": {"system": "urn:braid:feedback:rating", "code": "4", "display": "Good"}})
            ),
            (
                "listened".to_owned(),
                json!({"valueCoding": {"system": "urn:braid:feedback:agreement", "code": "yes", "display": "Yes"}})
            ),
            ("recommend".to_owned(), json!({"valueInteger": 9})),
            ("comments".to_owned(), json!({"valueString": "Kind staff, short wait."})),
        ]
    );
    browser.goto(&format!("{origin}/portal/#/home")).await;
    browser.click("#nav a[data-page=feedback]").await;
    browser.wait_for(&format!("{visit} .sent")).await;
    let offered = browser
        .run("return document.querySelectorAll(arguments[0]).length;", json!([format!("{visit} button.give")]))
        .await;
    assert_eq!(offered, 0, "a visit is answered once");

    // Privacy: another app the person let in is listed with the portal, and revoked from here;
    // the accesses to the record are listed with the app and the person behind them.
    let pocket = authorise_another_app(&server, &browser, &origin, &secret, step).await;
    let read_with = |token: String| {
        let request = app.client.get(app.url(&format!("/Patient/{golden}"))).bearer_auth(token);
        async move { app.send(request).await.status }
    };
    assert_eq!(read_with(pocket.clone()).await, 200);
    for _ in 0..100 {
        let audits = app
            .send(
                app.client.get(app.url(&format!("/AuditEvent?patient={golden}&_summary=count"))).bearer_auth(&operator),
            )
            .await;
        if audits.body["total"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    browser.goto(&format!("{origin}/portal/#/privacy")).await;
    browser.wait_for("#apps li.app").await;
    let apps = browser
        .run(
            "return [...document.querySelectorAll('#apps li.app')].map(li => li.querySelector('strong').textContent);",
            json!([]),
        )
        .await;
    assert_eq!(apps, json!(["Pocket Health", "Braid patient portal (this session)"]), "newest first");
    let audited = browser.run("return [...document.querySelectorAll('#audit li.audit')].map(li => [li.dataset.app, li.dataset.user, li.textContent]);", json!([])).await;
    let audited = audited.as_array().unwrap();
    assert!(
        audited.iter().any(|row| row[0] == "braid-portal"
            && row[1] == "adaeze"
            && row[2].as_str().unwrap().starts_with("Braid patient portal (signed in as adaeze)")),
        "{audited:?}"
    );
    // Further back, the providers' pushes, named by their clients' names.
    let pushed = "source clinic (a service, not a person) changed";
    let mut found = false;
    for _ in 0..30 {
        let rows = browser
            .run("return [...document.querySelectorAll('#audit li.audit')].map(li => li.textContent);", json!([]))
            .await;
        if rows.as_array().unwrap().iter().any(|row| row.as_str().unwrap().starts_with(pushed)) {
            found = true;
            break;
        }
        if browser
            .run(
                "const more = document.querySelector('#audit + button.more'); return !!more && !more.hidden;",
                json!([]),
            )
            .await
            == false
        {
            break;
        }
        browser.click("#audit + button.more:not([disabled])").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(found, "a row '{pushed} …' in the trail");
    check_page(&browser, "privacy", "privacy").await;
    browser.click("#apps li.app button[data-revoke]").await;
    for _ in 0..100 {
        if browser.run("return document.querySelectorAll('#apps li.app').length;", json!([])).await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(read_with(pocket).await, 401, "the revoked app's token is refused");
    assert_eq!(read_with(token.clone()).await, 200, "the portal's own session goes on");
    // The whole record, downloaded as one FHIR JSON file.
    browser.click("#download").await;
    browser.wait_for("#download-status[data-resources]").await;
    let downloaded: usize = browser.attribute("#download-status", "data-resources").await.parse().unwrap();
    assert!(downloaded >= 34 + 3, "the record's items and the person's Patients: {downloaded}");

    // On a phone's screen: every page in one column, nothing wider than the screen, and each
    // still passes the accessibility check.
    browser.resize(390, 844).await;
    for (page, title) in [
        ("home", "Your record at a glance"),
        ("timeline", "Timeline"),
        ("appointments", "Appointments"),
        ("vitals", "Vital signs"),
        ("labs", "Lab results"),
        ("measure", "Measure at home"),
        ("feedback", "How was your visit?"),
        ("privacy", "Privacy"),
    ] {
        browser.goto(&format!("{origin}/portal/#/{page}")).await;
        let mut shown = Value::Null;
        for _ in 0..200 {
            shown = browser
                .run("const h = document.querySelector('main h1'); return h ? h.textContent : '';", json!([]))
                .await;
            if shown == title {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(shown, title, "the {page} page on a phone");
        check_page(&browser, &format!("{page}-phone"), &format!("{page} on a phone")).await;
        let overflow = browser
            .run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", json!([]))
            .await;
        assert_eq!(overflow, 0, "{page} is no wider than a phone's screen");
    }
    browser.resize(1280, 900).await;

    // Signing out forgets the session and revokes the token.
    browser.click("#sign-out").await;
    browser.wait_for("#sign-in").await;
    let stored = browser.run("return sessionStorage.getItem('braid.portal.session');", json!([])).await;
    assert!(stored.is_null());
    let app = &server.app;
    let mut refused = 0;
    for _ in 0..100 {
        let reply = app.send(app.client.get(app.url(&format!("/Patient/{golden}"))).bearer_auth(&token)).await;
        if reply.status == 401 {
            refused += 1;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(refused, 1, "the revoked token is refused");
    browser.close().await;
}

#[tokio::test]
async fn the_portal_files_are_served_with_a_strict_policy_and_revalidated() {
    let server = spawn_auth_app_with(|_| {}).await;
    let origin = server.app.base.trim_end_matches("/fhir").to_owned();
    let client = crate::helpers::client_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bare = client.get(format!("{origin}/portal")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/portal/");
    let page = client.get(format!("{origin}/portal/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    assert!(html.contains("portal.js") && html.contains("lang=\"en\""));
    let again = client.get(format!("{origin}/portal/")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    let script = client.get(format!("{origin}/portal/portal.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let missing = client.get(format!("{origin}/portal/../Cargo.toml")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing = client.get(format!("{origin}/portal/secrets.json")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The portal's client is built in: its redirect URI is the portal on this origin, no other.
    let authorize = |redirect: &str| {
        let query = [
            ("response_type", "code"),
            ("client_id", "braid-portal"),
            ("redirect_uri", redirect),
            ("scope", "launch/patient openid patient/*.rs"),
            ("state", "s"),
            ("aud", server.app.base.as_str()),
            ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
            ("code_challenge_method", "S256"),
        ];
        client.get(format!("{origin}/auth/authorize")).query(&query).send()
    };
    let accepted = authorize(&format!("{origin}/portal/")).await.unwrap();
    assert_eq!(accepted.status(), 302, "{:?}", accepted.headers());
    assert_eq!(accepted.headers()["location"], "/auth/login");
    let refused = authorize("https://evil.example/portal/").await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("is not a redirect URI registered for this client"));
    // Reached under another name over plain HTTP (a Host header anyone can write), the portal
    // has no redirect URI at all: codes go back only to a loopback, HTTPS or configured origin.
    let query = [
        ("response_type", "code"),
        ("client_id", "braid-portal"),
        ("redirect_uri", "http://portal.evil.example/portal/"),
        ("scope", "launch/patient openid patient/*.rs"),
        ("state", "s"),
        ("aud", "http://portal.evil.example/fhir"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
    ];
    let elsewhere = client
        .get(format!("{origin}/auth/authorize"))
        .query(&query)
        .header("host", "portal.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 400);
    assert!(elsewhere.text().await.unwrap().contains("the patient portal signs in only at this server"));
}

#[tokio::test]
async fn a_users_authorisations_are_listed_and_revoked_only_through_the_portal_and_only_their_own() {
    let server = spawn_auth_app_with(|_| {}).await;
    let origin = server.app.base.trim_end_matches("/fhir").to_owned();
    let client = &server.app.client;
    let call = |method: reqwest::Method, path: &str, token: Option<String>| {
        let mut request = client.request(method, format!("{origin}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A patient's token of the portal lists their grants (none were given through a consent).
    let portal = server.token("braid-portal", "patient/*.rs", Some("p1"));
    let (status, body) = call(reqwest::Method::GET, "/auth/grants", Some(portal.clone())).await;
    assert_eq!((status, body), (200, json!({"grants": []})));
    // Another app's token of the same patient may not, nor may a backend service or nobody.
    let other_app = server.token("pocket", "patient/*.rs", Some("p1"));
    let (status, body) = call(reqwest::Method::GET, "/auth/grants", Some(other_app.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    let backend = server.token("braid-portal", "system/*.rs", None);
    assert_eq!(call(reqwest::Method::GET, "/auth/grants", Some(backend)).await.0, 403);
    let (status, body) = call(reqwest::Method::GET, "/auth/grants", None).await;
    assert_eq!(status, 401, "{body}");
    let challenge = client.get(format!("{origin}/auth/grants")).send().await.unwrap();
    assert!(challenge.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let (status, _) = call(reqwest::Method::GET, "/auth/grants", Some("forged.token.here".into())).await;
    assert_eq!(status, 401);
    // Revoking a grant that is not the user's (or does not exist) changes nothing.
    let (status, body) = call(reqwest::Method::DELETE, "/auth/grants/nope", Some(portal)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(call(reqwest::Method::DELETE, "/auth/grants/nope", Some(other_app)).await.0, 403);
}
