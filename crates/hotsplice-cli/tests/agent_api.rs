//! The agent's API used directly, as the fleet server will use it: a real
//! program built from `tests/fixtures/pie_exec`, a patch made and signed by
//! the `hotsplice` binary, then install, plan, upgrade, show and remove
//! through `hotsplice_agent` — checking the typed values, their JSON and
//! the events, and that the running program really changed.

use hotsplice_agent::{Agent, AgentOptions, Event, Outcome};
use hotsplice_store::Paths;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The program, killed and reaped however the test ends.
struct Prog(Child, BufReader<ChildStdout>);

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Prog {
    /// Read lines until one equals `want` (the program prints every 20 ms).
    fn wait_for(&mut self, want: &str) {
        let mut line = String::new();
        for _ in 0..500 {
            line.clear();
            assert!(self.1.read_line(&mut line).unwrap() > 0, "program ended");
            if line.trim() == want {
                return;
            }
        }
        panic!("never printed {want}; last: {line}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn install_plan_upgrade_show_remove_through_the_agent() {
    let hs = env!("CARGO_BIN_EXE_hotsplice");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pie_exec");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_dir(&fixture.join("src"), &src);
    run(Command::new("make").arg("-s").current_dir(&src));
    let out = tmp.path().join("out");
    run(Command::new(hs)
        .args(["create", "--description", "agent api test", "--patch"])
        .arg(fixture.join("fix.diff"))
        .arg("-o")
        .arg(&out)
        .arg(&src));
    let patch = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let unsigned = std::fs::read(&patch).unwrap();
    let etc = tmp.path().join("etc");
    run(Command::new(hs)
        .arg("keygen")
        .arg("-o")
        .arg(tmp.path().join("k"))
        .arg("ops"));
    std::fs::create_dir_all(etc.join("keys")).unwrap();
    std::fs::copy(tmp.path().join("k/ops.pub"), etc.join("keys/ops.pub")).unwrap();
    run(Command::new(hs)
        .arg("sign")
        .arg(tmp.path().join("k/ops.key"))
        .arg(&patch));

    let mut child = Command::new(src.join("prog"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut prog = Prog(child, stdout);
    prog.wait_for("result=1");
    let pid = prog.0.id() as i32;

    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = events.clone();
    let agent = Agent::with_paths(
        Paths {
            config_dir: etc,
            state_dir: tmp.path().join("state"),
            run_dir: tmp.path().join("run"),
        },
        AgentOptions {
            events: Arc::new(move |e| sink.lock().unwrap().push(e)),
            stop_requested: || false,
        },
    )
    .unwrap();

    // The trust policy: unsigned bytes only with the explicit allowance,
    // which is told as an event.
    let refused = agent
        .verified(&unsigned, "the unsigned file", false)
        .unwrap_err();
    let why = hotsplice_agent::chain(&refused);
    assert!(
        why.contains("the unsigned file") && why.contains("not signed"),
        "{why}"
    );
    agent
        .verified(&unsigned, "the unsigned file", true)
        .unwrap();
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::UnsignedAllowed { what } if what == "the unsigned file")));

    let installed = agent.install(&[patch], false).unwrap();
    assert_eq!(installed.len(), 1);
    let id = installed[0].id.clone();

    let inst = agent.installed_patches(false).unwrap();
    let plan = agent.plan_upgrade(&[pid], &inst);
    assert_eq!(
        plan,
        vec![Outcome::Planned {
            pid,
            id: id.clone(),
            replaces: None
        }]
    );
    // Planning changed nothing.
    prog.wait_for("result=1");

    let run = agent.upgrade(&[pid], &inst, &agent.options(Some(5.0)), false);
    assert_eq!(run.not_started, 0);
    assert!(
        matches!(&run.outcomes[..], [Outcome::Patched { id: i, replaced: None, .. }] if *i == id),
        "{:?}",
        run.outcomes
    );
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Progress { done: 1, total: 1 })));
    prog.wait_for("result=2");
    // Upgrading again finds it done.
    assert_eq!(
        agent.plan_upgrade(&[pid], &inst),
        vec![Outcome::AlreadyPatched {
            pid,
            id: id.clone()
        }]
    );

    // What is applied, as data and as the JSON `show --json` prints.
    let rows = agent.applied(Some(pid)).unwrap();
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[0]["pid"], pid);
    assert_eq!(json[0]["patches"][0]["id"], id.as_str());
    assert_eq!(json[0]["patches"][0]["description"], "agent api test");
    assert_eq!(json[0]["patches"][0]["functions"][0], "compute");
    assert_eq!(json[0]["interrupted"].as_array().unwrap().len(), 0);
    let available = agent.available().unwrap();
    assert_eq!(available[0].applied_in, vec![pid]);

    // Remove it: planned per process, carried out under the lock.
    let plan = agent
        .plan_removal(false, Some(pid), std::slice::from_ref(&id))
        .unwrap();
    assert_eq!(plan.jobs, vec![(pid, id.clone())]);
    let done = agent.remove(&plan, &agent.options(Some(5.0)));
    assert_eq!(done.results.len(), 1);
    assert_eq!(done.results[0].as_ref().unwrap().id, id);
    prog.wait_for("result=1");
    assert!(agent.applied(Some(pid)).unwrap()[0].patches.is_empty());

    // A request that cannot be carried out says what to ask instead.
    let e = agent.plan_removal(false, None, &[]).err().unwrap();
    assert!(e.to_string().contains("IDs, or --all"), "{e}");
}

#[test]
fn the_agent_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Agent>();
    shared::<hotsplice_agent::Installed>();
}
