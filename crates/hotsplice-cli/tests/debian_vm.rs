//! The package in a real Debian 12 system (and a patched userspace service
//! run by systemd): debootstrap (minbase plus
//! systemd) with the kernel tests' stock kernel, booted under QEMU TCG with
//! systemd as PID 1 (scripts/debian/). Host side: the package is built by
//! scripts/deb.sh (this build's binary), a kernel patch by `hotsplice
//! create --kernel` for the probed guest kernel, signed with a fresh key.
//! In the guest (scripts/debian/guest-run.sh, serial console): dpkg
//! installs it, the units are enabled and active, `ksplice -y kernel
//! upgrade` applies the feed's patch, `uptrack-uname -r` shows the
//! effective release, `hotsplice check` exits 0 and 2 once the patch is
//! removed; after a reboot the boot hook re-applied it before
//! multi-user.target; `dpkg -r` leaves the kernel patched and the state in
//! place; purge says what stays applied. The journal has the daemon's and
//! the boot hook's results with their structured fields.
//!
//! Oracle VM's case: the same system booted as a Xen dom0 (Debian's Xen
//! 4.17 under QEMU TCG, QEMU's multiboot loader): `apt install ./DEB`
//! offline, the kernel patch applies and reverts in dom0, `uptrack-uname
//! -r` shows it, and after a reboot the boot hook re-applies it; `apt
//! remove` leaves it applied. Both systems boot at once (one QEMU per
//! core). Skipped (reported as ignored) with HOTSPLICE_SKIP_KERNEL_TESTS=1
//! like the other QEMU tests.

mod common;
mod kernel_common;

use common::*;
use hotsplice_testsupport::harness;
use kernel_common as kc;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn kernel_patch(out: &std::path::Path) -> (String, String) {
    let o = kc::create_kernel_command(
        &kc::repo_root().join("tests/kernel/fixes/version.diff"),
        out,
    )
    .output()
    .expect("hotsplice create --kernel");
    assert!(
        o.status.success(),
        "create --kernel: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("create --json");
    (
        v["path"].as_str().expect("path").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

/// What both systems get: the signed kernel patch in a feed directory,
/// its key, and the package built from this build's binary.
struct Fixture {
    dir: PathBuf,
    /// The signed patch, in `dir/feed`.
    signed: PathBuf,
    id: String,
    key: PathBuf,
    public: PathBuf,
    deb: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-vm");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (patch, id) = kernel_patch(&dir.join("patch"));
        let (key, public) = kc::keygen(&dir, "vmtest");
        let feed = dir.join("feed");
        std::fs::create_dir_all(&feed).unwrap();
        let signed = feed.join(std::path::Path::new(&patch).file_name().unwrap());
        std::fs::copy(&patch, &signed).unwrap();
        let mut sign = Command::new(env!("CARGO_BIN_EXE_hotsplice"));
        sign.arg("sign").arg(&key).arg(&signed);
        run_cmd(sign, Duration::from_secs(60)).assert_ok("sign");

        let mut deb = Command::new("bash");
        deb.arg(kc::repo_root().join("scripts/deb.sh"))
            .current_dir(kc::repo_root())
            .env("DEB_BIN", env!("CARGO_BIN_EXE_hotsplice"))
            .env("DEB_OUT", dir.join("deb"));
        let r = run_cmd(deb, Duration::from_secs(1200));
        r.assert_ok("scripts/deb.sh");
        let deb = r.stdout.lines().last().unwrap().trim().to_string();
        Fixture {
            dir,
            signed,
            id,
            key,
            public,
            deb,
        }
    })
}

/// The HSTEST lines of a vm-test.sh run (both boots) and where its serial
/// logs are.
struct Console {
    log: String,
    stderr: String,
    out: PathBuf,
}

impl Console {
    /// Runs scripts/debian/vm-test.sh with `flags` (e.g. `--xen`) and
    /// `extra` arguments after the fixture's, in OUT = `name`; saves the
    /// HSTEST lines to OUT/console.txt and prints the paths.
    fn boot_twice(name: &str, flags: &[&str], extra: &[&std::path::Path]) -> Console {
        let f = fixture();
        let out = f.dir.join(name);
        let mut vm = Command::new("bash");
        vm.arg(kc::repo_root().join("scripts/debian/vm-test.sh"))
            .args(flags)
            .arg(&f.deb)
            .arg(&f.signed)
            .arg(&f.public)
            .arg(&out)
            .args(extra);
        let t0 = std::time::Instant::now();
        let r = run_cmd(vm, Duration::from_secs(1800));
        // The disk (1.5 GB sparse) is not needed once the boots are done;
        // the serial logs stay.
        let _ = std::fs::remove_file(out.join("disk.img"));
        r.assert_ok("scripts/debian/vm-test.sh");
        let _ = std::fs::write(out.join("console.txt"), &r.stdout);
        eprintln!(
            "{name}: two boots in {:.0} s; {}\n{}\nconsole: {} serial logs: {} {}",
            t0.elapsed().as_secs_f64(),
            r.stderr.trim(),
            r.stdout,
            out.join("console.txt").display(),
            out.join("serial-1.log").display(),
            out.join("serial-2.log").display()
        );
        Console {
            log: r.stdout.clone(),
            stderr: r.stderr.clone(),
            out,
        }
    }

    /// The first line that starts with `prefix`.
    fn line(&self, prefix: &str) -> String {
        self.log
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no line `{prefix}` on the serial console:\n{}\n{}",
                    self.log, self.stderr
                )
            })
            .to_string()
    }

    /// The JSON journal entry printed after `prefix`.
    fn journal(&self, prefix: &str) -> Value {
        let l = self.line(prefix);
        let json = l[prefix.len()..].trim();
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("`{prefix}`: no journal entry ({e}): {l}\n{}", self.log))
    }

    /// The serial log of boot `n` (Xen's console and dom0's), CRs removed.
    fn serial(&self, n: u32) -> String {
        let raw = std::fs::read(self.out.join(format!("serial-{n}.log"))).unwrap();
        String::from_utf8_lossy(&raw).replace('\r', "")
    }
}

/// Checks a journal entry's structured fields.
fn assert_fields(e: &Value, id: &str, target: &str, result: &str) {
    assert_eq!(e["HOTSPLICE_PATCH_ID"], id, "{e}");
    assert_eq!(e["HOTSPLICE_TARGET"], target, "{e}");
    assert_eq!(e["HOTSPLICE_RESULT"], result, "{e}");
    assert_eq!(e["SYSLOG_IDENTIFIER"], "hotsplice", "{e}");
    assert!(e["MESSAGE"].as_str().is_some_and(|m| m.contains(id)), "{e}");
}

fn debian_system_installs_patches_reboots_and_removes() {
    let f = fixture();
    let id = f.id.clone();
    // A userspace service for the guest and its patch, signed by the key.
    let env = TestEnv::new("debian-vm");
    let case = Case::load("pie_exec");
    let build = case.build();
    let demo_out = f.dir.join("demo");
    std::fs::create_dir_all(&demo_out).unwrap();
    let demo_patch = create(&env, &case, &build, "fix.diff", Some(&f.key), 1, &demo_out);
    let demo_id = info_id(&env, &demo_patch);

    let c = Console::boot_twice("vm", &[], &[&build.dir.join("prog"), &demo_patch]);
    let line = |prefix: &str| c.line(prefix);
    let log = c.log.clone();
    let release = probe_release();
    let effective = format!("{release}.hs-{id}");
    assert!(
        line("HSTEST boot1 booted").ends_with("pid1=systemd"),
        "{log}"
    );
    line("HSTEST boot1 dpkg-install rc=0");
    for u in [
        "hotsplice.service",
        "hotsplice-boot.service",
        "hotsplice-autoinstall.timer",
    ] {
        line(&format!("HSTEST boot1 unit {u} enabled active"));
    }
    let links = line("HSTEST boot1 links");
    for n in [
        "ksplice",
        "uptrack-upgrade",
        "uptrack-uname",
        "uptrack-show",
        "uptrack-install",
        "uptrack-remove",
    ] {
        assert!(links.split_whitespace().any(|w| w == n), "{links}");
    }
    line("HSTEST boot1 ksplice-upgrade rc=0");
    assert!(line("HSTEST boot1 upgrade: applied").contains(&id), "{log}");
    assert_eq!(
        line("HSTEST boot1 uptrack-uname-r"),
        format!("HSTEST boot1 uptrack-uname-r {effective}")
    );
    assert_eq!(
        line("HSTEST boot1 uname-r"),
        format!("HSTEST boot1 uname-r {release}")
    );
    assert!(
        line("HSTEST boot1 check-applied rc=0 HOTSPLICE OK").contains("kernel_applied=1"),
        "{log}"
    );
    assert!(
        line("HSTEST boot1 check-not-applied rc=2 HOTSPLICE CRITICAL").contains(&id),
        "{log}"
    );
    // The userspace service: restarted by systemd, patched by the daemon.
    line("HSTEST boot1 user-install rc=0");
    let pid = line("HSTEST boot1 demo-restarted pid=");
    let pid = pid
        .trim_start_matches("HSTEST boot1 demo-restarted pid=")
        .trim()
        .to_string();
    assert!(pid.parse::<u32>().is_ok(), "{log}");
    assert!(
        line("HSTEST boot1 demo-output").contains("result=2"),
        "{log}"
    );
    let d = line("HSTEST boot1 demo-daemon");
    assert!(
        d.contains(&format!("patched pid {pid} (hsdemo) with {demo_id}")),
        "{log}"
    );
    assert!(line("HSTEST boot1 demo-show").contains(&demo_id), "{log}");
    line("HSTEST boot1 check-with-demo rc=0 HOTSPLICE OK");
    // The daemon's result in the journal, with its fields.
    let e = c.journal("HSTEST boot1 demo-journal");
    assert_fields(&e, &demo_id, &format!("pid {pid} (hsdemo)"), "applied");
    assert_eq!(e["HOTSPLICE_PID"], pid.as_str(), "{e}");
    assert_eq!(e["_SYSTEMD_UNIT"], "hotsplice.service", "{e}");
    assert_eq!(e["PRIORITY"], "6", "{e}");
    // Reboot: the hook re-applied the patch before multi-user.target.
    line("HSTEST boot2 boot-hook active");
    assert_fields(
        &c.journal("HSTEST boot2 journal-reapplied"),
        &id,
        &format!("kernel {release}"),
        "re-applied",
    );
    assert!(
        line("HSTEST boot2 hook: hotsplice boot: effective kernel").ends_with(&effective),
        "{log}"
    );
    line("HSTEST boot2 hook-before-multi-user yes");
    assert_eq!(
        line("HSTEST boot2 uptrack-uname-r"),
        format!("HSTEST boot2 uptrack-uname-r {effective}")
    );
    line("HSTEST boot2 check-after-reboot rc=0 HOTSPLICE OK");
    line("HSTEST boot2 unit2 hotsplice.service active");
    line("HSTEST boot2 unit2 hotsplice-autoinstall.timer active");
    // Removed: the kernel stays patched, the state stays.
    line("HSTEST boot2 dpkg-remove rc=0");
    line(&format!(
        "HSTEST boot2 after-remove-livepatch hs_{id} enabled=1"
    ));
    line("HSTEST boot2 after-remove-binary-found rc=127");
    assert!(
        !line("HSTEST boot2 after-remove-state")
            .trim_end()
            .ends_with("after-remove-state"),
        "{log}"
    );
    assert!(
        line("HSTEST boot2 purge: hotsplice: purged; these kernel live patches stay applied")
            .contains(&format!("hs_{id}")),
        "{log}"
    );
}

/// Oracle VM's case: the same Debian system as a Xen dom0.
fn xen_dom0_applies_reverts_and_reapplies_after_reboot() {
    let f = fixture();
    let id = &f.id;
    let c = Console::boot_twice("xen", &["--xen"], &[]);
    let line = |prefix: &str| c.line(prefix);
    let log = &c.log;
    let release = probe_release();
    let effective = format!("{release}.hs-{id}");
    // Xen booted and built dom0 from the stock kernel (Xen's console, com1)...
    for n in [1, 2] {
        let serial = c.serial(n);
        for want in ["(XEN) Xen version 4.17", "(XEN)  Dom0 kernel: 64-bit"] {
            assert!(
                serial.contains(want),
                "boot {n}: no `{want}` in the serial log"
            );
        }
    }
    // ...and this system is that dom0 (its console hvc0, written by Xen).
    for b in ["boot1", "boot2"] {
        assert!(
            line(&format!("HSTEST {b} hypervisor type=xen version=4.17")).len() > 40,
            "{log}"
        );
        line(&format!("HSTEST {b} xen-capabilities control_d"));
    }
    assert!(
        line("HSTEST boot1 dmesg-xen").ends_with("Booting kernel on Xen"),
        "{log}"
    );
    assert!(
        line("HSTEST boot1 booted").ends_with("pid1=systemd"),
        "{log}"
    );
    // apt installs the package offline (dependencies installed, nothing
    // downloaded).
    line("HSTEST boot1 apt-install rc=0");
    assert!(
        line("HSTEST boot1 apt: Setting up hotsplice").contains(env!("CARGO_PKG_VERSION")),
        "{log}"
    );
    for u in [
        "hotsplice.service",
        "hotsplice-boot.service",
        "hotsplice-autoinstall.timer",
    ] {
        line(&format!("HSTEST boot1 unit {u} enabled active"));
    }
    // Before: the stock kernel's /proc/version.
    line("HSTEST boot1 before-proc-version Linux version ");
    line("HSTEST boot1 before-livepatch");
    assert_eq!(
        line("HSTEST boot1 before-uptrack-uname-r"),
        format!("HSTEST boot1 before-uptrack-uname-r {release}")
    );
    // Applied in dom0: the new code runs (tests/kernel/fixes/version.diff).
    // (Run as a service: its result line went to the journal, checked below.)
    line("HSTEST boot1 ksplice-upgrade rc=0");
    line("HSTEST boot1 applied-proc-version Linux [hotsplice-gen1] version");
    assert_eq!(
        line("HSTEST boot1 applied-livepatch"),
        format!("HSTEST boot1 applied-livepatch hs_{id}:enabled=1:transition=0")
    );
    assert_eq!(
        line("HSTEST boot1 applied-uptrack-uname-r"),
        format!("HSTEST boot1 applied-uptrack-uname-r {effective}")
    );
    assert_eq!(
        line("HSTEST boot1 uname-r"),
        format!("HSTEST boot1 uname-r {release}")
    );
    assert_fields(
        &c.journal("HSTEST boot1 journal-applied"),
        id,
        &format!("kernel {release}"),
        "applied",
    );
    // Reverted: the old code again, no livepatch module.
    line("HSTEST boot1 ksplice-remove rc=0");
    line("HSTEST boot1 reverted-proc-version Linux version ");
    assert_eq!(
        line("HSTEST boot1 reverted-livepatch").trim_end(),
        "HSTEST boot1 reverted-livepatch"
    );
    assert_eq!(
        line("HSTEST boot1 reverted-uptrack-uname-r"),
        format!("HSTEST boot1 reverted-uptrack-uname-r {release}")
    );
    assert_fields(
        &c.journal("HSTEST boot1 journal-removed"),
        id,
        &format!("kernel {release}"),
        "removed",
    );
    line("HSTEST boot1 reapply rc=0");
    // Rebooted: the boot hook re-applied it before multi-user.target.
    line("HSTEST boot2 boot-hook active");
    assert_fields(
        &c.journal("HSTEST boot2 journal-reapplied"),
        id,
        &format!("kernel {release}"),
        "re-applied",
    );
    line("HSTEST boot2 hook-before-multi-user yes");
    line("HSTEST boot2 rebooted-proc-version Linux [hotsplice-gen1] version");
    assert_eq!(
        line("HSTEST boot2 rebooted-uptrack-uname-r"),
        format!("HSTEST boot2 rebooted-uptrack-uname-r {effective}")
    );
    // apt remove: the binary is gone, the kernel stays patched, the state
    // stays.
    line("HSTEST boot2 apt-remove rc=0");
    line("HSTEST boot2 apt: Removing hotsplice");
    line("HSTEST boot2 after-remove-binary-found rc=127");
    assert_eq!(
        line("HSTEST boot2 after-remove-livepatch"),
        format!("HSTEST boot2 after-remove-livepatch hs_{id}:enabled=1:transition=0")
    );
    line("HSTEST boot2 after-remove-proc-version Linux [hotsplice-gen1] version");
    assert!(
        !line("HSTEST boot2 after-remove-state")
            .trim_end()
            .ends_with("after-remove-state"),
        "{log}"
    );
}

fn probe_release() -> String {
    kc::probe().release.clone()
}

fn main() {
    harness::main(
        kc::skip_reason(),
        hotsplice_testsupport::tests![
            debian_system_installs_patches_reboots_and_removes,
            xen_dom0_applies_reverts_and_reapplies_after_reboot
        ],
    );
}
