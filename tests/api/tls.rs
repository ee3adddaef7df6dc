//! HTTPS: `tls_cert` and `tls_key` make Braid serve TLS 1.2 and 1.3 with HTTP/2 and HTTP/1.1;
//! a half or unreadable configuration stops the start with an error naming the file. The
//! certificates are made by the test (rcgen), never kept in the repository.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use braid::config::Settings;
use braid::startup::{Application, StartupError};

/// A self-signed certificate for `127.0.0.1` and `localhost` and its key, written as PEM files in
/// `dir`; returns their paths and the certificate (the client's only trusted root).
fn certificate(dir: &Path) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, certified.cert.der().clone())
}

fn settings(dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        data: dir.join("braid.redb"),
        workers: 2,
        auth: braid::config::AuthMode::Off,
        ..Settings::default()
    }
}

/// A client trusting only `root`, offering `versions` of TLS and the `alpn` protocols.
fn client(
    root: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    crate::helpers::client_builder().use_preconfigured_tls(config).build().unwrap()
}

#[actix_web::test]
async fn with_a_certificate_braid_serves_https_over_http2_and_http1_on_tls_12_and_13() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root) = certificate(dir.path());
    let mut settings = settings(dir.path());
    settings.tls_cert = Some(cert);
    settings.tls_key = Some(key);
    let application = Application::build(&settings).await.expect("the server starts");
    assert!(application.serves_https());
    let base = format!("https://127.0.0.1:{}/fhir", application.port());
    tokio::spawn(application.run_until_stopped());

    let tls13 = &[&rustls::version::TLS13][..];
    let tls12 = &[&rustls::version::TLS12][..];
    for (versions, alpn, expected) in [
        (tls13, &[&b"h2"[..], b"http/1.1"][..], reqwest::Version::HTTP_2),
        (tls13, &[&b"http/1.1"[..]][..], reqwest::Version::HTTP_11),
        (tls12, &[&b"h2"[..], b"http/1.1"][..], reqwest::Version::HTTP_2),
    ] {
        let client = client(&root, versions, alpn);
        // A write and a read back over the encrypted connection.
        let created = client
            .put(format!("{base}/Patient/tls"))
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","id":"tls","name":[{"family":"Secure"}]}"#)
            .send()
            .await
            .expect("the TLS handshake succeeds");
        assert!(created.status().is_success(), "{}", created.status());
        assert_eq!(created.version(), expected, "{versions:?} {alpn:?}");
        let read = client.get(format!("{base}/Patient/tls")).send().await.unwrap();
        assert_eq!(read.version(), expected);
        let body: serde_json::Value = read.json().await.unwrap();
        assert_eq!(body["name"][0]["family"], "Secure");
    }

    // A client that does not trust the certificate is refused at the handshake, and plain HTTP
    // on the HTTPS port gets no FHIR answer.
    let other = tempfile::tempdir().unwrap();
    let (_, _, stranger) = certificate(other.path());
    let untrusting = client(&stranger, tls13, &[b"http/1.1"]);
    assert!(untrusting.get(format!("{base}/metadata")).send().await.is_err());
    let plain = crate::helpers::client().get(base.replace("https://", "http://") + "/metadata").send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[test]
fn a_half_or_unreadable_tls_configuration_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = |cert: Option<PathBuf>, key: Option<PathBuf>| {
        let mut settings = settings(dir.path());
        settings.tls_cert = cert;
        settings.tls_key = key;
        match runtime.block_on(Application::build(&settings)) {
            Ok(_) => panic!("the server must not start"),
            Err(error) => error,
        }
    };
    assert!(matches!(start(Some(cert.clone()), None), StartupError::TlsIncomplete));
    assert!(matches!(start(None, Some(key.clone())), StartupError::TlsIncomplete));

    let missing = dir.path().join("missing.pem");
    let message = start(Some(missing.clone()), Some(key.clone())).to_string();
    assert!(message.contains("certificate") && message.contains("missing.pem"), "{message}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file").unwrap();
    let message = start(Some(garbage.clone()), Some(key.clone())).to_string();
    assert!(message.contains("garbage.pem") && message.contains("no certificate"), "{message}");
    let message = start(Some(cert.clone()), Some(garbage)).to_string();
    assert!(message.contains("private key") && message.contains("garbage.pem"), "{message}");

    // A key that is not the certificate's.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = certificate(other.path());
    let message = start(Some(cert), Some(other_key)).to_string();
    assert!(message.contains("cannot be used together"), "{message}");
    // No database was created by the refused starts.
    assert!(!dir.path().join("braid.redb").exists());
}
