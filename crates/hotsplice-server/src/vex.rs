//! Vulnerability answers that know about live patches: a CSAF 2.0 VEX
//! document per machine (`GET /api/v2/machines/UUID/vex`), from its last
//! report: each CVE its patches fix is `fixed` (applied live) or
//! `known_affected` (offered, not applied). The document itself, and why
//! CSAF VEX rather than OVAL, is `hotsplice_fleet::vex`.

use crate::error::Result;
use crate::fleet::{rfc3339, Fleet};
use serde_json::Value;

pub async fn machine_vex(f: &Fleet, uuid: &str) -> Result<Value> {
    let m = f.summary(uuid).await?;
    let pid = format!("hotsplice-machine-{uuid}");
    let now = rfc3339(hotsplice_fleet::now());
    let seen = if m.last_seen > 0 {
        rfc3339(m.last_seen)
    } else {
        now.clone()
    };
    let fixed: Vec<(String, String)> = m
        .fixed_cves
        .iter()
        .map(|c| {
            (
                c.clone(),
                format!("{c} is fixed on this machine by a live patch applied by hotsplice (kernel or every running process that maps the fixed object); the package version and `uname -r` do not show it."),
            )
        })
        .collect();
    let affected: Vec<(String, String, String)> = m
        .missing_cves
        .iter()
        .map(|c| {
            (
                c.clone(),
                format!("a live patch fixing {c} is offered to this machine but not applied"),
                "run `hotsplice sync` (or wait for the daemon's next sync) to apply the live patch"
                    .to_string(),
            )
        })
        .collect();
    let name = format!("{} ({uuid}) running {}", m.hostname, m.effective_kernel);
    Ok(hotsplice_fleet::vex::document(
        &hotsplice_fleet::vex::VexInput {
            product_id: &pid,
            product_name: &name,
            publisher: "hotsplice-server",
            title: &format!("Live patch status of {}", m.hostname),
            tracking_id: &format!("hotsplice-vex-{uuid}-{}", m.feed_version),
            initial: &seen,
            current: &now,
            fixed: &fixed,
            affected: &affected,
        },
    ))
}
