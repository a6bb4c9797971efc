//! The fleet client's check-in report, built on this machine from the
//! agent's own views: a real C program started here shows up among the
//! objects in use, with its build-id and its process; the air-gapped
//! `sync --report-to` writes the same report to a file, no server needed.

use hotsplice_agent::fleet::SyncOptions;
use hotsplice_agent::{Agent, AgentOptions};
use hotsplice_fleet::report::Report;
use hotsplice_store::Paths;
use hotsplice_testsupport::{compile, temp_dir, Stream, Target, LINE_TIMEOUT};

const LOOP: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) { printf("tick\n"); usleep(50000); }
}
"#;

fn agent(root: &std::path::Path) -> Agent {
    let paths = Paths {
        config_dir: root.join("etc"),
        state_dir: root.join("state"),
        run_dir: root.join("run"),
    };
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::create_dir_all(&paths.state_dir).unwrap();
    Agent::with_paths(paths, AgentOptions::default()).unwrap()
}

#[test]
fn a_running_program_is_in_the_report() {
    let dir = temp_dir("fleet-report");
    let exe = compile(dir.path(), "fleet_tick", LOOP);
    let t = Target::exe(&exe, &[]);
    assert!(t.wait_for_new_line(Stream::Stdout, "tick", LINE_TIMEOUT));
    let a = agent(dir.path());
    let r = a.fleet_report().unwrap();
    r.check().unwrap();
    assert!(hotsplice_fleet::is_uuid(&r.uuid));
    // The UUID is kept: the next report has the same.
    assert_eq!(a.fleet_report().unwrap().uuid, r.uuid);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state/fleet/uuid"))
            .unwrap()
            .trim(),
        r.uuid
    );
    let path = exe.canonicalize().unwrap().display().to_string();
    let o = r
        .objects
        .iter()
        .find(|o| o.path == path)
        .unwrap_or_else(|| panic!("{path} is not among the objects: {:?}", r.objects));
    assert!(o.processes >= 1);
    assert!(!o.build_id.is_empty());
    assert!(!r.hostname.is_empty());
    assert!(!r.kernel.original_release.is_empty());
    assert!(r.addresses.iter().all(|a| {
        let ip: std::net::IpAddr = a.parse().unwrap();
        !ip.is_loopback()
    }));
    // Nothing patched yet; no run recorded.
    assert!(r.processes.is_empty() || r.processes.iter().all(|p| p.pid != t.pid_i32()));
    assert_eq!(r.last_run, None);

    // Air-gapped: the report goes to a file, no registration needed.
    let file = dir.path().join("report.json");
    let s = a
        .sync(&SyncOptions {
            report_to: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.report_file.as_deref(), Some(file.as_path()));
    let back: Report = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    back.check().unwrap();
    assert_eq!(back.uuid, r.uuid);
    assert!(back.objects.iter().any(|o| o.path == path));
    drop(t);
}

#[test]
fn sync_without_registration_says_what_to_do() {
    let dir = temp_dir("fleet-unregistered");
    let a = agent(dir.path());
    let e = a.sync(&SyncOptions::default()).err().unwrap();
    let text = hotsplice_agent::chain(&e);
    assert!(text.contains("hotsplice register --server"), "{text}");
}

/// Kernel patches a fleet server sent (`STATE/fleet/patches/`) are part
/// of the kernel feed, with the configured feed directory, each ID once.
#[test]
fn the_kernel_feed_includes_the_fleet_patches() {
    let dir = temp_dir("fleet-kfeed");
    let a = agent(dir.path());
    let k = a.kernel();
    let Ok(me) = k.build_id() else {
        // No /sys/kernel/notes to read the running kernel's build-id from.
        eprintln!("skipped: the running kernel's build-id cannot be read");
        return;
    };
    let patch = |id: &str, build_id: &str| {
        hotsplice_create::kernel::kernel_patch(b"module", id, "test", build_id, "r", vec![])
            .to_bytes()
    };
    let fleet = dir.path().join("state/fleet/patches");
    std::fs::create_dir_all(&fleet).unwrap();
    std::fs::write(
        fleet.join(format!("{}.hsp", "aa".repeat(32))),
        patch("kfleet01", &me),
    )
    .unwrap();
    std::fs::write(
        fleet.join(format!("{}.hsp", "bb".repeat(32))),
        patch("kother01", "00ff"),
    )
    .unwrap();
    assert_eq!(
        a.feed(None, &k)
            .unwrap()
            .iter()
            .map(|f| f.id.to_string())
            .collect::<Vec<_>>(),
        vec!["kfleet01"]
    );
    // With a feed directory holding the same patch too: listed once.
    let feed = dir.path().join("feed");
    std::fs::create_dir_all(&feed).unwrap();
    std::fs::write(feed.join("kfleet01.hsp"), patch("kfleet01", &me)).unwrap();
    std::fs::write(feed.join("kfeed001.hsp"), patch("kfeed001", &me)).unwrap();
    std::fs::write(
        dir.path().join("etc/hotsplice.conf"),
        format!("[settings]\nfeed = \"{}\"\n", feed.display()),
    )
    .unwrap();
    let a = agent(dir.path());
    let mut ids: Vec<String> = a
        .feed(None, &k)
        .unwrap()
        .iter()
        .map(|f| f.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["kfeed001", "kfleet01"]);
    // An explicit directory (`--from`) is that directory alone.
    let ids: Vec<String> = a
        .feed(Some(&fleet), &k)
        .unwrap()
        .iter()
        .map(|f| f.id.to_string())
        .collect();
    assert_eq!(ids, vec!["kfleet01"]);
}
