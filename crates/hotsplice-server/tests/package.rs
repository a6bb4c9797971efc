//! The fleet server's Debian package (`scripts/deb.sh --server`, with this
//! build's binary): its files, maintainer scripts, and lintian with only
//! the tags explained in docs/packaging.md.

use hotsplice_testsupport::run_cmd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EXPLAINED_TAGS: &[&str] = &["initial-upload-closes-no-bugs", "unknown-control-file"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn the_server_package_has_its_binary_and_unit_and_lintian_is_explained() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/deb.sh"))
        .arg("--server")
        .current_dir(repo())
        .env("DEB_BIN", env!("CARGO_BIN_EXE_hotsplice-server"))
        .env("DEB_OUT", out.path());
    let r = run_cmd(cmd, Duration::from_secs(1200));
    r.assert_ok("scripts/deb.sh --server");
    let deb = PathBuf::from(r.stdout.lines().last().unwrap().trim());
    assert!(deb
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("hotsplice-server_"));

    let mut c = Command::new("dpkg-deb");
    c.arg("-c").arg(&deb);
    let list = run_cmd(c, Duration::from_secs(60));
    list.assert_ok("dpkg-deb -c");
    for p in [
        "usr/bin/hotsplice-server",
        "lib/systemd/system/hotsplice-server.service",
        "usr/share/doc/hotsplice-server/server.md",
        "usr/share/doc/hotsplice-server/copyright",
        "usr/share/man/man1/hotsplice-server.1.gz",
        "usr/share/man/man1/hotsplice-server-run.1.gz",
        "usr/share/man/man1/hotsplice-server-key-add-publisher.1.gz",
    ] {
        assert!(
            list.stdout.lines().any(|l| l
                .split_whitespace()
                .nth(5)
                .is_some_and(|e| e.trim_start_matches("./") == p)),
            "{p} in:\n{}",
            list.stdout
        );
    }
    let ctl = tempfile::tempdir().unwrap();
    let mut c = Command::new("dpkg-deb");
    c.arg("-e").arg(&deb).arg(ctl.path().join("DEBIAN"));
    run_cmd(c, Duration::from_secs(60)).assert_ok("dpkg-deb -e");
    let postinst = std::fs::read_to_string(ctl.path().join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    let postrm = std::fs::read_to_string(ctl.path().join("DEBIAN/postrm")).unwrap();
    assert!(
        postrm.contains("stays in /var/lib/hotsplice-server"),
        "{postrm}"
    );

    // The man pages render, each with the exit status.
    let root = tempfile::tempdir().unwrap();
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(&deb).arg(root.path());
    run_cmd(c, Duration::from_secs(60)).assert_ok("dpkg-deb -x");
    let man = root.path().join("usr/share/man/man1");
    for page in ["hotsplice-server.1.gz", "hotsplice-server-run.1.gz"] {
        hotsplice_testsupport::tools::assert_man_renders(&man.join(page), "Exit status");
    }

    hotsplice_testsupport::tools::assert_lintian_explained(
        &deb,
        EXPLAINED_TAGS,
        &repo().join("docs/packaging.md"),
    );
}
