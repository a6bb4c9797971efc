//! Temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tempfile::TempDir;

/// A new directory `hotsplice-test-TAG-*` under the system temp dir,
/// removed on drop, mode 0755 (tests run hotsplice as `nobody` too, which
/// must be able to read what is in it). Kept, and its path printed, when
/// `HOTSPLICE_KEEP_TMP` is set.
pub fn temp_dir(tag: &str) -> TempDir {
    temp_dir_in(&std::env::temp_dir(), tag)
}

/// [`temp_dir`] under `parent`.
pub fn temp_dir_in(parent: &Path, tag: &str) -> TempDir {
    let keep = std::env::var_os("HOTSPLICE_KEEP_TMP").is_some();
    let d = tempfile::Builder::new()
        .prefix(&format!("hotsplice-test-{tag}-"))
        .permissions(fs::Permissions::from_mode(0o755))
        .disable_cleanup(keep)
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", parent.display()));
    // The umask may have taken bits away.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    if keep {
        eprintln!("keeping {}", d.path().display());
    }
    d
}
