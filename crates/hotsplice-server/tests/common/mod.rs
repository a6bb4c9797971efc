//! What the server tests share: the real `hotsplice-server` binary started
//! on 127.0.0.1:0 with a private data directory (stopped and reaped by a
//! guard), `init`'s credentials, an HTTP helper, and signed patch files.

#![allow(dead_code)]

use hotsplice_patch::{BuildId, ObjectKind, Patch, PatchId, PatchMeta};
use hotsplice_trust::SecretKey;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_hotsplice-server");

/// Credentials `init` printed.
#[derive(Clone, Debug)]
pub struct Creds {
    pub api_user: String,
    pub api_key: String,
    pub access_key: String,
}

fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}:` line in:\n{out}"))
        .to_string()
}

/// `hotsplice-server ARGS`, which must succeed; its stdout.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run hotsplice-server");
    assert!(
        out.status.success(),
        "hotsplice-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn init(data: &Path, db: Option<&str>) -> Creds {
    let mut args = vec!["init", "--data", data.to_str().unwrap()];
    if let Some(u) = db {
        args.extend(["--database", u]);
    }
    let out = cli(&args);
    Creds {
        api_user: field(&out, "api-user"),
        api_key: field(&out, "api-key"),
        access_key: field(&out, "access-key"),
    }
}

/// A running server, stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Server {
    pub fn start(data: &Path, db: Option<&str>) -> Server {
        Server::start_with(data, db, &[])
    }

    pub fn start_with(data: &Path, db: Option<&str>, extra: &[&str]) -> Server {
        let n = std::sync::atomic::AtomicU32::new(0);
        let _ = n;
        let log = data.join(format!(
            "server-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        if let Some(u) = db {
            cmd.args(["--database", u]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start hotsplice-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let mut s = Server {
            child: Some(child),
            url: String::new(),
            data: data.to_path_buf(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                s.url = line
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("first line {line:?}"))
                    .to_string();
            }
            Err(_) => panic!("the server did not start: {}", s.log_text()),
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; wait for the exit; its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}, body not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `error` message of a 4xx.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }
    #[track_caller]
    pub fn ok(self) -> Resp {
        assert!(
            (200..300).contains(&self.status),
            "status {}: {}",
            self.status,
            self.text()
        );
        self
    }
}

/// Credentials for a call.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Api(String, String),
    Machine(String),
}

pub fn call(method: &str, url: &str, auth: &Auth, body: Option<&[u8]>) -> Resp {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut r = agent.request(method, url);
    match auth {
        Auth::None => {}
        Auth::Api(u, k) => r = r.set("X-Uptrack-User", u).set("X-Uptrack-Key", k),
        Auth::Machine(k) => r = r.set("Authorization", &format!("Bearer {k}")),
    }
    let res = match body {
        Some(b) => r.send_bytes(b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    Resp { status, body }
}

/// A test's server with its data directory and credentials.
pub struct Ctx {
    pub server: Server,
    pub creds: Creds,
    pub db: Option<String>,
    pub dir: tempfile::TempDir,
}

impl Ctx {
    pub fn new(db: Option<String>) -> Ctx {
        Ctx::new_with(db, &[])
    }
    /// With extra `run` arguments.
    pub fn new_with(db: Option<String>, extra: &[&str]) -> Ctx {
        let dir = hotsplice_testsupport::temp_dir("server");
        let data = dir.path().join("data");
        let creds = init(&data, db.as_deref());
        let server = Server::start_with(&data, None, extra);
        Ctx {
            server,
            creds,
            db,
            dir,
        }
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }
    pub fn admin(&self) -> Auth {
        Auth::Api(self.creds.api_user.clone(), self.creds.api_key.clone())
    }
    pub fn get(&self, path: &str, auth: &Auth) -> Resp {
        call("GET", &self.url(path), auth, None)
    }
    pub fn post(&self, path: &str, auth: &Auth, body: &[u8]) -> Resp {
        call("POST", &self.url(path), auth, Some(body))
    }
    pub fn post_json(&self, path: &str, auth: &Auth, v: &Value) -> Resp {
        self.post(path, auth, v.to_string().as_bytes())
    }
    /// A new API user with `role`.
    pub fn token(&self, role: &str) -> Auth {
        let r = self
            .post_json(
                "/api/v2/tokens",
                &self.admin(),
                &serde_json::json!({"role": role}),
            )
            .ok()
            .json();
        Auth::Api(
            r["name"].as_str().unwrap().into(),
            r["key"].as_str().unwrap().into(),
        )
    }
    /// Register a machine; (uuid, machine key).
    pub fn register(&self, access_key: &str, group: Option<&str>) -> (String, String) {
        let mut body = serde_json::json!({"access_key": access_key, "hostname": "host.example"});
        if let Some(g) = group {
            body["group"] = g.into();
        }
        let r = self
            .post_json(hotsplice_fleet::api::REGISTER, &Auth::None, &body)
            .ok()
            .json();
        (
            r["uuid"].as_str().unwrap().into(),
            r["machine_key"].as_str().unwrap().into(),
        )
    }
    /// A new publisher key, trusted by the server.
    pub fn publisher(&self) -> SecretKey {
        let k = SecretKey::generate().unwrap();
        self.post_json(
            "/api/v2/publisher-keys",
            &self.admin(),
            &serde_json::json!({"public_key": k.public().to_text(), "comment": "test"}),
        )
        .ok();
        k
    }
}

/// A patch file for `build_id` (hex), signed with `key` (unsigned if
/// none); `image_len` bytes of image.
pub fn patch(
    id: &str,
    build_id: &str,
    kernel: bool,
    level: u32,
    cves: &[&str],
    key: Option<&SecretKey>,
    image_len: usize,
) -> Vec<u8> {
    let mut meta = PatchMeta::example();
    meta.id = id.parse::<PatchId>().unwrap();
    meta.level = level;
    meta.cves = cves.iter().map(|s| s.to_string()).collect();
    meta.description = format!("{} fix", cves.join(" "));
    meta.target.build_id = build_id.parse::<BuildId>().unwrap();
    if kernel {
        meta.target.kind = ObjectKind::Kernel;
        meta.target.name = "vmlinux".into();
    } else {
        meta.target.name = "libc.so.6".into();
    }
    meta.code_size = image_len as u64;
    meta.data_offset = (image_len as u64).div_ceil(4096).max(1) * 4096;
    let bytes = Patch {
        meta,
        image: vec![0xc3; image_len],
    }
    .to_bytes();
    match key {
        Some(k) => hotsplice_trust::sign_file(&bytes, k).unwrap(),
        None => bytes,
    }
}

pub const KERNEL_BID: &str = "abababababababababababababababababababab";
pub const LIBC_BID: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// A report for `uuid` with the kernel and libc build-ids above.
pub fn report(uuid: &str) -> hotsplice_fleet::report::Report {
    let mut r = hotsplice_fleet::report::Report::example(uuid);
    r.kernel.build_id = KERNEL_BID.into();
    r.objects[0].build_id = LIBC_BID.into();
    r
}

/// Check in; the opened list (verified with the data dir's feed.pub and
/// accepted for this machine).
pub fn checkin(
    ctx: &Ctx,
    uuid: &str,
    key: &str,
    r: &hotsplice_fleet::report::Report,
) -> hotsplice_fleet::feed::FeedList {
    let resp = ctx
        .post(
            &hotsplice_fleet::api::checkin(uuid),
            &Auth::Machine(key.into()),
            &serde_json::to_vec(r).unwrap(),
        )
        .ok();
    let c: hotsplice_fleet::api::CheckinResponse = serde_json::from_slice(&resp.body).unwrap();
    open_feed(ctx, uuid, &c.feed)
}

pub fn open_feed(
    ctx: &Ctx,
    uuid: &str,
    feed: &hotsplice_fleet::feed::SignedFeed,
) -> hotsplice_fleet::feed::FeedList {
    let pubkey = hotsplice_trust::PublicKey::from_text(
        &std::fs::read_to_string(ctx.data().join("feed.pub")).unwrap(),
        "feed.pub",
    )
    .unwrap();
    let list = feed.open(&pubkey).expect("the feed verifies with feed.pub");
    hotsplice_fleet::feed::accept(&list, uuid, None, hotsplice_fleet::now())
        .expect("the feed is accepted");
    list
}

// -------------------------------------------------------------------
// Issue 11: dashboard users, sessions, rollouts

impl Ctx {
    /// `hotsplice-server user add NAME --role ROLE` with the password on
    /// standard input.
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        use std::io::Write;
        let mut c = Command::new(BIN)
            .args([
                "user",
                "add",
                "--data",
                self.data().to_str().unwrap(),
                name,
                "--role",
                role,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A logged-in dashboard session (cookie and CSRF token).
pub struct Ui {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
}

fn ui_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .redirects(0)
        .build()
}

fn resp_of(res: Result<ureq::Response, ureq::Error>) -> (Resp, Vec<String>) {
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let cookies = resp
        .all("set-cookie")
        .iter()
        .map(|s| s.to_string())
        .collect();
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (Resp { status, body }, cookies)
}

pub fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Ui {
    /// Log in through the form; panics unless it succeeds.
    pub fn login(ctx: &Ctx, user: &str, password: &str) -> Ui {
        let (r, cookies) = Ui::try_login(ctx, user, password);
        assert_eq!(r.status, 303, "login: {}", r.text());
        let c = cookies
            .iter()
            .find(|c| c.starts_with("hs_session="))
            .expect("a session cookie");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        let cookie = c.split(';').next().unwrap().to_string();
        let mut ui = Ui {
            base: ctx.server.url.clone(),
            cookie,
            csrf: String::new(),
        };
        let page = ui.get("/ui/").ok().text();
        ui.csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a CSRF field on the page")
            .to_string();
        ui
    }
    pub fn try_login(ctx: &Ctx, user: &str, password: &str) -> (Resp, Vec<String>) {
        resp_of(
            ui_agent()
                .post(&ctx.url("/ui/login"))
                .set("Content-Type", "application/x-www-form-urlencoded")
                .send_string(&form_body(&[("user", user), ("password", password)])),
        )
    }
    pub fn get(&self, path: &str) -> Resp {
        resp_of(
            ui_agent()
                .get(&format!("{}{path}", self.base))
                .set("Cookie", &self.cookie)
                .call(),
        )
        .0
    }
    /// A form post with the session's CSRF token added.
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut f = fields.to_vec();
        f.push(("csrf", &self.csrf));
        self.post_raw(path, &f)
    }
    /// A raw body (a patch upload) with the CSRF token in X-CSRF-Token
    /// when `csrf`.
    pub fn post_bytes(&self, path: &str, body: &[u8], csrf: bool) -> Resp {
        let mut r = ui_agent()
            .post(&format!("{}{path}", self.base))
            .set("Cookie", &self.cookie)
            .set("Content-Type", "application/octet-stream");
        if csrf {
            r = r.set("X-CSRF-Token", &self.csrf);
        }
        resp_of(r.send_bytes(body)).0
    }
    /// A form post as given (no CSRF token added).
    pub fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        resp_of(
            ui_agent()
                .post(&format!("{}{path}", self.base))
                .set("Cookie", &self.cookie)
                .set("Content-Type", "application/x-www-form-urlencoded")
                .send_string(&form_body(fields)),
        )
        .0
    }
}

/// A report of `uuid` named `host` with kernel patches `applied` and, if
/// given, a failure of `failed` (patch, error) in its last run.
pub fn report_with(
    uuid: &str,
    host: &str,
    applied: &[&str],
    failed: Option<(&str, &str)>,
) -> hotsplice_fleet::report::Report {
    let mut r = report(uuid);
    r.hostname = host.into();
    r.kernel.applied = applied
        .iter()
        .map(|id| hotsplice_fleet::report::AppliedKernelPatch {
            id: id.to_string(),
            description: String::new(),
        })
        .collect();
    let now = hotsplice_fleet::now();
    if !applied.is_empty() || failed.is_some() {
        r.last_run = Some(hotsplice_fleet::report::RunReport {
            at: now,
            feed_version: 0,
            applied: applied
                .iter()
                .map(|id| hotsplice_fleet::report::RunItem {
                    patch: id.to_string(),
                    target: "kernel".into(),
                })
                .collect(),
            removed: vec![],
            failures: failed
                .iter()
                .map(|(p, e)| hotsplice_fleet::report::RunFailure {
                    patch: p.to_string(),
                    target: "kernel".into(),
                    error: e.to_string(),
                })
                .collect(),
        });
    }
    r
}

/// A loopback HTTP receiver for webhooks: every POST body arrives on
/// `bodies`; answers 200. The listener thread ends with the test process.
pub struct Receiver {
    pub url: String,
    pub bodies: std::sync::mpsc::Receiver<String>,
    /// TLS handshakes that failed (a TLS receiver only), with the error.
    pub tls_errors: std::sync::mpsc::Receiver<String>,
}

/// Read one request from `s`; its body.
fn read_request(s: &mut impl std::io::Read) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(Some(body[..len].to_string()));
            }
        }
    }
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::serve(None, "http://127.0.0.1")
    }

    /// An HTTPS receiver with this certificate chain and key (PEM), at
    /// `https://localhost:PORT/hook`.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Receiver {
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Receiver::serve(Some(std::sync::Arc::new(cfg)), "https://localhost")
    }

    fn serve(tls: Option<std::sync::Arc<rustls::ServerConfig>>, base: &str) -> Receiver {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("{base}:{}/hook", l.local_addr().unwrap().port());
        let (tx, rx) = std::sync::mpsc::channel();
        let (etx, erx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                const OK: &[u8] =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let body = match &tls {
                    None => {
                        let b = read_request(&mut s).ok().flatten();
                        let _ = s.write_all(OK);
                        b
                    }
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        let mut t = rustls::StreamOwned::new(conn, s);
                        match read_request(&mut t) {
                            Ok(b) => {
                                let _ = t.write_all(OK);
                                let _ = t.flush();
                                t.conn.send_close_notify();
                                let _ = t.conn.complete_io(&mut t.sock);
                                b
                            }
                            Err(e) => {
                                let _ = etx.send(e.to_string());
                                None
                            }
                        }
                    }
                };
                if let Some(b) = body {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            }
        });
        Receiver {
            url,
            bodies: rx,
            tls_errors: erx,
        }
    }
    /// The next body, within 60 s.
    pub fn next(&self) -> Value {
        let b = self
            .bodies
            .recv_timeout(Duration::from_secs(60))
            .expect("a webhook call within 60 s");
        serde_json::from_str(&b).unwrap()
    }
}
