//! The `braid` binary as an operator runs it: JSON logs carrying the request id, and a graceful
//! stop on SIGTERM that keeps every acknowledged write.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn start(data: &std::path::Path) -> (std::process::Child, u16, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("BRAID_LOG_FORMAT", "json")
        .env("BRAID_LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the braid binary starts");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let log: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
            let _ = sender.send(log);
        }
    });
    let port = loop {
        let log = receiver.recv_timeout(Duration::from_secs(60)).expect("braid logs its port");
        if let Some(port) = log["fields"]["port"].as_u64() {
            break port as u16;
        }
    };
    (child, port, receiver)
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    for _ in 0..3000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("braid did not stop within 30 s of SIGTERM");
}

#[actix_web::test]
async fn logs_are_json_lines_that_carry_the_request_id_and_no_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, logs) = start(&dir.path().join("logs.redb"));
    let client = reqwest::Client::new();
    let secret_name = "Unforgettable-Surname-4711";
    let reply = client
        .post(format!("http://127.0.0.1:{port}/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "req-abc-123")
        .body(json!({"resourceType": "Patient", "name": [{"family": secret_name}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    terminate(&mut child);
    let lines: Vec<Value> = logs.try_iter().collect();
    let completed = lines
        .iter()
        .find(|log| log["fields"]["message"] == "request completed" && log["span"]["request_id"] == "req-abc-123")
        .unwrap_or_else(|| panic!("no completion line for the request in {lines:?}"));
    assert_eq!(completed["fields"]["status"], 201);
    assert_eq!(completed["span"]["method"], "POST");
    assert!(lines.iter().all(|log| !log.to_string().contains(secret_name)), "a resource body reached the log");
}

#[actix_web::test]
async fn sigterm_stops_the_server_cleanly_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("graceful.redb");
    let (mut child, port, logs) = start(&data);
    let client = reqwest::Client::new();
    let reply = client
        .put(format!("http://127.0.0.1:{port}/fhir/Patient/kept"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "kept", "active": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let status = terminate(&mut child);
    assert!(status.success(), "braid exits with 0 after SIGTERM, got {status}");
    assert!(logs.try_iter().any(|log| log["fields"]["message"] == "database closed cleanly"));

    let (mut child, port, _logs) = start(&data);
    let read: Value =
        client.get(format!("http://127.0.0.1:{port}/fhir/Patient/kept")).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["active"], true);
    terminate(&mut child);
}
