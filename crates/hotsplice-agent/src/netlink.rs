//! The kernel's process-event connector (netlink): `exec` events, so the
//! daemon sees new processes at once.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, recv, send, MsgFlags, NetlinkAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A connection to the process-event connector.
pub struct ProcEvents {
    fd: OwnedFd,
}

/// `NETLINK_CONNECTOR`: nix names no constant for this protocol.
const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_DONE: u16 = 3;
/// `struct cn_msg`: id (idx, val), seq, ack, len, flags.
const CN_MSG_LEN: usize = 20;

impl ProcEvents {
    /// Subscribe to process events (needs CAP_NET_ADMIN).
    pub fn open() -> std::io::Result<ProcEvents> {
        // SAFETY: socket() takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns, so OwnedFd may own it.
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
        // SAFETY: see above; `raw` is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC))?;
        send(fd.as_raw_fd(), &listen_message(), MsgFlags::empty())?;
        Ok(ProcEvents { fd })
    }

    /// Wait up to `timeout` for events; the thread-group ids that exec'd.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<Vec<i32>> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) if n > 0 => {}
            // Timeout, or interrupted by a termination request.
            _ => return Ok(Vec::new()),
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            out.extend(exec_events(&buf[..n]));
        }
        Ok(out)
    }
}

/// The `PROC_CN_MCAST_LISTEN` request: a netlink header, a `cn_msg`, the
/// operation.
fn listen_message() -> Vec<u8> {
    let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&4u16.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The tgids of the exec events in one datagram (malformed parts end it).
fn exec_events(msg: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + NLMSG_HDRLEN <= msg.len() {
        let Some(len) = u32_at(msg, pos).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDRLEN || pos + len > msg.len() {
            break;
        }
        // struct proc_event: what, cpu, timestamp (8), then for exec:
        // process_pid, process_tgid.
        let ev = pos + NLMSG_HDRLEN + CN_MSG_LEN;
        if ev + 24 <= pos + len && u32_at(msg, ev) == Some(PROC_EVENT_EXEC) {
            if let Some(tgid) = u32_at(msg, ev + 20) {
                out.push(tgid as i32);
            }
        }
        pos += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, tgid: u32) -> Vec<u8> {
        let len = NLMSG_HDRLEN + CN_MSG_LEN + 24;
        let mut m = vec![0u8; len];
        m[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        let ev = NLMSG_HDRLEN + CN_MSG_LEN;
        m[ev..ev + 4].copy_from_slice(&what.to_ne_bytes());
        m[ev + 20..ev + 24].copy_from_slice(&tgid.to_ne_bytes());
        m
    }

    #[test]
    fn exec_events_are_read_and_bad_lengths_end_the_datagram() {
        let mut two = event(PROC_EVENT_EXEC, 42);
        two.extend(event(1, 7)); // a fork: not an exec
        two.extend(event(PROC_EVENT_EXEC, 43));
        assert_eq!(exec_events(&two), vec![42, 43]);
        let mut bad = event(PROC_EVENT_EXEC, 42);
        bad[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(exec_events(&bad).is_empty());
        assert!(exec_events(&[1, 2, 3]).is_empty());
    }
}
