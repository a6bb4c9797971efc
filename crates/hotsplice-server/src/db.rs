//! The store: one query layer (sqlx's `Any` driver, `$N` placeholders)
//! over SQLite (one file, WAL) or PostgreSQL.
//!
//! Every write is one transaction (or one statement), so a server killed
//! at any point leaves either all of a change or none of it. Patch files
//! live in the database as blobs keyed by SHA-256, so two server
//! instances on one PostgreSQL database serve the same fleet.
//!
//! The *feed version* (table `counters`, row `feed`) is bumped in the same
//! transaction as anything that changes what some machine's list holds:
//! a publish into a channel, a promotion or removal, an authorization, a
//! group change, a group's channel. Caches of the server are keyed by it.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::time::Duration;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Conflict(String),
}

pub type DbResult<T> = Result<T, DbError>;

/// The pools. On SQLite, writes go through one connection (SQLite has
/// one writer anyway; a single writer never meets `SQLITE_BUSY` when a
/// read transaction tries to become a write one), reads through several.
#[derive(Clone)]
pub struct Db {
    pub backend: Backend,
    pub read: AnyPool,
    pub write: AnyPool,
    /// The database file on SQLite (for the check-in path's own
    /// connection, `checkin_store`).
    pub sqlite_path: Option<std::path::PathBuf>,
}

/// The migrations, in order: index + 1 is the schema version after it.
/// `{blob}` and `{serial}` are filled in per backend.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters (name, value) VALUES ('feed', 1);
CREATE TABLE api_users (
  name TEXT PRIMARY KEY,
  key_hash TEXT NOT NULL UNIQUE,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE TABLE access_keys (
  id TEXT PRIMARY KEY,
  key_hash TEXT NOT NULL UNIQUE,
  group_name TEXT NOT NULL,
  pending BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE TABLE publisher_keys (
  key_id TEXT PRIMARY KEY,
  public_text TEXT NOT NULL,
  comment TEXT NOT NULL,
  added_at BIGINT NOT NULL
);
CREATE TABLE groups (
  name TEXT PRIMARY KEY,
  channel TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
INSERT INTO groups (name, channel, created_at) VALUES ('default', 'stable', 0);
CREATE TABLE machines (
  uuid TEXT PRIMARY KEY,
  key_hash TEXT UNIQUE,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  original_kernel TEXT NOT NULL,
  effective_kernel TEXT NOT NULL,
  kernel_build_id TEXT NOT NULL,
  client_version TEXT NOT NULL,
  autoinstall BIGINT NOT NULL,
  authz TEXT NOT NULL,
  group_name TEXT NOT NULL,
  status TEXT NOT NULL,
  registered_at BIGINT NOT NULL,
  last_seen BIGINT NOT NULL,
  feed_version BIGINT NOT NULL,
  last_run_at BIGINT NOT NULL,
  applied TEXT NOT NULL,
  fixed_cves TEXT NOT NULL,
  missing_cves TEXT NOT NULL,
  report TEXT
);
CREATE INDEX machines_group ON machines (group_name);
CREATE INDEX machines_seen ON machines (last_seen);
CREATE TABLE patches (
  sha256 TEXT PRIMARY KEY,
  id TEXT NOT NULL,
  kind TEXT NOT NULL,
  target_name TEXT NOT NULL,
  build_id TEXT NOT NULL,
  level BIGINT NOT NULL,
  description TEXT NOT NULL,
  cves TEXT NOT NULL,
  size BIGINT NOT NULL,
  key_id TEXT NOT NULL,
  uploaded_at BIGINT NOT NULL
);
CREATE TABLE patch_blobs (sha256 TEXT PRIMARY KEY, data {blob} NOT NULL);
CREATE TABLE channel_patches (
  channel TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  added_at BIGINT NOT NULL,
  PRIMARY KEY (channel, sha256)
);
CREATE TABLE history (
  id {serial},
  uuid TEXT NOT NULL,
  at BIGINT NOT NULL,
  event TEXT NOT NULL,
  patch TEXT NOT NULL,
  target TEXT NOT NULL,
  detail TEXT NOT NULL,
  actor TEXT NOT NULL
);
CREATE INDEX history_uuid ON history (uuid, id);
"#,
    r#"
CREATE TABLE users (
  name TEXT PRIMARY KEY,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE sessions (
  id_hash TEXT PRIMARY KEY,
  user_name TEXT NOT NULL,
  csrf TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE TABLE audit (
  id {serial},
  at BIGINT NOT NULL,
  actor TEXT NOT NULL,
  role TEXT NOT NULL,
  remote TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  detail TEXT NOT NULL,
  result TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE TABLE machine_health (
  uuid TEXT PRIMARY KEY,
  failing BIGINT NOT NULL,
  error TEXT NOT NULL,
  out_of_date_since BIGINT,
  alerted BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE rollouts (
  id {serial},
  sha256 TEXT NOT NULL,
  patch_id TEXT NOT NULL,
  stages TEXT NOT NULL,
  gate TEXT NOT NULL,
  soak_secs BIGINT NOT NULL,
  state TEXT NOT NULL,
  stage BIGINT NOT NULL,
  stage_started_at BIGINT NOT NULL,
  healthy_since BIGINT,
  failures_after BIGINT NOT NULL,
  message TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE oob_patches (
  sha256 TEXT NOT NULL,
  uuid TEXT NOT NULL,
  added_at BIGINT NOT NULL,
  PRIMARY KEY (sha256, uuid)
);
"#,
    // 3: the machine's vm.mmap_min_addr from its report (NULL for reports
    // of clients that do not send it).
    r#"
ALTER TABLE machines ADD COLUMN mmap_min_addr BIGINT;
"#,
];

fn fill(sql: &str, backend: Backend) -> String {
    let (blob, serial) = match backend {
        Backend::Sqlite => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        Backend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
    };
    sql.replace("{blob}", blob).replace("{serial}", serial)
}

/// `sqlite://DIR/hotsplice.db` for a data directory.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

impl Db {
    /// Open the database at `url` (`sqlite://PATH` or `postgres://…`);
    /// `create` makes a missing SQLite file.
    pub async fn connect(url: &str, create: bool) -> DbResult<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Schema(format!(
                "database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB"
            )));
        };
        match backend {
            Backend::Sqlite => {
                let mut u = url.to_string();
                u.push_str(if u.contains('?') { "&" } else { "?" });
                u.push_str(if create { "mode=rwc" } else { "mode=rw" });
                let opts = |n: u32| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .min_connections(1)
                        .acquire_timeout(Duration::from_secs(30))
                        // A connection to a local file does not go stale:
                        // no ping (a round trip to the connection's worker
                        // thread) before every statement.
                        .test_before_acquire(false)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                use sqlx::Executor;
                                conn.execute(
                                    "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = opts(1).connect(&u).await?;
                // WAL is a property of the file: set once, kept.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .fetch_all(&write)
                    .await?;
                let read = opts(4).connect(&u).await?;
                let path = url
                    .trim_start_matches("sqlite:")
                    .trim_start_matches("//")
                    .split('?')
                    .next()
                    .unwrap_or_default();
                Ok(Db {
                    backend,
                    read,
                    write,
                    sqlite_path: Some(path.into()),
                })
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await?;
                Ok(Db {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    sqlite_path: None,
                })
            }
        }
    }

    /// A write transaction. On SQLite `BEGIN IMMEDIATE`: it takes the write
    /// lock first (waiting up to `busy_timeout` for another process, e.g. an
    /// administration command), so it never fails half-way when a read
    /// would have to become a write.
    pub async fn begin(&self) -> DbResult<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.write.begin().await?,
        })
    }

    /// The schema version of the database, 0 when empty.
    pub async fn schema_version(&self) -> DbResult<i64> {
        let exists = match self.backend {
            Backend::Sqlite => sqlx::query(
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            ),
            Backend::Postgres => sqlx::query(
                "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta'",
            ),
        }
        .fetch_one(&self.read)
        .await?
        .try_get::<i64, _>("n")?;
        if exists == 0 {
            return Ok(0);
        }
        let v = self.meta("schema_version").await?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Apply the migrations past the current version, each in a
    /// transaction.
    pub async fn migrate(&self) -> DbResult<i64> {
        let mut v = self.schema_version().await?;
        if v > SCHEMA_VERSION {
            return Err(DbError::Schema(format!(
                "the database has schema version {v}, newer than this server's {SCHEMA_VERSION}: run a newer hotsplice-server"
            )));
        }
        while v < SCHEMA_VERSION {
            let sql = fill(MIGRATIONS[v as usize], self.backend);
            let mut tx = self.begin().await?;
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            v += 1;
            upsert_meta(&mut tx, "schema_version", &v.to_string()).await?;
            tx.commit().await?;
        }
        Ok(v)
    }

    /// The schema is this build's: what `run` checks.
    pub async fn check_schema(&self) -> DbResult<()> {
        let v = self.schema_version().await?;
        if v == 0 {
            return Err(DbError::Schema(
                "the database is empty: run `hotsplice-server init --data DIR` first".into(),
            ));
        }
        if v != SCHEMA_VERSION {
            return Err(DbError::Schema(format!(
                "the database has schema version {v}, this server reads {SCHEMA_VERSION}: run `hotsplice-server migrate --data DIR`"
            )));
        }
        Ok(())
    }

    pub async fn meta(&self, name: &str) -> DbResult<Option<String>> {
        Ok(sqlx::query("SELECT value FROM meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?
            .map(|r| r.try_get::<String, _>("value"))
            .transpose()?)
    }

    pub async fn set_meta(&self, name: &str, value: &str) -> DbResult<()> {
        let mut tx = self.begin().await?;
        upsert_meta(&mut tx, name, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The current feed version.
    pub async fn feed_version(&self) -> DbResult<i64> {
        Ok(
            sqlx::query("SELECT value FROM counters WHERE name = 'feed'")
                .fetch_one(&self.read)
                .await?
                .try_get("value")?,
        )
    }
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn upsert_meta(tx: &mut Tx, name: &str, value: &str) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bump the feed version inside `tx`; returns the new version.
pub async fn bump_feed(tx: &mut Tx) -> DbResult<i64> {
    Ok(
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'feed' RETURNING value")
            .fetch_one(&mut **tx)
            .await?
            .try_get("value")?,
    )
}

/// A history event inside `tx`; `actor` is who caused it: `machine`,
/// or the API user's name.
// One argument per column of the row it inserts.
#[allow(clippy::too_many_arguments)]
pub async fn history(
    tx: &mut Tx,
    uuid: &str,
    at: i64,
    event: &str,
    patch: &str,
    target: &str,
    detail: &str,
    actor: &str,
) -> DbResult<()> {
    sqlx::query(crate::checkin_store::HISTORY_SQL)
        .bind(uuid)
        .bind(at)
        .bind(event)
        .bind(patch)
        .bind(target)
        .bind(detail)
        .bind(actor)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Column accessors that name the column in errors.
pub fn s(row: &AnyRow, col: &str) -> DbResult<String> {
    Ok(row.try_get::<String, _>(col)?)
}
pub fn os(row: &AnyRow, col: &str) -> DbResult<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}
pub fn i(row: &AnyRow, col: &str) -> DbResult<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}
pub fn oi(row: &AnyRow, col: &str) -> DbResult<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}
