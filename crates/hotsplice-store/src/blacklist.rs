use crate::{check_dir, read_trusted, Paths, Result, StoreError, MAX_CONFIG_FILE};
use regex::Regex;

/// Exclusions, as Ksplice's `blacklist.d`: files `*.conf` with sections
/// `[executables]` and `[targets]`, one regular expression a line, `#`
/// comments. A process whose executable matches is never touched; an object
/// whose path matches is never patched.
#[derive(Debug, Default)]
pub struct Blacklist {
    executables: Vec<Regex>,
    targets: Vec<Regex>,
}

impl Blacklist {
    pub fn load(paths: &Paths) -> Result<Blacklist> {
        let dir = paths.blacklist_dir();
        let mut b = Blacklist::default();
        // Whoever may write here may hide processes from every fix.
        check_dir(&paths.config_dir, "configuration directory")?;
        if !check_dir(&dir, "exclusions directory")? {
            return Ok(b);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(b);
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        for f in files {
            let bytes = read_trusted(&f, "exclusion file", MAX_CONFIG_FILE)?;
            let text = String::from_utf8(bytes).map_err(|_| StoreError::Invalid {
                path: f.display().to_string(),
                detail: "not UTF-8 text".into(),
            })?;
            b.add(&text, &f.display().to_string())?;
        }
        Ok(b)
    }

    pub fn add(&mut self, text: &str, origin: &str) -> Result<()> {
        let mut section = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(s.trim().to_string());
                continue;
            }
            let re = Regex::new(line).map_err(|e| StoreError::Invalid {
                path: origin.into(),
                detail: format!("line {}: {e}", n + 1),
            })?;
            match section.as_deref() {
                Some("executables") => self.executables.push(re),
                Some("targets") => self.targets.push(re),
                _ => {
                    return Err(StoreError::Invalid {
                        path: origin.into(),
                        detail: format!(
                            "line {}: pattern outside [executables] or [targets]",
                            n + 1
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// The pattern that excludes this executable, if any.
    pub fn executable(&self, exe: &str) -> Option<&str> {
        self.executables
            .iter()
            .find(|r| r.is_match(exe))
            .map(|r| r.as_str())
    }

    /// The pattern that excludes this object, if any.
    pub fn target(&self, path: &str) -> Option<&str> {
        self.targets
            .iter()
            .find(|r| r.is_match(path))
            .map(|r| r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_comments() {
        let mut b = Blacklist::default();
        b.add(
            "# no\n[executables]\n^/usr/sbin/sshd$\n[targets]\nlibcrypto\n",
            "t",
        )
        .unwrap();
        assert!(b.executable("/usr/sbin/sshd").is_some());
        assert!(b.executable("/usr/bin/ssh").is_none());
        assert!(b.target("/usr/lib/libcrypto.so.3").is_some());
        assert!(b.add("stray\n", "t").is_err());
    }
}
