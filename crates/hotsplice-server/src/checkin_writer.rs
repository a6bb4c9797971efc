//! Group commit for check-ins: the rows of many check-ins written by one
//! statement in one transaction.
//!
//! A check-in that changes nothing but the machine's row (no history
//! event) hands its row to the writer task and waits for its answer; the
//! answer is sent only once the row is committed, so nothing acknowledged
//! is lost. The task takes every row waiting (up to [`MAX_BATCH`], one per
//! machine) and writes them with one `UPDATE … FROM (VALUES …)`: under
//! load, the cost of a statement and of a commit (one round trip to the
//! database's worker thread and a WAL append on SQLite, a round trip to
//! the server on PostgreSQL) is paid once per batch instead of once per
//! machine. With one row waiting it is the plain one-row `UPDATE`. If a
//! batch fails, each of its rows is written on its own, so one bad row
//! fails only its own check-in. The health rows (issue 11) of the batch's
//! check-ins follow in one transaction, answered after it.
//!
//! This is the PostgreSQL path; on SQLite check-ins go to
//! [`crate::checkin_store`]'s own connection (docs/fleet.md says why).

use crate::checkin_store::{HealthWrite, HEALTH_SQL};
use crate::db::{self, Db};
use crate::error::{Error, Result};
use tokio::sync::{mpsc, oneshot};

/// Rows per statement at most (17 parameters each).
pub const MAX_BATCH: usize = 64;

/// The columns a check-in writes, in statement order after `uuid`.
#[derive(Debug, Clone)]
pub struct Row {
    pub uuid: String,
    pub hostname: String,
    pub ip: String,
    pub original_kernel: String,
    pub effective_kernel: String,
    pub kernel_build_id: String,
    pub client_version: String,
    pub autoinstall: i64,
    pub status: String,
    pub last_seen: i64,
    pub feed_version: i64,
    pub last_run_at: i64,
    pub applied: String,
    pub fixed_cves: String,
    pub missing_cves: String,
    pub report: String,
    pub mmap_min_addr: Option<i64>,
}

/// (column name, SQL type) after `uuid`.
const COLUMNS: [(&str, &str); 16] = [
    ("hostname", "TEXT"),
    ("ip", "TEXT"),
    ("original_kernel", "TEXT"),
    ("effective_kernel", "TEXT"),
    ("kernel_build_id", "TEXT"),
    ("client_version", "TEXT"),
    ("autoinstall", "BIGINT"),
    ("status", "TEXT"),
    ("last_seen", "BIGINT"),
    ("feed_version", "BIGINT"),
    ("last_run_at", "BIGINT"),
    ("applied", "TEXT"),
    ("fixed_cves", "TEXT"),
    ("missing_cves", "TEXT"),
    ("report", "TEXT"),
    ("mmap_min_addr", "BIGINT"),
];

type Job = (
    Row,
    Option<HealthWrite>,
    oneshot::Sender<std::result::Result<(), String>>,
);

/// The handle check-ins write through.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the writer task on the current runtime.
    pub fn start(db: Db) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(run(db, rx));
        Writer { tx }
    }

    /// Write `row`, then its machine's `health` row; returns once both
    /// are committed (a failed health write is logged, the row stands).
    pub async fn write(&self, row: Row, health: Option<HealthWrite>) -> Result<()> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((row, health, done))
            .await
            .map_err(|_| failed("the check-in writer stopped"))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(&format!("storing a check-in: {e}"))),
            Err(_) => Err(failed("the check-in writer stopped")),
        }
    }
}

fn failed(log: &str) -> Error {
    tracing::error!("{log}");
    Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the server's database failed storing the check-in; see the server's log, retry later",
    )
}

async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                // One row per machine per statement: a second check-in of
                // the same machine goes into the next batch, after this one.
                Ok(j) if batch.iter().any(|(r, _, _)| r.uuid == j.0.uuid) => {
                    held = Some(j);
                    break;
                }
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let rows: Vec<&Row> = batch.iter().map(|(r, _, _)| r).collect();
        tracing::debug!(rows = rows.len(), "writing check-ins");
        let results: Vec<std::result::Result<(), String>> = match write_rows(&db, &rows).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) if batch.len() == 1 => vec![Err(e.to_string())],
            Err(_) => {
                let mut r = Vec::with_capacity(batch.len());
                for (row, _, _) in &batch {
                    r.push(write_rows(&db, &[row]).await.map_err(|e| e.to_string()));
                }
                r
            }
        };
        // The health rows of the check-ins written, in one transaction
        // after them (one commit per batch, not per check-in); when that
        // fails, each on its own, and a failure is only logged.
        let health: Vec<&HealthWrite> = batch
            .iter()
            .zip(&results)
            .filter_map(|((_, h, _), r)| h.as_ref().filter(|_| r.is_ok()))
            .collect();
        if !health.is_empty() && write_health(&db, &health).await.is_err() {
            for h in health {
                if let Err(e) = write_health(&db, &[h]).await {
                    tracing::error!("health of {}: {e}", h.uuid);
                }
            }
        }
        for ((_, _, done), r) in batch.into_iter().zip(results) {
            let _ = done.send(r);
        }
    }
}

/// Health rows (issue 11) in one transaction, through the query layer.
pub(crate) async fn write_health(
    db: &Db,
    rows: &[&HealthWrite],
) -> std::result::Result<(), db::DbError> {
    let mut tx = db.begin().await?;
    for w in rows {
        sqlx::query(HEALTH_SQL)
            .bind(&w.uuid)
            .bind(w.failing)
            .bind(&w.error)
            .bind(w.at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) fn statement(n: usize) -> String {
    if n == 1 {
        let sets: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{c} = ${}", i + 1))
            .collect();
        return format!(
            "UPDATE machines SET {} WHERE uuid = ${}",
            sets.join(", "),
            COLUMNS.len() + 1
        );
    }
    let width = COLUMNS.len() + 1;
    let mut values = Vec::with_capacity(n);
    for r in 0..n {
        let base = r * width;
        let mut cells = vec![format!("CAST(${} AS TEXT)", base + 1)];
        for (i, (_, ty)) in COLUMNS.iter().enumerate() {
            cells.push(format!("CAST(${} AS {ty})", base + i + 2));
        }
        values.push(format!("({})", cells.join(", ")));
    }
    // VALUES columns are column1, column2, … in both SQLite and PostgreSQL.
    let sets: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{c} = v.column{}", i + 2))
        .collect();
    format!(
        "UPDATE machines SET {} FROM (VALUES {}) AS v WHERE machines.uuid = v.column1",
        sets.join(", "),
        values.join(", ")
    )
}

fn bound<'q>(
    sql: &'q str,
    rows: &'q [&'q Row],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    let one = rows.len() == 1;
    for r in rows {
        if !one {
            q = q.bind(&r.uuid);
        }
        q = q
            .bind(&r.hostname)
            .bind(&r.ip)
            .bind(&r.original_kernel)
            .bind(&r.effective_kernel)
            .bind(&r.kernel_build_id)
            .bind(&r.client_version)
            .bind(r.autoinstall)
            .bind(&r.status)
            .bind(r.last_seen)
            .bind(r.feed_version)
            .bind(r.last_run_at)
            .bind(&r.applied)
            .bind(&r.fixed_cves)
            .bind(&r.missing_cves)
            .bind(&r.report)
            .bind(r.mmap_min_addr);
        if one {
            q = q.bind(&r.uuid);
        }
    }
    q
}

async fn write_rows(db: &Db, rows: &[&Row]) -> std::result::Result<(), db::DbError> {
    let sql = statement(rows.len());
    bound(&sql, rows).execute(&db.write).await?;
    Ok(())
}

/// Write one row inside the caller's transaction (a check-in that also
/// records history).
pub async fn update_one(tx: &mut db::Tx, row: &Row) -> std::result::Result<(), db::DbError> {
    let sql = statement(1);
    let rows = [row];
    bound(&sql, &rows).execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_name_every_column_once_per_row() {
        let one = super::statement(1);
        assert!(one.ends_with("WHERE uuid = $17"), "{one}");
        let three = super::statement(3);
        assert!(three.contains("CAST($51 AS BIGINT))"), "{three}");
        assert!(three.contains("report = v.column16"), "{three}");
        assert!(three.contains("mmap_min_addr = v.column17"), "{three}");
        assert_eq!(three.matches("CAST(").count(), 51);
    }
}
