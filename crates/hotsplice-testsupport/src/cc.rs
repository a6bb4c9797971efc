//! Compiling one C source file into an executable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags [`compile`] uses: optimised a little, with debug information,
/// threads allowed.
pub const DEFAULT_CFLAGS: &[&str] = &["-O1", "-g", "-pthread"];

/// Writes `src` to `dir/NAME.c` and compiles it into `dir/NAME` with `$CC`
/// (default `cc`) and `flags`; returns the executable, or the compiler's
/// messages.
pub fn try_compile(dir: &Path, name: &str, src: &str, flags: &[&str]) -> Result<PathBuf, String> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).map_err(|e| format!("writing {}: {e}", c.display()))?;
    let out = dir.join(name);
    let cc = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let o = Command::new(&cc)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .output()
        .map_err(|e| format!("running {}: {e}", cc.to_string_lossy()))?;
    if !o.status.success() {
        return Err(format!(
            "compiling {name} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

/// [`try_compile`] with `flags`, panicking with the compiler's messages.
pub fn compile_with(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    try_compile(dir, name, src, flags).unwrap_or_else(|e| panic!("{e}"))
}

/// [`compile_with`] the [`DEFAULT_CFLAGS`].
pub fn compile(dir: &Path, name: &str, src: &str) -> PathBuf {
    compile_with(dir, name, src, DEFAULT_CFLAGS)
}
