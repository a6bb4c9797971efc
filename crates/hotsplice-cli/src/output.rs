//! Everything the command writes for people and scripts goes through here.
//!
//! * [`outln!`] writes to standard output and never panics. When the
//!   reader has gone (`EPIPE`, e.g. `hotsplice info F | head -1`), output
//!   ends quietly: the rest is dropped and the command finishes with its
//!   own exit status. Any other write error (`ENOSPC`, `EIO`) is reported
//!   once on standard error, the rest of the output is dropped, and the
//!   command exits 1 at the end (see `docs/exit-codes.md`).
//! * [`errln!`] writes to standard error, ignoring failures (there is
//!   nowhere left to report them).
//! * [`esc`] escapes control characters of text that comes from patches
//!   or processes (descriptions, names, ids, paths), so that a patch cannot
//!   drive the terminal (`\x1b[...`) or fake lines of output (`\n`). As a
//!   second line of defence, [`errln!`] escapes every control character but
//!   newline and tab in what it prints, and [`outln!`] those below space (JSON
//!   never holds them raw, so `--json` output is unchanged).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Write a line to standard output (see the module documentation).
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// Write a line to standard error; failures are ignored.
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::output::write_err(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// Standard output is gone or broken: drop what follows.
static STDOUT_DONE: AtomicBool = AtomicBool::new(false);
/// The first write error other than a closed pipe.
static STDOUT_ERROR: Mutex<Option<std::io::Error>> = Mutex::new(None);

pub fn write_out(args: fmt::Arguments) {
    if STDOUT_DONE.load(Ordering::Relaxed) {
        return;
    }
    let text = args.to_string();
    let text = escape_where(&text, |c| c < ' ' && c != '\n' && c != '\t');
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        STDOUT_DONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            write_err(format_args!(
                "hotsplice: error: cannot write to standard output: {e}; the rest of the output is dropped\n"
            ));
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(e);
        }
    }
}

pub fn write_err(args: fmt::Arguments) {
    let text = args.to_string();
    let text = sanitize(&text);
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|_| err.flush());
}

/// Write progress to standard error as is (carriage returns kept).
pub fn progress(args: fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|_| err.flush());
}

/// Whether writing standard output failed for a reason other than a closed
/// pipe: the message for the exit.
pub fn failure() -> Option<String> {
    let first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    first
        .as_ref()
        .map(|e| format!("cannot write to standard output: {e}"))
}

/// A control character as shown: `\x1b`, or `\u{9b}` beyond ASCII.
fn push_escaped(out: &mut String, c: char) {
    use fmt::Write as _;
    if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// Characters a terminal acts on rather than shows: C0 and C1 controls,
/// DEL, and the Unicode direction overrides that reorder what is shown.
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with the characters `bad` says escaped.
fn escape_where(s: &str, bad: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text from a patch or a process, fit to print: every control character
/// (newlines included) escaped as `\xNN` (or `\u{NNNN}`).
pub fn esc(s: &str) -> Cow<'_, str> {
    escape_where(s, is_control)
}

/// As [`esc`], but newlines and tabs are kept (whole messages and lines
/// that the command itself lays out).
pub fn sanitize(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| is_control(c) && c != '\n' && c != '\t')
}

/// For `println!`/`eprintln!` left anywhere (they panic when the write
/// fails): end as [`outln!`] would instead of with a panic and exit 101.
/// A closed standard output exits 0 quietly (output ended); any other
/// failure to print exits 1 with the reason.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(rest) = msg.strip_prefix("failed printing to stdout: ") {
            if rest.contains("Broken pipe") {
                std::process::exit(0);
            }
            write_err(format_args!(
                "hotsplice: error: cannot write to standard output: {rest}\n"
            ));
            std::process::exit(1);
        }
        if msg.starts_with("failed printing to stderr") {
            std::process::exit(1);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(esc("plain text"), "plain text");
        assert_eq!(esc("a\x1b[31mred\n"), "a\\x1b[31mred\\x0a");
        assert_eq!(esc("\u{9b}2J\u{202e}x"), "\\u{9b}2J\\u{202e}x");
        assert_eq!(sanitize("line\n\tnext\x07"), "line\n\tnext\\x07");
    }
}
