//! `/metrics`: the fleet and the server in Prometheus' text format
//! (version 0.0.4). The fleet's figures are computed from the store on
//! each scrape (a few aggregate queries); the server's request latency
//! histogram is kept in memory by [`layer`], the database latency is
//! timed on the scrape's own queries.

use crate::db;
use crate::error::Result;
use crate::fleet::Fleet;
use crate::ops::{self, StatusCounts};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::Row;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Upper bounds (seconds) of the latency histograms.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A histogram in atomics.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, secs: f64) {
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

pub static REQUESTS: Histogram = Histogram::new();
pub static DB: Histogram = Histogram::new();

/// Times every request.
pub async fn layer(State(_f): State<Arc<Fleet>>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let res = next.run(req).await;
    REQUESTS.observe(t.elapsed().as_secs_f64());
    res
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text of `/metrics`.
pub async fn render(f: &Fleet) -> Result<String> {
    let mut out = String::new();
    let t = Instant::now();
    let now = hotsplice_fleet::now() as i64;
    // The big aggregates are independent reads: at once (separate read
    // connections).
    let (by, cves, alerting) = tokio::join!(
        ops::status_by_group(f),
        ops::cve_counts(f),
        ops::alerting_count(f)
    );
    DB.observe(t.elapsed().as_secs_f64());
    let (by, cves, alerting) = (by?, cves?, alerting?);
    let _ = writeln!(
        out,
        "# HELP hotsplice_machines Machines by dashboard status and group.\n# TYPE hotsplice_machines gauge"
    );
    let mut total = StatusCounts::default();
    for (group, counts) in &by {
        for (st, n) in counts.iter() {
            let _ = writeln!(
                out,
                "hotsplice_machines{{status=\"{st}\",group=\"{}\"}} {n}",
                label(group)
            );
        }
        total.add(counts);
    }
    let _ = writeln!(
        out,
        "# HELP hotsplice_machines_alerting Machines whose last sync failed or that are out of date longer than the alert threshold.\n# TYPE hotsplice_machines_alerting gauge\nhotsplice_machines_alerting {}",
        alerting
    );
    // Protected per CVE.

    let _ = writeln!(
        out,
        "# HELP hotsplice_cve_machines Machines a CVE's fix is applied on (protected) or offered to but not applied (unprotected).\n# TYPE hotsplice_cve_machines gauge"
    );
    for (cve, (fixed, missing)) in &cves {
        let c = label(cve);
        let _ = writeln!(
            out,
            "hotsplice_cve_machines{{cve=\"{c}\",state=\"protected\"}} {fixed}\nhotsplice_cve_machines{{cve=\"{c}\",state=\"unprotected\"}} {missing}"
        );
    }
    let t = Instant::now();
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM history WHERE event = 'failed') AS failed, (SELECT COUNT(*) FROM history WHERE event = 'applied') AS applied",
    )
    .fetch_one(&f.db.read)
    .await
    .map_err(db::DbError::from)?;
    DB.observe(t.elapsed().as_secs_f64());
    let failed: i64 = row.try_get("failed").map_err(db::DbError::from)?;
    let applied: i64 = row.try_get("applied").map_err(db::DbError::from)?;
    let _ = writeln!(
        out,
        "# HELP hotsplice_failed_applies_total Failures machines reported.\n# TYPE hotsplice_failed_applies_total counter\nhotsplice_failed_applies_total {failed}"
    );
    let _ = writeln!(
        out,
        "# HELP hotsplice_patches_applied_total Patch applications machines reported.\n# TYPE hotsplice_patches_applied_total counter\nhotsplice_patches_applied_total {applied}"
    );
    // Last-seen age, as a cumulative histogram of machines.
    let ages: [(i64, &str); 6] = [
        (300, "300"),
        (3600, "3600"),
        (6 * 3600, "21600"),
        (86_400, "86400"),
        (7 * 86_400, "604800"),
        (i64::MAX, "+Inf"),
    ];
    let mut q = String::from("SELECT COUNT(*) AS n");
    for (k, (secs, _)) in ages.iter().enumerate() {
        if *secs == i64::MAX {
            let _ = write!(q, ", COUNT(*) AS a{k}");
        } else {
            let _ = write!(
                q,
                ", COALESCE(SUM(CASE WHEN last_seen > 0 AND last_seen >= {} THEN 1 ELSE 0 END), 0) AS a{k}",
                now - secs
            );
        }
    }
    q.push_str(" FROM machines");
    let t = Instant::now();
    let row = sqlx::query(&q)
        .fetch_one(&f.db.read)
        .await
        .map_err(db::DbError::from)?;
    DB.observe(t.elapsed().as_secs_f64());
    let _ = writeln!(
        out,
        "# HELP hotsplice_machines_last_seen_seconds Machines by seconds since their last check-in (never seen: only in +Inf).\n# TYPE hotsplice_machines_last_seen_seconds histogram"
    );
    for (k, (_, le)) in ages.iter().enumerate() {
        let n: i64 = row
            .try_get(format!("a{k}").as_str())
            .map_err(db::DbError::from)?;
        let _ = writeln!(
            out,
            "hotsplice_machines_last_seen_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let n: i64 = row.try_get("n").map_err(db::DbError::from)?;
    let _ = writeln!(out, "hotsplice_machines_last_seen_seconds_sum 0\nhotsplice_machines_last_seen_seconds_count {n}");
    let _ = writeln!(
        out,
        "# HELP hotsplice_rollout_stage Index (1-based) of the last started stage of each rollout, with its state.\n# TYPE hotsplice_rollout_stage gauge"
    );
    for r in f.rollouts().await? {
        let _ =
            writeln!(
            out,
            "hotsplice_rollout_stage{{rollout=\"{}\",patch=\"{}\",state=\"{}\",group=\"{}\"}} {}",
            r.id,
            label(&r.patch_id),
            r.state,
            label(r.stages.get(r.stage as usize).map(String::as_str).unwrap_or("")),
            r.stage + 1
        );
    }
    REQUESTS.render(
        &mut out,
        "hotsplice_http_request_duration_seconds",
        "Time to answer HTTP requests.",
    );
    DB.render(
        &mut out,
        "hotsplice_db_query_duration_seconds",
        "Time of the database queries /metrics makes.",
    );
    Ok(out)
}
