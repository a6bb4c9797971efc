//! `hotsplice check`: a Nagios plugin (one line, exit 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN), or a Prometheus node-exporter textfile.

use crate::app::App;
use crate::output::esc;
use anyhow::{Context as _, Result};
use clap::Args;
use hotsplice_agent::{CheckReport, CheckStatus};
use std::fmt::Write as _;
use std::path::PathBuf;

pub const EXIT_CODES: &str = "\
Exit status (as Nagios plugins):
  0  OK: the kernel has every patch of the feed, every process every installed patch
  1  WARNING: up to date, but an interrupted operation waits for recovery, or hotsplice
     is disabled on the kernel command line
  2  CRITICAL: a patch is installed (or in the feed) but not applied where it should be
  3  UNKNOWN: the state could not be read (the line says what), or the command line is wrong
With --prometheus: 0 when the file was written (the status is in the file), 3 when not.";

#[derive(Args)]
pub struct CheckArgs {
    /// Write a Prometheus node-exporter textfile (atomically) instead of
    /// the line, e.g. /var/lib/prometheus/node-exporter/hotsplice.prom.
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    /// The whole report as JSON (docs/schemas/check.schema.json).
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Feed directory for kernel patches (default: `feed` of the configuration).
    #[arg(long)]
    from: Option<PathBuf>,
}

/// Runs the check and returns the exit status.
pub fn run(app: &App, a: CheckArgs) -> i32 {
    let r = app.agent.check(a.from.as_deref());
    if let Some(path) = &a.prometheus {
        return match write_textfile(path, &r) {
            Ok(()) => 0,
            Err(e) => {
                crate::show_error("hotsplice check", &e);
                CheckStatus::Unknown.code()
            }
        };
    }
    if a.json {
        match serde_json::to_string_pretty(&r) {
            Ok(j) => outln!("{j}"),
            Err(e) => {
                outln!("HOTSPLICE UNKNOWN - cannot write JSON: {e}");
                return CheckStatus::Unknown.code();
            }
        }
    } else {
        outln!("{}", line(&r));
    }
    r.status.code()
}

/// `HOTSPLICE OK - summary | perfdata`
pub fn line(r: &CheckReport) -> String {
    let (kapplied, kmissing) = r
        .kernel
        .as_ref()
        .map_or((0, 0), |k| (k.applied.len(), k.missing.len()));
    let (installed, umissing) = r
        .user
        .as_ref()
        .map_or((0, 0), |u| (u.installed, u.missing.len()));
    format!(
        "HOTSPLICE {} - {} | kernel_applied={kapplied} kernel_missing={kmissing} \
         user_installed={installed} user_missing={umissing} interrupted={}",
        r.status.name(),
        esc(if r.summary.is_empty() {
            "nothing to check"
        } else {
            &r.summary
        }),
        r.interrupted
    )
}

fn metric(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The node-exporter textfile collector's format.
pub fn textfile(r: &CheckReport) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "hotsplice_check_status",
        "Result of hotsplice check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        r.status.code(),
    );
    if let Some(k) = &r.kernel {
        metric(
            &mut out,
            "hotsplice_kernel_patches_applied",
            "Kernel patches applied to the running kernel.",
            k.applied.len(),
        );
        metric(
            &mut out,
            "hotsplice_kernel_patches_missing",
            "Feed patches for the running kernel that are not applied.",
            k.missing.len(),
        );
    }
    if let Some(u) = &r.user {
        metric(
            &mut out,
            "hotsplice_user_patches_installed",
            "Installed userspace patches (highest level per target).",
            u.installed,
        );
        metric(
            &mut out,
            "hotsplice_user_patches_applied",
            "Process and patch pairs where the installed patch is applied.",
            u.applied,
        );
        metric(
            &mut out,
            "hotsplice_user_patches_missing",
            "Process and patch pairs where an installed patch is not applied.",
            u.missing.len(),
        );
    }
    metric(
        &mut out,
        "hotsplice_interrupted_operations",
        "Operations an interrupted hotsplice left in flight.",
        r.interrupted,
    );
    out
}

fn write_textfile(path: &std::path::Path, r: &CheckReport) -> Result<()> {
    hotsplice_store::write_atomic_mode(path, textfile(r).as_bytes(), 0o644)
        .with_context(|| format!("writing the Prometheus textfile {}", path.display()))?;
    Ok(())
}
