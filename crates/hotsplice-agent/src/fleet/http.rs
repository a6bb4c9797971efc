//! The client's HTTP: a blocking `ureq` agent over rustls (the system's
//! roots and an optional CA file), with timeouts, bounded answers, retries
//! with exponential backoff and jitter, and a list of server instances
//! tried in order.
//!
//! Which URLs are accepted: `https://` always; `http://` only to a
//! loopback address (`127.0.0.0/8`, `::1`, `localhost`), where nothing
//! leaves the machine, unless `[fleet] allow_http = true` says otherwise.
//! The feed and the patches are signed either way, but the access key
//! and the machine key would travel in clear.

use super::FleetError;
use crate::event::{Event, Sink};
use hotsplice_store::FleetSettings;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// A server URL as given (`https://host:port`, no path), checked.
pub fn check_url(url: &str, allow_http: bool) -> Result<String, FleetError> {
    let url = url.trim().trim_end_matches('/');
    let bad = |why: &str| FleetError::Config(format!("server URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not a URL; give https://HOST[:PORT]"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad(
            "give only https://HOST[:PORT], without a path, query or user",
        ));
    }
    match scheme {
        "https" => {}
        "http" if allow_http || is_loopback_authority(rest) => {}
        "http" => {
            return Err(bad(
                "http:// is allowed only to a loopback address (the machine key would travel in clear); \
                 use https://, or set `allow_http = true` under [fleet] in the configuration",
            ))
        }
        _ => return Err(bad("the scheme must be https (or http to a loopback address)")),
    }
    Ok(url.to_string())
}

/// `host[:port]` names this machine's loopback.
fn is_loopback_authority(auth: &str) -> bool {
    let host = if let Some(rest) = auth.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        auth.rsplit_once(':').map_or(auth, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A comma-separated list of server URLs (or one), each checked.
pub fn parse_servers(list: &str, allow_http: bool) -> Result<Vec<String>, FleetError> {
    let v: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| check_url(s, allow_http))
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err(FleetError::Config("no server URL given".into()));
    }
    Ok(v)
}

/// Credentials of a request.
#[derive(Clone)]
pub enum Auth {
    None,
    /// The machine key (`Authorization: Bearer`).
    Machine(String),
    /// An API user and key (`X-Uptrack-User`, `X-Uptrack-Key`).
    User(String, String),
}

/// A request body.
pub enum Body<'a> {
    Empty,
    Json(String),
    Bytes(&'a [u8]),
}

/// The answer: which server gave it, and its bytes.
pub struct Answer {
    pub server: String,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, FleetError> {
        serde_json::from_slice(&self.bytes).map_err(|e| FleetError::BadAnswer {
            server: self.server.clone(),
            what: what.into(),
            why: e.to_string(),
        })
    }
}

/// How requests are made.
pub struct Client {
    agent: ureq::Agent,
    servers: Vec<String>,
    retries: u32,
    backoff: Duration,
    events: Sink,
    stop: fn() -> bool,
}

impl Client {
    pub fn new(
        servers: Vec<String>,
        s: &FleetSettings,
        events: Sink,
        stop: fn() -> bool,
    ) -> Result<Client, FleetError> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(secs(s.connect_timeout, 1.0))
            .timeout(secs(s.timeout, 1.0))
            .redirects(0)
            .user_agent(concat!("hotsplice/", env!("CARGO_PKG_VERSION")));
        if servers.iter().any(|u| u.starts_with("https://")) {
            b = b.tls_config(tls_config(s.ca.as_deref())?);
        }
        Ok(Client {
            agent: b.build(),
            servers,
            retries: s.retries,
            backoff: secs(s.backoff, 0.0),
            events,
            stop,
        })
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// `method path` with `body`, the answer at most `limit` bytes. Each
    /// round tries every server in order (one that cannot be reached, or
    /// answers 5xx/429, passes the turn to the next); between rounds, an
    /// exponential backoff with jitter, `retries` rounds more at most. A
    /// 4xx answer is final: every instance of a fleet would say the same.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: &Auth,
        body: Body<'_>,
        limit: u64,
    ) -> Result<Answer, FleetError> {
        let mut last: Option<FleetError> = None;
        for round in 0..=self.retries {
            if round > 0 {
                let wait = backoff(self.backoff, round);
                (self.events)(Event::FleetRetry {
                    attempt: round,
                    of: self.retries,
                    wait_s: wait.as_secs_f64(),
                    why: last.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                });
                if sleep_unless_stopped(wait, &self.stop) {
                    break;
                }
            }
            for server in &self.servers {
                match self.once(server, method, path, auth, &body, limit) {
                    Ok(a) => return Ok(a),
                    Err(e) if e.is_retryable() => {
                        tracing::info!("{server}{path}: {e}");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(FleetError::Unreachable {
            servers: self.servers.join(", "),
            attempts: self.retries + 1,
            last: last.map(|e| e.to_string()).unwrap_or_default(),
        })
    }

    fn once(
        &self,
        server: &str,
        method: &str,
        path: &str,
        auth: &Auth,
        body: &Body<'_>,
        limit: u64,
    ) -> Result<Answer, FleetError> {
        let url = format!("{server}{path}");
        let mut req = self.agent.request(method, &url);
        match auth {
            Auth::None => {}
            Auth::Machine(k) => req = req.set("Authorization", &format!("Bearer {k}")),
            Auth::User(u, k) => {
                req = req
                    .set(hotsplice_fleet::api::USER_HEADER, u)
                    .set(hotsplice_fleet::api::KEY_HEADER, k)
            }
        }
        let r = match body {
            Body::Empty => req.call(),
            Body::Json(t) => req
                .set("Content-Type", "application/json")
                .send_bytes(t.as_bytes()),
            Body::Bytes(b) => req
                .set("Content-Type", "application/octet-stream")
                .send_bytes(b),
        };
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(status, resp)) => {
                let text = read_limited(resp, 64 << 10, server)
                    .map(|b| {
                        serde_json::from_slice::<hotsplice_fleet::api::ApiError>(&b)
                            .map(|e| e.error)
                            .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned())
                    })
                    .unwrap_or_default();
                return Err(FleetError::Status {
                    server: server.into(),
                    request: format!("{method} {path}"),
                    status,
                    message: short(&crate::machine::printable(text.trim()), 2000),
                });
            }
            Err(ureq::Error::Transport(t)) => {
                let mut why = t.kind().to_string();
                if let Some(m) = t.message() {
                    why = format!("{why}: {m}");
                }
                if let Some(src) = std::error::Error::source(&t) {
                    why = format!("{why}: {src}");
                }
                // Not a fault that goes away: the certificate is not one
                // this machine trusts.
                if why.contains("invalid peer certificate") {
                    return Err(FleetError::Tls {
                        server: server.into(),
                        why,
                    });
                }
                return Err(FleetError::Transport {
                    server: server.into(),
                    why,
                });
            }
        };
        let bytes = read_limited(resp, limit, server)?;
        Ok(Answer {
            server: server.into(),
            bytes,
        })
    }
}

/// The body of `resp`, refused past `limit` bytes.
fn read_limited(resp: ureq::Response, limit: u64, server: &str) -> Result<Vec<u8>, FleetError> {
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > limit {
            return Err(FleetError::TooLarge {
                server: server.into(),
                limit,
            });
        }
    }
    let mut out = Vec::new();
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| FleetError::Transport {
            server: server.into(),
            why: format!("reading the answer: {e}"),
        })?;
    if out.len() as u64 > limit {
        return Err(FleetError::TooLarge {
            server: server.into(),
            limit,
        });
    }
    Ok(out)
}

/// `s` cut to at most `max` bytes (on a character boundary), `…` added.
fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn secs(s: f64, min: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() { s.max(min) } else { min })
}

/// `base * 2^(round-1)`, at most 5 minutes, times a random factor in
/// [0.5, 1.5) so that machines that failed together do not retry together.
pub fn backoff(base: Duration, round: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (round.saturating_sub(1)).min(16));
    let capped = exp.min(Duration::from_secs(300));
    capped.mul_f64(0.5 + random_unit())
}

/// A random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b[..4].copy_from_slice(&t.to_le_bytes());
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleep `d` in short steps; `true` if a stop was requested meanwhile.
pub fn sleep_unless_stopped(d: Duration, stop: &dyn Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        if stop() {
            return true;
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// rustls with the system's roots and the CA file's certificates.
fn tls_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, FleetError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(ca) = ca {
        let bytes = hotsplice_store::read_regular(
            std::path::Path::new(ca),
            "CA certificate file",
            hotsplice_store::MAX_CONFIG_FILE,
            hotsplice_store::Links::Follow,
        )
        .map_err(|e| FleetError::Config(format!("[fleet] ca: {e}")))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut &bytes[..]) {
            let c = c.map_err(|e| FleetError::Config(format!("[fleet] ca {ca}: {e}")))?;
            roots
                .add(c)
                .map_err(|e| FleetError::Config(format!("[fleet] ca {ca}: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(FleetError::Config(format!(
                "[fleet] ca {ca}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
            )));
        }
    }
    if roots.is_empty() {
        return Err(FleetError::Config(
            "no CA certificate to check the server's with: the system has none installed \
             (ca-certificates) and [fleet] ca is not set"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FleetError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://fleet.example.com:8443", false).is_ok());
        assert_eq!(
            check_url("https://fleet.example.com/", false).unwrap(),
            "https://fleet.example.com"
        );
        assert!(check_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_url("http://[::1]:8080", false).is_ok());
        assert!(check_url("http://localhost", false).is_ok());
        assert!(check_url("http://10.0.0.1:8080", false).is_err());
        assert!(check_url("http://10.0.0.1:8080", true).is_ok());
        assert!(check_url("https://h/api", false).is_err());
        assert!(check_url("ftp://h", false).is_err());
        assert!(check_url("h:80", false).is_err());
        assert_eq!(
            parse_servers("http://127.0.0.1:1, http://127.0.0.1:2", false)
                .unwrap()
                .len(),
            2
        );
        assert!(parse_servers(" , ", false).is_err());
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let b = Duration::from_secs(1);
        for round in 1..40 {
            let d = backoff(b, round);
            let nominal =
                Duration::from_secs(1 << (round - 1).min(16)).min(Duration::from_secs(300));
            assert!(d >= nominal / 2 && d < nominal * 3 / 2, "{round}: {d:?}");
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn an_unreachable_server_is_retried_then_reported() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = FleetSettings {
            retries: 2,
            backoff: 0.0,
            ..Default::default()
        };
        let seen = Arc::new(std::sync::Mutex::new(0));
        let seen2 = seen.clone();
        let c = Client::new(
            vec![format!("http://127.0.0.1:{port}")],
            &s,
            Arc::new(move |e| {
                if matches!(e, Event::FleetRetry { .. }) {
                    *seen2.lock().unwrap() += 1;
                }
            }),
            || false,
        )
        .unwrap();
        let e = c
            .call("GET", "/x", &Auth::None, Body::Empty, 10)
            .err()
            .unwrap();
        assert!(
            matches!(e, FleetError::Unreachable { attempts: 3, .. }),
            "{e}"
        );
        assert_eq!(*seen.lock().unwrap(), 2);
    }
}
