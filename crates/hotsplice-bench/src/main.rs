//! `hotsplice-bench`: what live patching costs a running process.
//!
//! ```text
//! cargo build --release -p hotsplice-bench -p hotsplice-cli
//! target/release/hotsplice-bench [--quick] [--reps N] [--threads 2,10,100,1000] [--json]
//! ```
//!
//! Needs root (ptrace), `cc`, `make` and `patch`. The harness writes three
//! small C programs into a temporary directory, builds each with `make`
//! (`-O2`, two objects) and makes a one-function patch for each with
//! `hotsplice create` (found next to this binary, or at `$HOTSPLICE_BIN`).
//! Every process it starts is killed and reaped when done, also on panic,
//! and dies with the harness (PR_SET_PDEATHSIG).
//!
//! # 1. Stop time (threads stopped while a one-function patch goes in)
//!
//! Target `stopper N` has N threads: the main thread (blocked reading
//! commands on stdin), one *spinner* and N-2 idle threads blocked in
//! `pthread_cond_wait`. The spinner reads `clock_gettime(CLOCK_MONOTONIC)` in
//! a loop and keeps the largest gap between two consecutive readings, and
//! calls the patched function `compute()` every 1024 readings (so it is a
//! real, live function, but no thread sits in it for long). A stop of the
//! process shows up inside the target as a gap in the spinner's readings,
//! so the gap is the stop time as the program itself experiences it, not
//! as the tool reports it.
//!
//! Each repetition, with the engine library called in-process (so process
//! start-up does not count):
//! * reset the target's max gap (`r`, answered once the spinner did it),
//!   `hotsplice_engine::apply`, then read the max gap (`g`, answered after
//!   the spinner went round 2048 more times, so it includes the stop that
//!   just ended and a `compute()` call after it, whose result is checked to
//!   be the patched one). Recorded: (a) that in-target max gap, (b) the
//!   engine's own `Report::stopped`, (c) the wall time of the `apply` call;
//! * the same for `hotsplice_engine::undo` (shown on a second table: undo
//!   also stops the process a second time, to detach, outside
//!   `Report::stopped`);
//! * *background*: reset, sleep as long as that apply took, read: the
//!   largest gap with no patching at all over an equal period (scheduler
//!   and interrupt noise; with 2 CPUs the spinner shares them with the
//!   harness and everything else).
//!
//! The spinner is created last, so it is last in thread-id order, the
//! order in which the engine interrupts threads and later resumes them: it
//! is stopped from the end of the interrupt loop to the end of the resume
//! loop. `Report.stopped` spans both loops whole, so at many threads it is
//! larger than the spinner's gap by about the time the interrupt loop takes.
//! By default the spinner gets a CPU to itself (the harness, the CLI and the
//! target's other threads are kept off it, `--no-pin` to not do so): on a
//! small machine it would otherwise also measure being preempted by the
//! tool's own work (about 0.3 ms extra per apply on 2 CPUs).
//!
//! Then, R more times, (d) the wall time of one `hotsplice user apply --pid`
//! process (start-up, reading the patch, applying, printing), each undone
//! in-process. One untimed apply+undo warms up first. Medians, minimum and
//! maximum over R repetitions (R=11, `--quick` 3).
//!
//! # 2. `hotsplice user apply --all` over many processes
//!
//! 200 (`--quick`: 50) single-threaded `flipper` processes, each storing
//! `answer()`'s result every 20 ms into its own slot of a shared memory
//! mapped file. Timed: one `hotsplice user apply --all` (which finds the
//! processes by build-id among all processes of the machine, then patches
//! them, 8 at a time), and one `hotsplice user remove ID` to take it out
//! again (`remove ID` rather than `remove --all`, so patches of anything
//! else on the machine are left alone). Both are checked: every process is
//! reported, and every file flips to the new value and back. Reported:
//! median wall time over 3 rounds (`--quick`: 1), per process, the median of
//! the per-process `stopped` times in apply's JSON report, and how long it
//! took until all slots showed the new value after apply returned (includes
//! the targets' 20 ms polling). Then the same patch installed in a private
//! store, and `hotsplice -y all upgrade` timed over the same processes.
//!
//! # 3. Cost per call of a patched function
//!
//! Target `caller` runs `s += work(arg)` 200M times (`--quick`: 50M), `arg`
//! volatile and `work()` noinline in another object, and reports ns per
//! iteration (loop overhead included, the same on both sides). Each round
//! measures unpatched, applies, measures patched (the patch only changes a
//! constant, so the same work is done, plus the jump at the old entry),
//! undoes. Median over R rounds of both, and of the per-round difference:
//! the cost of the jump.
//!
//! # 4. The daemon: processes started later
//!
//! The flipper's patch is installed in a private store and `hotsplice
//! daemon` is started on it; then 20 (`--quick`: 5) flippers are started one
//! after the other. The daemon logs, per process, the time from the exec
//! event (netlink) to the patch being in; the harness also checks that each
//! one flipped. Reported: the median delay, and the daemon's CPU use while
//! idle (user+system time over 10 s, `--quick`: 3 s, with nothing starting).

mod procs;
mod targets;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hotsplice_engine::ApplyOptions;
use procs::{AvoidCpu, Proc, Target};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use targets::Built;

#[derive(Parser)]
#[command(
    name = "hotsplice-bench",
    about = "Benchmarks of hotsplice on real processes (needs root, cc, make, patch)"
)]
struct Args {
    /// Fewer repetitions, 50 processes, 50M calls.
    #[arg(long)]
    quick: bool,
    /// Repetitions per measurement (default 11, --quick 3).
    #[arg(long)]
    reps: Option<usize>,
    /// Thread counts of the stop-time targets.
    #[arg(long, value_delimiter = ',', default_value = "2,10,100,1000")]
    threads: Vec<usize>,
    /// Processes for apply --all (default 200, --quick 50).
    #[arg(long)]
    procs: Option<usize>,
    /// Calls per call-cost measurement (default 200M, --quick 50M).
    #[arg(long)]
    calls: Option<u64>,
    /// Do not keep the stop-time spinner on a CPU of its own.
    #[arg(long)]
    no_pin: bool,
    /// Machine-readable output (JSON on stdout; progress still on stderr).
    #[arg(long)]
    json: bool,
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        assert!(!v.is_empty(), "empty sample");
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stat {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}..{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    kernel: String,
    cpu: String,
    hotsplice: String,
    /// /proc/loadavg before and after the run (other load shows up as noise).
    loadavg_before: String,
    loadavg_after: String,
}

#[derive(Serialize)]
struct Settings {
    reps: usize,
    threads: Vec<usize>,
    processes: usize,
    all_rounds: usize,
    calls: u64,
    /// CPU the stop-time spinner had to itself (None: not pinned).
    spinner_cpu: Option<usize>,
}

/// Section 1, one thread count. Times in microseconds unless named `_ms`.
#[derive(Serialize)]
struct StopResult {
    threads: usize,
    reps: usize,
    apply_gap_us: Stat,
    apply_stopped_us: Stat,
    apply_wall_us: Stat,
    background_gap_us: Stat,
    undo_gap_us: Stat,
    undo_stopped_us: Stat,
    undo_wall_us: Stat,
    /// Gaps of 50 µs or more the spinner saw during apply / undo, and their sum.
    apply_pauses: Stat,
    apply_paused_us: Stat,
    undo_pauses: Stat,
    undo_paused_us: Stat,
    cli_apply_wall_ms: Stat,
    cli_apply_gap_us: Stat,
    /// Applies/undos that needed more than one stop window (code busy).
    retried: usize,
}

#[derive(Serialize)]
struct AllResult {
    processes: usize,
    rounds: usize,
    apply_wall_ms: Stat,
    apply_per_process_ms: f64,
    stopped_per_process_us: Stat,
    all_flipped_after_ms: Stat,
    remove_wall_ms: Stat,
    remove_per_process_ms: f64,
    /// `hotsplice -y all upgrade` from a store holding the patch.
    upgrade_wall_ms: Stat,
    upgrade_per_process_ms: f64,
}

#[derive(Serialize)]
struct CostResult {
    calls: u64,
    rounds: usize,
    unpatched_ns: Stat,
    patched_ns: Stat,
    difference_ns: Stat,
}

#[derive(Serialize)]
struct Output {
    machine: Machine,
    settings: Settings,
    stop: Vec<StopResult>,
    apply_all: AllResult,
    call_cost: CostResult,
    daemon: DaemonResult,
}

#[derive(Serialize)]
struct DaemonResult {
    processes: usize,
    exec_to_patched_ms: Stat,
    idle_cpu_percent: f64,
    idle_seconds: f64,
}

/// Configuration, state and run directories of their own under `env`, with
/// `built`'s patch installed: the environment to run hotsplice in.
fn private_store(
    hotsplice: &Path,
    built: &Built,
    env: &Path,
) -> Result<[(&'static str, PathBuf); 3]> {
    let vars = [
        ("HOTSPLICE_CONFIG_DIR", env.join("etc")),
        ("HOTSPLICE_STATE_DIR", env.join("state")),
        ("HOTSPLICE_RUN_DIR", env.join("run")),
    ];
    // The store takes signed patches only: a key of its own, trusted
    // there, and a signed copy of the patch.
    let keys = env.join("etc/keys");
    let signing = env.join("signing");
    std::fs::create_dir_all(&keys)?;
    std::fs::create_dir_all(&signing)?;
    let signed = signing.join("patch.hsp");
    std::fs::copy(&built.patch_file, &signed)?;
    let steps: [Vec<std::ffi::OsString>; 3] = [
        vec![
            "keygen".into(),
            "-o".into(),
            signing.clone().into(),
            "bench".into(),
        ],
        vec![
            "sign".into(),
            signing.join("bench.key").into(),
            signed.clone().into(),
        ],
        vec!["user".into(), "install".into(), signed.into()],
    ];
    for (i, args) in steps.iter().enumerate() {
        if i == 1 {
            std::fs::copy(signing.join("bench.pub"), keys.join("bench.pub"))?;
        }
        let out = Command::new(hotsplice)
            .args(args)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()?;
        ensure!(
            out.status.success(),
            "hotsplice {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(vars)
}

fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn bench_daemon(
    built: &Built,
    hotsplice: &Path,
    dir: &Path,
    count: usize,
    idle: Duration,
) -> Result<DaemonResult> {
    use std::io::BufRead;
    let vars = private_store(hotsplice, built, &dir.join("daemon-env"))?;
    let mut cmd = Command::new(hotsplice);
    cmd.args(["daemon", "--rescan", "60"])
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut daemon = Proc::spawn(cmd)?;
    let stdout = daemon.take_stdout().context("daemon stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |pred: &dyn Fn(&str) -> bool| -> Result<String> {
        let deadline = Instant::now() + ANSWER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).context("waiting for the daemon")?;
            if pred(&line) {
                return Ok(line);
            }
        }
    };
    wait_line(&|l| l.starts_with("hotsplice daemon: watching"))?;
    let state = dir.join("daemon-slots");
    std::fs::File::create(&state)?.set_len(4 * count as u64)?;
    let mut delays = Vec::new();
    for i in 0..count {
        let mut cmd = Command::new(&built.exe);
        cmd.arg(&state)
            .arg(i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let p = Proc::spawn(cmd)?;
        let pid = p.pid();
        let line = wait_line(&|l| l.starts_with(&format!("patched pid {pid} ")))?;
        let ms: f64 = line
            .split(" ms after exec")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .filter(|_| line.contains(" ms after exec"))
            .with_context(|| format!("no delay in the daemon's log line {line:?}"))?
            .parse()?;
        delays.push(ms);
        // The process really runs the new code.
        let deadline = Instant::now() + ANSWER;
        loop {
            let bytes = std::fs::read(&state)?;
            let v = i32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
            if v == targets::FLIPPER_AFTER {
                break;
            }
            ensure!(Instant::now() < deadline, "process {pid} was not patched");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(p);
    }
    let t0 = cpu_ticks(daemon.pid())?;
    std::thread::sleep(idle);
    let t1 = cpu_ticks(daemon.pid())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(DaemonResult {
        processes: count,
        exec_to_patched_ms: Stat::of(&delays),
        idle_cpu_percent: (t1 - t0) as f64 / hz / idle.as_secs_f64() * 100.0,
        idle_seconds: idle.as_secs_f64(),
    })
}

const ANSWER: Duration = Duration::from_secs(20);

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn progress(msg: &str) {
    eprintln!("[hotsplice-bench] {msg}");
}

fn hotsplice_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("HOTSPLICE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("hotsplice"),
    };
    ensure!(
        p.is_file(),
        "hotsplice binary not found at {} (build it with `cargo build --release -p hotsplice-cli`, or set HOTSPLICE_BIN)",
        p.display()
    );
    Ok(p)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine(hotsplice: &Path) -> Machine {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
        .unwrap_or_else(|| "?".into())
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel,
        cpu,
        hotsplice: hotsplice.display().to_string(),
        loadavg_before: loadavg(),
        loadavg_after: String::new(),
    }
}

// ---------------------------------------------------------------------------
// 1. Stop time
// ---------------------------------------------------------------------------

/// The stopper target's commands.
struct Stopper(Target);

impl Stopper {
    fn reset(&mut self) -> Result<()> {
        let a = self.0.ask("r", ANSWER)?;
        ensure!(a == "ok", "stopper: unexpected answer {a:?} to reset");
        Ok(())
    }

    /// What the spinner saw since the last reset.
    fn gap(&mut self) -> Result<Gap> {
        let a = self.0.ask("g", ANSWER)?;
        let v: Vec<&str> = a.split_whitespace().collect();
        ensure!(v.len() == 4, "stopper: unexpected answer {a:?}");
        Ok(Gap {
            max_us: v[0].parse::<f64>()? / 1e3,
            result: v[1].parse()?,
            pauses: v[2].parse()?,
            paused_us: v[3].parse::<f64>()? / 1e3,
        })
    }
}

/// The spinner's view of an interval.
struct Gap {
    /// Largest gap between two clock readings.
    max_us: f64,
    /// The last compute() result.
    result: i64,
    /// Gaps of 50 µs or more, and their sum.
    pauses: f64,
    paused_us: f64,
}

fn thread_count(pid: i32) -> Result<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .context("no Threads: line")?
        .trim()
        .parse()
        .context("Threads: line")
}

fn bench_stop(
    built: &Built,
    hotsplice: &Path,
    n: usize,
    reps: usize,
    pin: Option<usize>,
) -> Result<StopResult> {
    ensure!(
        n >= 2,
        "a stop-time target needs at least 2 threads (main and the spinner)"
    );
    let _avoid = pin.map(AvoidCpu::new).transpose()?;
    let mut argv = vec![n.to_string()];
    argv.extend(pin.map(|c| c.to_string()));
    let target = Target::spawn(&built.exe, &argv, &format!("stopper {n}"))?;
    let mut t = Stopper(target);
    let ready = t.0.line(Duration::from_secs(60))?;
    ensure!(ready.starts_with("ready"), "stopper: unexpected {ready:?}");
    let pid = t.0.pid();
    let have = thread_count(pid)?;
    ensure!(have == n, "stopper has {have} threads, expected {n}");
    let opts = ApplyOptions::default();
    let r = t.gap()?.result;
    ensure!(
        r == targets::STOPPER_BEFORE,
        "stopper: compute() = {r} before patching"
    );

    let mut retried = 0;
    let mut cycle = |t: &mut Stopper, rec: &mut Option<&mut Vec<[f64; 11]>>| -> Result<()> {
        t.reset()?;
        let t0 = Instant::now();
        let a = hotsplice_engine::apply(pid, &built.patch, &opts)
            .with_context(|| format!("apply to stopper {n}"))?;
        let wall = t0.elapsed();
        let ag = t.gap()?;
        let r = ag.result;
        ensure!(
            r == targets::STOPPER_AFTER,
            "stopper: compute() = {r} after apply"
        );
        t.reset()?;
        let t1 = Instant::now();
        let u = hotsplice_engine::undo(pid, &built.patch.meta.id, &opts)
            .with_context(|| format!("undo in stopper {n}"))?;
        let uwall = t1.elapsed();
        let ug = t.gap()?;
        let r = ug.result;
        ensure!(
            r == targets::STOPPER_BEFORE,
            "stopper: compute() = {r} after undo"
        );
        ensure!(
            a.threads == n && u.threads == n,
            "engine saw {} / {} threads, expected {n}",
            a.threads,
            u.threads
        );
        t.reset()?;
        std::thread::sleep(wall);
        let bg = t.gap()?.max_us;
        if let Some(rec) = rec {
            retried += usize::from(a.attempts > 1) + usize::from(u.attempts > 1);
            rec.push([
                ag.max_us,
                micros(a.stopped),
                micros(wall),
                bg,
                ug.max_us,
                micros(u.stopped),
                micros(uwall),
                ag.pauses,
                ag.paused_us,
                ug.pauses,
                ug.paused_us,
            ]);
        }
        Ok(())
    };
    cycle(&mut t, &mut None)?;
    let mut rows = Vec::with_capacity(reps);
    for _ in 0..reps {
        cycle(&mut t, &mut Some(&mut rows))?;
    }
    let col = |i: usize| Stat::of(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());

    let mut cli_wall = Vec::with_capacity(reps);
    let mut cli_gap = Vec::with_capacity(reps);
    for _ in 0..reps {
        t.reset()?;
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args([
                "user",
                "apply",
                "--allow-unsigned",
                "-y",
                "--pid",
                &pid.to_string(),
            ])
            .arg(&built.patch_file)
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user apply")?;
        let wall = t0.elapsed();
        let g = t.gap()?;
        let (gap, r) = (g.max_us, g.result);
        if !out.status.success() {
            bail!(
                "hotsplice user apply --pid {pid} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ensure!(
            r == targets::STOPPER_AFTER,
            "stopper: compute() = {r} after CLI apply"
        );
        hotsplice_engine::undo(pid, &built.patch.meta.id, &opts)
            .with_context(|| format!("undo in stopper {n}"))?;
        cli_wall.push(millis(wall));
        cli_gap.push(gap);
    }
    let _ = t.0.ask("q", Duration::from_millis(1));
    Ok(StopResult {
        threads: n,
        reps,
        apply_gap_us: col(0),
        apply_stopped_us: col(1),
        apply_wall_us: col(2),
        background_gap_us: col(3),
        undo_gap_us: col(4),
        undo_stopped_us: col(5),
        undo_wall_us: col(6),
        apply_pauses: col(7),
        apply_paused_us: col(8),
        undo_pauses: col(9),
        undo_paused_us: col(10),
        cli_apply_wall_ms: Stat::of(&cli_wall),
        cli_apply_gap_us: Stat::of(&cli_gap),
        retried,
    })
}

// ---------------------------------------------------------------------------
// 2. apply --all
// ---------------------------------------------------------------------------

/// Waits until every slot of the shared state file holds `want`; returns
/// how long that took.
fn wait_slots(state: &Path, want: i32, procs: &mut [Proc]) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let bytes = std::fs::read(state)?;
        let pending: Vec<usize> = bytes
            .chunks_exact(4)
            .enumerate()
            .filter(|(_, c)| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]) != want)
            .map(|(i, _)| i)
            .take(procs.len())
            .collect();
        if pending.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let i = pending[0];
            procs[i].check_alive()?;
            bail!(
                "{} of {} processes did not show {want} within 30 s (e.g. pid {})",
                pending.len(),
                procs.len(),
                procs[i].pid(),
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn bench_all(
    built: &Built,
    hotsplice: &Path,
    dir: &Path,
    count: usize,
    rounds: usize,
) -> Result<AllResult> {
    let state = dir.join("flipper-state");
    std::fs::File::create(&state)?.set_len(4 * count as u64)?;
    let mut procs = Vec::with_capacity(count);
    for i in 0..count {
        let mut cmd = Command::new(&built.exe);
        cmd.arg(&state)
            .arg(i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        procs.push(Proc::spawn(cmd)?);
    }
    wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
    let ours: HashSet<i32> = procs.iter().map(Proc::pid).collect();

    let mut apply_wall = Vec::new();
    let mut stopped = Vec::new();
    let mut flipped = Vec::new();
    let mut remove_wall = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["user", "apply", "--allow-unsigned", "-y", "--all", "--json"])
            .arg(&built.patch_file)
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user apply --all")?;
        let wall = t0.elapsed();
        if !out.status.success() {
            bail!(
                "hotsplice user apply --all failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .context("parsing the JSON report of apply --all")?;
        let mut seen = HashSet::new();
        for r in &reports {
            let pid = r["pid"].as_i64().unwrap_or(0) as i32;
            if ours.contains(&pid) {
                seen.insert(pid);
                if let Some(us) = r["stopped"].as_f64() {
                    stopped.push(us);
                }
            }
        }
        ensure!(
            seen.len() == count,
            "apply --all patched {} of our {count} processes",
            seen.len()
        );
        flipped.push(millis(wait_slots(
            &state,
            targets::FLIPPER_AFTER,
            &mut procs,
        )?));
        apply_wall.push(millis(wall));

        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["user", "remove", "-y", &built.id])
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user remove")?;
        let wall = t0.elapsed();
        if !out.status.success() {
            bail!(
                "hotsplice user remove {} failed: {}",
                built.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
        remove_wall.push(millis(wall));
    }
    // The same through the store: install, then `all upgrade` (kernel part
    // included; it has nothing to do on a host without livepatch patches).
    let vars = private_store(hotsplice, built, &dir.join("upgrade-env"))?;
    let mut upgrade_wall = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["-y", "all", "upgrade"])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice all upgrade")?;
        let wall = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains(&format!("{count} patched")),
            "all upgrade did not patch our {count} processes: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_slots(&state, targets::FLIPPER_AFTER, &mut procs)?;
        upgrade_wall.push(millis(wall));
        let out = Command::new(hotsplice)
            .args(["user", "remove", "-y", &built.id])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "remove: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
    }
    drop(procs);
    let upgrade_wall = Stat::of(&upgrade_wall);
    let apply_wall = Stat::of(&apply_wall);
    let remove_wall = Stat::of(&remove_wall);
    Ok(AllResult {
        processes: count,
        rounds,
        apply_per_process_ms: apply_wall.median / count as f64,
        apply_wall_ms: apply_wall,
        stopped_per_process_us: Stat::of(&stopped),
        all_flipped_after_ms: Stat::of(&flipped),
        remove_per_process_ms: remove_wall.median / count as f64,
        remove_wall_ms: remove_wall,
        upgrade_per_process_ms: upgrade_wall.median / count as f64,
        upgrade_wall_ms: upgrade_wall,
    })
}

// ---------------------------------------------------------------------------
// 3. Call cost
// ---------------------------------------------------------------------------

fn measure_calls(t: &mut Target, calls: u64, want: i64) -> Result<f64> {
    let a = t.ask(&format!("m {calls}"), Duration::from_secs(120))?;
    let mut it = a.split_whitespace();
    let ns: f64 = it.next().context("ns")?.parse()?;
    let v: i64 = it.next().context("value")?.parse()?;
    ensure!(v == want, "caller: work() = {v}, expected {want}");
    Ok(ns)
}

fn bench_cost(built: &Built, calls: u64, rounds: usize) -> Result<CostResult> {
    let mut t = Target::spawn(&built.exe, &[], "caller")?;
    let ready = t.line(Duration::from_secs(20))?;
    ensure!(ready == "ready", "caller: unexpected {ready:?}");
    let pid = t.pid();
    let opts = ApplyOptions::default();
    // Warm up (CPU frequency, page faults).
    measure_calls(&mut t, calls / 4 + 1, targets::CALLER_BEFORE)?;
    let mut before = Vec::with_capacity(rounds);
    let mut after = Vec::with_capacity(rounds);
    let mut diff = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let u = measure_calls(&mut t, calls, targets::CALLER_BEFORE)?;
        hotsplice_engine::apply(pid, &built.patch, &opts).context("apply to caller")?;
        let p = measure_calls(&mut t, calls, targets::CALLER_AFTER)?;
        hotsplice_engine::undo(pid, &built.patch.meta.id, &opts).context("undo in caller")?;
        before.push(u);
        after.push(p);
        diff.push(p - u);
    }
    let _ = t.ask("q", Duration::from_millis(1));
    Ok(CostResult {
        calls,
        rounds,
        unpatched_ns: Stat::of(&before),
        patched_ns: Stat::of(&after),
        difference_ns: Stat::of(&diff),
    })
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn print_human(o: &Output) {
    let m = &o.machine;
    let s = &o.settings;
    println!("hotsplice-bench");
    println!(
        "machine: {} CPUs ({}), kernel {}; hotsplice: {}",
        m.nproc, m.cpu, m.kernel, m.hotsplice
    );
    println!(
        "load average before / after: {} / {} (other load shows as background gap)",
        m.loadavg_before, m.loadavg_after
    );
    println!("all values: median (min..max) over the repetitions given");
    println!();
    println!(
        "1. Stop time of a one-function apply, {} reps each (in-process engine; µs unless noted)",
        s.reps
    );
    println!("   gap in target = largest gap seen by a thread spinning on CLOCK_MONOTONIC");
    println!(
        "   stopped = engine's Report.stopped; background = largest gap over as long, no apply"
    );
    println!(
        "{:>7}  {:<26} {:<26} {:<26} {:<26} {:<26}",
        "threads",
        "gap in target",
        "Report.stopped",
        "apply() wall",
        "background gap",
        "CLI apply wall (ms)"
    );
    for r in &o.stop {
        println!(
            "{:>7}  {:<26} {:<26} {:<26} {:<26} {:<26}",
            r.threads,
            r.apply_gap_us.show(1),
            r.apply_stopped_us.show(1),
            r.apply_wall_us.show(1),
            r.background_gap_us.show(1),
            r.cli_apply_wall_ms.show(2),
        );
    }
    println!();
    println!("   undo of the same patch, the gap during the CLI apply, and pauses (gaps >= 50 µs)");
    println!("   the spinner saw during apply | undo: median count, median total (µs)");
    println!(
        "{:>7}  {:<26} {:<26} {:<26} {:<26} {:<9} {:<19} {:>7}",
        "threads",
        "undo gap in target",
        "undo Report.stopped",
        "undo() wall",
        "CLI apply gap",
        "pauses",
        "paused total",
        "retried"
    );
    for r in &o.stop {
        println!(
            "{:>7}  {:<26} {:<26} {:<26} {:<26} {:<9} {:<19} {:>7}",
            r.threads,
            r.undo_gap_us.show(1),
            r.undo_stopped_us.show(1),
            r.undo_wall_us.show(1),
            r.cli_apply_gap_us.show(1),
            format!("{} | {}", r.apply_pauses.median, r.undo_pauses.median),
            format!(
                "{:.1} | {:.1}",
                r.apply_paused_us.median, r.undo_paused_us.median
            ),
            r.retried,
        );
    }
    println!();
    let a = &o.apply_all;
    println!(
        "2. hotsplice user apply --all over {} single-thread processes ({} round(s))",
        a.processes, a.rounds
    );
    println!(
        "   apply --all wall:       {} ms = {:.3} ms per process",
        a.apply_wall_ms.show(1),
        a.apply_per_process_ms
    );
    println!(
        "   stopped per process:    {} µs (Report.stopped, all processes of all rounds)",
        a.stopped_per_process_us.show(1)
    );
    println!(
        "   `-y all upgrade` wall:  {} ms = {:.3} ms per process (from the store)",
        a.upgrade_wall_ms.show(1),
        a.upgrade_per_process_ms
    );
    println!(
        "   all flipped:            {} ms after apply returned (targets poll every 20 ms)",
        a.all_flipped_after_ms.show(1)
    );
    println!(
        "   remove ID wall:         {} ms = {:.3} ms per process",
        a.remove_wall_ms.show(1),
        a.remove_per_process_ms
    );
    println!();
    let c = &o.call_cost;
    println!(
        "3. Cost per call, {} calls per measurement, {} rounds (ns per loop iteration)",
        if c.calls / 1_000_000 * 1_000_000 == c.calls {
            format!("{}M", c.calls / 1_000_000)
        } else {
            c.calls.to_string()
        },
        c.rounds
    );
    println!("   unpatched:              {}", c.unpatched_ns.show(3));
    println!("   patched:                {}", c.patched_ns.show(3));
    println!(
        "   patched - unpatched:    {} (per round; the jump)",
        c.difference_ns.show(3)
    );
    let d = &o.daemon;
    println!();
    println!(
        "4. hotsplice daemon, {} processes started after the patch was installed",
        d.processes
    );
    println!(
        "   exec to patched:        {} ms (daemon's log: netlink exec event to patch in)",
        d.exec_to_patched_ms.show(1)
    );
    println!(
        "   idle CPU:               {:.3} % over {:.0} s",
        d.idle_cpu_percent, d.idle_seconds
    );
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hotsplice-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 11 }).max(1);
    let count = args
        .procs
        .unwrap_or(if args.quick { 50 } else { 200 })
        .max(1);
    let calls = args
        .calls
        .unwrap_or(if args.quick { 50_000_000 } else { 200_000_000 })
        .max(1);
    let all_rounds = if args.quick { 1 } else { 3 };
    let pin = if args.no_pin { None } else { AvoidCpu::pick() };
    let hotsplice = hotsplice_bin()?;
    let mut machine = machine(&hotsplice);

    let tmp = tempfile::Builder::new()
        .prefix("hotsplice-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    progress(&format!("building targets in {}", tmp.path().display()));
    let stopper = targets::build(tmp.path(), &targets::STOPPER, &hotsplice)?;
    let flipper = targets::build(tmp.path(), &targets::FLIPPER, &hotsplice)?;
    let caller = targets::build(tmp.path(), &targets::CALLER, &hotsplice)?;

    let mut stop = Vec::new();
    for &n in &args.threads {
        progress(&format!("stop time, {n} threads, {reps} reps"));
        stop.push(bench_stop(&stopper, &hotsplice, n, reps, pin)?);
    }
    progress(&format!(
        "apply --all over {count} processes, {all_rounds} round(s)"
    ));
    let apply_all = bench_all(&flipper, &hotsplice, tmp.path(), count, all_rounds)?;
    progress(&format!("call cost, {calls} calls, {reps} rounds"));
    let call_cost = bench_cost(&caller, calls, reps)?;
    let daemon_n = if args.quick { 5 } else { 20 };
    progress(&format!("daemon, {daemon_n} new processes"));
    let idle = Duration::from_secs(if args.quick { 3 } else { 10 });
    let daemon = bench_daemon(&flipper, &hotsplice, tmp.path(), daemon_n, idle)?;

    machine.loadavg_after = loadavg();
    let out = Output {
        machine,
        settings: Settings {
            reps,
            threads: args.threads.clone(),
            processes: count,
            all_rounds,
            calls,
            spinner_cpu: pin,
        },
        stop,
        apply_all,
        call_cost,
        daemon,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_human(&out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_median_odd_and_even() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stat::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }
}
