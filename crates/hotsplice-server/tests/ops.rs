//! Issue 11 against the real server: roles (403 in the API, no button in
//! the page), the audit log (every action of the test and nothing else;
//! not editable), staged rollouts advancing on the canaries' reports and
//! pausing on a failure, /metrics parsed by Prometheus' Python parser, and
//! the VEX document validated against the CSAF 2.0 schema.

mod common;

use common::*;
use hotsplice_testsupport::harness::libtest_mimic::{self, Arguments, Trial};
use hotsplice_testsupport::postgres;
use serde_json::{json, Value};

static PG: postgres::Shared = postgres::Shared::new();

fn pg_database() -> String {
    PG.database()
}

type Suite = fn(Option<String>);

/// Each test on SQLite and on PostgreSQL (skipped, listed as ignored,
/// only with HOTSPLICE_SKIP_POSTGRES_TESTS).
fn main() {
    let suite: Vec<(&str, Suite)> = vec![
        ("roles_and_audit", roles_and_audit),
        ("rollout_advances_and_pauses", rollout_advances_and_pauses),
        ("metrics_and_vex", metrics_and_vex),
        ("webhook_on_alert", webhook_on_alert),
        ("webhook_over_https", webhook_over_https),
        ("dashboard_actions", dashboard_actions),
    ];
    let args = Arguments::from_args();
    let skip = postgres::skip_reason();
    let mut trials = Vec::new();
    for (name, f) in suite {
        trials.push(Trial::test(format!("sqlite_{name}"), move || {
            f(None);
            Ok(())
        }));
        trials.push(
            Trial::test(format!("postgres_{name}"), move || {
                f(Some(pg_database()));
                Ok(())
            })
            .with_ignored_flag(skip.is_some()),
        );
    }
    let c = libtest_mimic::run(&args, trials);
    PG.stop();
    c.exit();
}

const PW: &str = "correct horse battery";

fn audit(ctx: &Ctx) -> Vec<Value> {
    ctx.get("/api/v2/audit", &ctx.admin())
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn roles_and_audit(db: Option<String>) {
    let ctx = Ctx::new(db);
    let mut expect: Vec<(String, String, u16)> = Vec::new();
    let admin = ctx.creds.api_user.clone();
    let ro = ctx.token("read-only");
    expect.push((admin.clone(), "POST /api/v2/tokens".into(), 200));
    let op = ctx.token("operator");
    expect.push((admin.clone(), "POST /api/v2/tokens".into(), 200));
    let (Auth::Api(ro_name, _), Auth::Api(op_name, _)) = (&ro, &op) else {
        unreachable!()
    };
    let (uuid, key) = ctx.register(&ctx.creds.access_key, Some("web"));
    expect.push(("machine".into(), "POST /api/v2/register".into(), 200));
    checkin(&ctx, &uuid, &key, &report_with(&uuid, "web-1", &[], None));
    // Check-ins are the machine's history, not the audit log.
    let path = format!("/api/v2/machines/{uuid}/authorize");
    let body = json!({"authorization": "denied"});
    let r = ctx.post_json(&path, &ro, &body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("read-only"), "{}", r.error());
    expect.push((ro_name.clone(), format!("POST {path}"), 403));
    ctx.post_json(&path, &op, &body).ok();
    expect.push((op_name.clone(), format!("POST {path}"), 200));
    // An operator may not make tokens.
    let r = ctx.post_json("/api/v2/tokens", &op, &json!({"role": "admin"}));
    assert_eq!(r.status, 403);
    expect.push((op_name.clone(), "POST /api/v2/tokens".into(), 403));
    // Read-only calls are not audited.
    ctx.get("/api/v2/machines", &ro).ok();

    // Dashboard users.
    ctx.add_user("rita", "read-only", PW);
    expect.push(("cli".into(), "user add".into(), 0));
    ctx.add_user("otto", "operator", PW);
    expect.push(("cli".into(), "user add".into(), 0));
    let (r, _) = Ui::try_login(&ctx, "rita", "wrong password");
    assert_eq!(r.status, 401);
    expect.push(("rita".into(), "POST /ui/login".into(), 401));
    let rita = Ui::login(&ctx, "rita", PW);
    expect.push(("rita".into(), "POST /ui/login".into(), 303));
    let page = rita.get(&format!("/ui/machines/{uuid}")).ok().text();
    assert!(page.contains("web-1"), "{page}");
    assert!(!page.contains("authorize-form"), "no action for read-only");
    let r = rita.post(
        &format!("/ui/machines/{uuid}/authorize"),
        &[("authorization", "allowed")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("read-only"), "{}", r.error());
    expect.push((
        "rita".into(),
        format!("POST /ui/machines/{uuid}/authorize"),
        403,
    ));
    let otto = Ui::login(&ctx, "otto", PW);
    expect.push(("otto".into(), "POST /ui/login".into(), 303));
    let page = otto.get(&format!("/ui/machines/{uuid}")).ok().text();
    assert!(page.contains("authorize-form"), "operator has the action");
    // Without the CSRF token: refused.
    let r = otto.post_raw(
        &format!("/ui/machines/{uuid}/authorize"),
        &[("authorization", "allowed")],
    );
    assert_eq!(r.status, 403);
    assert!(r.error().contains("CSRF"), "{}", r.error());
    expect.push((
        "otto".into(),
        format!("POST /ui/machines/{uuid}/authorize"),
        403,
    ));
    let r = otto.post(
        &format!("/ui/machines/{uuid}/authorize"),
        &[("authorization", "allowed")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    expect.push((
        "otto".into(),
        format!("POST /ui/machines/{uuid}/authorize"),
        303,
    ));
    let m = ctx
        .get(&format!("/api/v2/machines/{uuid}"), &ro)
        .ok()
        .json();
    assert_eq!(m["authorization"], "allowed");
    // Without a session: the login page.
    let anon = Ui {
        base: ctx.server.url.clone(),
        cookie: "hs_session=0000".into(),
        csrf: String::new(),
    };
    assert_eq!(anon.get("/ui/").status, 303);

    // The log cannot be edited through the API.
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = call(m, &ctx.url("/api/v2/audit"), &ctx.admin(), Some(b"{}"));
        assert_eq!(r.status, 405, "{m}: {}", r.text());
        expect.push((admin.clone(), format!("{m} /api/v2/audit"), 405));
    }
    let r = call("DELETE", &ctx.url("/api/v2/audit/1"), &ctx.admin(), None);
    assert_eq!(r.status, 404);
    expect.push((admin.clone(), "DELETE /api/v2/audit/1".into(), 404));

    let log = audit(&ctx);
    let got: Vec<(String, String, u16)> = log
        .iter()
        .map(|e| {
            let res = e["result"].as_str().unwrap();
            let code = res.split(' ').next().unwrap().parse().unwrap_or(0);
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                code,
            )
        })
        .collect();
    assert_eq!(
        got, expect,
        "the audit log is every action of the test, in order"
    );
    for e in &log {
        assert!(!e["remote"].as_str().unwrap().is_empty());
        assert!(e["at"].as_u64().unwrap() > 0);
    }
    let refused = log
        .iter()
        .find(|e| e["result"].as_str().unwrap().starts_with("403"))
        .unwrap();
    assert!(
        refused["result"].as_str().unwrap().contains("read-only"),
        "{refused}"
    );
    assert_eq!(refused["remote"], "127.0.0.1");
    // The export: the same entries, one JSON object a line.
    let lines = ctx.get("/api/v2/audit/export", &ro).ok().text();
    let exported: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported, log);
    // Filters.
    let f = ctx
        .get(&format!("/api/v2/audit?actor={op_name}"), &ro)
        .ok()
        .json();
    assert_eq!(f.as_array().unwrap().len(), 2);
    // The dashboard shows it.
    let page = otto.get("/ui/audit").ok().text();
    assert!(
        page.contains("POST /ui/login") && page.contains(&uuid),
        "{page}"
    );
}

/// Four machines (two canaries, web, db) checking in with real reports.
struct Fleet4 {
    canary: Vec<(String, String)>,
    web: (String, String),
    db: (String, String),
}

fn fleet4(ctx: &Ctx) -> Fleet4 {
    let canary = vec![
        ctx.register(&ctx.creds.access_key, Some("canary")),
        ctx.register(&ctx.creds.access_key, Some("canary")),
    ];
    let web = ctx.register(&ctx.creds.access_key, Some("web"));
    let db = ctx.register(&ctx.creds.access_key, Some("db"));
    Fleet4 { canary, web, db }
}

fn lists(list: &hotsplice_fleet::feed::FeedList, id: &str) -> bool {
    list.patches.iter().any(|p| p.id == id)
}

fn rollout(ctx: &Ctx, id: u64) -> Value {
    ctx.get(&format!("/api/v2/rollouts/{id}"), &ctx.admin())
        .ok()
        .json()
}

fn rollout_advances_and_pauses(db: Option<String>) {
    let ctx = Ctx::new(db);
    let key = ctx.publisher();
    let id = "kfix0001";
    let file = patch(id, KERNEL_BID, true, 1, &["CVE-2024-1111"], Some(&key), 64);
    let rec = ctx.post("/api/v2/patches", &ctx.admin(), &file).ok().json();
    let sha = rec["sha256"].as_str().unwrap().to_string();
    let f = fleet4(&ctx);
    let host = |u: &str| format!("host-{}", &u[..8]);
    let ci = |(u, k): &(String, String), applied: &[&str], failed: Option<(&str, &str)>| {
        checkin(&ctx, u, k, &report_with(u, &host(u), applied, failed))
    };
    for m in f.canary.iter().chain([&f.web, &f.db]) {
        assert!(
            !lists(&ci(m, &[], None), id),
            "in no channel, no rollout yet"
        );
    }
    let op = ctx.token("operator");
    let ro = ctx.token("read-only");
    let body = json!({"sha256": sha, "stages": ["canary", "web", "db"], "soak_secs": 0});
    assert_eq!(ctx.post_json("/api/v2/rollouts", &ro, &body).status, 403);
    let r = ctx.post_json("/api/v2/rollouts", &op, &body).ok().json();
    let rid = r["id"].as_u64().unwrap();
    assert_eq!(r["state"], "running");
    assert_eq!(r["stage"], 0);
    // Stage 1: the canaries get it, web does not.
    assert!(lists(&ci(&f.canary[0], &[], None), id));
    assert!(!lists(&ci(&f.web, &[], None), id));
    // One canary applied: not yet.
    ci(&f.canary[0], &[id], None);
    assert_eq!(rollout(&ctx, rid)["stage"], 0);
    assert!(rollout(&ctx, rid)["message"]
        .as_str()
        .unwrap()
        .contains("1 of 2"));
    // The last canary's report starts stage 2 (soak 0).
    ci(&f.canary[1], &[id], None);
    let r = rollout(&ctx, rid);
    assert_eq!(r["stage"], 1, "{r}");
    assert_eq!(r["state"], "running");
    assert!(lists(&ci(&f.web, &[], None), id), "web's stage started");
    assert!(!lists(&ci(&f.db, &[], None), id));
    // web fails: paused, and it says where.
    ci(&f.web, &[], Some((id, "the function is busy: 12 attempts")));
    let r = rollout(&ctx, rid);
    assert_eq!(r["state"], "paused", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains(&f.web.0) && msg.contains("busy") && msg.contains("web"),
        "{msg}"
    );
    assert!(!lists(&ci(&f.db, &[], None), id), "paused: db waits");
    // The machine shows as failing, with an alert.
    let page_list = ctx.get("/metrics", &ro).ok().text();
    assert!(
        page_list.contains("hotsplice_machines{status=\"failing\",group=\"web\"} 1"),
        "{page_list}"
    );
    // Resume; web applies it; db's stage starts.
    let r = ctx
        .post(&format!("/api/v2/rollouts/{rid}/resume"), &op, b"")
        .ok()
        .json();
    assert_eq!(r["state"], "running", "{r}");
    ci(&f.web, &[id], None);
    let r = rollout(&ctx, rid);
    assert_eq!(r["stage"], 2, "{r}");
    assert!(lists(&ci(&f.db, &[], None), id));
    ci(&f.db, &[id], None);
    assert_eq!(rollout(&ctx, rid)["state"], "done");
    // Roll back: no machine's list has it any more.
    let before = ci(&f.canary[0], &[id], None).version;
    let r = ctx
        .post(&format!("/api/v2/rollouts/{rid}/rollback"), &op, b"")
        .ok()
        .json();
    assert_eq!(r["state"], "rolled-back");
    for m in f.canary.iter().chain([&f.web, &f.db]) {
        let l = ci(m, &[id], None);
        assert!(!lists(&l, id));
        assert!(l.version > before, "the feed version moved");
    }
    assert_eq!(
        ctx.post(&format!("/api/v2/rollouts/{rid}/resume"), &op, b"")
            .status,
        409
    );
    // Out of band: one chosen machine.
    let n = ctx
        .post_json(
            &format!("/api/v2/patches/{sha}/machines"),
            &op,
            &json!({"machines": [f.db.0]}),
        )
        .ok()
        .json();
    assert_eq!(n, 1);
    assert!(lists(&ci(&f.db, &[], None), id));
    assert!(!lists(&ci(&f.web, &[], None), id));
    // A fixed delay: the next stage after the delay, whatever the health.
    let body = json!({"sha256": sha, "stages": ["web", "db"], "gate": "delay", "soak_secs": 0});
    let r = ctx.post_json("/api/v2/rollouts", &op, &body).ok().json();
    let rid2 = r["id"].as_u64().unwrap();
    ci(&f.web, &[], None);
    assert_eq!(rollout(&ctx, rid2)["stage"], 1, "delay 0: db started");
    ci(&f.db, &[], None);
    assert_eq!(
        rollout(&ctx, rid2)["state"],
        "done",
        "delay 0: done after db"
    );
    // Bad input.
    for bad in [
        json!({"sha256": sha, "stages": []}),
        json!({"sha256": sha, "stages": ["a", "a"]}),
        json!({"sha256": sha, "stages": ["a"], "gate": "never"}),
        json!({"sha256": "00", "stages": ["a"]}),
    ] {
        let r = ctx.post_json("/api/v2/rollouts", &op, &bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(ctx.get("/api/v2/rollouts/999", &ro).status, 404);

    // The audit log has every change of a rollout's state: the operator's
    // requests, and what the server decided by itself on the machines'
    // reports (actor `server`), each once, in order, and nothing else.
    let Auth::Api(op_name, _) = &op else {
        unreachable!()
    };
    let got: Vec<(String, String, String, String)> = audit(&ctx)
        .iter()
        .filter(|e| e["actor"] == "server" || e["actor"] == op_name.as_str())
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_string();
            (
                text("actor"),
                text("action"),
                text("target"),
                text("detail"),
            )
        })
        .collect();
    let mut want: Vec<(String, String, Option<String>, Option<String>)> = Vec::new();
    let person = |action: String| (op_name.clone(), action, None, None);
    let by_server = |action: &str, rid: u64, detail: &str| {
        (
            "server".to_string(),
            action.to_string(),
            Some(format!("rollout {rid}")),
            Some(format!("{id}: {detail}")),
        )
    };
    want.push(person("POST /api/v2/rollouts".into()));
    want.push(by_server("rollout advance", rid, "stage 2 (web) started"));
    want.push(by_server("rollout pause", rid, "paused at stage 2 (web)"));
    want.push(person(format!("POST /api/v2/rollouts/{rid}/resume")));
    want.push(by_server("rollout advance", rid, "stage 3 (db) started"));
    want.push(by_server("rollout done", rid, "done: every stage"));
    want.push(person(format!("POST /api/v2/rollouts/{rid}/rollback")));
    want.push(person(format!("POST /api/v2/rollouts/{rid}/resume")));
    want.push(person(format!("POST /api/v2/patches/{sha}/machines")));
    want.push(person("POST /api/v2/rollouts".into()));
    want.push(by_server("rollout advance", rid2, "stage 2 (db) started"));
    want.push(by_server("rollout done", rid2, "done: every stage"));
    for _ in 0..4 {
        want.push(person("POST /api/v2/rollouts".into()));
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{got:#?}");
        if let Some(t) = &w.2 {
            assert_eq!(&g.2, t, "{g:?}");
        }
        if let Some(d) = &w.3 {
            assert!(g.3.starts_with(d.as_str()), "{g:?} should start with {d:?}");
        }
    }
}

fn script(name: &str) -> String {
    format!("{}/tests/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))[2]
        .as_f64()
        .unwrap()
}

fn metrics_and_vex(db: Option<String>) {
    let ctx = Ctx::new(db);
    let key = ctx.publisher();
    let id = "kfix0002";
    let cve = "CVE-2024-2222";
    let file = patch(id, KERNEL_BID, true, 1, &[cve], Some(&key), 64);
    ctx.post("/api/v2/patches?channel=stable", &ctx.admin(), &file)
        .ok();
    let fixed = ctx.register(&ctx.creds.access_key, None);
    let open = ctx.register(&ctx.creds.access_key, None);
    let failing = ctx.register(&ctx.creds.access_key, None);
    let pending_key = ctx
        .post_json(
            "/api/v2/access-keys",
            &ctx.admin(),
            &json!({"pending": true}),
        )
        .ok()
        .json();
    let pending = ctx.register(pending_key["key"].as_str().unwrap(), Some("lab"));
    let ci = |(u, k): &(String, String), applied: &[&str], failed: Option<(&str, &str)>| {
        checkin(
            &ctx,
            u,
            k,
            &report_with(u, &format!("h-{}", &u[..8]), applied, failed),
        )
    };
    ci(&fixed, &[id], None);
    ci(&open, &[], None);
    ci(
        &failing,
        &[],
        Some((id, "kernel refused the patch: -EBUSY")),
    );
    let text = ctx.get("/metrics", &ctx.token("read-only")).ok().text();
    let out = std::process::Command::new(hotsplice_testsupport::tools::venv_python())
        .arg(script("prom_parse.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let m = |st: &str, g: &str| {
        sample(
            &samples,
            "hotsplice_machines",
            &[("status", st), ("group", g)],
        )
    };
    assert_eq!(m("uptodate", "default"), 1.0);
    assert_eq!(m("outofdate", "default"), 1.0);
    assert_eq!(m("failing", "default"), 1.0);
    assert_eq!(m("pending", "lab"), 1.0);
    assert_eq!(m("denied", "default"), 0.0);
    assert_eq!(
        sample(
            &samples,
            "hotsplice_cve_machines",
            &[("cve", cve), ("state", "protected")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "hotsplice_cve_machines",
            &[("cve", cve), ("state", "unprotected")]
        ),
        2.0
    );
    assert_eq!(sample(&samples, "hotsplice_failed_applies_total", &[]), 1.0);
    assert_eq!(
        sample(&samples, "hotsplice_patches_applied_total", &[]),
        1.0
    );
    assert_eq!(sample(&samples, "hotsplice_machines_alerting", &[]), 1.0);
    assert_eq!(
        sample(
            &samples,
            "hotsplice_machines_last_seen_seconds_bucket",
            &[("le", "300")]
        ),
        3.0,
        "three checked in just now, the pending one never"
    );
    assert_eq!(
        sample(
            &samples,
            "hotsplice_machines_last_seen_seconds_bucket",
            &[("le", "+Inf")]
        ),
        4.0
    );
    assert!(
        sample(
            &samples,
            "hotsplice_http_request_duration_seconds_count",
            &[]
        ) > 5.0
    );
    assert!(sample(&samples, "hotsplice_db_query_duration_seconds_count", &[]) >= 1.0);
    // Without credentials: 401.
    assert_eq!(ctx.get("/metrics", &Auth::None).status, 401);
    let _ = pending;

    // VEX: fixed on one machine, known_affected on another; both validate.
    let dir = ctx.dir.path();
    let mut files = Vec::new();
    for (m, status) in [(&fixed, "fixed"), (&open, "known_affected")] {
        let doc = ctx
            .get(&format!("/api/v2/machines/{}/vex", m.0), &ctx.admin())
            .ok()
            .json();
        assert_eq!(doc["document"]["category"], "csaf_vex");
        let v = &doc["vulnerabilities"][0];
        assert_eq!(v["cve"], cve);
        assert!(
            v["product_status"][status][0]
                .as_str()
                .unwrap()
                .contains(&m.0),
            "{doc}"
        );
        let f = dir.join(format!("vex-{status}.json"));
        std::fs::write(&f, doc.to_string()).unwrap();
        files.push(f);
    }
    // A machine with nothing to say still gives a valid document.
    let doc = ctx
        .get(&format!("/api/v2/machines/{}/vex", pending.0), &ctx.admin())
        .ok()
        .json();
    let f = dir.join("vex-none.json");
    std::fs::write(&f, doc.to_string()).unwrap();
    files.push(f);
    let out = std::process::Command::new(hotsplice_testsupport::tools::venv_python())
        .arg(script("csaf_validate.py"))
        .arg(format!(
            "{}/tests/data/csaf_json_schema.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CSAF 2.0 schema: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And a broken one does not (the validator can fail).
    let mut bad = doc.clone();
    bad["document"]["category"] = json!(17);
    let f = dir.join("vex-bad.json");
    std::fs::write(&f, bad.to_string()).unwrap();
    let out = std::process::Command::new(hotsplice_testsupport::tools::venv_python())
        .arg(script("csaf_validate.py"))
        .arg(format!(
            "{}/tests/data/csaf_json_schema.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        ctx.get(
            "/api/v2/machines/00000000-0000-4000-8000-000000000000/vex",
            &ctx.admin()
        )
        .status,
        404
    );
}

fn webhook_on_alert(db: Option<String>) {
    let hook = Receiver::start();
    let ctx = Ctx::new_with(
        db,
        &[
            "--webhook",
            &hook.url,
            "--alert-out-of-date",
            "0",
            "--rollout-interval",
            "1",
        ],
    );
    let key = ctx.publisher();
    let id = "kfix0003";
    let file = patch(id, KERNEL_BID, true, 1, &["CVE-2024-3333"], Some(&key), 64);
    ctx.post("/api/v2/patches?channel=stable", &ctx.admin(), &file)
        .ok();
    let (u, k) = ctx.register(&ctx.creds.access_key, None);
    // Out of date (threshold 0): the timer alerts once.
    checkin(&ctx, &u, &k, &report_with(&u, "late.example", &[], None));
    let e = hook.next();
    assert_eq!(e["event"], "machine_out_of_date", "{e}");
    assert_eq!(e["machine"], u.as_str());
    // A failed sync: alerted at the check-in.
    checkin(
        &ctx,
        &u,
        &k,
        &report_with(&u, "late.example", &[], Some((id, "the kernel refused it"))),
    );
    let e = hook.next();
    assert_eq!(e["event"], "machine_failing", "{e}");
    assert!(e["error"].as_str().unwrap().contains("refused"), "{e}");
    // It shows as alerting in the list and the page.
    ctx.add_user("ops", "operator", PW);
    let ui = Ui::login(&ctx, "ops", PW);
    let page = ui.get("/ui/").ok().text();
    assert!(
        page.contains("id=\"alerts\"") && page.contains("⚠ alert"),
        "{page}"
    );
    let page = ui.get(&format!("/ui/machines/{u}")).ok().text();
    assert!(
        page.contains("id=\"alert\"") && page.contains("the kernel refused it"),
        "{page}"
    );
    // No second out-of-date alert for the same spell.
    assert!(hook
        .bodies
        .recv_timeout(std::time::Duration::from_secs(3))
        .is_err());
}

/// A test CA and a certificate it signed for localhost and 127.0.0.1:
/// (CA PEM, leaf PEM, leaf key PEM).
fn test_ca(name: &str) -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("hotsplice test CA {name}"),
    );
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// The webhook over HTTPS (rustls) to a real TLS listener whose
/// certificate a test CA signed: delivered with that CA as
/// `--webhook-ca`; with another CA the handshake fails (the test CA is in
/// no system store), nothing is sent, and the server says so in its log.
fn webhook_over_https(db: Option<String>) {
    let (ca, leaf, key) = test_ca("webhook");
    let hook = Receiver::start_tls(&leaf, &key);
    assert!(hook.url.starts_with("https://localhost:"), "{}", hook.url);
    let dir = hotsplice_testsupport::temp_dir("webhook-ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let ca_arg = ca_file.to_str().unwrap();
    let ctx = Ctx::new_with(
        db.clone(),
        &[
            "--webhook",
            &hook.url,
            "--webhook-ca",
            ca_arg,
            "--alert-out-of-date",
            "0",
            "--rollout-interval",
            "1",
        ],
    );
    // A machine out of date (threshold 0): the timer alerts.
    let out_of_date = |ctx: &Ctx| {
        let key = ctx.publisher();
        let file = patch(
            "kfix0004",
            KERNEL_BID,
            true,
            1,
            &["CVE-2024-4444"],
            Some(&key),
            64,
        );
        ctx.post("/api/v2/patches?channel=stable", &ctx.admin(), &file)
            .ok();
        let (u, k) = ctx.register(&ctx.creds.access_key, None);
        checkin(ctx, &u, &k, &report_with(&u, "tls.example", &[], None));
        u
    };
    let u = out_of_date(&ctx);
    let e = hook.next();
    assert_eq!(e["event"], "machine_out_of_date", "{e}");
    assert_eq!(e["machine"], u.as_str());
    assert!(hook.tls_errors.try_recv().is_err(), "no failed handshake");
    drop(ctx);

    // The same receiver with another CA given (and the system's roots,
    // which do not have the test CA): refused by the server's TLS
    // client, never sent in clear.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, test_ca("other").0).unwrap();
    let ctx = Ctx::new_with(
        db.map(|_| pg_database()),
        &[
            "--webhook",
            &hook.url,
            "--webhook-ca",
            other.to_str().unwrap(),
            "--alert-out-of-date",
            "0",
            "--rollout-interval",
            "1",
        ],
    );
    out_of_date(&ctx);
    let err = hook
        .tls_errors
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("a refused handshake: {}", ctx.server.log_text()));
    assert!(
        err.to_lowercase().contains("alert") || err.contains("Certificate"),
        "{err}"
    );
    assert!(hook
        .bodies
        .recv_timeout(std::time::Duration::from_secs(2))
        .is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ctx.server.log_text().contains("the webhook failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ctx.server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        ctx.server.log_text().contains("TLS with localhost:"),
        "{}",
        ctx.server.log_text()
    );

    // Bad settings are refused at start, naming the flag.
    let data = ctx.data();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args([
                "run",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--webhook", "http://127.0.0.1:9/h", "--webhook-ca", ca_arg]);
    assert!(
        err.contains("--webhook-ca") && err.contains("not https://"),
        "{err}"
    );
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = run(&[
        "--webhook",
        &hook.url,
        "--webhook-ca",
        not_pem.to_str().unwrap(),
    ]);
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = run(&["--webhook", "ftp://example.org/"]);
    assert!(err.contains("--webhook ftp://example.org/"), "{err}");
}

/// The dashboard's other actions and pages, without a browser.
fn dashboard_actions(db: Option<String>) {
    let ctx = Ctx::new(db);
    let key = ctx.publisher();
    ctx.add_user("opal", "operator", PW);
    ctx.add_user("reed", "read-only", PW);
    let op = Ui::login(&ctx, "opal", PW);
    let ro = Ui::login(&ctx, "reed", PW);
    let file = patch(
        "ufix0001",
        LIBC_BID,
        false,
        1,
        &["CVE-2024-7777"],
        Some(&key),
        64,
    );
    // Upload: the CSRF header is needed, and the operator role.
    assert_eq!(
        op.post_bytes("/ui/patches/upload?channel=testing", &file, false)
            .status,
        403
    );
    assert_eq!(
        ro.post_bytes("/ui/patches/upload?channel=testing", &file, true)
            .status,
        403
    );
    let r = op
        .post_bytes("/ui/patches/upload?channel=testing", &file, true)
        .ok();
    let sha = r.text().split(' ').nth(1).unwrap().to_string();
    let unsigned = patch("ufix0002", LIBC_BID, false, 2, &[], None, 64);
    assert_eq!(
        op.post_bytes("/ui/patches/upload", &unsigned, true).status,
        422
    );
    // Promote into stable through the form.
    let page = op.get("/ui/patches").ok().text();
    assert!(page.contains("ufix0001") && page.contains("class=\"promote\""));
    assert!(!ro
        .get("/ui/patches")
        .ok()
        .text()
        .contains("class=\"promote\""));
    assert_eq!(
        ro.post(
            "/ui/patches/promote",
            &[("sha256", &sha), ("channel", "stable")]
        )
        .status,
        403
    );
    assert_eq!(
        op.post(
            "/ui/patches/promote",
            &[("sha256", &sha), ("channel", "stable")]
        )
        .status,
        303
    );
    let ch = ctx
        .get("/api/v2/channels/stable/patches", &ctx.admin())
        .ok()
        .json();
    assert!(ch.to_string().contains(&sha), "{ch}");
    // A machine applying it in 2 of its 3 libc processes is not protected.
    let (u, k) = ctx.register(&ctx.creds.access_key, None);
    let mut r = report_with(&u, "partial.example", &[], None);
    r.processes = (0..2)
        .map(|p| hotsplice_fleet::report::ProcessPatches {
            pid: 100 + p,
            comm: "nginx".into(),
            patches: vec!["ufix0001".into()],
        })
        .collect();
    checkin(&ctx, &u, &k, &r);
    let page = op.get("/ui/cves/CVE-2024-7777").ok().text();
    assert!(page.contains("applied in 2 of 3 processes"), "{page}");
    assert!(page.contains("id=\"protected-count\">0<"), "{page}");
    // Move it to a group through the form.
    assert_eq!(
        op.post(&format!("/ui/machines/{u}/group"), &[("group", "web")])
            .status,
        303
    );
    assert_eq!(
        ctx.get(&format!("/api/v2/machines/{u}"), &ctx.admin())
            .ok()
            .json()["group"],
        "web"
    );
    // Sorting, paging and filters answer; a bad status is a 400.
    for q in [
        "?sort=last_seen&dir=desc",
        "?sort=kernel&page=3",
        "?group=web&q=partial",
        "?kernel=6.1.0-28-amd64",
    ] {
        let p = op.get(&format!("/ui/{q}")).ok().text();
        assert!(p.contains("id=\"machines\""), "{q}");
    }
    assert!(op
        .get("/ui/?group=web&q=partial")
        .ok()
        .text()
        .contains("partial.example"));
    assert_eq!(op.get("/ui/?status=bogus").status, 400);
    // A rollout from the form; pause and roll back from its buttons.
    assert_eq!(
        op.post(
            "/ui/rollouts",
            &[
                ("sha256", &sha),
                ("stages", "web"),
                ("gate", "health"),
                ("soak_secs", "60")
            ]
        )
        .status,
        303
    );
    let page = op.get("/ui/rollouts").ok().text();
    assert!(page.contains("class=\"pause\""), "{page}");
    assert!(!ro
        .get("/ui/rollouts")
        .ok()
        .text()
        .contains("class=\"pause\""));
    let id = ctx.get("/api/v2/rollouts", &ctx.admin()).ok().json()[0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        ro.post(&format!("/ui/rollouts/{id}/pause"), &[]).status,
        403
    );
    assert_eq!(
        op.post(&format!("/ui/rollouts/{id}/pause"), &[]).status,
        303
    );
    assert_eq!(
        op.post(&format!("/ui/rollouts/{id}/rollback"), &[]).status,
        303
    );
    assert_eq!(
        ctx.get(&format!("/api/v2/rollouts/{id}"), &ctx.admin())
            .ok()
            .json()["state"],
        "rolled-back"
    );
    // Logging out ends the session.
    assert_eq!(op.post("/ui/logout", &[]).status, 303);
    assert_eq!(op.get("/ui/").status, 303);
    // The stylesheet and script are served.
    assert!(ro
        .get("/ui/assets/dashboard.css")
        .ok()
        .text()
        .contains("body"));
    assert!(ro
        .get("/ui/assets/dashboard.js")
        .ok()
        .text()
        .contains("X-CSRF-Token"));
}
