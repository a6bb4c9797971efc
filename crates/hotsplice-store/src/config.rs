use crate::{check_dir, read_trusted, Paths, Result, StoreError, MAX_CONFIG_FILE};
use serde::{Deserialize, Serialize};

/// `/etc/hotsplice/hotsplice.conf`. Every key is optional; see
/// `docs/configuration.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub settings: Settings,
    pub daemon: DaemonSettings,
    pub fleet: FleetSettings,
}

/// `[fleet]`: the machine's client of a `hotsplice-server` (see
/// `docs/fleet.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// Server URLs, tried in order (instances of one fleet). Empty: the
    /// ones given at registration (`STATE/fleet/server.json`).
    pub servers: Vec<String>,
    /// A PEM file of CA certificates trusted for the servers, besides the
    /// system's roots.
    pub ca: Option<String>,
    /// Seconds between the daemon's syncs; unset: what the server suggests.
    pub sync_interval: Option<f64>,
    /// Up to this many seconds of random delay before each of the
    /// daemon's syncs, so that a fleet does not arrive at once.
    pub jitter: f64,
    /// Retries of a request that found no server (each round tries every
    /// server), with exponential backoff from `backoff` seconds.
    pub retries: u32,
    pub backoff: f64,
    /// Seconds to connect, and for a whole request.
    pub connect_timeout: f64,
    pub timeout: f64,
    /// Allow `http://` to servers that are not on a loopback address (the
    /// feed and patches are signed, but the machine key travels in clear).
    pub allow_http: bool,
    /// The daemon syncs with the server when the machine is registered.
    pub daemon_sync: bool,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            servers: Vec::new(),
            ca: None,
            sync_interval: None,
            jitter: 59.0,
            retries: 4,
            backoff: 1.0,
            connect_timeout: 10.0,
            timeout: 60.0,
            allow_http: false,
            daemon_sync: true,
        }
    }
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
        // Whoever may write the file, or the directory it is in, decides
        // where root's hotsplice takes patches from: both are checked.
        check_dir(&paths.config_dir, "configuration directory")?;
        let bytes = match read_trusted(&path, "configuration file", MAX_CONFIG_FILE) {
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
        assert_eq!(c.fleet, FleetSettings::default());
    }

    #[test]
    fn fleet_section() {
        let c: Config = toml::from_str(
            "[fleet]\nservers = [\"https://a:8443\", \"https://b:8443\"]\nca = \"/etc/hotsplice/server-ca.pem\"\njitter = 0\nretries = 1\n",
        )
        .unwrap();
        assert_eq!(c.fleet.servers.len(), 2);
        assert_eq!(c.fleet.jitter, 0.0);
        assert_eq!(c.fleet.retries, 1);
        assert!(c.fleet.daemon_sync);
        assert!(toml::from_str::<Config>("[fleet]\nserver = \"x\"\n").is_err());
    }

    /// The example of docs/configuration.md is a valid configuration.
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        let c: Config = toml::from_str(&doc[start..end]).unwrap();
        assert_eq!(c, Config::default(), "the example shows the defaults");
    }

    /// The packaged conffile (dist/hotsplice.conf) parses as it is (all
    /// defaults), names every setting, and with every setting uncommented
    /// still parses, with the defaults it claims.
    #[test]
    fn the_packaged_conffile_comments_every_setting_with_its_default() {
        let text = include_str!("../../../dist/hotsplice.conf");
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c, Config::default());
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with(|ch: char| ch.is_ascii_lowercase())
                        && rest.contains(" = ") =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let u: Config = toml::from_str(&uncommented).unwrap();
        // Every key of every section appears.
        let all = toml::Value::try_from(&u).unwrap();
        let shown: toml::Value = toml::from_str(&uncommented).unwrap();
        for (section, keys) in all.as_table().unwrap() {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    shown.get(section).and_then(|s| s.get(key)).is_some(),
                    "dist/hotsplice.conf shows [{section}] {key}"
                );
            }
        }
        // The defaults shown are the defaults (the examples aside).
        let mut u = u;
        u.settings.feed = None;
        u.fleet.servers.clear();
        u.fleet.ca = None;
        u.fleet.sync_interval = None;
        assert_eq!(u, Config::default(), "the conffile shows the defaults");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("[settings]\nautoinstal = true\n").is_err());
    }
}
