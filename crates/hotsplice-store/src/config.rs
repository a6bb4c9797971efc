use crate::{read_regular, Links, Paths, Result, StoreError, MAX_CONFIG_FILE};
use serde::{Deserialize, Serialize};

/// `/etc/hotsplice/hotsplice.conf`. Every key is optional; see
/// `docs/configuration.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub settings: Settings,
    pub daemon: DaemonSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Install and apply new patches from the feed automatically.
    pub autoinstall: bool,
    /// At boot, re-apply the patches that were applied (same kernel build).
    pub install_on_reboot: bool,
    /// At boot, also apply every installed patch that fits, not only the
    /// ones applied before.
    pub upgrade_on_reboot: bool,
    /// Apply installed patches on the machine's first boot.
    #[serde(alias = "first-boot")]
    pub first_boot: bool,
    /// Seconds to keep retrying while code to replace is busy.
    pub busy_timeout: f64,
    /// Where new patches are taken from by `upgrade` (a directory).
    pub feed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// Listen to the kernel's process-event connector for new processes.
    pub netlink: bool,
    /// Seconds between full scans of all processes (catches `dlopen` and
    /// anything the event stream missed).
    pub rescan_interval: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            autoinstall: false,
            install_on_reboot: true,
            upgrade_on_reboot: false,
            first_boot: false,
            busy_timeout: 5.0,
            feed: None,
        }
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            netlink: true,
            rescan_interval: 5.0,
        }
    }
}

impl Config {
    /// The configuration file, or defaults when it does not exist.
    pub fn load(paths: &Paths) -> Result<Config> {
        let path = paths.config_file();
        let bytes = match read_regular(&path, "configuration file", MAX_CONFIG_FILE, Links::Follow)
        {
            Ok(t) => t,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => return Err(e),
        };
        let text = String::from_utf8(bytes).map_err(|_| StoreError::Invalid {
            path: path.display().to_string(),
            detail: "not UTF-8 text".into(),
        })?;
        toml::from_str(&text).map_err(|e| StoreError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_keeps_defaults_and_accepts_ksplice_spelling() {
        let c: Config =
            toml::from_str("[settings]\nautoinstall = true\nfirst-boot = true\n").unwrap();
        assert!(c.settings.autoinstall);
        assert!(c.settings.first_boot);
        assert!(c.settings.install_on_reboot);
        assert_eq!(c.daemon, DaemonSettings::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("[settings]\nautoinstal = true\n").is_err());
    }
}
