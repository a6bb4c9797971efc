//! Tools the tests run that the project's scripts install: the Python of
//! the test virtualenv, lintian.

use crate::run_cmd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Python of the test virtualenv that `scripts/setup.sh` makes in
/// `$HOTSPLICE_CACHE/venv` (schemathesis, prometheus_client, jsonschema);
/// panics, failing the test, when it is missing.
pub fn venv_python() -> PathBuf {
    let cache = std::env::var_os("HOTSPLICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hotsplice")
        });
    let p = cache.join("venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it makes the test virtualenv)",
        p.display()
    );
    p
}

/// lintian on `deb` reports no tag but `explained`, and `doc` (the
/// packaging documentation) explains each of them.
pub fn assert_lintian_explained(deb: &Path, explained: &[&str], doc: &Path) {
    let mut c = Command::new("lintian");
    c.arg("--no-tag-display-limit").arg(deb);
    let r = run_cmd(c, Duration::from_secs(900));
    for line in r
        .stdout
        .lines()
        .filter(|l| l.len() > 2 && l.as_bytes()[1] == b':')
    {
        let tag = line.split_whitespace().nth(2).unwrap_or("");
        assert!(
            explained.contains(&tag),
            "lintian tag not explained in {}: {line}\n{}",
            doc.display(),
            r.describe()
        );
    }
    let text = std::fs::read_to_string(doc).unwrap();
    for t in explained {
        assert!(text.contains(t), "{} explains {t}", doc.display());
    }
}

/// `man -l PAGE` renders the page (a `.gz` too) and the text has `want`
/// (e.g. the exit status section).
pub fn assert_man_renders(page: &Path, want: &str) {
    let mut cmd = Command::new("man");
    cmd.arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C.UTF-8");
    let r = run_cmd(cmd, Duration::from_secs(60));
    r.assert_ok(&format!("man -l {}", page.display()));
    assert!(r.stdout.contains(want), "{}: {}", page.display(), r.stdout);
}
