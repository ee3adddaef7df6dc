//! Appointment reminders through a running server: a Communication per upcoming appointment,
//! patient and lead time, emailed once through SMTP (a sink the test starts) when the patient
//! has an address, withdrawn or noted when the appointment is cancelled.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{AuthApp, spawn_auth_app_with};
use crate::smtp_sink::SmtpSink;

const REMINDERS: &str = "/Communication?category=http://terminology.hl7.org/CodeSystem/communication-category|reminder";

fn in_two_days() -> String {
    let start = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48);
    start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn appointment(id: &str, patient: &str, status: &str, start: &str) -> Value {
    json!({"resourceType": "Appointment", "id": id, "status": status, "description": "Diabetes review",
           "start": start, "end": start,
           "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]})
}

async fn put(server: &AuthApp, token: &str, resource: &Value) {
    let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let reply = server.app.put_with_token(&path, token, resource).await;
    assert!(reply.status == 200 || reply.status == 201, "{path}: {}", reply.text);
}

/// The reminders now, by `patient|lead`.
async fn reminders(server: &AuthApp, token: &str) -> std::collections::BTreeMap<String, Value> {
    let app = &server.app;
    let reply = app.send(app.client.get(app.url(&format!("{REMINDERS}&_count=100"))).bearer_auth(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            let value = entry["resource"]["identifier"][0]["value"].as_str().unwrap();
            let mut parts = value.split('|').skip(1);
            (format!("{}|{}", parts.next().unwrap(), parts.next().unwrap()), entry["resource"].clone())
        })
        .collect()
}

/// Waits (up to 20 s) until `done` holds for the reminders.
async fn until(
    server: &AuthApp,
    token: &str,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, Value>) -> bool,
) -> std::collections::BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = reminders(server, token).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn reminders_are_sent_once_by_email_and_follow_a_cancellation() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let server = spawn_auth_app_with(move |settings| {
        settings.reminder_interval_secs = 1;
        settings.reminder_lead_times = "3d,1d".into();
        settings.smtp_url = Some(url);
        settings.smtp_from = "Clinic reminders <reminders@clinic.test>".into();
    })
    .await;
    let token = server.token("ops", "system/*.cruds", None);
    put(
        &server,
        &token,
        &json!({"resourceType": "Patient", "id": "ann", "name": [{"family": "Ng"}],
        "telecom": [{"system": "phone", "value": "555 0100"}, {"system": "email", "value": "ann@example.org"}]}),
    )
    .await;
    put(&server, &token, &json!({"resourceType": "Patient", "id": "bob", "name": [{"family": "Ode"}]})).await;
    let start = in_two_days();
    put(&server, &token, &appointment("visit", "ann", "booked", &start)).await;
    put(&server, &token, &appointment("checkup", "bob", "booked", &start)).await;

    // The three-day reminders are due at once: sent, ann's by email; the one-day ones wait.
    let state = until(&server, &token, "the due reminders are sent", |r| {
        r.get("ann|3d").is_some_and(|c| c["status"] == "completed")
            && r.get("bob|3d").is_some_and(|c| c["status"] == "completed")
    })
    .await;
    assert_eq!(state["ann|3d"]["medium"][0]["coding"][0]["code"], "EMAILWRIT");
    assert!(state["bob|3d"].get("medium").is_none(), "bob has no address: {}", state["bob|3d"]);
    assert_eq!(state["ann|3d"]["about"][0]["reference"], "Appointment/visit");
    assert_eq!(state["ann|3d"]["subject"]["reference"], "Patient/ann");
    assert!(
        state["ann|3d"]["payload"][0]["contentString"]
            .as_str()
            .unwrap()
            .starts_with("Reminder (3d before): Diabetes review on ")
    );
    for key in ["ann|1d", "bob|1d"] {
        assert_eq!(state[key]["status"], "preparation", "{key}");
    }
    let mails = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["ann@example.org"]);
    assert_eq!(mails[0].from, "reminders@clinic.test");
    assert!(mails[0].data.contains("Subject: Appointment reminder"), "{}", mails[0].data);
    assert!(mails[0].data.contains("you have an appointment on"), "{}", mails[0].data);
    assert!(!mails[0].data.contains("Diabetes"), "the email leaves out what the appointment is for");

    // Later passes send nothing again and change nothing.
    let versions: Vec<Value> = state.values().map(|c| c["meta"]["versionId"].clone()).collect();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let later = reminders(&server, &token).await;
    assert_eq!(later.values().map(|c| c["meta"]["versionId"].clone()).collect::<Vec<_>>(), versions);
    assert_eq!(sink.messages().len(), 1, "one email per reminder");

    // Cancelled: the unsent reminder is withdrawn, the sent one says so; no email goes.
    put(&server, &token, &appointment("visit", "ann", "cancelled", &start)).await;
    let state = until(&server, &token, "the cancellation reaches the reminders", |r| {
        r["ann|1d"]["status"] == "not-done" && r["ann|3d"]["note"].is_array()
    })
    .await;
    assert_eq!(state["ann|1d"]["statusReason"]["text"], "The appointment was cancelled.");
    assert_eq!(state["ann|3d"]["status"], "completed");
    assert_eq!(state["ann|3d"]["note"][0]["text"], "The appointment was cancelled after this reminder was sent.");
    assert_eq!(state["bob|1d"]["status"], "preparation", "bob's appointment is untouched");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn wrong_reminder_settings_stop_the_start_with_a_clear_message() {
    for (lead_times, smtp_url, expected) in [
        ("3w", None, "a lead time is a number of days, hours or minutes"),
        ("1d", Some("ftp://mail.example"), "smtp_url is not an SMTP URL"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let settings = braid::config::Settings {
            listen: "127.0.0.1:0".into(),
            data: dir.path().join("braid.redb"),
            reminder_lead_times: lead_times.into(),
            smtp_url: smtp_url.map(str::to_owned),
            ..braid::config::Settings::default()
        };
        let error =
            braid::startup::Application::build(&settings).await.err().expect("the start is refused").to_string();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains("mail.example"), "the URL (which may hold a password) is not repeated: {error}");
    }
}
