//! `hotsplice-bench-fleet`: how many machines one `hotsplice-server` serves.
//!
//! ```text
//! cargo build --release -p hotsplice-bench -p hotsplice-server
//! target/release/hotsplice-bench-fleet [--quick] [--machines N] [--rate R]
//!     [--seconds S] [--threads T] [--instances 1|2] [--database postgres://…] [--json]
//! ```
//!
//! On loopback, with the real server binary (next to this one, or
//! `$HOTSPLICE_SERVER_BIN`) started on a fresh data directory:
//!
//! 1. **Publish** 40 signed patches (user patches for build-ids of a pool
//!    of 400 "distribution" objects, kernel patches for 8 kernel builds)
//!    into the `stable` channel, so every feed the server signs lists real
//!    entries.
//! 2. **Register** N machines (100,000; `--quick` 5,000) through the
//!    registration call, T threads at once. Timed: registrations/s.
//! 3. **Check in** at a sustained, paced rate R (2,000/s) for S seconds
//!    (30; `--quick` 10): each check-in is a realistic report (a kernel and
//!    50 userspace objects drawn from the pool, some patches applied) from
//!    the next machine in turn, answered with its signed feed. Each of T
//!    threads sends its share on a fixed schedule; a request sent late
//!    because the server is slow is timed from when it *should* have been
//!    sent (no coordinated omission). Reported: achieved rate, latency
//!    median / p99 / max, errors; and where the CPU went meanwhile — CPU
//!    seconds of this load generator and of the server(s) and their shares
//!    of the machine, the server's CPU and context switches per check-in,
//!    the load average before and after (other work on the machine).
//! 4. **Describe**: Uptrack's `GET /api/1/machine/UUID/describe` for random
//!    machines, T threads for 5 s: latency median / p99.
//! 5. **Memory**: the largest resident set of each server process (VmHWM).
//! 6. With `--dashboard`: the dashboard's pages and `/metrics` with the N
//!    machines in the store, one request at a time (20 each): the overview
//!    page, a filtered list's first page (out of date, in one kernel), a
//!    random machine's page, and `/metrics`. Medians printed.
//!
//! Every process started is killed and reaped at the end, also on panic.
//! Nothing here asserts on time; the figures are printed.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hotsplice_fleet::api;
use hotsplice_fleet::report::{
    AppliedKernelPatch, KernelState, ObjectInUse, ProcessPatches, Report, REPORT_FORMAT,
};
use hotsplice_testsupport::{Options, Output, Stream, Target};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load on hotsplice-server: registrations, check-ins, describe")]
struct Args {
    /// Smaller and shorter: 5,000 machines, 10 s of check-ins.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    machines: Option<usize>,
    /// Check-ins per second to sustain.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of check-ins.
    #[arg(long)]
    seconds: Option<u64>,
    /// Client threads.
    #[arg(long, default_value_t = 64)]
    threads: usize,
    /// Server instances (2 needs --database: they share it).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// A PostgreSQL URL instead of the embedded SQLite store.
    #[arg(long)]
    database: Option<String>,
    /// Userspace objects per report.
    #[arg(long, default_value_t = 50)]
    objects: usize,
    #[arg(long)]
    json: bool,
    /// Also time the dashboard's pages and /metrics.
    #[arg(long)]
    dashboard: bool,
}

const POOL: usize = 400;
const KERNELS: usize = 8;

fn build_id(kind: &str, i: usize) -> String {
    hotsplice_fleet::sha256_hex(format!("{kind}{i}").as_bytes())[..40].to_string()
}

/// A small deterministic generator, so that machine `m`'s report is the
/// same every time without keeping 100,000 reports in memory.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

struct Machine {
    uuid: String,
    key: String,
}

fn report(m: usize, uuid: &str, objects: usize, patch_ids: &[String]) -> Report {
    let k = (mix(m as u64) as usize) % KERNELS;
    let objs: Vec<ObjectInUse> = (0..objects)
        .map(|j| {
            let o = (mix((m * 131 + j) as u64) as usize) % POOL;
            ObjectInUse {
                path: format!("/usr/lib/x86_64-linux-gnu/lib{o}.so.1"),
                build_id: build_id("obj", o),
                processes: 1 + (j as u32 % 7),
            }
        })
        .collect();
    let applied = if m % 3 == 0 && !patch_ids.is_empty() {
        vec![patch_ids[m % patch_ids.len()].clone()]
    } else {
        vec![]
    };
    Report {
        format: REPORT_FORMAT,
        uuid: uuid.into(),
        hostname: format!("host{m}.example.com"),
        addresses: vec![format!(
            "10.{}.{}.{}",
            (m >> 16) & 255,
            (m >> 8) & 255,
            m & 255
        )],
        client_version: env!("CARGO_PKG_VERSION").into(),
        autoinstall: true,
        made_at: hotsplice_fleet::now(),
        kernel: KernelState {
            original_release: format!("6.1.0-{k}-amd64"),
            effective_release: format!("6.1.0-{k}-amd64"),
            build_id: build_id("kernel", k),
            livepatch: true,
            applied: applied
                .iter()
                .take(1)
                .map(|id| AppliedKernelPatch {
                    id: id.clone(),
                    description: String::new(),
                })
                .collect(),
        },
        objects: objs,
        processes: (0..3)
            .map(|p| ProcessPatches {
                pid: 1000 + p,
                comm: format!("svc{p}"),
                patches: applied.clone(),
            })
            .collect(),
        last_run: None,
        mmap_min_addr: Some(65536),
    }
}

struct Server {
    targets: Vec<Target>,
    urls: Vec<String>,
    access_key: String,
    api_user: String,
    api_key: String,
    _dir: tempfile::TempDir,
}

fn server_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOTSPLICE_SERVER_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("hotsplice-server");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p hotsplice-server) or set HOTSPLICE_SERVER_BIN",
            p.display()
        );
    }
    Ok(p)
}

fn field(out: &str, name: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("`hotsplice-server init` printed no `{name}:` line:\n{out}"))
}

fn start_server(args: &Args, publisher: &Path) -> Result<Server> {
    let bin = server_bin()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut init = Command::new(&bin);
    init.arg("init").arg("--data").arg(&data);
    if let Some(db) = &args.database {
        init.arg("--database").arg(db);
    }
    let out = init.output().context("hotsplice-server init")?;
    if !out.status.success() {
        bail!(
            "hotsplice-server init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let api_user = field(&text, "api-user")?;
    let api_key = field(&text, "api-key")?;
    let access_key = field(&text, "access-key")?;
    let mut add = Command::new(&bin);
    add.args(["key", "add-publisher", "--data"]).arg(&data);
    if let Some(db) = &args.database {
        add.arg("--database").arg(db);
    }
    let st = add.arg(publisher).status()?;
    if !st.success() {
        bail!("hotsplice-server key add-publisher failed");
    }
    let mut targets = Vec::new();
    let mut urls = Vec::new();
    for i in 0..args.instances {
        let mut run = Command::new(&bin);
        run.arg("run")
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(db) = &args.database {
            run.arg("--database").arg(db);
        }
        run.env("RUST_LOG", "warn");
        let opts = Options {
            stdin: false,
            stdout: Output::Lines,
            stderr: Output::Inherit,
            die_with_parent: true,
        };
        let mut t = Target::start(run, &format!("hotsplice-server #{i}"), opts)?;
        let line = t.wait_for(Duration::from_secs(30), |l| l.contains("listening on"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http"))
            .ok_or_else(|| anyhow!("no URL in {line:?}"))?
            .to_string();
        let _ = t.mark(Stream::Stdout);
        targets.push(t);
        urls.push(url);
    }
    Ok(Server {
        targets,
        urls,
        access_key,
        api_user,
        api_key,
        _dir: dir,
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_idle_connections_per_host(4)
        .build()
}

fn publish(s: &Server, key: &hotsplice_trust::SecretKey) -> Result<Vec<String>> {
    let a = agent();
    let mut ids = Vec::new();
    for i in 0..40usize {
        let mut meta = hotsplice_patch::PatchMeta::example();
        let id = format!("ld{:06}", i);
        meta.id = hotsplice_patch::PatchId::unchecked(id.clone());
        meta.description = format!("CVE-2026-{:05}: load test fix {i}", 10000 + i);
        meta.cves = vec![format!("CVE-2026-{:05}", 10000 + i)];
        if i < KERNELS {
            meta.target.kind = hotsplice_patch::ObjectKind::Kernel;
            meta.target.name = format!("vmlinux 6.1.0-{i}-amd64");
            meta.target.build_id = hotsplice_patch::BuildId::unchecked(build_id("kernel", i));
        } else {
            let o = (i * 10) % POOL;
            meta.target.name = format!("lib{o}.so.1");
            meta.target.build_id = hotsplice_patch::BuildId::unchecked(build_id("obj", o));
        }
        let bytes = hotsplice_patch::Patch {
            meta,
            image: vec![0xc3; 64],
        }
        .to_bytes();
        let signed = hotsplice_trust::sign_file(&bytes, key)?;
        a.post(&format!("{}{}?channel=stable", s.urls[0], api::PUBLISH))
            .set(api::USER_HEADER, &s.api_user)
            .set(api::KEY_HEADER, &s.api_key)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&signed)
            .map_err(|e| anyhow!("publish {id}: {e}"))?;
        ids.push(id);
    }
    Ok(ids)
}

fn register(s: &Server, n: usize, threads: usize) -> Result<(Vec<Machine>, f64)> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let parts: Vec<Result<Vec<(usize, Machine)>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let next = &next;
                let url = s.urls[t % s.urls.len()].clone();
                sc.spawn(move || -> Result<Vec<(usize, Machine)>> {
                    let a = agent();
                    let mut out = Vec::new();
                    loop {
                        let m = next.fetch_add(1, Ordering::Relaxed);
                        if m >= n {
                            return Ok(out);
                        }
                        let req = api::RegisterRequest {
                            access_key: s.access_key.clone(),
                            hostname: format!("host{m}.example.com"),
                            group: None,
                            uuid: None,
                        };
                        let r: api::RegisterResponse = a
                            .post(&format!("{url}{}", api::REGISTER))
                            .send_json(&req)
                            .map_err(|e| anyhow!("register machine {m}: {e}"))?
                            .into_json()?;
                        out.push((
                            m,
                            Machine {
                                uuid: r.uuid,
                                key: r.machine_key,
                            },
                        ));
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut all: Vec<(usize, Machine)> = Vec::with_capacity(n);
    for p in parts {
        all.extend(p?);
    }
    all.sort_by_key(|(m, _)| *m);
    Ok((all.into_iter().map(|(_, m)| m).collect(), n as f64 / secs))
}

#[derive(Serialize)]
struct Latency {
    count: usize,
    errors: u64,
    per_second: f64,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency(mut ms: Vec<f64>, errors: u64, secs: f64) -> Latency {
    ms.sort_by(f64::total_cmp);
    let q = |f: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() as f64 - 1.0) * f).round() as usize]
        }
    };
    Latency {
        count: ms.len(),
        errors,
        per_second: ms.len() as f64 / secs,
        median_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: q(1.0),
    }
}

fn checkins(
    s: &Server,
    machines: &[Machine],
    args: &Args,
    secs: u64,
    ids: &[String],
) -> Result<Latency> {
    let threads = args.threads;
    let per_thread = args.rate as f64 / threads as f64;
    let errors = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None::<String>);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let samples: Vec<Vec<f64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (errors, first_error, next) = (&errors, &first_error, next.clone());
                let url = s.urls[t % s.urls.len()].clone();
                sc.spawn(move || {
                    let a = agent();
                    let mut out = Vec::new();
                    let start = t0 + Duration::from_secs_f64(t as f64 / args.rate as f64);
                    for i in 0u64.. {
                        let due = start + Duration::from_secs_f64(i as f64 / per_thread);
                        if due >= end {
                            break;
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let m = next.fetch_add(1, Ordering::Relaxed) % machines.len();
                        let mc = &machines[m];
                        let body = report(m, &mc.uuid, args.objects, ids);
                        let r = a
                            .post(&format!("{url}{}", api::checkin(&mc.uuid)))
                            .set("Authorization", &format!("Bearer {}", mc.key))
                            .send_json(&body)
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                r.into_json::<api::CheckinResponse>()
                                    .map_err(|e| e.to_string())
                            });
                        match r {
                            Ok(_) => out.push(due.elapsed().as_secs_f64() * 1e3),
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert(e);
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = first_error.lock().unwrap().take() {
        eprintln!("first check-in error: {e}");
    }
    Ok(latency(
        samples.concat(),
        errors.load(Ordering::Relaxed),
        secs,
    ))
}

fn describes(s: &Server, machines: &[Machine], threads: usize, secs: u64) -> Latency {
    let errors = AtomicU64::new(0);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let samples: Vec<Vec<f64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let errors = &errors;
                let url = s.urls[t % s.urls.len()].clone();
                sc.spawn(move || {
                    let a = agent();
                    let mut out = Vec::new();
                    let mut i = t as u64;
                    while Instant::now() < end {
                        i += 1;
                        let m = (mix(i * 7919) as usize) % machines.len();
                        let t1 = Instant::now();
                        let r = a
                            .get(&format!(
                                "{url}/api/1/machine/{}/describe",
                                machines[m].uuid
                            ))
                            .set(api::USER_HEADER, &s.api_user)
                            .set(api::KEY_HEADER, &s.api_key)
                            .call()
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.into_string().map_err(|e| e.to_string()));
                        match r {
                            Ok(_) => out.push(t1.elapsed().as_secs_f64() * 1e3),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    latency(
        samples.concat(),
        errors.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    )
}

/// CPU seconds (user + system) a process has used (`PID` or `self`).
fn cpu_secs(pid: &str) -> f64 {
    hotsplice_testsupport::proc::cpu_ticks(pid)
        .map(|t| t as f64 / hotsplice_testsupport::proc::clock_ticks_per_second())
        .unwrap_or(f64::NAN)
}

/// Context switches (voluntary and not) of every thread of a process so
/// far: the hand-offs between its threads show here.
fn context_switches(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The 1-minute load average.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Where the CPU went during the check-ins: the load generator (this
/// process) and the servers, as shares of the machine's CPU time.
#[derive(Serialize)]
struct CpuShare {
    seconds: f64,
    /// CPU seconds of the load generator, and its share of all CPUs.
    client_cpu_s: f64,
    client_share: f64,
    server_cpu_s: f64,
    server_share: f64,
    /// Context switches of the servers' threads per check-in.
    server_switches_per_checkin: f64,
    /// 1-minute load average before and after (other work on the machine).
    load_before: f64,
    load_after: f64,
}

fn hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[derive(Serialize)]
struct Out {
    store: String,
    instances: usize,
    machines: usize,
    objects_per_report: usize,
    target_rate: u64,
    threads: usize,
    registrations_per_second: f64,
    checkin: Latency,
    checkin_cpu: CpuShare,
    describe: Latency,
    server_max_rss_mib: Vec<f64>,
    nproc: usize,
    dashboard: Option<Vec<(String, Latency)>>,
}

/// The dashboard's pages, timed one at a time.
fn dashboard(s: &Server, machines: &[Machine]) -> Result<Vec<(String, Latency)>> {
    use std::io::Write;
    let data = s._dir.path().join("data");
    let pw = "bench-password-1";
    let mut c = Command::new(server_bin()?)
        .args(["user", "add", "--data"])
        .arg(&data)
        .args(["bench", "--role", "read-only"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("hotsplice-server user add")?;
    writeln!(c.stdin.take().context("stdin")?, "{pw}")?;
    if !c.wait()?.success() {
        bail!("hotsplice-server user add failed");
    }
    let url = &s.urls[0];
    let a = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(120))
        .build();
    let r = match a
        .post(&format!("{url}/ui/login"))
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string(&format!("user=bench&password={pw}"))
    {
        Ok(r) => r,
        Err(ureq::Error::Status(303, r)) => r,
        Err(e) => bail!("dashboard login: {e}"),
    };
    let cookie = r
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .context("no session cookie")?
        .to_string();
    let time = |path: &dyn Fn(usize) -> String, api: bool| -> Latency {
        let mut out = Vec::new();
        let mut errors = 0;
        let t0 = Instant::now();
        for i in 0..20 {
            let p = path(i);
            let t1 = Instant::now();
            let mut req = a.get(&format!("{url}{p}"));
            req = if api {
                req.set(api::USER_HEADER, &s.api_user)
                    .set(api::KEY_HEADER, &s.api_key)
            } else {
                req.set("Cookie", &cookie)
            };
            match req.call().map(|r| r.into_string()) {
                Ok(Ok(_)) => out.push(t1.elapsed().as_secs_f64() * 1e3),
                _ => errors += 1,
            }
        }
        latency(out, errors, t0.elapsed().as_secs_f64())
    };
    let n = machines.len();
    Ok(vec![
        ("overview page".into(), time(&|_| "/ui/".into(), false)),
        (
            "filtered list, page 1".into(),
            time(
                &|_| "/ui/?status=outofdate&kernel=6.1.0-3-amd64".into(),
                false,
            ),
        ),
        (
            "machine page".into(),
            time(
                &|i| {
                    format!(
                        "/ui/machines/{}",
                        machines[(mix(i as u64 + 17) as usize) % n].uuid
                    )
                },
                false,
            ),
        ),
        ("/metrics".into(), time(&|_| "/metrics".into(), true)),
    ])
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.instances > 1 && args.database.is_none() {
        bail!("--instances 2 needs --database postgres://… (the instances share it)");
    }
    let n = args
        .machines
        .unwrap_or(if args.quick { 5_000 } else { 100_000 });
    let secs = args.seconds.unwrap_or(if args.quick { 10 } else { 30 });
    let keydir = tempfile::tempdir()?;
    let key = hotsplice_trust::SecretKey::generate()?;
    hotsplice_trust::write_key_pair(keydir.path(), "publisher", &key)?;
    let mut server = start_server(&args, &keydir.path().join("publisher.pub"))?;
    eprintln!("server(s) at {}", server.urls.join(", "));
    let ids = publish(&server, &key)?;
    eprintln!("registering {n} machines ...");
    let (machines, reg_rate) = register(&server, n, args.threads)?;
    eprintln!(
        "{reg_rate:.0} registrations/s; check-ins at {}/s for {secs} s ...",
        args.rate
    );
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pids: Vec<String> = server.targets.iter().map(|t| t.pid().to_string()).collect();
    let servers_cpu = || pids.iter().map(|p| cpu_secs(p)).sum::<f64>();
    let switches = || pids.iter().map(|p| context_switches(p)).sum::<u64>();
    let (load_before, c0, s0, w0, t0) = (
        load1(),
        cpu_secs("self"),
        servers_cpu(),
        switches(),
        Instant::now(),
    );
    let checkin = checkins(&server, &machines, &args, secs, &ids)?;
    let wall = t0.elapsed().as_secs_f64();
    let (c1, s1, w1) = (cpu_secs("self"), servers_cpu(), switches());
    let checkin_cpu = CpuShare {
        seconds: wall,
        client_cpu_s: c1 - c0,
        client_share: (c1 - c0) / (wall * nproc as f64),
        server_cpu_s: s1 - s0,
        server_share: (s1 - s0) / (wall * nproc as f64),
        server_switches_per_checkin: w1.saturating_sub(w0) as f64 / checkin.count.max(1) as f64,
        load_before,
        load_after: load1(),
    };
    eprintln!("describe for 5 s ...");
    let describe = describes(&server, &machines, args.threads.min(16), 5);
    let dash = if args.dashboard {
        eprintln!("dashboard pages ...");
        Some(dashboard(&server, &machines)?)
    } else {
        None
    };
    let rss: Vec<f64> = server.targets.iter().map(|t| hwm_mib(t.pid())).collect();
    for t in &mut server.targets {
        let _ = t.kill();
        let _ = t.wait();
    }
    let out = Out {
        store: if args.database.is_some() {
            "postgresql".into()
        } else {
            "sqlite".into()
        },
        instances: args.instances,
        machines: n,
        objects_per_report: args.objects,
        target_rate: args.rate,
        threads: args.threads,
        registrations_per_second: reg_rate,
        checkin,
        checkin_cpu,
        describe,
        server_max_rss_mib: rss,
        nproc,
        dashboard: dash,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "hotsplice-server under load: {} store, {} instance(s), {} machines, {} objects/report, {} CPUs",
        out.store, out.instances, out.machines, out.objects_per_report, out.nproc
    );
    println!(
        "  registrations        {:>10.0} /s",
        out.registrations_per_second
    );
    let row = |name: &str, l: &Latency| {
        println!(
            "  {name:<20} {:>10.0} /s  median {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  ({} ok, {} errors)",
            l.per_second, l.median_ms, l.p99_ms, l.max_ms, l.count, l.errors
        )
    };
    row(
        &format!("check-ins (aim {})", out.target_rate),
        &out.checkin,
    );
    let c = &out.checkin_cpu;
    println!(
        "  check-in CPU         load generator {:.1} s ({:.0} % of {} CPUs), server(s) {:.1} s ({:.0} %, {:.2} ms a check-in, {:.1} context switches a check-in); load average {:.2} before, {:.2} after",
        c.client_cpu_s,
        c.client_share * 100.0,
        out.nproc,
        c.server_cpu_s,
        c.server_share * 100.0,
        c.server_cpu_s * 1e3 / out.checkin.count.max(1) as f64,
        c.server_switches_per_checkin,
        c.load_before,
        c.load_after
    );
    row("describe", &out.describe);
    for (name, l) in out.dashboard.iter().flatten() {
        row(name, l);
    }
    println!(
        "  server max RSS       {} MiB",
        out.server_max_rss_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    Ok(())
}
