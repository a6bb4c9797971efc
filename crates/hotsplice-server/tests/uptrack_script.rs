//! Scripts written for Ksplice work against hotsplice-server: the client in
//! `tests/uptrack/uptrack_client.py`, written only from Oracle's Uptrack
//! API documentation (Python's standard library, nothing of ours), runs
//! against a real server with machines that checked in. It checks the
//! documented fields and values of the four calls, denies and allows a
//! machine, sets and clears its group, and expects 404 for an unknown
//! UUID; this test then checks what the script changed through our API.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn uptrack_documented_client_works_unchanged() {
    let ctx = Ctx::new(None);
    let key = ctx.publisher();
    let (a, ka) = ctx.register(&ctx.creds.access_key, None);
    let (b, kb) = ctx.register(&ctx.creds.access_key, Some("web"));
    // A kernel patch for both machines' kernel; machine a reports it applied.
    let file = patch(
        "kfix0001",
        KERNEL_BID,
        true,
        1,
        &["CVE-2026-0001"],
        Some(&key),
        64,
    );
    ctx.post(
        &format!("{}?channel=stable", hotsplice_fleet::api::PUBLISH),
        &ctx.admin(),
        &file,
    )
    .ok();
    let mut ra = report(&a);
    ra.kernel
        .applied
        .push(hotsplice_fleet::report::AppliedKernelPatch {
            id: "kfix0001".into(),
            description: "CVE-2026-0001 fix".into(),
        });
    ra.kernel.effective_release = "6.1.0-28-amd64.1".into();
    checkin(&ctx, &a, &ka, &ra);
    checkin(&ctx, &b, &kb, &report(&b));

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/uptrack/uptrack_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&ctx.server.url)
        .arg(&ctx.creds.api_user)
        .arg(&ctx.creds.api_key)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Uptrack client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");
    assert_eq!(v["machines"], 2, "{v}");
    let described = v["described"].as_array().unwrap();
    let da = described
        .iter()
        .find(|d| d["uuid"] == a.as_str())
        .expect("machine a");
    assert_eq!(da["effective_kernel"], "6.1.0-28-amd64.1", "{v}");
    assert_eq!(da["installed"], serde_json::json!(["kfix0001"]), "{v}");
    let db = described
        .iter()
        .find(|d| d["uuid"] == b.as_str())
        .expect("machine b");
    assert_eq!(db["installed"], serde_json::json!([]), "{v}");

    // The script left its first machine allowed and ungrouped; both show
    // through Uptrack's own describe.
    let first = v["described"][0]["uuid"].as_str().unwrap().to_string();
    let d = ctx
        .get(&format!("/api/1/machine/{first}/describe"), &ctx.admin())
        .ok()
        .json();
    assert_eq!(d["authorization"], "allowed", "{d}");
    assert!(d["group"].is_null() || d["group"] == "", "{d}");
}
