//! Vulnerability answers that know about live patches: a CSAF 2.0 VEX
//! document per machine (`GET /api/v2/machines/UUID/vex`). Each CVE its
//! patches fix is a vulnerability whose product status for the machine is
//! `fixed` (the fix is applied live) or `known_affected` (a fix is offered
//! but not applied). CSAF VEX rather than OVAL: OVAL describes how to
//! *test* a system (package versions, files), which is exactly what goes
//! wrong with live patches; a VEX statement states the outcome for a
//! product, and scanners (Trivy, Grype, Dependency-Track, Red Hat's and
//! SUSE's tooling) read CSAF VEX.

use crate::error::Result;
use crate::fleet::{rfc3339, Fleet};
use serde_json::{json, Value};

pub async fn machine_vex(f: &Fleet, uuid: &str) -> Result<Value> {
    let m = f.summary(uuid).await?;
    let pid = format!("hotsplice-machine-{uuid}");
    let now = rfc3339(hotsplice_fleet::now());
    let seen = if m.last_seen > 0 {
        rfc3339(m.last_seen)
    } else {
        now.clone()
    };
    let mut vulns = Vec::new();
    for c in &m.fixed_cves {
        vulns.push(json!({
            "cve": c,
            "notes": [{"category": "description", "text": format!("{c} is fixed on this machine by a live patch applied by hotsplice (kernel or every running process that maps the fixed object); the package version and `uname -r` do not show it."), "title": "Live patch"}],
            "product_status": {"fixed": [pid]},
        }));
    }
    for c in &m.missing_cves {
        vulns.push(json!({
            "cve": c,
            "notes": [{"category": "description", "text": format!("a live patch fixing {c} is offered to this machine but not applied"), "title": "Live patch not applied"}],
            "product_status": {"known_affected": [pid]},
            "remediations": [{"category": "vendor_fix", "details": "run `hotsplice sync` (or wait for the daemon's next sync) to apply the live patch", "product_ids": [pid]}],
        }));
    }
    let name = format!("{} ({uuid}) running {}", m.hostname, m.effective_kernel);
    let mut doc = json!({
        "document": {
            "category": "csaf_vex",
            "csaf_version": "2.0",
            "publisher": {"category": "vendor", "name": "hotsplice-server", "namespace": "https://github.com/hotsplice"},
            "title": format!("Live patch status of {}", m.hostname),
            "tracking": {
                "current_release_date": now,
                "id": format!("hotsplice-vex-{uuid}-{}", m.feed_version),
                "initial_release_date": seen,
                "revision_history": [{"date": now, "number": "1", "summary": "state as of the machine's last check-in"}],
                "status": "final",
                "version": "1"
            }
        },
        "product_tree": {
            "full_product_names": [{"name": name, "product_id": pid}]
        },
    });
    // The schema wants at least one vulnerability when the key is there.
    if !vulns.is_empty() {
        doc["vulnerabilities"] = Value::Array(vulns);
    }
    Ok(doc)
}
