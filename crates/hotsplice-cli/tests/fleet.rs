//! End to end: the real `hotsplice-server` on 127.0.0.1 (port 0, a private
//! data directory), several simulated machines (each its own state and
//! configuration directories) running real programs built from the
//! fixtures, patched by a real `hotsplice sync`; and the attacks on the
//! feed (a replayed old list, an expired one, another machine's, a
//! swapped patch file) and faults (a server that is down, killed, or cuts
//! a download short) that the client must withstand.
//!
//! The server binary: `HOTSPLICE_SERVER_BIN`, else `hotsplice-server`
//! beside the `hotsplice` binary under test (Cargo's target directory),
//! which a workspace build (`cargo build --workspace`, or the workspace's
//! test run, which builds every binary with integration tests) puts
//! there. Tests never run cargo themselves.
//!
//! Machines on one host see each other's processes; so each test builds
//! its own copy of the fixture (its own build-id), and a machine's patch
//! reaches only the programs of its own test.
//!
//! Some attacks go through a small loopback proxy written here, between
//! the client and the server: it can answer a check-in with an answer it
//! kept from before (replay), hand out another file for a patch (swap), or
//! cut a download in the middle (a server that disappears).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for the daemon to sync (a loaded CI machine is slow).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOTSPLICE_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let p = hotsplice_bin().with_file_name("hotsplice-server");
    assert!(
        p.is_file(),
        "{} does not exist: the fleet tests run the real server binary; build the workspace \
         (`cargo build --workspace`, or `cargo build -p hotsplice-server`) or set HOTSPLICE_SERVER_BIN",
        p.display()
    );
    p
}

/// A `hotsplice-server` process and its data directory; killed and reaped
/// when dropped.
struct Server {
    data: TempDir,
    child: Option<Child>,
    url: String,
    port: u16,
    user: String,
    key: String,
    access_key: String,
    feed_validity: u64,
    /// A PostgreSQL URL (else the embedded SQLite store).
    database: Option<String>,
    /// More arguments of `run` (TLS).
    run_args: Vec<String>,
}

impl Server {
    fn start(feed_validity: u64) -> Server {
        Server::start_on(feed_validity, None)
    }

    fn start_on(feed_validity: u64, database: Option<String>) -> Server {
        Server::start_with(feed_validity, database, vec![])
    }

    fn start_with(feed_validity: u64, database: Option<String>, run_args: Vec<String>) -> Server {
        let data = temp_dir("fleet-server");
        let mut cmd = Command::new(server_bin());
        cmd.args(["init", "--data"])
            .arg(data.path().join("d"))
            .env("HOTSPLICE_LOG", "warn");
        if let Some(db) = &database {
            cmd.args(["--database", db]);
        }
        let out = cmd.output().expect("hotsplice-server init");
        assert!(out.status.success(), "hotsplice-server init: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("init printed no {name}:\n{text}"))
                .trim()
                .to_string()
        };
        let mut s = Server {
            user: field("api-user"),
            key: field("api-key"),
            access_key: field("access-key"),
            data,
            child: None,
            url: String::new(),
            port: 0,
            feed_validity,
            database,
            run_args,
        };
        s.run();
        s
    }

    /// A second instance of the same fleet: its own data directory with a
    /// copy of the feed key, on the same PostgreSQL database.
    fn second(&self) -> Server {
        let data = temp_dir("fleet-server2");
        std::fs::create_dir(data.path().join("d")).unwrap();
        for f in ["feed.key", "feed.pub"] {
            std::fs::copy(
                self.data.path().join("d").join(f),
                data.path().join("d").join(f),
            )
            .unwrap();
        }
        let mut s = Server {
            data,
            child: None,
            url: String::new(),
            port: 0,
            user: self.user.clone(),
            key: self.key.clone(),
            access_key: self.access_key.clone(),
            feed_validity: self.feed_validity,
            database: self.database.clone(),
            run_args: self.run_args.clone(),
        };
        s.run();
        s
    }

    /// Start (or restart, on the same port) `run`.
    fn run(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("server.log"))
            .expect("server log");
        let mut cmd = Command::new(server_bin());
        if let Some(db) = &self.database {
            cmd.args(["run", "--database", db]);
        } else {
            cmd.arg("run");
        }
        let mut child = cmd
            .arg("--data")
            .arg(self.data.path().join("d"))
            .args(["--listen", &listen])
            .args(["--feed-validity", &self.feed_validity.to_string()])
            .args(["--checkin-interval", "60"])
            .args(&self.run_args)
            .env("HOTSPLICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("hotsplice-server run");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut r = BufReader::new(stdout);
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            // Keep reading so the server never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        self.child = Some(child);
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server's first line: {line:?}\n{}", self.log()))
            .to_string();
        self.port = url.rsplit(':').next().unwrap().parse().expect("port");
        self.url = url;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    fn token(&self) -> String {
        format!("{}:{}", self.user, self.key)
    }

    /// An admin API call: status and JSON (or text) body.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = ureq::request(method, &format!("{}{path}", self.url))
            .set("X-Uptrack-User", &self.user)
            .set("X-Uptrack-Key", &self.key);
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    fn api_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, path, body);
        assert!(
            (200..300).contains(&s),
            "{method} {path}: {s} {v}\n{}",
            self.log()
        );
        v
    }

    /// Trust a publisher's key.
    fn trust(&self, publisher: &TestEnv) {
        let text = std::fs::read_to_string(publisher.root.join("signing/tests.pub")).unwrap();
        self.api_ok(
            "POST",
            "/api/v2/publisher-keys",
            Some(serde_json::json!({ "public_key": text, "comment": "tests" })),
        );
    }

    /// A new access key (for `group`, perhaps `pending`).
    fn access_key(&self, group: Option<&str>, pending: bool) -> String {
        let v = self.api_ok(
            "POST",
            "/api/v2/access-keys",
            Some(serde_json::json!({ "group": group, "pending": pending })),
        );
        v["key"].as_str().expect("key").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Machines
// ---------------------------------------------------------------------------

/// A simulated machine: its own configuration (trusting the publisher's
/// key) and state directories.
struct Machine {
    env: TestEnv,
}

impl Machine {
    fn new(tag: &str, publisher: &TestEnv, extra_conf: &str) -> Machine {
        Machine::with_autoinstall(tag, publisher, true, extra_conf)
    }

    fn with_autoinstall(
        tag: &str,
        publisher: &TestEnv,
        autoinstall: bool,
        extra_conf: &str,
    ) -> Machine {
        let env = TestEnv::new(tag);
        std::fs::copy(
            publisher.root.join("signing/tests.pub"),
            env.root.join("etc/keys/publisher.pub"),
        )
        .expect("trust the publisher");
        std::fs::write(
            env.root.join("etc/hotsplice.conf"),
            format!(
                "[settings]\nautoinstall = {autoinstall}\n\n[fleet]\njitter = 0\nretries = 2\nbackoff = 0.05\nconnect_timeout = 5\ntimeout = 20\n{extra_conf}"
            ),
        )
        .expect("config");
        Machine { env }
    }

    fn hs(&self, args: &[&str]) -> CmdOut {
        self.env.hs(args)
    }

    fn register(&self, url: &str, key: &str, group: Option<&str>) {
        let mut a = vec!["register", "--server", url, "--key", key];
        if let Some(g) = group {
            a.extend(["--group", g]);
        }
        self.hs(&a).assert_ok("register");
    }

    /// `hotsplice sync --json ARGS`, which must succeed: its JSON.
    fn sync(&self, args: &[&str]) -> Value {
        let mut a = vec!["sync", "--json"];
        a.extend(args);
        let r = self.hs(&a);
        r.assert_ok("sync");
        parse_json(&r.stdout).unwrap_or_else(|e| panic!("sync --json: {e}\n{}", r.describe()))
    }

    fn uuid(&self) -> String {
        std::fs::read_to_string(self.env.root.join("state/fleet/uuid"))
            .expect("uuid file")
            .trim()
            .to_string()
    }

    fn fleet_file(&self, name: &str) -> PathBuf {
        self.env.root.join("state/fleet").join(name)
    }

    fn machine_key(&self) -> String {
        std::fs::read_to_string(self.fleet_file("machine.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn downloaded(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.fleet_file("patches"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Patch IDs of a sync's list.
fn listed(sync: &Value) -> Vec<String> {
    sync["patches"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn applied_ids(sync: &Value) -> Vec<String> {
    sync["applied"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["patch"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The fixture every test patches: `stacked` (level 1: result=2, level 2:
/// result=3), built afresh for the test, with its two patches signed by
/// the publisher.
struct Fixture {
    case: Case,
    build: Build,
    _out: TempDir,
    p1: PathBuf,
    p2: PathBuf,
    id1: String,
    id2: String,
}

impl Fixture {
    fn new(publisher: &TestEnv) -> Fixture {
        let case = Case::load("stacked");
        let build = case.build();
        let out = temp_dir("fleet-patches");
        let p1 = create_signed(
            publisher,
            &case,
            &build,
            "fix.diff",
            1,
            &out.path().join("1"),
        );
        let p2 = create_signed(
            publisher,
            &case,
            &build,
            "fix2.diff",
            2,
            &out.path().join("2"),
        );
        let id1 = info_id(publisher, &p1);
        let id2 = info_id(publisher, &p2);
        Fixture {
            case,
            build,
            _out: out,
            p1,
            p2,
            id1,
            id2,
        }
    }

    fn start(&self) -> Target {
        self.build.start_unpatched(&self.case)
    }
}

fn publish(publisher: &TestEnv, s: &Server, channel: &str, file: &Path) -> Value {
    let r = publisher.hs([
        "publish",
        "--json",
        "--server",
        &s.url,
        "--token",
        &s.token(),
        "--channel",
        channel,
        file.to_str().unwrap(),
    ]);
    r.assert_ok("publish");
    let v = parse_json(&r.stdout).expect("publish --json");
    v[0].clone()
}

fn sha_of(file: &Path) -> String {
    use std::fmt::Write as _;
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    let mut s = String::new();
    let _ = write!(s, "{}", t.split_whitespace().next().unwrap());
    s
}

/// The publisher: an environment whose key signs the patches.
fn publisher() -> TestEnv {
    TestEnv::new("fleet-publisher")
}

// ---------------------------------------------------------------------------
// A loopback proxy between a client and the server
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
enum Mode {
    #[default]
    Pass,
    /// Answer every check-in with this body (kept from before).
    ReplayCheckin(Vec<u8>),
    /// Hand out these bytes for every patch file.
    SwapPatch(Vec<u8>),
    /// Send half of each patch file, then close the connection.
    CutPatch,
}

struct Proxy {
    url: String,
    mode: Arc<Mutex<Mode>>,
    /// The last check-in answer that passed through.
    last_checkin: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let mode: Arc<Mutex<Mode>> = Default::default();
        let last: Arc<Mutex<Vec<u8>>> = Default::default();
        let (m, lc, up) = (mode.clone(), last.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (m, lc, up) = (m.clone(), lc.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = serve(c, &up, &m, &lc);
                });
            }
        });
        Proxy {
            url,
            mode,
            last_checkin: last,
        }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

/// One request, forwarded (or not) as the mode says; the connection is
/// closed after the answer.
fn serve(
    mut c: TcpStream,
    upstream: &str,
    mode: &Mutex<Mode>,
    last: &Mutex<Vec<u8>>,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let m = mode.lock().unwrap().clone();
    let is_checkin = method == "POST" && path.ends_with("/checkin");
    let is_patch = method == "GET" && path.starts_with("/api/v2/patches/");
    if let (Mode::ReplayCheckin(b), true) = (&m, is_checkin) {
        return respond(&mut c, 200, "application/json", b, None);
    }
    if let (Mode::SwapPatch(b), true) = (&m, is_patch) {
        return respond(&mut c, 200, "application/octet-stream", b, None);
    }
    let mut req = ureq::request(&method, &format!("{upstream}{path}"));
    for (k, v) in &headers {
        if [
            "authorization",
            "content-type",
            "x-uptrack-user",
            "x-uptrack-key",
        ]
        .contains(&k.to_ascii_lowercase().as_str())
        {
            req = req.set(k, v);
        }
    }
    let resp = match if len > 0 || method == "POST" {
        req.send_bytes(&body)
    } else {
        req.call()
    } {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return Ok(()),
    };
    let status = resp.status();
    let ctype = resp.content_type().to_string();
    let mut out = Vec::new();
    resp.into_reader().read_to_end(&mut out)?;
    if is_checkin && status == 200 {
        *last.lock().unwrap() = out.clone();
    }
    let cut = matches!(m, Mode::CutPatch) && is_patch && status == 200;
    respond(&mut c, status, &ctype, &out, cut.then_some(out.len() / 2))
}

fn respond(
    c: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    cut_at: Option<usize>,
) -> std::io::Result<()> {
    write!(
        c,
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    c.write_all(&body[..cut_at.unwrap_or(body.len())])?;
    c.flush()?;
    let _ = c.shutdown(std::net::Shutdown::Both);
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Register, publish, sync: the running program is patched by the sync
/// (autoinstall); the server sees the patch applied; a higher level
/// replaces it at the next sync; a replayed older list is then refused;
/// `-n sync` asks read-only and changes nothing; a mirror of the channel
/// holds the signed list and the files.
#[test]
fn register_sync_applies_and_old_lists_are_refused() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    let m = Machine::new("fleet-a", &publisher, "");
    m.register(&s.url, &s.access_key, None);
    let uuid = m.uuid();
    let mode = std::fs::metadata(m.fleet_file("machine.key")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    let mut prog = fx.start();
    // Nothing published yet: an empty list.
    let v = m.sync(&[]);
    assert!(listed(&v).is_empty(), "{v}");
    let v1 = v["feed"]["version"].as_u64().unwrap();

    let rec = publish(&publisher, &s, "stable", &fx.p1);
    assert_eq!(rec["id"].as_str(), Some(fx.id1.as_str()));
    assert_eq!(rec["sha256"].as_str(), Some(sha_of(&fx.p1).as_str()));

    // A dry run: read-only, says what would happen, changes nothing.
    let state_before = std::fs::read(m.fleet_file("feed-state.json")).unwrap();
    let r = m.hs(&["-n", "sync", "--json"]);
    r.assert_ok("-n sync");
    let dry = parse_json(&r.stdout).unwrap();
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(dry["patches"][0]["state"].as_str(), Some("would-download"));
    let target = format!("pid:{}", prog.pid());
    assert!(
        dry["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["target"].as_str() == Some(target.as_str())),
        "{dry}"
    );
    assert!(m.downloaded().is_empty());
    assert_eq!(
        std::fs::read(m.fleet_file("feed-state.json")).unwrap(),
        state_before
    );
    prog.expect_new_line(Stream::Stdout, "result=1", "still unpatched after -n sync");

    // The sync patches the program.
    let v = m.sync(&[]);
    assert_eq!(listed(&v), vec![fx.id1.clone()], "{v}");
    assert!(v["feed"]["version"].as_u64().unwrap() > v1);
    assert_eq!(v["patches"][0]["state"].as_str(), Some("downloaded"));
    assert!(applied_ids(&v).contains(&fx.id1), "{v}");
    prog.expect_new_line(Stream::Stdout, "result=2", "patched by sync");
    assert_eq!(shown_ids_in(&m, prog.pid()), vec![fx.id1.clone()]);
    assert_eq!(m.downloaded(), vec![format!("{}.hsp", sha_of(&fx.p1))]);
    // The server heard of it.
    let d = s.api_ok("GET", &format!("/api/v2/machines/{uuid}"), None);
    let procs = d["report"]["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        procs
            .iter()
            .any(|p| p["pid"].as_u64() == Some(prog.pid() as u64)
                && p["patches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i.as_str() == Some(fx.id1.as_str()))),
        "the server's report of the machine: {d}"
    );
    // With what the run did.
    assert!(
        d["report"]["last_run"]["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["patch"].as_str() == Some(fx.id1.as_str())
                && i["target"].as_str() == Some(target.as_str())),
        "the server's report of the machine: {d}"
    );
    let old_list = std::fs::read(m.fleet_file("feed.json")).unwrap();
    let old_list_file = m.env.root.join("old-feed.json");
    std::fs::write(&old_list_file, &old_list).unwrap();

    // A second sync has everything already.
    let v = m.sync(&[]);
    assert_eq!(v["patches"][0]["state"].as_str(), Some("present"));
    assert!(applied_ids(&v).is_empty(), "{v}");

    // Level 2 replaces level 1.
    publish(&publisher, &s, "stable", &fx.p2);
    let v = m.sync(&[]);
    assert!(applied_ids(&v).contains(&fx.id2), "{v}");
    prog.expect_new_line(Stream::Stdout, "result=3", "level 2 applied by sync");

    // Rollback: the list from before, replayed, is refused; nothing changes.
    let state = std::fs::read(m.fleet_file("feed-state.json")).unwrap();
    let r = m.hs(&["sync", "--feed-file", old_list_file.to_str().unwrap()]);
    assert!(
        !r.success(),
        "a replayed list was accepted\n{}",
        r.describe()
    );
    assert!(r.stderr.contains("rollback"), "{}", r.describe());
    assert_eq!(
        std::fs::read(m.fleet_file("feed-state.json")).unwrap(),
        state
    );
    prog.expect_new_line(Stream::Stdout, "result=3", "still level 2");
    // The refusal is told to the server with the next report.
    let last: Value =
        serde_json::from_slice(&std::fs::read(m.fleet_file("last-run.json")).unwrap()).unwrap();
    assert_eq!(
        last["failures"][0]["target"].as_str(),
        Some("feed"),
        "{last}"
    );

    // A mirror of the channel: the signed list and both files.
    let dir = temp_dir("fleet-mirror");
    let r = m.hs(&[
        "mirror",
        "--json",
        "--server",
        &s.url,
        "--token",
        &s.token(),
        "--channel",
        "stable",
        dir.path().to_str().unwrap(),
    ]);
    r.assert_ok("mirror");
    assert!(dir.path().join("feed.json").is_file());
    for f in [&fx.p1, &fx.p2] {
        let copy = dir.path().join(format!("{}.hsp", sha_of(f)));
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(f).unwrap());
    }
    // The mirror's list is for every machine of the channel: a machine
    // accepts it (it is not older than what it has).
    let r = m.hs(&[
        "-n",
        "sync",
        "--json",
        "--feed-file",
        dir.path().join("feed.json").to_str().unwrap(),
    ]);
    r.assert_ok("a mirror's list");
    // Another server (air-gapped site) imports the mirror: its files are
    // published there as they are, same hashes.
    let s2 = Server::start(3600);
    s2.trust(&publisher);
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hsp"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["publish", "--json", "--server", &s2.url];
    let token2 = s2.token();
    args.extend(["--token", &token2, "--channel", "stable"]);
    args.extend(files.iter().map(String::as_str));
    let r = m.hs(&args);
    r.assert_ok("publish the mirror into another server");
    let recs = parse_json(&r.stdout).unwrap();
    let mut shas: Vec<String> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sha256"].as_str().unwrap().to_string())
        .collect();
    shas.sort();
    let mut want = vec![sha_of(&fx.p1), sha_of(&fx.p2)];
    want.sort();
    assert_eq!(shas, want);

    // Or with `hotsplice-server import`, which checks the mirror's list
    // against the exporting server's feed key and every file against the
    // list first: a tampered file or another server's key imports nothing.
    let s3 = Server::start(3600);
    s3.trust(&publisher);
    let import = |feed_key: &std::path::Path, channel: &str, from: &std::path::Path| {
        let out = Command::new(server_bin())
            .args(["import", "--data"])
            .arg(s3.data.path().join("d"))
            .arg("--feed-key")
            .arg(feed_key)
            .args(["--channel", channel])
            .arg(from)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let in_channel = |ch: &str| {
        s3.api_ok("GET", &format!("/api/v2/channels/{ch}/patches"), None)
            .as_array()
            .unwrap()
            .len()
    };
    let bad = temp_dir("fleet-mirror-bad");
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        std::fs::copy(e.path(), bad.path().join(e.file_name())).unwrap();
    }
    let victim = bad.path().join(format!("{}.hsp", sha_of(&fx.p2)));
    let mut b = std::fs::read(&victim).unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    std::fs::write(&victim, b).unwrap();
    let (ok, _, err) = import(&s.data.path().join("d/feed.pub"), "tampered", bad.path());
    assert!(!ok && err.contains("mix and match"), "{err}");
    let (ok, _, err) = import(&s2.data.path().join("d/feed.pub"), "tampered", dir.path());
    assert!(!ok && err.contains("feed"), "{err}");
    assert_eq!(in_channel("tampered"), 0);
    let (ok, out, err) = import(&s.data.path().join("d/feed.pub"), "stable", dir.path());
    assert!(ok, "{err}");
    assert_eq!(out.matches("imported: ").count(), 2, "{out}");
    assert_eq!(in_channel("stable"), 2);
    drop(prog);
}

fn shown_ids_in(m: &Machine, pid: u32) -> Vec<String> {
    let p = pid.to_string();
    let r = m.hs(&["user", "show", "--pid", &p, "--json"]);
    r.assert_ok("user show");
    let j = parse_json(&r.stdout).unwrap();
    j.as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["patches"].as_array().cloned().unwrap_or_default())
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// A denied machine and a pending one get empty lists and nothing is
/// applied; a machine key cannot read another machine's list (403), and
/// another machine's list replayed to a client is refused.
#[test]
fn denied_and_pending_machines_get_nothing_and_lists_are_per_machine() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    publish(&publisher, &s, "stable", &fx.p1);

    let denied = Machine::new("fleet-denied", &publisher, "");
    denied.register(&s.url, &s.access_key, None);
    s.api_ok(
        "POST",
        &format!("/api/1/machine/{}/authorize", denied.uuid()),
        Some(serde_json::json!({ "authorized": false })),
    );
    let pending = Machine::new("fleet-pending", &publisher, "");
    pending.register(&s.url, &s.access_key(None, true), None);

    let mut prog = fx.start();
    for m in [&denied, &pending] {
        let v = m.sync(&[]);
        assert!(listed(&v).is_empty(), "{v}");
        assert_ne!(v["feed"]["authorization"].as_str(), Some("allowed"), "{v}");
        assert!(m.downloaded().is_empty());
    }
    prog.expect_new_line(
        Stream::Stdout,
        "result=1",
        "not patched for a denied machine",
    );

    // Authorized, the pending machine gets the patch.
    s.api_ok(
        "POST",
        &format!("/api/1/machine/{}/authorize", pending.uuid()),
        Some(serde_json::json!({ "authorized": true })),
    );
    let v = pending.sync(&[]);
    assert_eq!(listed(&v), vec![fx.id1.clone()], "{v}");
    prog.expect_new_line(Stream::Stdout, "result=2", "patched once authorized");

    // One machine's key does not read another's list.
    let url = format!("{}/api/v2/machines/{}/feed", s.url, pending.uuid());
    let code = match ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", denied.machine_key()))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(code, 403);
    // Another machine's list, replayed to this one, is refused.
    let theirs = pending.fleet_file("feed.json");
    let r = denied.hs(&["sync", "--feed-file", theirs.to_str().unwrap()]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("not this one"), "{}", r.describe());
    assert!(denied.downloaded().is_empty());
    drop(prog);
}

/// A group bound to `testing` gets a patch published there; `stable`
/// machines do not, until it is promoted.
#[test]
fn channels_and_promotion() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    s.api_ok(
        "PUT",
        "/api/v2/groups/canary",
        Some(serde_json::json!({ "channel": "testing" })),
    );
    let canary = Machine::new("fleet-canary", &publisher, "");
    canary.register(&s.url, &s.access_key, Some("canary"));
    let stable = Machine::new("fleet-stable", &publisher, "");
    stable.register(&s.url, &s.access_key, None);

    let rec = publish(&publisher, &s, "testing", &fx.p1);
    let sha = rec["sha256"].as_str().unwrap().to_string();
    let mut prog = fx.start();
    let v = stable.sync(&[]);
    assert!(listed(&v).is_empty(), "stable got a testing patch: {v}");
    prog.expect_new_line(Stream::Stdout, "result=1", "not patched from stable");
    let v = canary.sync(&[]);
    assert_eq!(v["feed"]["channel"].as_str(), Some("testing"), "{v}");
    assert_eq!(listed(&v), vec![fx.id1.clone()], "{v}");
    prog.expect_new_line(Stream::Stdout, "result=2", "patched from testing");

    s.api_ok(
        "POST",
        "/api/v2/channels/stable/patches",
        Some(serde_json::json!({ "sha256": sha })),
    );
    let v = stable.sync(&[]);
    assert_eq!(listed(&v), vec![fx.id1.clone()], "promoted: {v}");
    assert_eq!(stable.downloaded(), vec![format!("{sha}.hsp")]);

    // Withdrawn from `testing`: the canary, which took it from its list,
    // takes it out of the running program and uninstalls it at its next
    // sync; the file is pruned.
    s.api_ok(
        "DELETE",
        &format!("/api/v2/channels/testing/patches/{sha}"),
        None,
    );
    let v = canary.sync(&[]);
    assert!(listed(&v).is_empty(), "{v}");
    let removed: Vec<&str> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["patch"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![fx.id1.as_str()], "{v}");
    prog.expect_new_line(Stream::Stdout, "result=1", "withdrawn: old code again");
    assert!(canary.downloaded().is_empty());
    drop(prog);
}

/// A swapped file (another signed patch under the listed hash) is refused
/// and nothing is applied; a replayed check-in answer (older list) is
/// refused; a download cut in the middle leaves nothing behind and the
/// client retries; the next clean sync applies.
#[test]
fn swapped_cut_and_replayed_answers_through_a_proxy() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    let proxy = Proxy::start(&s.url);
    let m = Machine::new("fleet-proxy", &publisher, "");
    m.register(&proxy.url, &s.access_key, None);
    let mut prog = fx.start();
    // A first, empty list: kept by the proxy for the replay below.
    m.sync(&[]);
    let empty_answer = proxy.last_checkin.lock().unwrap().clone();
    publish(&publisher, &s, "stable", &fx.p1);

    // Swap: another validly signed patch (level 2) handed out for level
    // 1: larger than the list says, refused as it arrives.
    proxy.set(Mode::SwapPatch(std::fs::read(&fx.p2).unwrap()));
    let r = m.hs(&["sync", "--json"]);
    assert!(!r.success(), "{}", r.describe());
    let v = parse_json(&r.stdout).unwrap();
    assert_eq!(v["patches"][0]["state"].as_str(), Some("refused"), "{v}");
    assert!(applied_ids(&v).is_empty());
    assert!(m.downloaded().is_empty());
    // And a file of the listed size that is not the listed one (one byte
    // changed): refused by its hash (mix and match).
    let mut altered = std::fs::read(&fx.p1).unwrap();
    let at = altered.len() / 2;
    altered[at] ^= 1;
    proxy.set(Mode::SwapPatch(altered));
    let r = m.hs(&["sync", "--json"]);
    assert!(!r.success(), "{}", r.describe());
    let v = parse_json(&r.stdout).unwrap();
    assert_eq!(v["patches"][0]["state"].as_str(), Some("refused"), "{v}");
    assert!(
        v["patches"][0]["why"]
            .as_str()
            .unwrap()
            .contains("mix and match"),
        "{v}"
    );
    assert!(applied_ids(&v).is_empty());
    assert!(m.downloaded().is_empty());
    prog.expect_new_line(
        Stream::Stdout,
        "result=1",
        "nothing applied from a swapped file",
    );

    // Cut: the server disappears in the middle of the file, every time.
    proxy.set(Mode::CutPatch);
    let r = m.hs(&["sync", "--json"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("retry 1 of 2"), "{}", r.describe());
    assert!(m.downloaded().is_empty(), "{:?}", m.downloaded());
    prog.expect_new_line(
        Stream::Stdout,
        "result=1",
        "nothing applied from a cut download",
    );

    // Replay: the old (empty, lower version) answer is refused.
    proxy.set(Mode::ReplayCheckin(empty_answer));
    let r = m.hs(&["sync"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("rollback"), "{}", r.describe());

    // Clean again: the patch comes through.
    proxy.set(Mode::Pass);
    let v = m.sync(&[]);
    assert!(applied_ids(&v).contains(&fx.id1), "{v}");
    prog.expect_new_line(
        Stream::Stdout,
        "result=2",
        "patched once the server is sound",
    );
    drop(prog);
}

/// An expired list is refused (freeze): the server signs lists valid for
/// one second; a list kept from before is refused once expired.
#[test]
fn an_expired_list_is_refused() {
    require_root();
    let publisher = publisher();
    let s = Server::start(1);
    let m = Machine::new("fleet-expired", &publisher, "");
    m.register(&s.url, &s.access_key, None);
    // Fresh lists are accepted when they arrive...
    let r = m.hs(&["sync"]);
    // (a list valid for one second may already be over on a slow machine:
    // then this sync is refused the same way)
    let kept = m.env.root.join("kept-feed.json");
    if r.success() {
        std::fs::copy(m.fleet_file("feed.json"), &kept).unwrap();
    } else {
        assert!(r.stderr.contains("freeze"), "{}", r.describe());
        return;
    }
    // ...and refused once past their expiry.
    std::thread::sleep(Duration::from_millis(2100));
    let r = m.hs(&["sync", "--feed-file", kept.to_str().unwrap()]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("freeze"), "{}", r.describe());
}

/// A server that is killed: the client keeps what it has, retries, and
/// fails without changing anything; with two URLs and the first down, the
/// sync goes to the second; restarted, the server serves again.
#[test]
fn killed_server_and_a_second_instance() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let mut s = Server::start(3600);
    s.trust(&publisher);
    publish(&publisher, &s, "stable", &fx.p1);
    // A port nothing listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let m = Machine::new("fleet-two", &publisher, "");
    m.register(&format!("{dead},{}", s.url), &s.access_key, None);
    let mut prog = fx.start();
    let v = m.sync(&[]);
    assert_eq!(v["server"].as_str(), Some(s.url.as_str()), "{v}");
    prog.expect_new_line(Stream::Stdout, "result=2", "patched through the second URL");
    let files = m.downloaded();
    let state = std::fs::read(m.fleet_file("feed-state.json")).unwrap();

    s.kill();
    let r = m.hs(&["sync"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("no server answered"), "{}", r.describe());
    assert!(r.stderr.contains("retry 2 of 2"), "{}", r.describe());
    assert_eq!(m.downloaded(), files);
    assert_eq!(
        std::fs::read(m.fleet_file("feed-state.json")).unwrap(),
        state
    );
    prog.expect_new_line(
        Stream::Stdout,
        "result=2",
        "still patched with the server gone",
    );

    s.run();
    let v = m.sync(&[]);
    assert_eq!(v["patches"][0]["state"].as_str(), Some("present"), "{v}");
    drop(prog);
}

/// An air-gapped machine writes its report to a file; the server imports
/// it and the machine shows in Uptrack's list.
#[test]
fn report_file_is_imported() {
    let publisher = publisher();
    let s = Server::start(3600);
    let m = Machine::new("fleet-airgap", &publisher, "");
    let file = m.env.root.join("report.json");
    let r = m.hs(&["sync", "--report-to", file.to_str().unwrap()]);
    r.assert_ok("sync --report-to");
    let uuid = m.uuid();
    let report: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    s.api_ok("POST", "/api/v2/reports", Some(report));
    let (code, list) = s.api("GET", "/api/1/machines", None);
    assert_eq!(code, 200, "{list}");
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["uuid"].as_str() == Some(uuid.as_str()))
        .unwrap_or_else(|| panic!("{uuid} not in {list}"));
    // The machine's vm.mmap_min_addr, as Uptrack lists it.
    let min_addr: u64 = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(mine["mmap_min_addr"].as_u64(), Some(min_addr), "{mine}");
    // Once it has a network, it registers under the same UUID.
    m.register(&s.url, &s.access_key, None);
    assert_eq!(m.uuid(), uuid);
    m.sync(&[]);
}

/// Registration pins the server's feed key; `--feed-key` with another key
/// refuses to register.
#[test]
fn feed_key_must_match_when_given() {
    let publisher = publisher();
    let s = Server::start(3600);
    let m = Machine::new("fleet-pin", &publisher, "");
    let wrong = m.env.root.join("signing/tests.pub");
    let r = m.hs(&[
        "register",
        "--server",
        &s.url,
        "--key",
        &s.access_key,
        "--feed-key",
        wrong.to_str().unwrap(),
    ]);
    assert!(!r.success(), "{}", r.describe());
    assert!(
        r.stderr.contains("refusing to register"),
        "{}",
        r.describe()
    );
    assert!(!m.fleet_file("machine.key").exists());
    let right = s.data.path().join("d/feed.pub");
    let r = m.hs(&[
        "register",
        "--json",
        "--server",
        &s.url,
        "--key",
        &s.access_key,
        "--feed-key",
        right.to_str().unwrap(),
    ]);
    r.assert_ok("register with the right key");
    let v = parse_json(&r.stdout).unwrap();
    assert_eq!(v["feed_key_from"].as_str(), Some("file"));
    // `[fleet] servers` sends it to another fleet's server, which does
    // not know it: told to register again.
    let other = Server::start(3600);
    let conf = m.env.root.join("etc/hotsplice.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("servers = [\"{}\"]\n", other.url));
    std::fs::write(&conf, text).unwrap();
    let r = m.hs(&["sync"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(r.stderr.contains("hotsplice register"), "{}", r.describe());
    // http:// to a non-loopback address is refused before anything is sent.
    let r = m.hs(&[
        "register",
        "--server",
        "http://192.0.2.1:8080",
        "--key",
        "k",
    ]);
    assert!(!r.success());
    assert!(r.stderr.contains("loopback"), "{}", r.describe());
}

/// Without `autoinstall`, a sync downloads and verifies but applies
/// nothing; `sync --apply` applies. The daemon syncs at its start (boot)
/// when the machine is registered, and applies with `autoinstall`.
#[test]
fn autoinstall_apply_and_the_daemon() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    publish(&publisher, &s, "stable", &fx.p1);
    let manual = Machine::with_autoinstall("fleet-manual", &publisher, false, "");
    manual.register(&s.url, &s.access_key, None);
    let mut prog = fx.start();
    let v = manual.sync(&[]);
    assert_eq!(v["install"], Value::Bool(false), "{v}");
    assert_eq!(v["patches"][0]["state"].as_str(), Some("downloaded"), "{v}");
    assert!(applied_ids(&v).is_empty(), "{v}");
    assert_eq!(manual.downloaded().len(), 1);
    prog.expect_new_line(
        Stream::Stdout,
        "result=1",
        "nothing applied without autoinstall",
    );
    let v = manual.sync(&["--apply"]);
    assert!(applied_ids(&v).contains(&fx.id1), "{v}");
    prog.expect_new_line(Stream::Stdout, "result=2", "applied with --apply");
    drop(prog);

    // The daemon: one sync at start (level 2 now published), then its scan.
    publish(&publisher, &s, "stable", &fx.p2);
    let auto = Machine::new("fleet-daemon", &publisher, "");
    auto.register(&s.url, &s.access_key, None);
    let mut prog = fx.start();
    let r = auto.hs(&["daemon", "--once", "--no-netlink"]);
    r.assert_ok("daemon --once");
    assert!(r.stdout.contains("synced with"), "{}", r.describe());
    prog.expect_new_line(Stream::Stdout, "result=3", "patched by the daemon's sync");
    assert_eq!(auto.downloaded().len(), 2);
    // `--no-fleet` leaves the server alone.
    let r = auto.hs(&["daemon", "--once", "--no-netlink", "--no-fleet"]);
    r.assert_ok("daemon --once --no-fleet");
    assert!(!r.stdout.contains("synced with"), "{}", r.describe());
    drop(prog);
}

/// Two server instances on one PostgreSQL database serve one fleet: with
/// the first killed, the next sync goes to the other, which knows the
/// machine and serves what was published through either.
#[test]
fn two_instances_on_postgres_one_killed() {
    require_root();
    if let Some(why) = hotsplice_testsupport::postgres::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let pg = hotsplice_testsupport::postgres::Postgres::start().expect("PostgreSQL");
    let db = pg.create_database().expect("a database");
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let mut a = Server::start_on(3600, Some(db));
    let b = a.second();
    a.trust(&publisher);
    publish(&publisher, &a, "stable", &fx.p1);
    let m = Machine::new("fleet-pg", &publisher, "");
    m.register(&format!("{},{}", a.url, b.url), &a.access_key, None);
    let mut prog = fx.start();
    let v = m.sync(&[]);
    assert_eq!(v["server"].as_str(), Some(a.url.as_str()), "{v}");
    prog.expect_new_line(
        Stream::Stdout,
        "result=2",
        "patched through the first instance",
    );

    a.kill();
    publish(&publisher, &b, "stable", &fx.p2);
    let v = m.sync(&[]);
    assert_eq!(v["server"].as_str(), Some(b.url.as_str()), "{v}");
    assert!(applied_ids(&v).contains(&fx.id2), "{v}");
    prog.expect_new_line(
        Stream::Stdout,
        "result=3",
        "patched through the second instance",
    );
    // The second instance has the machine's report.
    let d = b.api_ok("GET", &format!("/api/v2/machines/{}", m.uuid()), None);
    assert!(d["report"].is_object(), "{d}");
    drop(prog);
    drop(b);
    drop(a);
    drop(pg);
}

/// A server with a certificate from a private CA: a machine configured
/// with that CA (`[fleet] ca`) registers and syncs over https; one without
/// it refuses the server's certificate.
#[test]
fn tls_with_a_private_ca() {
    let dir = temp_dir("fleet-tls");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hotsplice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let s = Server::start_with(
        3600,
        None,
        vec![
            "--tls-cert".into(),
            cert_file.display().to_string(),
            "--tls-key".into(),
            key_file.display().to_string(),
        ],
    );
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let publisher = publisher();
    let trusting = Machine::new(
        "fleet-tls-ca",
        &publisher,
        &format!("ca = \"{}\"\n", ca_file.display()),
    );
    trusting.register(&s.url, &s.access_key, None);
    let v = trusting.sync(&[]);
    assert_eq!(v["server"].as_str(), Some(s.url.as_str()), "{v}");
    let other = Machine::new("fleet-tls-noca", &publisher, "");
    let r = other.hs(&["register", "--server", &s.url, "--key", &s.access_key]);
    assert!(!r.success(), "{}", r.describe());
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("[fleet]"), "{}", r.describe());
    assert!(!r.stderr.contains("retry"), "{}", r.describe());
    assert!(!other.fleet_file("machine.key").exists());
}

/// The running daemon syncs periodically: a patch published after it
/// started reaches the program at a later sync; SIGTERM stops it, the
/// sync thread included.
#[test]
fn the_daemon_syncs_periodically_and_stops_on_sigterm() {
    require_root();
    let publisher = publisher();
    let fx = Fixture::new(&publisher);
    let s = Server::start(3600);
    s.trust(&publisher);
    let m = Machine::new("fleet-daemon-loop", &publisher, "sync_interval = 1\n");
    m.register(&s.url, &s.access_key, None);
    let prog = fx.start();
    let mut daemon = Target::spawn(
        m.env.command(["daemon", "--no-netlink", "--rescan", "0.2"]),
        "hotsplice daemon",
    );
    assert!(
        daemon.wait_for_new_line_prefix(
            Stream::Stdout,
            "hotsplice daemon: synced with",
            DAEMON_TIMEOUT
        ),
        "{}",
        daemon.describe()
    );
    publish(&publisher, &s, "stable", &fx.p1);
    assert!(
        prog.wait_for_new_line(Stream::Stdout, "result=2", DAEMON_TIMEOUT),
        "not patched by the daemon's periodic sync\n{}\n{}",
        prog.describe(),
        daemon.describe()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid_i32(), libc::SIGTERM) };
    let mut stopped = false;
    for _ in 0..200 {
        if !daemon.is_alive() {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        stopped,
        "the daemon did not stop on SIGTERM\n{}",
        daemon.describe()
    );
    drop(prog);
}
