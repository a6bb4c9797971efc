//! The Debian package, built by scripts/deb.sh (cargo-deb) from this
//! tree with the test build of the binary: its file list, conffiles and
//! maintainer scripts, lintian (only the tags explained in
//! docs/packaging.md), and the unpacked package at work: the ksplice and
//! uptrack-* links, the conffile read by the real configuration parser,
//! the man pages rendering and the bash completion loading.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Tags lintian may report; each is explained in docs/packaging.md.
const EXPLAINED_TAGS: &[&str] = &["initial-upload-closes-no-bugs", "unknown-control-file"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn build_deb(out: &Path) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/deb.sh"))
        .current_dir(repo())
        .env("DEB_BIN", hotsplice_bin())
        .env("DEB_OUT", out);
    let r = run_cmd(cmd, Duration::from_secs(1200));
    r.assert_ok("scripts/deb.sh");
    PathBuf::from(r.stdout.lines().last().expect("the package path").trim())
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(args).arg(deb);
    let r = run_cmd(cmd, Duration::from_secs(120));
    r.assert_ok(&format!("dpkg-deb {args:?}"));
    r.stdout
}

#[test]
fn the_debian_package_has_everything_and_lintian_is_explained() {
    let out = temp_dir("deb");
    let deb = build_deb(out.path());
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("hotsplice_") && name.ends_with("_amd64.deb"),
        "{name}"
    );

    let list = dpkg_deb(&["-c"], &deb);
    let has = |p: &str| {
        list.lines()
            .any(|l| l.ends_with(p) || l.contains(&format!("{p} -> ")))
    };
    for p in [
        "./usr/sbin/hotsplice",
        "./etc/hotsplice/hotsplice.conf",
        "./etc/hotsplice/keys/",
        "./etc/hotsplice/blacklist.d/example.conf",
        "./lib/systemd/system/hotsplice.service",
        "./lib/systemd/system/hotsplice-boot.service",
        "./lib/systemd/system/hotsplice-autoinstall.service",
        "./lib/systemd/system/hotsplice-autoinstall.timer",
        "./usr/share/man/man8/hotsplice.8.gz",
        "./usr/share/man/man8/hotsplice-check.8.gz",
        "./usr/share/man/man8/ksplice.8.gz",
        "./usr/share/man/man8/uptrack-uname.8.gz",
        "./usr/share/bash-completion/completions/hotsplice",
        "./usr/share/bash-completion/completions/ksplice",
        "./usr/share/zsh/vendor-completions/_hotsplice",
        "./usr/share/fish/vendor_completions.d/hotsplice.fish",
        "./usr/share/doc/hotsplice/copyright",
        "./usr/share/doc/hotsplice/changelog.Debian.gz",
        "./usr/share/doc/hotsplice/schemas/check.schema.json",
    ] {
        let p = p.trim_start_matches("./");
        assert!(has(p), "the package has {p}:\n{list}");
    }
    for n in [
        "ksplice",
        "uptrack-upgrade",
        "uptrack-install",
        "uptrack-remove",
        "uptrack-show",
        "uptrack-uname",
    ] {
        assert!(
            list.contains(&format!("usr/sbin/{n} -> hotsplice")),
            "{n} is a link to hotsplice:\n{list}"
        );
    }
    let conffiles = dpkg_deb(&["-f"], &deb);
    assert!(conffiles.contains("Package: hotsplice"), "{conffiles}");
    let tmp = temp_dir("control");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-e").arg(&deb).arg(tmp.path().join("DEBIAN"));
    run_cmd(cmd, Duration::from_secs(60)).assert_ok("dpkg-deb -e");
    let cf = std::fs::read_to_string(tmp.path().join("DEBIAN/conffiles")).unwrap();
    assert!(
        cf.lines().any(|l| l == "/etc/hotsplice/hotsplice.conf"),
        "{cf}"
    );
    let postinst = std::fs::read_to_string(tmp.path().join("DEBIAN/postinst")).unwrap();
    for u in [
        "hotsplice.service",
        "hotsplice-boot.service",
        "hotsplice-autoinstall.timer",
    ] {
        assert!(postinst.contains(u), "postinst enables {u}");
    }
    let postrm = std::fs::read_to_string(tmp.path().join("DEBIAN/postrm")).unwrap();
    assert!(
        postrm.contains("stay applied"),
        "purge says what stays applied"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let mut cmd = Command::new("sh");
        cmd.arg("-n").arg(tmp.path().join("DEBIAN").join(s));
        run_cmd(cmd, Duration::from_secs(30)).assert_ok(&format!("sh -n {s}"));
    }

    // lintian: nothing but the explained tags.
    hotsplice_testsupport::tools::assert_lintian_explained(
        &deb,
        EXPLAINED_TAGS,
        &repo().join("docs/packaging.md"),
    );

    // Unpacked: the links answer as Ksplice's commands, the conffile is
    // read by the real parser, man pages render, completions load.
    let root = temp_dir("root");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(root.path());
    run_cmd(cmd, Duration::from_secs(120)).assert_ok("dpkg-deb -x");
    let sbin = root.path().join("usr/sbin");
    let etc = root.path().join("etc/hotsplice");
    let env = TestEnv::new("package");
    let run = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(sbin.join(name));
        cmd.args(args);
        env.apply_to(&mut cmd);
        cmd.env("HOTSPLICE_CONFIG_DIR", &etc);
        run_cmd(cmd, CMD_TIMEOUT)
    };
    let r = run("ksplice", &["--help"]);
    r.assert_ok("ksplice --help");
    assert!(r.stdout.contains("Usage: ksplice"), "{}", r.describe());
    let r = run("uptrack-uname", &["-r"]);
    r.assert_ok("uptrack-uname -r");
    let r = run("hotsplice", &["autoinstall"]);
    r.assert_ok("autoinstall with the packaged conffile");
    assert!(r.stdout.contains("autoinstall is off"), "{}", r.describe());
    let r = run("hotsplice", &["check"]);
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    // A broken conffile is refused by the same parser (so the one above was read).
    let bad = temp_dir("badconf");
    std::fs::write(
        bad.path().join("hotsplice.conf"),
        "[settings]\nautoinstal = true\n",
    )
    .unwrap();
    let mut cmd = Command::new(sbin.join("hotsplice"));
    cmd.arg("autoinstall");
    env.apply_to(&mut cmd);
    cmd.env("HOTSPLICE_CONFIG_DIR", bad.path());
    let r = run_cmd(cmd, CMD_TIMEOUT);
    r.assert_failed("a misspelt key");
    assert!(r.stderr.contains("autoinstal"), "{}", r.describe());

    let man = root.path().join("usr/share/man/man8");
    for page in [
        "hotsplice.8.gz",
        "ksplice.8.gz",
        "hotsplice-check.8.gz",
        "uptrack-upgrade.8.gz",
    ] {
        hotsplice_testsupport::tools::assert_man_renders(&man.join(page), "Exit status");
    }
    let comp = root.path().join("usr/share/bash-completion/completions");
    for n in ["hotsplice", "ksplice"] {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "source '{}'; complete -p {n}",
            comp.join(n).display()
        ));
        let r = run_cmd(cmd, Duration::from_secs(60));
        r.assert_ok(&format!("bash loads the {n} completion"));
        assert!(r.stdout.contains(&format!(" {n}")), "{}", r.describe());
    }
}
