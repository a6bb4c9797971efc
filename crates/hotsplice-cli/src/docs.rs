//! The command line definition as documents: the parser with exit codes
//! in every command's help, man pages (clap_mangen) and shell completions
//! (clap_complete) generated from it, so that none of them can drift.

use crate::{check, kernel, Cli};
use anyhow::{Context as _, Result};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

pub const EXIT_CODES: &str = "\
Exit status:
  0      done (also when standard output was closed early)
  1      an error (message on standard error), or part of what was asked failed
  2      the command line is wrong
  128+N  stopped by signal N with work left undone (see docs/exit-codes.md)";

/// The whole command line under `name`, every command with its exit codes.
pub fn command(name: &'static str) -> clap::Command {
    with_exit_codes(Cli::command().name(name).bin_name(name))
}

fn with_exit_codes(c: clap::Command) -> clap::Command {
    let text = if c.get_name() == "check" {
        check::EXIT_CODES
    } else {
        EXIT_CODES
    };
    let c = c.after_help(text);
    let subs: Vec<String> = c
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    subs.iter()
        .fold(c, |c, n| c.mut_subcommand(n, with_exit_codes))
}

/// The names the binary answers to besides `hotsplice`, each with its own
/// parser: `(name, command)`.
fn uptrack_commands() -> Vec<(&'static str, clap::Command)> {
    let mut v = Vec::new();
    for n in [
        "uptrack-upgrade",
        "uptrack-install",
        "uptrack-remove",
        "uptrack-show",
    ] {
        v.push((n, kernel::Uptrack::command()));
    }
    v.push(("uptrack-uname", kernel::UptrackUname::command()));
    v.into_iter()
        .map(|(n, c)| (n, c.name(n).bin_name(n).after_help(EXIT_CODES)))
        .collect()
}

/// Writes `hotsplice.8`, `hotsplice-SUB[-SUB].8` for every visible
/// command, `ksplice.8` and `uptrack-*.8` into `dir`; returns the files.
pub fn manpages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for name in ["hotsplice", "ksplice"] {
        let mut cmd = command(name);
        cmd.build();
        page_tree(dir, &cmd, name, &mut out, name == "hotsplice")?;
    }
    for (n, mut c) in uptrack_commands() {
        c.build();
        page_tree(dir, &c, n, &mut out, false)?;
    }
    Ok(out)
}

fn page_tree(
    dir: &Path,
    cmd: &clap::Command,
    title: &str,
    out: &mut Vec<PathBuf>,
    subpages: bool,
) -> Result<()> {
    let page = cmd.clone().name(title.to_string());
    let path = dir.join(format!("{title}.8"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .section("8")
        .manual("hotsplice")
        .source(format!("hotsplice {}", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    out.push(path);
    if subpages {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            page_tree(dir, sub, &format!("{title}-{}", sub.get_name()), out, true)?;
        }
    }
    Ok(())
}
