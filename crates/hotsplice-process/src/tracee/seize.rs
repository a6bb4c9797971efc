//! Attaching: `PTRACE_SEIZE` of every thread of a process, found in /proc/PID/task until no
//! unseized thread remains (threads created meanwhile are auto-attached through
//! `PTRACE_O_TRACECLONE`).

use std::collections::HashSet;
use std::marker::PhantomData;

use nix::errno::Errno;

use super::state::{Book, St, Thread};
use super::Tracee;
use crate::sys::{self, perr};
use crate::{procfs, Error, Pid, Result};

impl Tracee {
    /// Seize every thread of `pid` without stopping it.
    ///
    /// Fails with [`Error::NoSuchProcess`], [`Error::AlreadyTraced`] (naming the tracer) or
    /// [`Error::PermissionDenied`]. Re-reads /proc/PID/task until no unseized thread remains.
    pub fn seize(pid: Pid) -> Result<Tracee> {
        if pid <= 0 || std::fs::metadata(format!("/proc/{pid}/task")).is_err() {
            return Err(Error::NoSuchProcess { pid });
        }
        if let Some(t) = procfs::tracer_pid(pid)? {
            return Err(Error::AlreadyTraced {
                pid,
                tracer_pid: t,
                tracer_name: procfs::process_name(t),
            });
        }
        let me = sys::gettid();
        // Dropped on every error below: that detaches what was seized so far.
        let mut tr = Tracee {
            book: Book::new(pid),
            stub: None,
            mem: None,
            _not_send: PhantomData,
        };
        let mut seen: HashSet<Pid> = HashSet::new();
        loop {
            let tids = match procfs::thread_ids(pid) {
                Ok(t) => t,
                Err(Error::NoSuchProcess { .. }) if tr.book.threads.is_empty() => {
                    return Err(Error::NoSuchProcess { pid })
                }
                Err(Error::NoSuchProcess { .. }) => return Err(tr.book.process_gone()),
                Err(e) => return Err(e),
            };
            let mut new = false;
            // Seize the leader first so that an EPERM on it is reported as such.
            let mut tids = tids;
            if let Some(p) = tids.iter().position(|&t| t == pid) {
                tids.swap(0, p);
            }
            for tid in tids {
                if !seen.insert(tid) {
                    continue;
                }
                new = true;
                match sys::seize(tid, true) {
                    Ok(_) => tr.book.threads.push(Thread {
                        tid,
                        st: St::Running,
                        hot: false,
                    }),
                    Err(Errno::ESRCH) => {
                        if tid == pid && tr.book.threads.is_empty() {
                            return Err(Error::NoSuchProcess { pid });
                        }
                    }
                    Err(Errno::EPERM) => match procfs::tracer_of(pid, tid) {
                        // Auto-attached because its creator was already seized by us.
                        Ok(Some(t)) if t == me => tr.book.threads.push(Thread {
                            tid,
                            st: St::AwaitInitial,
                            hot: false,
                        }),
                        Ok(Some(t)) => {
                            return Err(Error::AlreadyTraced {
                                pid,
                                tracer_pid: t,
                                tracer_name: procfs::process_name(t),
                            })
                        }
                        Ok(None) => match procfs::thread_state(pid, tid) {
                            Some('Z') | Some('X') | None => {
                                if tid == pid {
                                    tr.book.leader_zombie = true;
                                }
                            }
                            Some(_) => {
                                return Err(Error::PermissionDenied {
                                    pid,
                                    uid_of_target: procfs::target_uid(pid),
                                })
                            }
                        },
                        Err(_) => {}
                    },
                    Err(e) => return Err(perr("PTRACE_SEIZE", tid, e)),
                }
            }
            if !new {
                break;
            }
        }
        if tr.book.threads.is_empty() {
            tr.book.finished = true;
            return Err(Error::NoSuchProcess { pid });
        }
        tracing::debug!(pid, threads = tr.book.threads.len(), "seized");
        tr.book.settle_initial()?;
        tr.service_events()?;
        Ok(tr)
    }
}
