//! Result lines to the systemd journal with structured fields.
//!
//! When hotsplice runs under systemd with its standard output or error
//! connected to the journal (`JOURNAL_STREAM` names that stream, see
//! systemd.exec(5)), each line that says what happened to one patch on one
//! target is sent to the journal's native socket instead of the stream,
//! with the same text as `MESSAGE=` and the fields `HOTSPLICE_PATCH_ID=`,
//! `HOTSPLICE_TARGET=` (`kernel RELEASE` or `pid N (COMM)`),
//! `HOTSPLICE_RESULT=` (`applied`, `removed`, `re-applied`, `failed`, ...)
//! and, for a process, `HOTSPLICE_PID=` (docs/journal.md). Anywhere else
//! (a terminal, a pipe, a file), or when the socket cannot be written, the
//! line is printed as before.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::OnceLock;

/// The journal's native protocol socket.
const SOCKET: &str = "/run/systemd/journal/socket";

/// What one result line is about.
pub struct Record<'a> {
    pub patch_id: &'a str,
    pub target: Target<'a>,
    pub result: &'a str,
}

pub enum Target<'a> {
    Kernel(&'a str),
    Process { pid: i32, comm: &'a str },
}

impl Target<'_> {
    fn describe(&self) -> String {
        match self {
            Target::Kernel(release) => format!("kernel {release}"),
            Target::Process { pid, comm } => format!("pid {pid} ({comm})"),
        }
    }
}

/// Which stream a line is printed on when it does not go to the journal.
#[derive(Clone, Copy)]
pub enum Stream {
    Out,
    Err,
}

/// A result line: sent to the journal with the record's fields when the
/// output goes there (always, so the journal has every result), else
/// printed on `stream` when `print` (not `--quiet`).
pub fn line(stream: Stream, print: bool, message: &str, r: &Record) {
    if send(message, r) || !print {
        return;
    }
    match stream {
        Stream::Out => crate::output::write_out(format_args!("{message}\n")),
        Stream::Err => crate::output::write_err(format_args!("{message}\n")),
    }
}

/// Sends `message` with the record's fields to the journal when this
/// process's output goes there; returns whether it did.
fn send(message: &str, r: &Record) -> bool {
    if !connected() {
        return false;
    }
    send_to(Path::new(SOCKET), message, r).is_ok()
}

/// Whether standard output or error is the journal's stream
/// (`JOURNAL_STREAM=DEVICE:INODE` of that stream), checked once.
fn connected() -> bool {
    static CONNECTED: OnceLock<bool> = OnceLock::new();
    *CONNECTED.get_or_init(|| {
        std::env::var("JOURNAL_STREAM").is_ok_and(|v| {
            names_one_of(
                &v,
                &[Path::new("/proc/self/fd/1"), Path::new("/proc/self/fd/2")],
            )
        })
    })
}

/// Whether `DEVICE:INODE` is the file one of `paths` leads to.
fn names_one_of(journal_stream: &str, paths: &[&Path]) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    paths.iter().any(|p| {
        std::fs::metadata(p)
            .map(|m| m.dev() == dev && m.ino() == ino)
            .unwrap_or(false)
    })
}

fn send_to(socket: &Path, message: &str, r: &Record) -> io::Result<()> {
    let s = UnixDatagram::unbound()?;
    s.send_to(&encode(message, r), socket)?;
    Ok(())
}

/// The entry in the journal's native format: `KEY=value\n` per field, or
/// `KEY\n`, the value's length (64-bit little endian), the value and `\n`
/// for a value with a newline.
fn encode(message: &str, r: &Record) -> Vec<u8> {
    // err for failures, info for the rest.
    let priority = if r.result == "failed" { "3" } else { "6" };
    let target = r.target.describe();
    let pid = match r.target {
        Target::Process { pid, .. } => Some(pid.to_string()),
        Target::Kernel(_) => None,
    };
    let mut fields = vec![
        ("MESSAGE", message),
        ("PRIORITY", priority),
        ("SYSLOG_IDENTIFIER", "hotsplice"),
        ("HOTSPLICE_PATCH_ID", r.patch_id),
        ("HOTSPLICE_TARGET", &target),
        ("HOTSPLICE_RESULT", r.result),
    ];
    if let Some(pid) = &pid {
        fields.push(("HOTSPLICE_PID", pid));
    }
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_reach_a_native_socket_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let r = Record {
            patch_id: "0123abcd",
            target: Target::Process {
                pid: 42,
                comm: "hsdemo",
            },
            result: "failed",
        };
        send_to(&path, "failed: 0123abcd in pid 42\nmore", &r).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        let got = &buf[..n];
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&31u64.to_le_bytes());
        want.extend_from_slice(b"failed: 0123abcd in pid 42\nmore\n");
        want.extend_from_slice(
            b"PRIORITY=3\nSYSLOG_IDENTIFIER=hotsplice\nHOTSPLICE_PATCH_ID=0123abcd\n\
              HOTSPLICE_TARGET=pid 42 (hsdemo)\nHOTSPLICE_RESULT=failed\nHOTSPLICE_PID=42\n",
        );
        assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(&want));
        let k = Record {
            patch_id: "ffff",
            target: Target::Kernel("6.1.0-48-amd64"),
            result: "applied",
        };
        let e = String::from_utf8(encode("applied ffff", &k)).unwrap();
        assert!(
            e.contains("PRIORITY=6\n")
                && e.contains("HOTSPLICE_TARGET=kernel 6.1.0-48-amd64\n")
                && !e.contains("HOTSPLICE_PID"),
            "{e}"
        );
    }

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stream");
        std::fs::write(&f, b"").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        let value = format!("{}:{}", m.dev(), m.ino());
        assert!(names_one_of(&value, &[&other, &f]));
        assert!(!names_one_of(&value, &[&other]));
        assert!(!names_one_of(
            &format!("{}:{}", m.dev(), m.ino() + 1),
            &[&f]
        ));
        for bad in ["", "12", "x:y", ":", "1:2:3"] {
            assert!(!names_one_of(bad, &[&f]), "{bad}");
        }
    }
}
