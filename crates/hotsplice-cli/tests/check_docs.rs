//! `hotsplice check` on a real process (Nagios line and exit codes, JSON
//! against its schema, the Prometheus textfile), the `--json` schemas of
//! docs/schemas/, exit codes in every command's help, and the man pages
//! and shell completions generated from the command line definition.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas")
}

/// A Python with the `jsonschema` module: the virtualenv scripts/setup.sh
/// makes in $HOTSPLICE_CACHE (schemathesis brings it), else python3.
fn python_with_jsonschema() -> PathBuf {
    let cache = std::env::var_os("HOTSPLICE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hotsplice")));
    let mut candidates: Vec<PathBuf> = cache
        .map(|c| vec![c.join("venv/bin/python")])
        .unwrap_or_default();
    candidates.push("python3".into());
    for p in candidates {
        let ok = Command::new(&p)
            .args(["-c", "import jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!("no python with the jsonschema module: run scripts/setup.sh (it makes $HOTSPLICE_CACHE/venv)");
}

/// Validates `json` against docs/schemas/`schema`; panics with the errors.
fn validate(json: &str, schema: &str) {
    let dir = temp_dir("schema");
    let doc = dir.path().join("doc.json");
    fs::write(&doc, json).unwrap();
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        errs=list(jsonschema.Draft202012Validator(s).iter_errors(d))\n\
        [print(e.message, list(e.absolute_path)) for e in errs]\n\
        sys.exit(1 if errs else 0)\n";
    let mut cmd = Command::new(python_with_jsonschema());
    cmd.arg("-c")
        .arg(script)
        .arg(schemas_dir().join(schema))
        .arg(&doc);
    let r = run_cmd(cmd, Duration::from_secs(60));
    assert!(
        r.success(),
        "{json}\ndoes not follow {schema}:\n{}",
        r.describe()
    );
}

fn check(env: &TestEnv, args: &[&str]) -> CmdOut {
    let mut a = vec!["check"];
    a.extend_from_slice(args);
    env.hs(&a)
}

fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn check_is_critical_while_a_process_lacks_an_installed_patch_and_ok_after_upgrade() {
    let (env, case, build, out) = fresh_case("check", "threads");
    let file = create_signed(&env, &case, &build, "fix.diff", 1, out.path());
    let id = info_id(&env, &file);

    // Nothing installed: OK.
    let r = check(&env, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    assert!(r.stdout.starts_with("HOTSPLICE OK - "), "{}", r.describe());
    assert_eq!(r.stdout.lines().count(), 1, "one line: {}", r.describe());

    // Installed, not applied in a running process: CRITICAL, naming it.
    let mut proc = build.start_unpatched(&case);
    let pid = proc.pid().to_string();
    env.install(&file);
    let r = check(&env, &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    assert!(
        r.stdout.starts_with("HOTSPLICE CRITICAL - "),
        "{}",
        r.describe()
    );
    assert!(
        r.stdout.contains(&id) && r.stdout.contains(&pid),
        "{}",
        r.describe()
    );
    assert!(
        r.stdout.contains("user_missing=1"),
        "perfdata: {}",
        r.describe()
    );
    let j = check(&env, &["--json"]);
    assert_eq!(j.status.code(), Some(2), "{}", j.describe());
    validate(&j.stdout, "check.schema.json");
    let v = parse_json(&j.stdout).unwrap();
    assert_eq!(v["status"], "CRITICAL");
    assert_eq!(v["user"]["missing"][0]["id"], id.as_str());
    assert_eq!(
        v["user"]["missing"][0]["pid"].as_i64(),
        Some(proc.pid() as i64)
    );
    let prom_dir = temp_dir("prom");
    let prom = prom_dir.path().join("hotsplice.prom");
    let r = check(&env, &["--prometheus", prom.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "file written: {}", r.describe());
    assert!(
        r.stdout.is_empty(),
        "no line with --prometheus: {}",
        r.describe()
    );
    let text = fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "hotsplice_check_status"), Some(2), "{text}");
    assert_eq!(
        metric(&text, "hotsplice_user_patches_missing"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "hotsplice_user_patches_installed"),
        Some(1),
        "{text}"
    );
    assert!(
        text.contains("# TYPE hotsplice_check_status gauge"),
        "{text}"
    );
    assert_eq!(
        fs::read_dir(prom_dir.path()).unwrap().count(),
        1,
        "only the textfile is left (written atomically)"
    );

    // Applied: OK again; the other --json outputs follow their schemas.
    env.hs(["-y", "user", "upgrade"]).assert_ok("upgrade");
    proc.expect_new_line(Stream::Stdout, case.after(), "upgraded");
    let r = check(&env, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    assert!(r.stdout.starts_with("HOTSPLICE OK - "), "{}", r.describe());
    let j = check(&env, &["--json"]);
    validate(&j.stdout, "check.schema.json");
    assert_eq!(parse_json(&j.stdout).unwrap()["user"]["applied"], 1);
    check(&env, &["--prometheus", prom.to_str().unwrap()]).assert_ok("prometheus");
    let text = fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "hotsplice_check_status"), Some(0), "{text}");
    assert_eq!(
        metric(&text, "hotsplice_user_patches_applied"),
        Some(1),
        "{text}"
    );

    let show = env.hs(["user", "show", "--pid", &pid, "--json"]);
    show.assert_ok("show --json");
    assert!(show.stdout.contains(&id));
    validate(&show.stdout, "user-show.schema.json");
    let all = env.hs(["user", "show", "--json"]);
    validate(&all.stdout, "user-show.schema.json");
    let lt = env.hs(["user", "list-targets", "--json"]);
    lt.assert_ok("list-targets --json");
    assert!(lt.stdout.contains(&pid));
    validate(&lt.stdout, "user-list-targets.schema.json");
    let kt = env.hs(["kernel", "list-targets", "--json"]);
    kt.assert_ok("kernel list-targets --json");
    validate(&kt.stdout, "kernel-list-targets.schema.json");
    env.hs(["user", "remove", "--all", "--pid", &pid])
        .assert_ok("remove");
}

#[test]
fn check_is_unknown_when_the_state_cannot_be_read() {
    let env = TestEnv::new("check-unknown");
    let bad = env.root.join("not-a-dir");
    fs::write(&bad, "x").unwrap();
    let mut cmd = env.command(["check"]);
    cmd.env("HOTSPLICE_STATE_DIR", &bad);
    let r = run_cmd(cmd, CMD_TIMEOUT);
    assert_eq!(r.status.code(), Some(3), "{}", r.describe());
    assert!(
        r.stdout.starts_with("HOTSPLICE UNKNOWN - "),
        "{}",
        r.describe()
    );
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.describe());
    let mut cmd = env.command(["check", "--json"]);
    cmd.env("HOTSPLICE_STATE_DIR", &bad);
    let r = run_cmd(cmd, CMD_TIMEOUT);
    if r.status.code() == Some(3) && r.stdout.starts_with('{') {
        validate(&r.stdout, "check.schema.json");
    }
}

/// Every command path of the `hotsplice` command line (from `--help`).
fn commands(env: &TestEnv, path: &[String], out: &mut Vec<Vec<String>>) {
    let mut args = path.to_vec();
    args.push("--help".into());
    let r = env.hs(&args);
    r.assert_ok(&format!("{args:?}"));
    assert!(
        r.stdout.contains("Exit status"),
        "hotsplice {} --help documents its exit codes:\n{}",
        path.join(" "),
        r.stdout
    );
    out.push(path.to_vec());
    let mut in_commands = false;
    for line in r.stdout.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
            else {
                break;
            };
            if name != "help" {
                let mut p = path.to_vec();
                p.push(name.into());
                commands(env, &p, out);
            }
        }
    }
}

#[test]
fn every_command_documents_its_exit_codes_and_its_man_page_renders() {
    let env = TestEnv::new("docs");
    let mut all = Vec::new();
    commands(&env, &[], &mut all);
    assert!(all.len() > 20, "found {} commands", all.len());
    let r = env.hs(["check", "--help"]);
    assert!(r.stdout.contains("2  CRITICAL"), "{}", r.stdout);

    let dir = temp_dir("man");
    let r = env.hs(["manpages", dir.path().to_str().unwrap()]);
    r.assert_ok("manpages");
    let pages: Vec<PathBuf> = r.stdout.lines().map(PathBuf::from).collect();
    for p in &all {
        let name = if p.is_empty() {
            "hotsplice.8".to_string()
        } else {
            format!("hotsplice-{}.8", p.join("-"))
        };
        assert!(
            pages.contains(&dir.path().join(&name)),
            "a man page {name} for every command"
        );
    }
    for n in [
        "ksplice",
        "uptrack-upgrade",
        "uptrack-install",
        "uptrack-remove",
        "uptrack-show",
        "uptrack-uname",
    ] {
        assert!(pages.contains(&dir.path().join(format!("{n}.8"))), "{n}.8");
    }
    for page in &pages {
        let mut cmd = Command::new("man");
        cmd.arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8");
        let r = run_cmd(cmd, Duration::from_secs(60));
        r.assert_ok(&format!("man -l {}", page.display()));
        assert!(
            r.stdout.contains("NAME") && r.stdout.contains("Exit status"),
            "{} renders with NAME and the exit status:\n{}",
            page.display(),
            r.stdout
        );
        assert!(
            !r.stderr.contains("warning"),
            "{}: {}",
            page.display(),
            r.stderr
        );
    }
}

#[test]
fn completions_load_in_bash_zsh_and_fish() {
    let env = TestEnv::new("completions");
    let dir = temp_dir("completions");
    for (shell, name) in [
        ("bash", "hotsplice"),
        ("bash", "ksplice"),
        ("zsh", "hotsplice"),
        ("fish", "hotsplice"),
    ] {
        let r = env.hs(["completions", shell, "--name", name]);
        r.assert_ok(&format!("completions {shell}"));
        let f = dir.path().join(format!("{name}.{shell}"));
        fs::write(&f, &r.stdout).unwrap();
        let mut cmd = match shell {
            "bash" => {
                let mut c = Command::new("bash");
                c.arg("-c").arg(format!(
                    "set -e; source '{}'; complete -p {name}",
                    f.display()
                ));
                c
            }
            "zsh" => {
                let mut c = Command::new("zsh");
                c.arg("-n").arg(&f);
                c
            }
            _ => {
                let mut c = Command::new("fish");
                c.arg("-c").arg(format!(
                    "source '{}'; complete -C 'hotsplice user li'",
                    f.display()
                ));
                c
            }
        };
        let out = run_cmd(
            std::mem::replace(&mut cmd, Command::new("true")),
            Duration::from_secs(60),
        );
        out.assert_ok(&format!("{shell} loads the {name} completion"));
        match shell {
            "bash" => assert!(
                out.stdout.contains(&format!("_{name} {name}")),
                "{}",
                out.describe()
            ),
            "fish" => assert!(out.stdout.contains("list-targets"), "{}", out.describe()),
            _ => {}
        }
        assert!(
            r.stdout.contains("list-targets"),
            "{shell}: the subcommands are there"
        );
    }
}
