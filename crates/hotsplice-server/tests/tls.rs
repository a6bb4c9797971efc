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
    let agent_tls = Arc::new(config);
    let agent = ureq::AgentBuilder::new()
        .tls_config(agent_tls.clone())
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
    // The dashboard's session cookie is `Secure` over TLS (and only then:
    // the plain-HTTP tests log in without it).
    {
        use std::io::Write;
        let mut c = std::process::Command::new(BIN)
            .args([
                "user",
                "add",
                "--data",
                data.to_str().unwrap(),
                "tina",
                "--role",
                "read-only",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "a long enough password").unwrap();
        assert!(c.wait().unwrap().success());
    }
    let login = ureq::AgentBuilder::new()
        .tls_config(agent_tls.clone())
        .redirects(0)
        .build()
        .post(&format!("{}/ui/login", server.url))
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string("user=tina&password=a+long+enough+password");
    let resp = match login {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("login: {e}"),
    };
    assert_eq!(resp.status(), 303);
    let cookie = resp.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("; Secure"),
        "{cookie}"
    );
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
