//! The `braid` binary as an operator runs it: JSON logs carrying the request id, and a graceful
//! stop on SIGTERM that keeps every acknowledged write.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::start_braid_process;

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
    let braid = start_braid_process(&dir.path().join("logs.redb"), "info");
    let (mut child, port, logs) = (braid.child, braid.port, braid.logs);
    let client = crate::helpers::client();
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
    let braid = start_braid_process(&data, "info");
    let (mut child, port, logs) = (braid.child, braid.port, braid.logs);
    let client = crate::helpers::client();
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
    // The process has exited, so its stdout is closed: reading the channel to its end sees every
    // line it wrote, however far the reading thread had got.
    assert!(logs.iter().any(|log| log["fields"]["message"] == "database closed cleanly"));

    let braid = start_braid_process(&data, "info");
    let (mut child, port) = (braid.child, braid.port);
    let read: Value =
        client.get(format!("http://127.0.0.1:{port}/fhir/Patient/kept")).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["active"], true);
    terminate(&mut child);
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped by whoever adopted it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_server_whose_starting_process_is_gone_stops_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let wait_for_exit = |pid: u32| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !exited(pid) {
            assert!(std::time::Instant::now() < deadline, "Braid (pid {pid}) still runs without its parent");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A shell starts Braid in the background, naming itself as the parent, and exits a second
    // later: Braid is adopted by another process, notices, and stops.
    let script = r#"BRAID_PARENT_PID=$$ BRAID_AUTH=off "$0" serve --listen 127.0.0.1:0 --data "$1" >/dev/null 2>&1 &
echo $!
sleep 1"#;
    let output = Command::new("sh")
        .args(["-c", script, env!("CARGO_BIN_EXE_braid")])
        .arg(dir.path().join("orphaned.redb"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let pid: u32 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    assert!(!exited(pid), "Braid was running when the shell exited");
    wait_for_exit(pid);

    // Started by a process that is not the one named: it stops at once, cleanly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--auth", "off", "--data"])
        .arg(dir.path().join("named.redb"))
        .env("BRAID_PARENT_PID", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_exit(child.id());
    assert!(child.wait().unwrap().success(), "a graceful stop, as on SIGTERM");
}
