//! The check-in hot path on SQLite: one synchronous connection
//! (rusqlite) on its own OS thread, fed by a channel.
//!
//! Through sqlx, every statement on SQLite is a message to the
//! connection's worker thread and a wake-up back (and a pool acquire
//! before it): a profile of the check-in showed half of the server's time
//! in those hand-offs, not in SQL. Here the handlers send jobs — the
//! machine's row, a check-in's writes, a health row — and the thread takes
//! every job waiting (up to [`MAX_BATCH`]) per wake-up: lookups are
//! answered at once, the writes of the whole batch go into one
//! transaction (`BEGIN IMMEDIATE`, each job in its own savepoint so one
//! bad job fails only itself) and are answered once committed, so nothing
//! acknowledged is lost. Statements are prepared once and cached.
//!
//! The statements are the same text as the sqlx path's (`$N` parameters
//! are SQLite's too), so both backends write the same rows; PostgreSQL
//! keeps [`crate::checkin_writer`] (docs/fleet.md says why).

use crate::checkin_writer::Row;
use crate::fleet::{MachineRow, MACHINE_ROW_SQL};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Jobs taken per wake-up at most.
pub const MAX_BATCH: usize = 128;

/// A history event of a check-in: (at, event, patch, target, detail).
pub type Event = (i64, &'static str, String, String, String);

/// What a check-in writes: its row, its history events (by `actor`),
/// its health row when that changed.
pub struct CheckinWrite {
    pub row: Row,
    pub events: Vec<Event>,
    pub actor: String,
    pub health: Option<HealthWrite>,
}

/// A machine's health row (issue 11), as `rollout::health` upserts it.
pub struct HealthWrite {
    pub uuid: String,
    pub failing: i64,
    pub error: String,
    pub at: i64,
}

/// The one-row `UPDATE` of the sqlx path.
static UPDATE_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::checkin_writer::statement(1));

type Answer<T> = oneshot::Sender<Result<T, String>>;
type Reply<T> = oneshot::Receiver<Result<T, String>>;
type Write = (Box<CheckinWrite>, Answer<()>);

enum Job {
    Machine(String, Answer<Option<MachineRow>>),
    Checkin(Box<CheckinWrite>, Answer<()>),
}

/// The handle: jobs go to the thread; dropping the last handle ends it.
pub struct CheckinStore {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    commits: Arc<AtomicU64>,
}

pub const HEALTH_SQL: &str = "INSERT INTO machine_health (uuid, failing, error, out_of_date_since) VALUES ($1, $2, $3, CASE WHEN (SELECT status FROM machines WHERE uuid = $1) = 'outofdate' THEN $4 ELSE NULL END) \
     ON CONFLICT (uuid) DO UPDATE SET failing = excluded.failing, error = excluded.error, out_of_date_since = CASE WHEN excluded.out_of_date_since IS NULL THEN NULL ELSE COALESCE(machine_health.out_of_date_since, excluded.out_of_date_since) END, \
     alerted = CASE WHEN excluded.out_of_date_since IS NULL THEN 0 ELSE machine_health.alerted END";

pub const HISTORY_SQL: &str =
    "INSERT INTO history (uuid, at, event, patch, target, detail, actor) VALUES ($1, $2, $3, $4, $5, $6, $7)";

impl CheckinStore {
    /// Open the database file `path` (it exists: `run` checked the
    /// schema) and start the thread.
    pub fn open(path: &Path) -> Result<CheckinStore, String> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("opening {} for check-ins: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| {
                conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON")
            })
            .map_err(|e| format!("setting up {} for check-ins: {e}", path.display()))?;
        conn.set_prepared_statement_cache_capacity(16);
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("checkin-store".into())
            .spawn(move || run(conn, rx, &counted))
            .map_err(|e| format!("starting the check-in thread: {e}"))?;
        Ok(CheckinStore {
            tx: Some(tx),
            thread: Some(thread),
            commits,
        })
    }

    /// Transactions committed so far (one per batch of writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn send<T>(&self, job: impl FnOnce(Answer<T>) -> Job) -> Result<Reply<T>, String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .as_ref()
            .expect("sender until drop")
            .send(job(done))
            .map_err(|_| "the check-in thread stopped".to_string())?;
        Ok(answer)
    }

    async fn ask<T>(&self, job: impl FnOnce(Answer<T>) -> Job) -> Result<T, String> {
        self.send(job)?
            .await
            .map_err(|_| "the check-in thread stopped".to_string())?
    }

    /// The machine's row, as [`crate::fleet::Fleet::machine_row`] reads it.
    pub async fn machine(&self, uuid: &str) -> Result<Option<MachineRow>, String> {
        self.ask(|a| Job::Machine(uuid.to_string(), a)).await
    }

    /// Write a check-in; returns once committed.
    pub async fn checkin(&self, w: CheckinWrite) -> Result<(), String> {
        self.ask(|a| Job::Checkin(Box::new(w), a)).await
    }
}

impl Drop for CheckinStore {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the jobs sent; wait
        // for it so the database file is closed when the server is gone.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Job>, commits: &AtomicU64) {
    let mut writes: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Machine(uuid, done) => {
                    let _ = done.send(machine(&conn, &uuid).map_err(|e| e.to_string()));
                }
                Job::Checkin(w, done) => writes.push((w, done)),
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            write_batch(&conn, &mut writes, commits);
        }
    }
}

fn machine(conn: &Connection, uuid: &str) -> rusqlite::Result<Option<MachineRow>> {
    let mut st = conn.prepare_cached(MACHINE_ROW_SQL)?;
    st.query_row([uuid], |r| {
        let applied: String = r.get("applied")?;
        let failing: Option<i64> = r.get("h_failing")?;
        Ok(MachineRow {
            uuid: r.get("uuid")?,
            key_hash: r.get("key_hash")?,
            authorization: r.get("authz")?,
            group: r.get("group_name")?,
            applied: serde_json::from_str(&applied).unwrap_or_default(),
            last_run_at: r.get("last_run_at")?,
            feed_version: r.get("fv")?,
            health: match failing {
                None => None,
                Some(failing) => Some(crate::rollout::Health {
                    failing,
                    error: r.get::<_, Option<String>>("h_error")?.unwrap_or_default(),
                    out_of_date_since: r.get("h_since")?,
                }),
            },
        })
    })
    .optional()
}

/// Write every job of `jobs` in one transaction and answer each.
fn write_batch(conn: &Connection, jobs: &mut Vec<Write>, commits: &AtomicU64) {
    tracing::debug!(jobs = jobs.len(), "writing check-ins");
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = e.to_string();
        for (_, done) in jobs.drain(..) {
            let _ = done.send(Err(e.clone()));
        }
        return;
    }
    let mut results = Vec::with_capacity(jobs.len());
    for (w, _) in jobs.iter() {
        results.push(in_savepoint(conn, w));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for ((_, done), r) in jobs.drain(..).zip(results) {
                let _ = done.send(r);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let e = format!("committing check-ins: {e}");
            for (_, done) in jobs.drain(..) {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// One job's statements, all or none of them.
fn in_savepoint(conn: &Connection, w: &CheckinWrite) -> Result<(), String> {
    conn.execute_batch("SAVEPOINT job")
        .map_err(|e| e.to_string())?;
    let r = write(conn, w);
    let end = if r.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    conn.execute_batch(end).map_err(|e| e.to_string())?;
    r.map_err(|e| e.to_string())
}

fn write(conn: &Connection, w: &CheckinWrite) -> rusqlite::Result<()> {
    let r = &w.row;
    let mut st = conn.prepare_cached(&UPDATE_SQL)?;
    st.execute(params![
        r.hostname,
        r.ip,
        r.original_kernel,
        r.effective_kernel,
        r.kernel_build_id,
        r.client_version,
        r.autoinstall,
        r.status,
        r.last_seen,
        r.feed_version,
        r.last_run_at,
        r.applied,
        r.fixed_cves,
        r.missing_cves,
        r.report,
        r.mmap_min_addr,
        r.uuid,
    ])?;
    let mut h = conn.prepare_cached(HISTORY_SQL)?;
    for (at, event, patch, target, detail) in &w.events {
        h.execute(params![r.uuid, at, event, patch, target, detail, w.actor])?;
    }
    if let Some(hw) = &w.health {
        // After the row (it reads the new status); a failure is
        // logged and the check-in stands, as on PostgreSQL where
        // it is a statement of its own.
        conn.execute_batch("SAVEPOINT health")?;
        let r = conn
            .prepare_cached(HEALTH_SQL)
            .and_then(|mut st| st.execute(params![hw.uuid, hw.failing, hw.error, hw.at]));
        match r {
            Ok(_) => conn.execute_batch("RELEASE health")?,
            Err(e) => {
                tracing::error!("health of {}: {e}", hw.uuid);
                conn.execute_batch("ROLLBACK TO health; RELEASE health")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{sqlite_url, Db};

    fn row(uuid: &str) -> Row {
        Row {
            uuid: uuid.into(),
            hostname: format!("{uuid}.example.com"),
            ip: "192.0.2.1".into(),
            original_kernel: "6.1.0-28-amd64".into(),
            effective_kernel: "6.1.0-28-amd64".into(),
            kernel_build_id: "ab".repeat(20),
            client_version: "0.1.0".into(),
            autoinstall: 1,
            status: "outofdate".into(),
            last_seen: 1000,
            feed_version: 1,
            last_run_at: 0,
            applied: "[]".into(),
            fixed_cves: String::new(),
            missing_cves: String::new(),
            report: "{}".into(),
            mmap_min_addr: Some(65536),
        }
    }

    /// Check-ins that arrive while another writer (an administration
    /// command in another process) holds the write lock wait for it, and
    /// then go into one transaction together: 64 check-ins, at most 2
    /// commits (the first job taken may be alone in its batch). Each is
    /// answered only after its commit, with its history and health rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkins_waiting_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotsplice.db");
        let db = Db::connect(&sqlite_url(&path), true).await.unwrap();
        db.migrate().await.unwrap();
        let uuids: Vec<String> = (0..64)
            .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
            .collect();
        for u in &uuids {
            sqlx::query(
                "INSERT INTO machines (uuid, key_hash, hostname, ip, original_kernel, effective_kernel, kernel_build_id, client_version, autoinstall, authz, group_name, status, registered_at, last_seen, feed_version, last_run_at, applied, fixed_cves, missing_cves, report) \
                 VALUES ($1, NULL, 'old', '', '', '', '', '', 0, 'allowed', 'default', 'unsupported', 0, 0, 0, 0, '[]', '', '', NULL)",
            )
            .bind(u)
            .execute(&db.write)
            .await
            .unwrap();
        }
        let store = CheckinStore::open(&path).unwrap();
        let lock = Connection::open(&path).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        let replies: Vec<_> = uuids
            .iter()
            .map(|u| {
                let w = CheckinWrite {
                    row: row(u),
                    events: vec![(1000, "applied", "p1".into(), String::new(), String::new())],
                    actor: "machine".into(),
                    health: Some(HealthWrite {
                        uuid: u.clone(),
                        failing: 0,
                        error: String::new(),
                        at: 1000,
                    }),
                };
                store.send(|a| Job::Checkin(Box::new(w), a)).unwrap()
            })
            .collect();
        // None can commit while `lock` holds the write lock (the thread
        // waits in BEGIN IMMEDIATE); give it time to try.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            store.commits(),
            0,
            "committed while another writer held the lock"
        );
        lock.execute_batch("COMMIT").unwrap();
        for r in replies {
            r.await.unwrap().unwrap();
        }
        let commits = store.commits();
        assert!(
            (1..=2).contains(&commits),
            "{commits} commits for 64 check-ins"
        );
        let count = |sql: &str| -> i64 { lock.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT COUNT(*) FROM machines WHERE hostname LIKE '%.example.com' AND status = 'outofdate'"),
            64
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM history WHERE event = 'applied' AND actor = 'machine'"),
            64
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM machine_health WHERE out_of_date_since = 1000"),
            64
        );
        // The row as the check-in path reads it back.
        let m = store.machine(&uuids[7]).await.unwrap().unwrap();
        assert_eq!(m.authorization, "allowed");
        assert_eq!(m.health.unwrap().out_of_date_since, Some(1000));
        assert!(store
            .machine("00000000-0000-4000-8000-ffffffffffff")
            .await
            .unwrap()
            .is_none());
    }
}
