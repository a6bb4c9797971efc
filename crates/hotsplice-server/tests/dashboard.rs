//! The dashboard in a real headless browser: Debian's chromium driven by
//! playwright-core (npm; scripts/setup.sh installs both) through
//! tests/dashboard/flow.mjs, against a real server with simulated machines
//! checking in with real reports. Screenshots go to
//! target/dashboard-screenshots/ (printed). Missing chromium or node
//! fails the test; HOTSPLICE_SKIP_BROWSER_TESTS=1 lists it as ignored.

mod common;

use common::*;
use hotsplice_testsupport::harness::libtest_mimic::{self, Arguments, Trial};
use serde_json::json;
use std::path::PathBuf;

fn main() {
    let args = Arguments::from_args();
    let skip = std::env::var_os("HOTSPLICE_SKIP_BROWSER_TESTS").is_some();
    if skip {
        eprintln!("ignoring the browser test: HOTSPLICE_SKIP_BROWSER_TESTS is set");
    }
    let t = Trial::test("dashboard_in_chromium", || {
        flow();
        Ok(())
    })
    .with_ignored_flag(skip);
    libtest_mimic::run(&args, vec![t]).exit();
}

fn playwright() -> PathBuf {
    let cache = std::env::var_os("HOTSPLICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/hotsplice")
        });
    let p = cache.join("node/node_modules/playwright-core");
    assert!(
        p.join("package.json").exists(),
        "{} is missing: run scripts/setup.sh (or set HOTSPLICE_SKIP_BROWSER_TESTS=1)",
        p.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.sh as root (apt chromium), or set HOTSPLICE_SKIP_BROWSER_TESTS=1"
    );
    p
}

fn flow() {
    let pw = playwright();
    let ctx = Ctx::new(None);
    ctx.add_user("ada", "admin", "dashboard-pass-1");
    ctx.add_user("reed", "read-only", "dashboard-pass-1");
    let key = ctx.publisher();
    let cve = "CVE-2024-5555";
    let base = patch("kbase001", KERNEL_BID, true, 1, &[cve], Some(&key), 64);
    ctx.post("/api/v2/patches?channel=stable", &ctx.admin(), &base)
        .ok();
    let next = patch(
        "knext002",
        KERNEL_BID,
        true,
        2,
        &["CVE-2024-6666"],
        Some(&key),
        64,
    );
    let rec = ctx.post("/api/v2/patches", &ctx.admin(), &next).ok().json();
    let rollout_sha = rec["sha256"].as_str().unwrap().to_string();
    let pending_key = ctx
        .post_json(
            "/api/v2/access-keys",
            &ctx.admin(),
            &json!({"pending": true}),
        )
        .ok()
        .json();
    let mut machines = Vec::new();
    let groups = ["canary", "canary", "web", "web", "db", "db", "db"];
    let mut cve_machines = 0;
    let mut cve_protected = 0;
    for (n, g) in groups.iter().enumerate() {
        let (uuid, k) = ctx.register(&ctx.creds.access_key, Some(g));
        let host = format!("{g}-{n}.example");
        // Half applied the channel's fix, the others not yet.
        let base_applied: Vec<&str> = if n % 2 == 0 { vec!["kbase001"] } else { vec![] };
        checkin(
            &ctx,
            &uuid,
            &k,
            &report_with(&uuid, &host, &base_applied, None),
        );
        cve_machines += 1;
        if n % 2 == 0 {
            cve_protected += 1;
        }
        let mut ok_applied = base_applied.clone();
        ok_applied.push("knext002");
        machines.push(json!({
            "uuid": uuid, "key": k, "group": g, "hostname": host,
            "ok": report_with(&uuid, &host, &ok_applied, None),
            "fail": if *g == "web" && n == 2 {
                let mut r = report_with(&uuid, &host, &base_applied, Some(("knext002", "function do_sys_open is busy: gave up after 12 attempts")));
                // A later run than the one of the first check-in (the
                // server keeps a run's failures once, by its time).
                r.last_run.as_mut().unwrap().at += 5;
                serde_json::to_value(r).unwrap()
            } else { serde_json::Value::Null },
        }));
    }
    let (pending, pk) = ctx.register(pending_key["key"].as_str().unwrap(), Some("web"));
    checkin(
        &ctx,
        &pending,
        &pk,
        &report_with(&pending, "web-new.example", &[], None),
    );
    machines.push(json!({"uuid": pending, "key": pk, "group": "web", "hostname": "web-new.example", "ok": null, "fail": null}));
    let sim = json!({
        "machines": machines,
        "cve": cve,
        "cve_machines": cve_machines,
        "cve_protected": cve_protected,
        "pending": pending,
        "rollout_sha": rollout_sha,
        "readonly_user": "reed",
    });
    let simfile = ctx.dir.path().join("sim.json");
    std::fs::write(&simfile, sim.to_string()).unwrap();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    println!("screenshots: {}", out.display());
    let script = format!("{}/tests/dashboard/flow.mjs", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("node")
        .args([
            script.as_str(),
            &ctx.server.url,
            "ada",
            "dashboard-pass-1",
            out.to_str().unwrap(),
            simfile.to_str().unwrap(),
        ])
        .env("HOTSPLICE_PLAYWRIGHT", &pw)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is missing: run scripts/setup.sh (or set HOTSPLICE_SKIP_BROWSER_TESTS=1)");
    // Bounded: a hung browser fails the test instead of hanging CI.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser flow did not finish in 300 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}");
    assert!(
        status.success(),
        "the browser flow failed: {stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        ctx.server.log_text()
    );
    assert!(stdout.contains("dashboard flow passed"));
    println!("screenshots: {}", out.display());
    // The rollout the browser started is paused where the failure was.
    let r = ctx.get("/api/v2/rollouts", &ctx.admin()).ok().json();
    assert_eq!(r[0]["state"], "paused", "{r}");
}
