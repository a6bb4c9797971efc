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
//! place; purge says what stays applied. Skipped (reported as ignored)
//! with HOTSPLICE_SKIP_KERNEL_TESTS=1 like the other QEMU tests.

mod common;
mod kernel_common;

use common::*;
use hotsplice_testsupport::harness;
use kernel_common as kc;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn kernel_patch(out: &std::path::Path) -> (String, String) {
    let k = kc::kernel();
    let probe = kc::probe();
    let o = Command::new(env!("CARGO_BIN_EXE_hotsplice"))
        .args(["create", "--kernel", "--json", "--patch"])
        .arg(kc::repo_root().join("tests/kernel/fixes/version.diff"))
        .arg("--config")
        .arg(k.config())
        .arg("--kdir")
        .arg(k.env_path("KDIR"))
        .arg("--system-map")
        .arg(&probe.kallsyms)
        .args(["--build-id", &probe.build_id, "--release", &probe.release])
        .arg("-o")
        .arg(out)
        .arg(k.env_path("KSRC"))
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

fn debian_system_installs_patches_reboots_and_removes() {
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

    // A userspace service for the guest and its patch, signed by the key.
    let env = TestEnv::new("debian-vm");
    let case = Case::load("pie_exec");
    let build = case.build();
    let demo_out = dir.join("demo");
    std::fs::create_dir_all(&demo_out).unwrap();
    let demo_patch = create(&env, &case, &build, "fix.diff", Some(&key), 1, &demo_out);
    let demo_id = info_id(&env, &demo_patch);

    let mut vm = Command::new("bash");
    vm.arg(kc::repo_root().join("scripts/debian/vm-test.sh"))
        .arg(&deb)
        .arg(&signed)
        .arg(&public)
        .arg(dir.join("vm"))
        .arg(build.dir.join("prog"))
        .arg(&demo_patch);
    let r = run_cmd(vm, Duration::from_secs(1800));
    r.assert_ok("scripts/debian/vm-test.sh");
    let log = r.stdout.clone();
    eprintln!("{log}");
    let line = |prefix: &str| -> String {
        log.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no line `{prefix}` on the serial console:\n{log}\n{}",
                    r.stderr
                )
            })
            .to_string()
    };
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
    // Reboot: the hook re-applied the patch before multi-user.target.
    line("HSTEST boot2 boot-hook active");
    assert!(
        line("HSTEST boot2 hook: hotsplice boot:").contains(&format!("{id}: re-applied")),
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

fn probe_release() -> String {
    kc::probe().release.clone()
}

fn main() {
    harness::main(
        kc::skip_reason(),
        hotsplice_testsupport::tests![debian_system_installs_patches_reboots_and_removes],
    );
}
