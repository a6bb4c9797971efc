//! The data directory, `init`, and running the HTTP(S) server.
//!
//! A data directory holds `feed.key` (mode 0600) and `feed.pub`, the key
//! that signs every machine's list; with the embedded store also
//! `hotsplice.db` (SQLite, WAL); with PostgreSQL, `database.url` (mode
//! 0600) names the database so `run` needs no `--database`. Several
//! instances on one PostgreSQL database share the fleet: give each a copy
//! of the same `feed.key` (the database records the key's ID and `run`
//! refuses another).

use crate::db::Db;
use crate::fleet::{Fleet, Settings};
use crate::types::{NewAccessKey, NewToken, Role};
use anyhow::{bail, Context};
use hotsplice_trust::SecretKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DB_FILE: &str = "hotsplice.db";
pub const URL_FILE: &str = "database.url";
pub const FEED_KEY_NAME: &str = "feed";

/// The database URL of a data directory: `explicit`, else the one `init`
/// recorded, else the embedded SQLite file.
pub fn database_url(data: &Path, explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(u) = explicit {
        return Ok(u.to_string());
    }
    let f = data.join(URL_FILE);
    if f.exists() {
        let t = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(t.trim().to_string());
    }
    Ok(crate::db::sqlite_url(&data.join(DB_FILE)))
}

pub fn feed_key_path(data: &Path) -> PathBuf {
    data.join(format!("{FEED_KEY_NAME}.key"))
}

/// What `init` made.
pub struct Init {
    pub admin: NewToken,
    pub access_key: NewAccessKey,
    pub feed_key: PathBuf,
    pub feed_pub: PathBuf,
    pub database: String,
}

/// Create the store, the feed key, an admin API user and a first access
/// key.
pub async fn init(data: &Path, database: Option<&str>) -> anyhow::Result<Init> {
    hotsplice_store::create_private_dir_all(data)
        .with_context(|| format!("creating the data directory {}", data.display()))?;
    let url = database_url(data, database)?;
    if database.is_none() {
        // The SQLite file (and its -wal and -shm, which SQLite makes with
        // the same mode) readable by the server's user only.
        use std::os::unix::fs::OpenOptionsExt;
        let f = data.join(DB_FILE);
        if !f.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(hotsplice_store::PRIVATE_FILE_MODE)
                .open(&f)
                .with_context(|| format!("creating {}", f.display()))?;
        }
    }
    let db = Db::connect(&url, true)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    if db.schema_version().await? > 0 {
        bail!(
            "the database {} is initialized already; `hotsplice-server run` it, or for a second instance on the same PostgreSQL database copy feed.key and feed.pub from the first instance's data directory",
            redact(&url)
        );
    }
    let key_path = feed_key_path(data);
    let key = if key_path.exists() {
        SecretKey::load(&key_path)?
    } else {
        let k = SecretKey::generate()?;
        hotsplice_trust::write_key_pair(data, FEED_KEY_NAME, &k)?;
        k
    };
    db.migrate().await?;
    db.set_meta("feed_key_id", &key.public().id()).await?;
    if let Some(u) = database {
        hotsplice_store::write_atomic_mode(
            &data.join(URL_FILE),
            format!("{u}\n").as_bytes(),
            hotsplice_store::PRIVATE_FILE_MODE,
        )?;
    }
    let fleet = Fleet::new(db, key, Settings::default());
    let admin = fleet
        .create_token(Some("admin"), Role::Admin)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let access_key = fleet
        .create_access_key(None, false)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(Init {
        admin,
        access_key,
        feed_key: key_path,
        feed_pub: data.join(format!("{FEED_KEY_NAME}.pub")),
        database: redact(&url),
    })
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((cred, host)) = rest.split_once('@') {
            let user = cred.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}@{host}");
        }
    }
    url.to_string()
}

/// Open a data directory's store and feed key for `run` or an
/// administration command: the schema must be this build's and the feed
/// key the one the database knows.
pub async fn open(
    data: &Path,
    database: Option<&str>,
    settings: Settings,
) -> anyhow::Result<Fleet> {
    let url = database_url(data, database)?;
    if url.starts_with("sqlite:") && !data.join(DB_FILE).exists() && database.is_none() {
        bail!(
            "{} does not exist: run `hotsplice-server init --data {}` first",
            data.join(DB_FILE).display(),
            data.display()
        );
    }
    let db = Db::connect(&url, false)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    db.check_schema().await?;
    let key_path = feed_key_path(data);
    let key = SecretKey::load(&key_path).with_context(|| {
        format!(
            "loading the feed key {} (made by init; a second instance needs a copy of the first's)",
            key_path.display()
        )
    })?;
    if let Some(id) = db.meta("feed_key_id").await? {
        if id != key.public().id() {
            bail!(
                "{} is key {}, but the database's feed is signed with key {id}: copy feed.key and feed.pub from the data directory that initialized this database",
                key_path.display(),
                key.public().id()
            );
        }
    }
    Ok(Fleet::new(db, key, settings))
}

/// TLS files for `run`.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serve until SIGTERM or SIGINT. `on_listen` gets the bound address
/// (after binding, before serving).
pub async fn run(
    fleet: Fleet,
    listen: &str,
    tls: Option<Tls>,
    on_listen: impl FnOnce(SocketAddr, bool),
) -> anyhow::Result<()> {
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let fleet = Arc::new(fleet);
    // Issue 11: running rollouts are decided on a timer too.
    crate::rollout::spawn_timer(fleet.clone(), crate::ops::settings().rollout_interval);
    let app = crate::http::router(fleet);
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: finishing the requests under way");
        h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    on_listen(addr, tls.is_some());
    let svc = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(svc)
                .await?
        }
        Some(t) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&t.cert, &t.key)
                .await
                .with_context(|| {
                    format!(
                        "reading the TLS certificate {} and key {}",
                        t.cert.display(),
                        t.key.display()
                    )
                })?;
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(svc)
                .await?
        }
    }
    tracing::info!("stopped");
    Ok(())
}
