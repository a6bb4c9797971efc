//! CSAF 2.0 VEX documents: "this CVE is fixed on this machine" in the form
//! vulnerability scanners read. The server makes one per machine from its
//! last report (`GET /api/v2/machines/UUID/vex`); the machine makes its own
//! (`hotsplice vulns --vex`). Each CVE is a vulnerability whose product
//! status for the machine is `fixed` (the fix is applied live) or
//! `known_affected` (a fix is there but not applied everywhere).
//!
//! Why CSAF VEX rather than OVAL: OVAL describes how to *test* a system
//! (package versions, files), which is exactly what goes wrong with live
//! patches; a VEX statement states the outcome for a product, and
//! scanners (Trivy, Grype, Dependency-Track, Red Hat's and SUSE's
//! tooling) read CSAF VEX.

use serde_json::{json, Value};

/// What a document says, and about what.
pub struct VexInput<'a> {
    /// The product: one machine (`hotsplice-machine-UUID`).
    pub product_id: &'a str,
    pub product_name: &'a str,
    /// Who says it (`hotsplice-server`, `hotsplice`).
    pub publisher: &'a str,
    pub title: &'a str,
    /// Unique per document version.
    pub tracking_id: &'a str,
    /// RFC 3339 times.
    pub initial: &'a str,
    pub current: &'a str,
    /// CVEs fixed live, each with why.
    pub fixed: &'a [(String, String)],
    /// CVEs with a fix present but not applied (everywhere), each with why
    /// and what to do.
    pub affected: &'a [(String, String, String)],
}

/// The CSAF 2.0 `csaf_vex` document.
pub fn document(v: &VexInput<'_>) -> Value {
    let pid = v.product_id;
    let mut vulns = Vec::new();
    for (c, why) in v.fixed {
        vulns.push(json!({
            "cve": c,
            "notes": [{"category": "description", "text": why, "title": "Live patch"}],
            "product_status": {"fixed": [pid]},
        }));
    }
    for (c, why, todo) in v.affected {
        vulns.push(json!({
            "cve": c,
            "notes": [{"category": "description", "text": why, "title": "Live patch not applied"}],
            "product_status": {"known_affected": [pid]},
            "remediations": [{"category": "vendor_fix", "details": todo, "product_ids": [pid]}],
        }));
    }
    let mut doc = json!({
        "document": {
            "category": "csaf_vex",
            "csaf_version": "2.0",
            "publisher": {"category": "vendor", "name": v.publisher, "namespace": "https://github.com/hotsplice"},
            "title": v.title,
            "tracking": {
                "current_release_date": v.current,
                "id": v.tracking_id,
                "initial_release_date": v.initial,
                "revision_history": [{"date": v.current, "number": "1", "summary": "state as observed"}],
                "status": "final",
                "version": "1"
            }
        },
        "product_tree": {
            "full_product_names": [{"name": v.product_name, "product_id": pid}]
        },
    });
    // The schema wants at least one vulnerability when the key is there.
    if !vulns.is_empty() {
        doc["vulnerabilities"] = Value::Array(vulns);
    }
    doc
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_and_statuses() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_747_048_761), "2025-05-12T11:19:21Z");
        let fixed = vec![("CVE-2026-0001".to_string(), "live".to_string())];
        let d = super::document(&super::VexInput {
            product_id: "p",
            product_name: "n",
            publisher: "hotsplice",
            title: "t",
            tracking_id: "id",
            initial: "1970-01-01T00:00:00Z",
            current: "1970-01-01T00:00:00Z",
            fixed: &fixed,
            affected: &[],
        });
        assert_eq!(d["vulnerabilities"][0]["product_status"]["fixed"][0], "p");
    }
}
