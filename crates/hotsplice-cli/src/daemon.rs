//! `hotsplice daemon`: keeps every process patched, including processes
//! started later. Listens to the kernel's process-event connector (netlink)
//! for `exec`; a new process is checked at once and then at short, growing
//! intervals while its dynamic loader maps libraries, and patched as soon
//! as it maps a target. A full scan every `rescan_interval` seconds catches
//! `dlopen` and anything the event stream missed; without netlink (no
//! CAP_NET_ADMIN, or a kernel without the connector) the scans alone run.

use crate::context::{comm, Ctx};
use crate::output::esc;
use crate::user::{current_patches, upgrade_process, Outcome};
use anyhow::Result;
use clap::Args;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DaemonArgs {
    /// Do one recovery and one full scan, then exit (e.g. at boot).
    #[arg(long)]
    once: bool,
    /// Seconds between full scans (default: the configuration's daemon.rescan_interval).
    #[arg(long)]
    rescan: Option<f64>,
    /// Do not use the netlink process-event connector; scan only.
    #[arg(long)]
    no_netlink: bool,
    /// Use installed patches without a signature (development only):
    /// every patch is verified again on use, whatever the store says.
    #[arg(long)]
    allow_unsigned: bool,
}

/// How long after an exec a process is watched for libraries to appear.
const WATCH_FOR: Duration = Duration::from_secs(2);

pub fn run(ctx: &Ctx, a: DaemonArgs) -> Result<bool> {
    ctx.recover()?;
    let opts = ctx.options(None);
    let mut patches = current_patches(ctx, a.allow_unsigned)?;
    let mut blacklist = ctx.blacklist()?;
    let mut stamp_seen = store_stamp(ctx);
    let log = |o: &Outcome, since: Option<Duration>| match o {
        Outcome::Patched {
            pid,
            id,
            replaced,
            stopped_us,
        } => outln!(
            "patched pid {pid} ({}) with {}{}{}; threads stopped {stopped_us} us",
            esc(&comm(*pid)),
            esc(id),
            replaced
                .as_ref()
                .map(|r| format!(" replacing {}", esc(r)))
                .unwrap_or_default(),
            since
                .map(|d| format!(", {:.1} ms after exec", d.as_secs_f64() * 1e3))
                .unwrap_or_default()
        ),
        Outcome::Failed { pid, id, why } => {
            errln!(
                "failed: {} in pid {pid} ({}): {}",
                esc(id),
                esc(&comm(*pid)),
                esc(why)
            )
        }
        Outcome::Skipped { pid, why } => outln!("skipped pid {pid}: {}", esc(why)),
        _ => {}
    };
    let scan = |patches: &[_], blacklist: &_| {
        for pid in hotsplice_process::all_pids() {
            if crate::terminate::requested().is_some() {
                return;
            }
            for o in upgrade_process(ctx, pid, patches, blacklist, &opts, false) {
                log(&o, None);
            }
        }
    };
    scan(&patches, &blacklist);
    if a.once {
        return Ok(true);
    }
    let rescan = Duration::from_secs_f64(
        a.rescan
            .unwrap_or(ctx.config.daemon.rescan_interval)
            .max(0.05),
    );
    let netlink = if a.no_netlink || !ctx.config.daemon.netlink {
        None
    } else {
        match ProcEvents::open() {
            Ok(n) => Some(n),
            Err(e) => {
                errln!("hotsplice daemon: no process events ({e}); scanning every {rescan:?}");
                None
            }
        }
    };
    outln!(
        "hotsplice daemon: watching {} installed patch(es){}",
        patches.len(),
        if netlink.is_some() {
            ", process events on"
        } else {
            ""
        }
    );
    // New processes under watch: pid -> (exec time, next check, interval).
    let mut watch: HashMap<i32, (Instant, Instant, Duration)> = HashMap::new();
    let mut next_scan = Instant::now() + rescan;
    loop {
        if let Some(sig) = crate::terminate::requested() {
            outln!(
                "hotsplice daemon: stopping on {}; no operation was in flight",
                crate::terminate::name(sig)
            );
            return Ok(true);
        }
        let now = Instant::now();
        let next_watch = watch.values().map(|w| w.1).min();
        let wake = next_watch.map_or(next_scan, |w| w.min(next_scan));
        let timeout = wake.saturating_duration_since(now);
        match &netlink {
            Some(n) => {
                for pid in n.wait(timeout)? {
                    let t = Instant::now();
                    watch.insert(pid, (t, t, Duration::from_millis(1)));
                }
            }
            // In short steps, so that a termination request is seen soon.
            None => std::thread::sleep(timeout.min(Duration::from_millis(100))),
        }
        let now = Instant::now();
        let due: Vec<i32> = watch
            .iter()
            .filter(|(_, w)| w.1 <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            if crate::terminate::requested().is_some() {
                break;
            }
            let (born, _, interval) = watch[&pid];
            let outcomes = upgrade_process(ctx, pid, &patches, &blacklist, &opts, false);
            for o in &outcomes {
                log(o, Some(born.elapsed()));
            }
            let patched = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Patched { .. }));
            if patched || now.duration_since(born) > WATCH_FOR || !alive(pid) {
                watch.remove(&pid);
            } else {
                let next = (interval * 2).min(Duration::from_millis(200));
                watch.insert(pid, (born, now + interval, next));
            }
        }
        if now >= next_scan {
            let stamp = store_stamp(ctx);
            if stamp != stamp_seen {
                stamp_seen = stamp;
                match (current_patches(ctx, a.allow_unsigned), ctx.blacklist()) {
                    (Ok(p), Ok(b)) => {
                        patches = p;
                        blacklist = b;
                    }
                    (Err(e), _) | (_, Err(e)) => errln!("hotsplice daemon: reload: {e:#}"),
                }
            }
            scan(&patches, &blacklist);
            next_scan = Instant::now() + rescan;
        }
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn store_stamp(ctx: &Ctx) -> Option<std::time::SystemTime> {
    let a = std::fs::metadata(ctx.paths.state_dir.join("store.json"))
        .and_then(|m| m.modified())
        .ok();
    let b = std::fs::read_dir(ctx.paths.blacklist_dir())
        .ok()
        .and_then(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
                .max()
        });
    a.max(b)
}

/// The kernel's process-event connector: exec events, by netlink.
struct ProcEvents {
    fd: std::os::fd::OwnedFd,
}

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

impl ProcEvents {
    fn open() -> std::io::Result<ProcEvents> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor we own.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        addr.nl_pid = 0;
        // SAFETY: addr is a valid sockaddr_nl.
        let r = unsafe {
            libc::bind(
                raw,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&4u16.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: sending a buffer we own.
        let r = unsafe { libc::send(raw, msg.as_ptr() as *const _, msg.len(), 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ProcEvents { fd })
    }

    /// Wait up to `timeout` for events; the tgids that exec'd.
    fn wait(&self, timeout: Duration) -> std::io::Result<Vec<i32>> {
        use std::os::fd::AsRawFd;
        let raw = self.fd.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe {
                libc::recv(
                    raw,
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            let msg = &buf[..n as usize];
            let mut pos = 0;
            while pos + NLMSG_HDRLEN <= msg.len() {
                let len = u32::from_ne_bytes(msg[pos..pos + 4].try_into().unwrap()) as usize;
                if len < NLMSG_HDRLEN || pos + len > msg.len() {
                    break;
                }
                let ev = pos + NLMSG_HDRLEN + CN_MSG_LEN;
                if ev + 24 <= pos + len {
                    let what = u32::from_ne_bytes(msg[ev..ev + 4].try_into().unwrap());
                    if what == PROC_EVENT_EXEC {
                        let tgid = i32::from_ne_bytes(msg[ev + 20..ev + 24].try_into().unwrap());
                        out.push(tgid);
                    }
                }
                pos += (len + 3) & !3;
            }
        }
        Ok(out)
    }
}
