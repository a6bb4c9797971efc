//! `hotsplice register`, `sync`, `publish`, `mirror`: the agent's fleet
//! client (`hotsplice_agent::fleet`), rendered.

use crate::app::App;
use crate::output::esc;
use anyhow::Result;
use clap::Args;
use hotsplice_agent::fleet::{PatchState, SyncOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct RegisterArgs {
    /// Server URL (https://HOST[:PORT]; http:// only to loopback), or a
    /// comma-separated list of the instances of one fleet.
    #[arg(long)]
    server: String,
    /// The access key the server's administrator handed out.
    #[arg(long)]
    key: String,
    /// The group to join (the access key's group if none).
    #[arg(long)]
    group: Option<String>,
    /// The server's feed public key, to check against (otherwise the key
    /// the server sends is trusted on first use and pinned).
    #[arg(long)]
    feed_key: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SyncArgs {
    /// Write the check-in report to FILE and stop (a machine without
    /// network; the server imports the file).
    #[arg(long, value_name = "FILE")]
    report_to: Option<PathBuf>,
    /// Install and apply the patches even when `autoinstall` is off.
    #[arg(long)]
    apply: bool,
    /// Act on the signed list in FILE instead of the check-in's answer
    /// (a list kept from before, a mirror's feed.json): the same checks
    /// against rollback, expiry and other machines' lists apply.
    #[arg(long, value_name = "FILE")]
    feed_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PublishArgs {
    #[arg(long)]
    server: String,
    /// API user and key, USER:KEY (role operator or admin).
    #[arg(long)]
    token: String,
    /// Channel to file the patches in (e.g. testing).
    #[arg(long)]
    channel: Option<String>,
    #[arg(long)]
    json: bool,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct MirrorArgs {
    #[arg(long)]
    server: String,
    /// API user and key, USER:KEY.
    #[arg(long)]
    token: String,
    #[arg(long)]
    channel: String,
    #[arg(long)]
    json: bool,
    /// Directory to copy the channel into (its signed list as feed.json,
    /// each patch as SHA256.hsp).
    dir: PathBuf,
}

pub fn register(app: &App, a: RegisterArgs) -> Result<bool> {
    let r = app
        .agent
        .register(&a.server, &a.key, a.group.as_deref(), a.feed_key.as_deref())?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(true);
    }
    outln!(
        "registered as {} with {} (group {}, {})",
        esc(&r.uuid),
        esc(&r.servers.join(", ")),
        esc(&r.group),
        esc(&r.authorization)
    );
    outln!(
        "feed key {} pinned{}",
        esc(&r.feed_key_id),
        if r.feed_key_from == "file" {
            " (matches --feed-key)"
        } else {
            " (trusted on first use: compare it with the server's)"
        }
    );
    if r.feed_key_changed {
        errln!("hotsplice: warning: the server's feed key changed since the last registration; the feed state was reset");
    }
    if r.authorization != "allowed" && !app.quiet {
        outln!("the server's administrator must authorize this machine before it receives patches");
    }
    Ok(true)
}

pub fn sync(app: &App, a: SyncArgs) -> Result<bool> {
    let r = app.agent.sync(&SyncOptions {
        dry_run: app.dry_run,
        report_to: a.report_to,
        apply: a.apply,
        feed_file: a.feed_file,
    })?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(!r.failed());
    }
    if let Some(f) = &r.report_file {
        if !app.quiet {
            outln!(
                "report of {} written to {}: an operator imports it into the server (POST /api/v2/reports)",
                esc(&r.uuid),
                f.display()
            );
        }
        return Ok(true);
    }
    if !app.quiet {
        if let Some(f) = &r.feed {
            outln!(
                "{}feed version {} of channel {} ({}): {} patch(es){}",
                if r.dry_run { "dry run: " } else { "" },
                f.version,
                esc(&f.channel),
                esc(&f.authorization),
                f.patches,
                r.server
                    .as_ref()
                    .map(|s| format!(", from {}", esc(s)))
                    .unwrap_or_default()
            );
        }
        for p in &r.patches {
            let state = match &p.state {
                PatchState::Present => "have".to_string(),
                PatchState::Downloaded => "downloaded".into(),
                PatchState::WouldDownload => "would download".into(),
                PatchState::Refused { why } => format!("REFUSED: {}", esc(why)),
            };
            outln!(
                "  {} {} {} level {}: {state}",
                esc(&p.id),
                kind(p.kind),
                esc(&p.target_name),
                p.level
            );
        }
        let verb = if r.dry_run { "would apply" } else { "applied" };
        for i in &r.applied {
            outln!("{verb} {} to {}", esc(&i.patch), esc(&i.target));
        }
        for i in &r.removed {
            outln!(
                "removed {} from {} (no longer in this machine's list)",
                esc(&i.patch),
                esc(&i.target)
            );
        }
        if !r.dry_run && !r.install && !r.patches.is_empty() {
            outln!("not installed: autoinstall is off; run `hotsplice sync --apply` to install and apply");
        }
    }
    for f in &r.failures {
        errln!(
            "hotsplice: error: {} ({}): {}",
            esc(&f.patch),
            esc(&f.target),
            esc(&f.error)
        );
    }
    Ok(!r.failed())
}

pub fn publish(app: &App, a: PublishArgs) -> Result<bool> {
    let recs = app
        .agent
        .publish(&a.server, &a.token, a.channel.as_deref(), &a.files)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(true);
    }
    for r in recs {
        outln!(
            "{} {} {} level {} ({}): sha256 {}, channels {}",
            esc(&r.id),
            kind(r.kind),
            esc(&r.target_name),
            r.level,
            esc(&r.description),
            esc(&r.sha256),
            esc(&r.channels.join(","))
        );
    }
    Ok(true)
}

pub fn mirror(app: &App, a: MirrorArgs) -> Result<bool> {
    let m = app.agent.mirror(&a.server, &a.token, &a.channel, &a.dir)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(true);
    }
    if !app.quiet {
        outln!(
            "channel {} (feed version {}, key {}): {} patch(es) in {} ({} already there)",
            esc(&m.channel),
            m.feed_version,
            esc(&m.feed_key_id),
            m.patches.len(),
            m.dir.display(),
            m.kept
        );
    }
    Ok(true)
}

fn kind(k: hotsplice_fleet::feed::PatchKind) -> &'static str {
    match k {
        hotsplice_fleet::feed::PatchKind::Kernel => "kernel",
        hotsplice_fleet::feed::PatchKind::User => "user",
    }
}

/// `sync` as the autoinstall job runs it.
pub fn autoinstall_sync(ctx: &App) -> Result<bool> {
    sync(
        ctx,
        SyncArgs {
            report_to: None,
            apply: false,
            feed_file: None,
            json: false,
        },
    )
}
