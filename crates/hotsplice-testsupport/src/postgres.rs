//! A private PostgreSQL server for tests: Debian's `postgresql` package
//! (binaries under `/usr/lib/postgresql/VERSION/bin`, installed by
//! `scripts/setup.sh`), `initdb` into a temporary directory, started on a
//! unix socket in that directory and on 127.0.0.1 at a free port, trust
//! authentication, stopped (fast shutdown) and reaped when dropped.
//!
//! `initdb` refuses to run as root: as root the cluster is made and run as
//! `nobody`, in a directory owned by `nobody`.
//!
//! Tests that need it are skipped only when `HOTSPLICE_SKIP_POSTGRES_TESTS`
//! is set ([`skip_reason`]); a server that cannot start is an error, so
//! such tests fail rather than pass silently.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to anything) to skip the PostgreSQL tests.
pub const SKIP_ENV: &str = "HOTSPLICE_SKIP_POSTGRES_TESTS";

/// Why PostgreSQL tests are skipped, if they are.
pub fn skip_reason() -> Option<String> {
    std::env::var_os(SKIP_ENV).map(|_| format!("{SKIP_ENV} is set"))
}

/// The newest `bin` directory of Debian's PostgreSQL packages.
pub fn bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("/usr/lib/postgresql: {e}; install the `postgresql` package (scripts/setup.sh)")
        })?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b).ok_or_else(|| {
        "no /usr/lib/postgresql/*/bin/initdb: install the `postgresql` package (scripts/setup.sh)"
            .to_string()
    })
}

/// A running PostgreSQL server, stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    next_db: std::sync::atomic::AtomicU32,
}

const NOBODY: u32 = 65534;

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Postgres {
    /// initdb and start a server; waits until it accepts connections.
    pub fn start() -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let as_nobody = unsafe { libc::geteuid() } == 0;
        let dir = crate::temp_dir("postgres");
        if as_nobody {
            chown(dir.path(), NOBODY)?;
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), as_nobody)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut pg = Postgres {
            dir,
            bin: bin.clone(),
            child: None,
            port: 0,
            next_db: Default::default(),
        };
        // The free port may be taken between the check and the start: try
        // a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port()?;
            let log_path = pg.dir.path().join("postgres.log");
            let log = std::fs::File::create(&log_path).map_err(|e| format!("postgres.log: {e}"))?;
            if as_nobody {
                chown(&log_path, NOBODY)?;
            }
            pg.child = Some(
                command(&bin.join("postgres"), as_nobody)
                    .arg("-D")
                    .arg(&data)
                    .arg("-k")
                    .arg(pg.dir.path())
                    .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
                    .args([
                        "-c",
                        "fsync=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("starting postgres: {e}"))?,
            );
            match pg.wait_ready() {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    last = e;
                    pg.stop();
                }
            }
        }
        Err(last)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "postgres exited ({st}) before it was ready: {}",
                    self.log()
                ));
            }
            let ok = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("postgres not ready after 60 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new empty database; returns its URL
    /// (`postgres://postgres@127.0.0.1:PORT/NAME`).
    pub fn create_database(&self) -> Result<String, String> {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("test{n}");
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()
            .map_err(|e| format!("running createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(self.url(&name))
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown (abort transactions, exit).
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// One server a whole test binary shares, started on first use, one fresh
/// database per test: `static PG: Shared = Shared::new();`, `PG.database()`
/// in each test, `PG.stop()` before the harness exits (statics are never
/// dropped).
pub struct Shared(std::sync::Mutex<Option<Result<Postgres, String>>>);

impl Shared {
    pub const fn new() -> Shared {
        Shared(std::sync::Mutex::new(None))
    }

    /// The URL of a new database; panics (failing the test) when
    /// PostgreSQL did not start.
    pub fn database(&self) -> String {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.get_or_insert_with(Postgres::start) {
            Ok(pg) => pg.create_database().expect("create a database"),
            Err(e) => panic!("PostgreSQL did not start: {e}"),
        }
    }

    /// Stop the server (if it was started).
    pub fn stop(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command(prog: &Path, as_nobody: bool) -> Command {
    let mut c = Command::new(prog);
    if as_nobody {
        c.uid(NOBODY).gid(NOBODY).current_dir("/");
    }
    c
}

fn chown(p: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    if unsafe { libc::chown(c.as_ptr(), uid, uid) } != 0 {
        return Err(format!(
            "chown {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
