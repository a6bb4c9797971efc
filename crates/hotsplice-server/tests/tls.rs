//! `run --tls-cert --tls-key`: the API over TLS (rustls), with a
//! certificate made for the test; plain HTTP to that port gets no answer.

mod common;

use common::*;
use std::sync::Arc;

#[test]
fn serves_over_tls() {
    let dir = hotsplice_testsupport::temp_dir("server-tls");
    let data = dir.path().join("data");
    let creds = init(&data, None);
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = dir.path().join("cert.pem");
    let key_pem = dir.path().join("key.pem");
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let server = Server::start_with(
        &data,
        None,
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .build();
    let text = agent
        .get(&format!("{}{}", server.url, hotsplice_fleet::api::FEED_KEY))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(text.starts_with("hotsplice-ed25519-public "));
    let list = agent
        .get(&format!("{}/api/1/machines", server.url))
        .set("X-Uptrack-User", &creds.api_user)
        .set("X-Uptrack-Key", &creds.api_key)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(list, "[]");
    // Without TLS: no HTTP answer.
    let plain = server.url.replace("https://", "http://");
    let r = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .get(&format!("{plain}{}", hotsplice_fleet::api::FEED_KEY))
        .call();
    assert!(
        !matches!(r, Ok(ref resp) if resp.status() == 200),
        "plain HTTP answered"
    );
}
