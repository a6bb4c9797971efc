//! `hotsplice-server`: init, run, and the administration commands that
//! work on the store directly. Output is `name: value` lines, one per
//! item, so scripts can read it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hotsplice_server::fleet::{Fleet, Settings};
use hotsplice_server::server;
use hotsplice_server::types::Role;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hotsplice-server",
    version,
    about = "hotsplice's fleet server: signed per-machine feeds, publishing, Uptrack's API",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Store {
    /// The data directory (feed key; the SQLite file by default).
    #[arg(long)]
    data: PathBuf,
    /// `postgres://USER@HOST/DB` (or `sqlite://PATH`); default: the one
    /// `init` recorded, else DIR/hotsplice.db.
    #[arg(long)]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the store and the feed key; print the admin API user and key
    /// and a first machine access key.
    Init {
        #[command(flatten)]
        store: Store,
    },
    /// Serve the API.
    Run {
        #[command(flatten)]
        store: Store,
        /// ADDR:PORT; port 0 picks a free one (printed on the first line).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Seconds a signed feed stays valid.
        #[arg(long, default_value_t = 7 * 86_400)]
        feed_validity: u64,
        /// Seconds machines are told to wait between check-ins.
        #[arg(long, default_value_t = 3600)]
        checkin_interval: u64,
        /// A machine out of date longer than this many seconds is alerting.
        #[arg(long, default_value_t = 86_400)]
        alert_out_of_date: u64,
        /// POST a JSON event here when a machine starts alerting or a
        /// rollout pauses (http://HOST:PORT/PATH or https://…).
        #[arg(long)]
        webhook: Option<String>,
        /// PEM certificates an https:// webhook's certificate may chain
        /// to, besides the system's roots.
        #[arg(long, requires = "webhook")]
        webhook_ca: Option<PathBuf>,
        /// Seconds between the timer's rollout decisions (1 to 30).
        #[arg(long, default_value_t = 10)]
        rollout_interval: u64,
    },
    /// Bring the database's schema up to this build's.
    Migrate {
        #[command(flatten)]
        store: Store,
    },
    /// Import a mirror (what `hotsplice mirror` wrote): its signed list is
    /// checked against the exporting server's feed key and its expiry, each
    /// file against the list and against this server's publisher keys;
    /// then each is published into CHANNEL (its signature checked). Nothing
    /// is imported unless the list and every file it names pass.
    Import {
        #[command(flatten)]
        store: Store,
        /// The exporting server's `feed.pub` (not the copy inside the
        /// mirror, which whoever carried the mirror could have replaced).
        #[arg(long)]
        feed_key: PathBuf,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The mirror directory (`feed.json`, `SHA256.hsp`).
        dir: PathBuf,
    },
    /// Publisher keys: who may publish patches.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// API users (X-Uptrack-User / X-Uptrack-Key) with a role.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Access keys machines register with.
    AccessKey {
        #[command(subcommand)]
        cmd: AccessKeyCmd,
    },
    /// Dashboard users (local accounts with a password and a role).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Write the man pages (hotsplice-server.1, hotsplice-server-COMMAND.1)
    /// into DIR (the Debian package's build does).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

const EXIT_CODES: &str = "\
Exit status:
  0  done
  1  an error (message on standard error)
  2  the command line is wrong";

/// Writes a man page (section 1, clap_mangen) for the server and for each
/// visible command, each with the exit status; returns the files.
fn manpages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    fn page(
        dir: &std::path::Path,
        cmd: clap::Command,
        title: String,
        out: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        let cmd = cmd.after_help(EXIT_CODES);
        let path = dir.join(format!("{title}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(title.clone()))
            .section("1")
            .manual("hotsplice")
            .source(format!("hotsplice-server {}", env!("CARGO_PKG_VERSION")))
            .render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        out.push(path);
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                page(dir, sub.clone(), format!("{title}-{}", sub.get_name()), out)?;
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    page(dir, cmd, "hotsplice-server".into(), &mut out)?;
    Ok(out)
}

#[derive(Subcommand)]
enum UserCmd {
    /// A new user; the password is read from standard input (one line).
    Add {
        #[command(flatten)]
        store: Store,
        name: String,
        /// admin, operator or read-only.
        #[arg(long)]
        role: String,
    },
    /// List the dashboard users and their roles.
    List {
        #[command(flatten)]
        store: Store,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Trust a publisher's public key (a `.pub` file).
    AddPublisher {
        #[command(flatten)]
        store: Store,
        file: PathBuf,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List the trusted publisher keys.
    List {
        #[command(flatten)]
        store: Store,
    },
    /// Stop trusting a publisher key (by its key ID).
    Remove {
        #[command(flatten)]
        store: Store,
        key_id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// A new API user; its key is printed once.
    Create {
        #[command(flatten)]
        store: Store,
        /// admin, operator or read-only.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the API users and their roles.
    List {
        #[command(flatten)]
        store: Store,
    },
    /// Revoke an API user (by name).
    Revoke {
        #[command(flatten)]
        store: Store,
        name: String,
    },
}

#[derive(Subcommand)]
enum AccessKeyCmd {
    /// A new access key; printed once.
    Create {
        #[command(flatten)]
        store: Store,
        #[arg(long)]
        group: Option<String>,
        /// Machines registering with it wait for authorization.
        #[arg(long)]
        pending: bool,
    },
    /// List the access keys.
    List {
        #[command(flatten)]
        store: Store,
    },
    /// Revoke an access key (by its ID).
    Revoke {
        #[command(flatten)]
        store: Store,
        id: String,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTSPLICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hotsplice-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotsplice-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn open(s: &Store) -> anyhow::Result<Fleet> {
    server::open(&s.data, s.database.as_deref(), Settings::default()).await
}

fn api(e: hotsplice_server::error::Error) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Manpages { dir } => {
            for f in manpages(&dir)? {
                println!("{}", f.display());
            }
        }
        Cmd::Init { store } => {
            let i = server::init(&store.data, store.database.as_deref()).await?;
            println!("api-user: {}", i.admin.name);
            println!("api-key: {}", i.admin.key);
            println!("access-key: {}", i.access_key.key);
            println!("feed-key: {}", i.feed_key.display());
            println!("feed-pub: {}", i.feed_pub.display());
            println!("database: {}", i.database);
        }
        Cmd::Run {
            store,
            listen,
            tls_cert,
            tls_key,
            feed_validity,
            checkin_interval,
            alert_out_of_date,
            webhook,
            webhook_ca,
            rollout_interval,
        } => {
            if !(1..=30).contains(&rollout_interval) {
                anyhow::bail!("--rollout-interval is 1 to 30 seconds");
            }
            let webhook_tls =
                hotsplice_server::ops::webhook_client(webhook.as_deref(), webhook_ca.as_deref())
                    .map_err(|e| anyhow::anyhow!(e))?;
            hotsplice_server::ops::configure(hotsplice_server::ops::OpsSettings {
                alert_out_of_date,
                webhook,
                webhook_tls,
                rollout_interval: std::time::Duration::from_secs(rollout_interval),
            });
            let settings = Settings {
                feed_validity,
                checkin_interval,
                // Over TLS, the dashboard's cookie is never sent in clear.
                secure_cookies: tls_cert.is_some(),
            };
            let fleet = server::open(&store.data, store.database.as_deref(), settings).await?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(server::Tls { cert, key }),
                _ => None,
            };
            server::run(fleet, &listen, tls, |addr, tls| {
                let scheme = if tls { "https" } else { "http" };
                println!("listening on {scheme}://{addr}");
                let _ = std::io::stdout().flush();
                tracing::info!("listening on {scheme}://{addr}");
            })
            .await?;
        }
        Cmd::User { cmd } => match cmd {
            UserCmd::Add { store, name, role } => {
                let role = Role::parse(&role).ok_or_else(|| {
                    anyhow::anyhow!("role {role:?}: use admin, operator or read-only")
                })?;
                let mut pw = String::new();
                std::io::stdin()
                    .read_line(&mut pw)
                    .context("reading the password from standard input")?;
                let pw = pw.trim_end_matches(['\n', '\r']);
                let f = open(&store).await?;
                let u = f.add_user(&name, role, pw).await.map_err(api)?;
                let entry = hotsplice_server::audit::AuditEntry {
                    id: 0,
                    at: 0,
                    actor: "cli".into(),
                    role: "admin".into(),
                    remote: "local".into(),
                    action: "user add".into(),
                    target: u.name.clone(),
                    detail: format!("role {}", u.role.as_str()),
                    result: "ok".into(),
                };
                f.audit(&entry).await.map_err(api)?;
                println!("user: {} role: {}", u.name, u.role.as_str());
            }
            UserCmd::List { store } => {
                for u in open(&store).await?.users().await.map_err(api)? {
                    println!("user: {} role: {}", u.name, u.role.as_str());
                }
            }
        },
        Cmd::Migrate { store } => {
            let url = server::database_url(&store.data, store.database.as_deref())?;
            let db = hotsplice_server::db::Db::connect(&url, false).await?;
            let v = db.migrate().await?;
            println!("schema-version: {v}");
        }
        Cmd::Import {
            store,
            feed_key,
            channel,
            dir,
        } => {
            let text = std::fs::read_to_string(&feed_key)
                .with_context(|| format!("reading {}", feed_key.display()))?;
            let key =
                hotsplice_trust::PublicKey::from_text(&text, &feed_key.display().to_string())?;
            let files = hotsplice_server::mirror::read(&dir, &key)?;
            let f = open(&store).await?;
            for (e, bytes) in &files {
                let (rec, new) = f.publish(bytes, Some(&channel)).await.map_err(|err| {
                    anyhow::anyhow!(
                        "{}: patch {} ({}): {}",
                        dir.display(),
                        e.id,
                        e.sha256,
                        err.message
                    )
                })?;
                println!(
                    "imported: {} {} {}",
                    rec.id,
                    rec.sha256,
                    if new { "new" } else { "known" }
                );
            }
        }
        Cmd::Key { cmd } => match cmd {
            KeyCmd::AddPublisher {
                store,
                file,
                comment,
            } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let f = open(&store).await?;
                let comment = if comment.is_empty() {
                    file.display().to_string()
                } else {
                    comment
                };
                let k = f.add_publisher_key(&text, &comment).await.map_err(api)?;
                println!("key-id: {}", k.key_id);
            }
            KeyCmd::List { store } => {
                for k in open(&store).await?.publisher_keys().await.map_err(api)? {
                    println!("key-id: {} comment: {}", k.key_id, k.comment);
                }
            }
            KeyCmd::Remove { store, key_id } => {
                open(&store)
                    .await?
                    .remove_publisher_key(&key_id)
                    .await
                    .map_err(api)?;
                println!("removed: {key_id}");
            }
        },
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create { store, role, name } => {
                let role = Role::parse(&role)
                    .with_context(|| format!("role {role:?}: use admin, operator or read-only"))?;
                let t = open(&store)
                    .await?
                    .create_token(name.as_deref(), role)
                    .await
                    .map_err(api)?;
                println!("api-user: {}", t.name);
                println!("api-key: {}", t.key);
                println!("role: {}", t.role.as_str());
            }
            TokenCmd::List { store } => {
                for t in open(&store).await?.tokens().await.map_err(api)? {
                    println!(
                        "api-user: {} role: {}{}",
                        t.name,
                        t.role.as_str(),
                        if t.revoked { " revoked" } else { "" }
                    );
                }
            }
            TokenCmd::Revoke { store, name } => {
                open(&store).await?.revoke_token(&name).await.map_err(api)?;
                println!("revoked: {name}");
            }
        },
        Cmd::AccessKey { cmd } => match cmd {
            AccessKeyCmd::Create {
                store,
                group,
                pending,
            } => {
                let k = open(&store)
                    .await?
                    .create_access_key(group.as_deref(), pending)
                    .await
                    .map_err(api)?;
                println!("access-key: {}", k.key);
                println!("id: {}", k.id);
                println!("group: {}", k.group);
                println!("pending: {}", k.pending);
            }
            AccessKeyCmd::List { store } => {
                for k in open(&store).await?.access_keys().await.map_err(api)? {
                    println!(
                        "id: {} group: {} pending: {}{}",
                        k.id,
                        k.group,
                        k.pending,
                        if k.revoked { " revoked" } else { "" }
                    );
                }
            }
            AccessKeyCmd::Revoke { store, id } => {
                open(&store)
                    .await?
                    .revoke_access_key(&id)
                    .await
                    .map_err(api)?;
                println!("revoked: {id}");
            }
        },
    }
    Ok(())
}
