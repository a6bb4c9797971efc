//! What the tests and the benchmark harness of hotsplice share for the
//! processes they start: compiling small C programs ([`compile`]),
//! starting a program as a [`Target`] that is killed and reaped when
//! dropped (also while a test unwinds from a panic), watching its output
//! line by line with timeouts, running a command to completion with a
//! timeout ([`run_cmd`]), reading a process's `/proc` state ([`proc`]),
//! temporary directories ([`temp_dir`]) and a test harness whose skipped
//! tests are reported as ignored ([`harness`]), and a private PostgreSQL
//! server ([`postgres`]).
//!
//! Not published; a dev-dependency of the crates with process tests and a
//! dependency of `hotsplice-bench`.

mod cc;
mod cmd;
pub mod harness;
pub mod postgres;
pub mod proc;
mod target;
mod tmp;
pub mod tools;

pub use cc::{compile, compile_with, try_compile, DEFAULT_CFLAGS};
pub use cmd::{cmdline_of, run_cmd, CmdOut};
pub use target::{Error, Options, Output, Stream, Target, LINE_TIMEOUT};
pub use tmp::{temp_dir, temp_dir_in};
