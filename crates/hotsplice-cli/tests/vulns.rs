//! `hotsplice vulns`: the CVEs a machine has fixed live, on real processes:
//! a patch whose description names a CVE, installed, applied in one of
//! two processes that map its target (fixed in one, lacking in the other),
//! then in both (fixed). `--vex` is a CSAF 2.0 VEX document, validated
//! against the CSAF schema (the server tests' copy) with `jsonschema` from
//! the test virtualenv (scripts/setup.sh).

mod common;

use common::*;
use std::path::PathBuf;

const CVE: &str = "CVE-2026-4242";

fn vulns(env: &TestEnv) -> serde_json::Value {
    let r = env.hs(["vulns", "--json"]);
    r.assert_ok("vulns");
    parse_json(&r.stdout).unwrap()
}

fn pids(v: &serde_json::Value, field: &str) -> Vec<u64> {
    let mut p: Vec<u64> = v["userspace"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["cve"] == CVE)
        .flat_map(|u| u[field].as_array().unwrap().clone())
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    p.sort();
    p
}

#[test]
fn cves_fixed_live_and_where_not() {
    let (env, case, build, out) = fresh_case("vulns", "stacked");
    let r = env.hs([
        "create",
        "--sign",
        env.key.to_str().unwrap(),
        "--description",
        &format!("{CVE}: the fix"),
        "--patch",
        case.diff("fix.diff").to_str().unwrap(),
        "-o",
        out.path().to_str().unwrap(),
        build.dir.to_str().unwrap(),
    ]);
    r.assert_ok("create");
    let file = PathBuf::from(r.stdout.lines().next().unwrap().trim());
    env.hs(["user", "install", file.to_str().unwrap()])
        .assert_ok("install");
    let a = build.start_unpatched(&case);
    let b = build.start_unpatched(&case);
    let (pa, pb) = (a.pid() as u64, b.pid() as u64);
    env.hs([
        "user",
        "apply",
        "--pid",
        &pa.to_string(),
        file.to_str().unwrap(),
    ])
    .assert_ok("apply to a");

    let v = vulns(&env);
    assert_eq!(pids(&v, "fixed_in"), vec![pa], "{v}");
    assert_eq!(pids(&v, "lacking"), vec![pb], "{v}");
    assert_eq!(v["not_fixed"], serde_json::json!([CVE]), "{v}");
    let r = env.hs(["vulns"]);
    r.assert_ok("vulns");
    assert!(
        r.stdout.contains(&format!("{CVE}: ")) && r.stdout.contains(&format!("NOT fixed in {pb} ")),
        "{}",
        r.stdout
    );

    env.hs([
        "user",
        "apply",
        "--pid",
        &pb.to_string(),
        file.to_str().unwrap(),
    ])
    .assert_ok("apply to b");
    let v = vulns(&env);
    assert!(pids(&v, "lacking").is_empty(), "{v}");
    assert_eq!(v["fixed"], serde_json::json!([CVE]), "{v}");

    let r = env.hs(["vulns", "--vex"]);
    r.assert_ok("vulns --vex");
    let doc = parse_json(&r.stdout).unwrap();
    assert_eq!(doc["document"]["category"], "csaf_vex", "{doc}");
    assert_eq!(doc["vulnerabilities"][0]["cve"], CVE, "{doc}");
    assert!(
        doc["vulnerabilities"][0]["product_status"]["fixed"].is_array(),
        "{doc}"
    );
    let f = out.path().join("vex.json");
    std::fs::write(&f, &r.stdout).unwrap();
    let server_tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../hotsplice-server/tests");
    let o = std::process::Command::new(hotsplice_testsupport::tools::venv_python())
        .arg(format!("{server_tests}/scripts/csaf_validate.py"))
        .arg(format!("{server_tests}/data/csaf_json_schema.json"))
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "CSAF 2.0 schema: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    drop((a, b));
}
