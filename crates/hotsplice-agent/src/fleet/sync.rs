//! `hotsplice sync`: check in, accept the signed list, fetch what is
//! missing, and (with `autoinstall` or `--apply`) install and apply.

use super::http::{Auth, Body};
use super::{FleetError, FleetPaths, FromFleet};
use crate::error::{chain, AgentError, Result};
use crate::event::Event;
use crate::machine::Agent;
use crate::upgrade::Outcome;
use hotsplice_fleet::api::{self, CheckinResponse};
use hotsplice_fleet::feed::{self, FeedEntry, FeedList, FeedState, PatchKind, SignedFeed};
use hotsplice_fleet::report::{Report, RunFailure, RunItem, RunReport, MAX_FAILURES, MAX_STRING};
use hotsplice_trust::Verified;
use serde::Serialize;
use std::path::PathBuf;

/// What `sync` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Contact the server read-only (`GET` the machine's feed, no check-in)
    /// and tell what would be downloaded and applied; change nothing.
    pub dry_run: bool,
    /// Write the report to this file and stop (a machine without network;
    /// no registration needed).
    pub report_to: Option<PathBuf>,
    /// Install and apply even when `autoinstall` is off.
    pub apply: bool,
    /// Use this signed list (a file holding a `SignedFeed`, e.g. a
    /// mirror's `feed.json` or one kept from before) instead of the
    /// check-in's answer; the same checks apply. Patches still come from
    /// the server.
    pub feed_file: Option<PathBuf>,
}

/// Where one patch of the list stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PatchState {
    /// Already downloaded and verified.
    Present,
    Downloaded,
    /// Dry run: would be downloaded.
    WouldDownload,
    /// Refused (hash, size or signature), or could not be fetched.
    Refused {
        why: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncPatch {
    pub id: String,
    pub kind: PatchKind,
    pub target_name: String,
    pub build_id: String,
    pub level: u32,
    pub sha256: String,
    #[serde(flatten)]
    pub state: PatchState,
}

/// The list that was acted upon.
#[derive(Debug, Clone, Serialize)]
pub struct FeedSummary {
    pub version: u64,
    pub channel: String,
    pub authorization: String,
    pub expires_at: u64,
    pub patches: usize,
}

/// What a sync did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    pub uuid: String,
    pub dry_run: bool,
    /// The report was written to this file, and nothing else was done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_file: Option<PathBuf>,
    /// The server instance that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedSummary>,
    pub patches: Vec<SyncPatch>,
    /// Whether patches were installed and applied (`autoinstall`, or
    /// `--apply`).
    pub install: bool,
    /// Patches applied now (`kernel` or `pid:N`); dry: what would be.
    pub applied: Vec<RunItem>,
    /// Patches taken out because no list names them any more (withdrawn
    /// from the channel, or a rollout rolled back).
    pub removed: Vec<RunItem>,
    pub failures: Vec<RunFailure>,
    /// Seconds the server suggests until the next check-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_checkin: Option<u64>,
}

impl SyncResult {
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }
}

fn cut(s: String) -> String {
    if s.len() <= MAX_STRING {
        return s;
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn failure(patch: &str, target: &str, error: String) -> RunFailure {
    RunFailure {
        patch: patch.into(),
        target: target.into(),
        error: cut(error),
    }
}

impl Agent {
    /// One sync with the fleet server (see [`SyncOptions`]). A list that is
    /// refused (rollback, freeze, another machine's, a bad signature)
    /// changes nothing and is an error; a patch that cannot be fetched or
    /// verified is a failure of the run, the others go on. The feed state
    /// is stored only once the list was accepted.
    pub fn sync(&self, o: &SyncOptions) -> Result<SyncResult> {
        let fp = self.fleet_paths();
        if let Some(to) = &o.report_to {
            let r = self.fleet_report()?;
            let text = serde_json::to_string_pretty(&r).expect("a report serializes");
            hotsplice_store::write_atomic_mode(
                to,
                format!("{text}\n").as_bytes(),
                hotsplice_store::PUBLIC_FILE_MODE,
            )?;
            return Ok(SyncResult {
                uuid: r.uuid,
                dry_run: o.dry_run,
                report_file: Some(to.clone()),
                server: None,
                feed: None,
                patches: vec![],
                install: false,
                applied: vec![],
                removed: vec![],
                failures: vec![],
                next_checkin: None,
            });
        }
        let reg = fp.registration()?;
        let key = fp.read_machine_key()?;
        // One sync at a time (the daemon's and a person's): the feed state
        // is read and replaced under the lock, so it never goes back.
        let _lock = hotsplice_store::FileLock::acquire(&fp.dir.join("sync.lock"))?;
        let uuid = reg.uuid.clone();
        let pinned = reg.public_key()?;
        let client = self.fleet_client(self.fleet_servers(&reg)?)?;
        let auth = Auth::Machine(key);
        let feed_limit = feed::MAX_FEED_BYTES as u64 + (64 << 10);

        // The list: from a file, the read-only feed (dry run), or the
        // check-in's answer.
        let (signed, server, next) = if let Some(f) = &o.feed_file {
            let b = hotsplice_store::read_regular(
                f,
                "feed file",
                feed_limit,
                hotsplice_store::Links::Follow,
            )?;
            let s: SignedFeed = serde_json::from_slice(&b).map_err(|e| {
                AgentError::Request(format!("{}: not a signed feed: {e}", f.display()))
            })?;
            (s, None, None)
        } else if o.dry_run {
            let a = client.call(
                "GET",
                &api::machine_feed(&uuid),
                &auth,
                Body::Empty,
                feed_limit,
            )?;
            (
                a.json::<SignedFeed>("the machine's feed")?,
                Some(a.server),
                None,
            )
        } else {
            let report = self.fleet_report()?;
            let a = self.checkin(&client, &auth, &report).map_err(|e| {
                if matches!(e.status(), Some(401 | 404)) {
                    AgentError::About {
                        what: "the server does not know this machine or its key; if the server's store was \
                               replaced or the machine removed, run `hotsplice register` again"
                            .into(),
                        source: Box::new(e.into()),
                    }
                } else {
                    e.into()
                }
            })?;
            let r: CheckinResponse = a.json("the check-in's answer")?;
            (r.feed, Some(a.server), Some(r.next_checkin))
        };

        let last = fp.read_feed_state()?;
        let list = match open_and_accept(&signed, &pinned, &uuid, last.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                if !o.dry_run {
                    // Told to the server with the next report.
                    let _ = fp.write_last_run(&RunReport {
                        at: hotsplice_fleet::now(),
                        feed_version: last.as_ref().map_or(0, |l| l.version),
                        applied: vec![],
                        removed: vec![],
                        failures: vec![failure("-", "feed", e.to_string())],
                    });
                }
                return Err(FleetError::Feed(e).into());
            }
        };
        if !o.dry_run {
            fp.write_feed_state(&FeedState {
                version: list.version,
                expires_at: list.expires_at,
                sha256: signed.sha256(),
            })?;
            fp.write_feed(&signed)?;
        }
        let install = !o.dry_run && (o.apply || self.config.settings.autoinstall);
        let mut result = SyncResult {
            uuid: uuid.clone(),
            dry_run: o.dry_run,
            report_file: None,
            server,
            feed: Some(FeedSummary {
                version: list.version,
                channel: list.channel.clone(),
                authorization: list.authorization.clone(),
                expires_at: list.expires_at,
                patches: list.patches.len(),
            }),
            patches: vec![],
            install,
            applied: vec![],
            removed: vec![],
            failures: vec![],
            next_checkin: next,
        };

        // Fetch and verify each patch of the list.
        let mut good: Vec<(FeedEntry, PathBuf, Verified)> = Vec::new();
        for e in &list.patches {
            if self.stop_requested() {
                break;
            }
            let state = match self.fetch_patch(&fp, &client, &auth, e, o.dry_run) {
                Ok((state, Some((path, v)))) => {
                    good.push((e.clone(), path, v));
                    state
                }
                Ok((state, None)) => state,
                Err(err) => {
                    let why = chain(&err);
                    result
                        .failures
                        .push(failure(&e.id, "download", why.clone()));
                    PatchState::Refused { why }
                }
            };
            result.patches.push(SyncPatch {
                id: e.id.clone(),
                kind: e.kind,
                target_name: e.target_name.clone(),
                build_id: e.build_id.clone(),
                level: e.level,
                sha256: e.sha256.clone(),
                state,
            });
        }
        if !o.dry_run {
            let keep: Vec<String> = list.patches.iter().map(|e| e.sha256.clone()).collect();
            fp.prune_patches(&keep);
        }

        if o.dry_run {
            result.applied = self.would_apply(&list);
        } else if install {
            self.install_and_apply(&fp, &good, &mut result);
            self.withdraw(&fp, &list, &mut result);
        }
        result.failures.truncate(MAX_FAILURES);
        if !o.dry_run {
            let run = RunReport {
                at: hotsplice_fleet::now(),
                feed_version: list.version,
                applied: result.applied.clone(),
                removed: result.removed.clone(),
                failures: result.failures.clone(),
            };
            fp.write_last_run(&run)?;
            // Tell the server at once what changed (its answer is not
            // acted upon: the next sync does that).
            if o.feed_file.is_none()
                && (!run.applied.is_empty() || !run.removed.is_empty() || !run.failures.is_empty())
            {
                match self.fleet_report() {
                    Ok(r) => {
                        if let Err(e) = self.checkin(&client, &auth, &r) {
                            self.warn(format!(
                                "the report after applying was not sent (the next sync sends it): {}",
                                chain(&AgentError::from(e))
                            ));
                        }
                    }
                    Err(e) => self.warn(chain(&e)),
                }
            }
        }
        Ok(result)
    }

    fn checkin(
        &self,
        client: &super::http::Client,
        auth: &Auth,
        report: &Report,
    ) -> std::result::Result<super::http::Answer, FleetError> {
        client.call(
            "POST",
            &api::checkin(&report.uuid),
            auth,
            Body::Json(serde_json::to_string(report).expect("a report serializes")),
            feed::MAX_FEED_BYTES as u64 + (64 << 10),
        )
    }

    /// A patch of the list: the kept file if it still matches, else
    /// downloaded (not with `dry`), checked against the list's hash and
    /// size, verified against the trusted publisher keys and the list's
    /// description of it, and only then written (temporary file, rename).
    #[allow(clippy::type_complexity)]
    fn fetch_patch(
        &self,
        fp: &FleetPaths,
        client: &super::http::Client,
        auth: &Auth,
        e: &FeedEntry,
        dry: bool,
    ) -> Result<(PatchState, Option<(PathBuf, Verified)>)> {
        let path = fp.patch(&e.sha256);
        if let Ok(Some(b)) = fp.read_patch(&e.sha256, e.size) {
            if feed::check_blob(e, &b).is_ok() {
                if let Ok(v) = self.check_patch(e, &b) {
                    return Ok((PatchState::Present, Some((path, v))));
                }
            }
        }
        if dry {
            return Ok((PatchState::WouldDownload, None));
        }
        let a = client.call(
            "GET",
            &api::patch_file(&e.sha256),
            auth,
            Body::Empty,
            e.size,
        )?;
        feed::check_blob(e, &a.bytes).map_err(FleetError::Patch)?;
        let v = self.check_patch(e, &a.bytes)?;
        let path = fp.write_patch(&e.sha256, &a.bytes)?;
        Ok((PatchState::Downloaded, Some((path, v))))
    }

    /// The file is signed by a publisher this machine trusts (never
    /// `--allow-unsigned` from a server), and is the patch the list says.
    fn check_patch(&self, e: &FeedEntry, bytes: &[u8]) -> Result<Verified> {
        let v = self.verified(
            bytes,
            &format!("patch {} from the fleet server", e.id),
            false,
        )?;
        let m = &v.meta;
        let kind = match m.target.kind {
            hotsplice_patch::ObjectKind::Kernel => PatchKind::Kernel,
            _ => PatchKind::User,
        };
        if m.id.as_str() != e.id
            || m.target.build_id.as_str() != e.build_id
            || m.level != e.level
            || kind != e.kind
        {
            return Err(FleetError::NotListed(format!(
                "the file is patch {} level {} for build-id {}, but the list says {} level {} for {}: refused (mix and match)",
                m.id, m.level, m.target.build_id, e.id, e.level, e.build_id
            ))
            .into());
        }
        Ok(v)
    }

    /// Dry run: which processes and the kernel would get which patch.
    fn would_apply(&self, list: &FeedList) -> Vec<RunItem> {
        let mut out = Vec::new();
        let k = self.kernel();
        let kernel_id = k.build_id().unwrap_or_default();
        let kernel_applied: Vec<String> = k
            .applied()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.id)
            .collect();
        for e in &list.patches {
            match e.kind {
                PatchKind::Kernel => {
                    if e.build_id == kernel_id && !kernel_applied.contains(&e.id) {
                        out.push(RunItem {
                            patch: e.id.clone(),
                            target: "kernel".into(),
                        });
                    }
                }
                PatchKind::User => {
                    let Ok(bid) = e.build_id.parse::<hotsplice_patch::BuildId>() else {
                        continue;
                    };
                    for pid in hotsplice_engine::processes_mapping(&bid) {
                        let done = hotsplice_engine::applied(pid)
                            .map(|hs| hs.iter().any(|h| h.patch_id.as_str() == e.id))
                            .unwrap_or(false);
                        if !done {
                            out.push(RunItem {
                                patch: e.id.clone(),
                                target: format!("pid:{pid}"),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// User patches into the store and every process upgraded; kernel
    /// patches for this kernel applied when not applied yet.
    fn install_and_apply(
        &self,
        fp: &FleetPaths,
        good: &[(FeedEntry, PathBuf, Verified)],
        r: &mut SyncResult,
    ) {
        let mut taken = Vec::new();
        self.install_and_apply_marking(good, r, &mut taken);
        if taken.is_empty() {
            return;
        }
        let mut marks = fp.read_from_fleet().unwrap_or_default();
        for t in taken {
            if !marks.iter().any(|m| m.sha256 == t.sha256) {
                marks.push(t);
            }
        }
        if let Err(e) = fp.write_from_fleet(&marks) {
            r.failures.push(failure("-", "state", chain(&e)));
        }
    }

    /// Take out what this machine took from earlier lists and the accepted
    /// `list` (of an `allowed` machine: a denied or pending one gets an
    /// empty list, which withdraws nothing) no longer names: user patches
    /// undone in every process and uninstalled, kernel patches undone.
    /// Patches installed by hand are never touched.
    fn withdraw(&self, fp: &FleetPaths, list: &FeedList, r: &mut SyncResult) {
        if list.authorization != "allowed" {
            return;
        }
        let marks = match fp.read_from_fleet() {
            Ok(m) => m,
            Err(e) => {
                r.failures.push(failure("-", "state", chain(&e)));
                return;
            }
        };
        // By file or by ID: a patch listed again as another file (signed
        // anew) is not withdrawn under it.
        let listed = |m: &FromFleet| {
            list.patches
                .iter()
                .any(|e| e.sha256 == m.sha256 || e.id == m.id)
        };
        let (keep, gone): (Vec<FromFleet>, Vec<FromFleet>) =
            marks.into_iter().partition(|m| listed(m));
        if gone.is_empty() {
            return;
        }
        let mut left = keep;
        for m in gone {
            let done = match m.kind {
                PatchKind::User => self.withdraw_user(&m, r),
                PatchKind::Kernel => self.withdraw_kernel(&m, r),
            };
            if !done {
                left.push(m);
            }
        }
        if let Err(e) = fp.write_from_fleet(&left) {
            r.failures.push(failure("-", "state", chain(&e)));
        }
    }

    fn withdraw_user(&self, m: &FromFleet, r: &mut SyncResult) -> bool {
        let Ok(id) = m.id.parse::<hotsplice_patch::PatchId>() else {
            return true;
        };
        let plan = match self.plan_removal(false, None, std::slice::from_ref(&id)) {
            Ok(p) => p,
            Err(e) => {
                r.failures.push(failure(&m.id, "remove", chain(&e)));
                return false;
            }
        };
        let run = self.remove(&plan, &self.options(None));
        let mut ok = run.not_started == 0;
        for res in run.results {
            match res {
                Ok(rep) => r.removed.push(RunItem {
                    patch: m.id.clone(),
                    target: format!("pid:{}", rep.pid),
                }),
                Err(e) => {
                    ok = false;
                    r.failures
                        .push(failure(&m.id, "remove", chain(&AgentError::from(e))));
                }
            }
        }
        if !ok {
            return false;
        }
        match self.uninstall(&m.id) {
            Ok(_) => true,
            Err(e) => {
                r.failures.push(failure(&m.id, "uninstall", chain(&e)));
                false
            }
        }
    }

    fn withdraw_kernel(&self, m: &FromFleet, r: &mut SyncResult) -> bool {
        let k = self.kernel();
        let applied = k.applied().unwrap_or_default();
        if !applied.iter().any(|p| p.id == m.id) {
            return true;
        }
        match k.undo(&m.id) {
            Ok(_) => {
                r.removed.push(RunItem {
                    patch: m.id.clone(),
                    target: "kernel".into(),
                });
                true
            }
            Err(e) => {
                r.failures
                    .push(failure(&m.id, "kernel", chain(&AgentError::from(e))));
                false
            }
        }
    }

    fn install_and_apply_marking(
        &self,
        good: &[(FeedEntry, PathBuf, Verified)],
        r: &mut SyncResult,
        taken: &mut Vec<FromFleet>,
    ) {
        let mut mark = |e: &FeedEntry| {
            taken.push(FromFleet {
                id: e.id.clone(),
                sha256: e.sha256.clone(),
                kind: e.kind,
            })
        };
        let users: Vec<&(FeedEntry, PathBuf, Verified)> = good
            .iter()
            .filter(|g| g.0.kind == PatchKind::User)
            .collect();
        if !users.is_empty() {
            // Finish or roll back what a killed hotsplice left half done
            // before changing processes again.
            if let Err(e) = self.recover() {
                r.failures.push(failure("-", "recover", chain(&e)));
                return;
            }
            match self.store() {
                Ok(store) => {
                    let have = store.list().unwrap_or_default();
                    for (e, _, v) in &users {
                        let sha = hotsplice_fleet::sha256_hex(v.file());
                        if have
                            .iter()
                            .any(|h| h.id.as_str() == e.id && h.sha256 == sha)
                        {
                            continue;
                        }
                        match store.install(v.file(), v, &v.signer().key_id()) {
                            Ok(_) => mark(e),
                            Err(err) => r.failures.push(failure(
                                &e.id,
                                "install",
                                chain(&AgentError::from(err)),
                            )),
                        }
                    }
                    match self.installed_patches(false) {
                        Ok(inst) => {
                            let pids = hotsplice_process::all_pids();
                            let run = self.upgrade(&pids, &inst, &self.options(None), false);
                            for o in run.outcomes {
                                match o {
                                    Outcome::Patched { pid, id, .. } => r.applied.push(RunItem {
                                        patch: id.to_string(),
                                        target: format!("pid:{pid}"),
                                    }),
                                    Outcome::Failed { pid, id, why } => r.failures.push(failure(
                                        id.as_str(),
                                        &format!("pid:{pid}"),
                                        why,
                                    )),
                                    _ => {}
                                }
                            }
                        }
                        Err(e) => r.failures.push(failure("-", "install", chain(&e))),
                    }
                }
                Err(e) => r.failures.push(failure("-", "install", chain(&e))),
            }
        }
        let kernels: Vec<&(FeedEntry, PathBuf, Verified)> = good
            .iter()
            .filter(|g| g.0.kind == PatchKind::Kernel)
            .collect();
        if kernels.is_empty() {
            return;
        }
        let k = self.kernel();
        if !std::path::Path::new("/sys/kernel/livepatch").is_dir() || k.disabled() {
            self.warn(format!(
                "{} kernel patch(es) from the server are not applied: this kernel cannot be live patched",
                kernels.len()
            ));
            return;
        }
        let me = k.build_id().unwrap_or_default();
        let applied: Vec<String> = k
            .applied()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.id)
            .collect();
        for (e, path, _) in kernels {
            if e.build_id != me || applied.contains(&e.id) {
                continue;
            }
            match self.kernel_apply(&k, path, false, false) {
                Ok((id, Some(_))) => {
                    mark(e);
                    r.applied.push(RunItem {
                        patch: id,
                        target: "kernel".into(),
                    })
                }
                Ok((id, None)) => r
                    .failures
                    .push(failure(&id, "kernel", "not applied".into())),
                Err(err) => r.failures.push(failure(&e.id, "kernel", chain(&err))),
            }
        }
    }

    /// The daemon's side: sync every interval (the configuration's, else
    /// the server's suggestion, else an hour), each time after a random
    /// delay of up to `[fleet] jitter` seconds, and once at the start.
    /// Returns when a stop is requested (or after one sync with `once`).
    pub fn fleet_loop(&self, once: bool, done: &std::sync::atomic::AtomicBool) {
        let f = &self.config.fleet;
        let stop = || self.stop_requested() || done.load(std::sync::atomic::Ordering::Relaxed);
        let most = if f.jitter.is_finite() {
            f.jitter.clamp(0.0, 86_400.0)
        } else {
            0.0
        };
        let jitter = || std::time::Duration::from_secs_f64(most * super::http::random_unit());
        loop {
            if super::http::sleep_unless_stopped(jitter(), &stop) {
                return;
            }
            let next = match self.sync(&SyncOptions::default()) {
                Ok(r) => {
                    self.emit(Event::FleetSynced {
                        server: r.server.clone().unwrap_or_default(),
                        feed_version: r.feed.as_ref().map_or(0, |f| f.version),
                        patches: r.patches.len(),
                        applied: r.applied.len(),
                        failures: r
                            .failures
                            .iter()
                            .map(|f| format!("{} {}: {}", f.patch, f.target, f.error))
                            .collect(),
                    });
                    r.next_checkin
                }
                Err(e) => {
                    self.emit(Event::FleetSyncFailed { why: chain(&e) });
                    None
                }
            };
            if once {
                return;
            }
            let secs = f
                .sync_interval
                .filter(|s| s.is_finite())
                .or(next.map(|n| n as f64))
                .unwrap_or(3600.0)
                .clamp(1.0, 7.0 * 86_400.0);
            if super::http::sleep_unless_stopped(std::time::Duration::from_secs_f64(secs), &stop) {
                return;
            }
        }
    }
}

/// Open the list with the pinned key and accept it for this machine.
fn open_and_accept(
    signed: &SignedFeed,
    key: &hotsplice_trust::PublicKey,
    uuid: &str,
    last: Option<&FeedState>,
) -> std::result::Result<FeedList, feed::FeedError> {
    let list = signed.open(key)?;
    feed::accept(&list, uuid, last, hotsplice_fleet::now())?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotsplice_trust::SecretKey;

    fn list(machine: &str, version: u64, expires_at: u64) -> FeedList {
        FeedList {
            format: feed::FEED_FORMAT,
            machine: machine.into(),
            channel: "stable".into(),
            version,
            issued_at: 0,
            expires_at,
            authorization: "allowed".into(),
            patches: vec![],
        }
    }

    #[test]
    fn lists_are_refused_for_rollback_freeze_other_machine_and_key() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let me = hotsplice_fleet::new_uuid().unwrap();
        let later = hotsplice_fleet::now() + 3600;
        let ok = SignedFeed::sign(&list(&me, 5, later), &key);
        let last = FeedState {
            version: 5,
            expires_at: later,
            sha256: ok.sha256(),
        };
        assert!(open_and_accept(&ok, &key.public(), &me, Some(&last)).is_ok());
        let old = SignedFeed::sign(&list(&me, 4, later), &key);
        assert!(matches!(
            open_and_accept(&old, &key.public(), &me, Some(&last)),
            Err(feed::FeedError::Rollback { got: 4, last: 5 })
        ));
        let stale = SignedFeed::sign(&list(&me, 6, 1), &key);
        assert!(matches!(
            open_and_accept(&stale, &key.public(), &me, Some(&last)),
            Err(feed::FeedError::Expired { .. })
        ));
        let theirs = SignedFeed::sign(&list(&hotsplice_fleet::new_uuid().unwrap(), 6, later), &key);
        assert!(matches!(
            open_and_accept(&theirs, &key.public(), &me, Some(&last)),
            Err(feed::FeedError::OtherMachine { .. })
        ));
        let forged = SignedFeed::sign(&list(&me, 9, later), &other);
        assert!(matches!(
            open_and_accept(&forged, &key.public(), &me, Some(&last)),
            Err(feed::FeedError::WrongKey { .. })
        ));
        let mut altered = ok.clone();
        altered.signed = altered.signed.replace("\"version\":5", "\"version\":50");
        assert!(matches!(
            open_and_accept(&altered, &key.public(), &me, Some(&last)),
            Err(feed::FeedError::BadSignature)
        ));
    }

    /// A validly signed patch is still refused when it is not the one the
    /// list describes, or when no trusted publisher signed it.
    #[test]
    fn a_patch_must_be_the_listed_one_and_trusted() {
        let t = tempfile::tempdir().unwrap();
        let paths = hotsplice_store::Paths {
            config_dir: t.path().join("etc"),
            state_dir: t.path().join("state"),
            run_dir: t.path().join("run"),
        };
        let key = SecretKey::generate().unwrap();
        hotsplice_trust::write_key_pair(&t.path().join("k"), "pub", &key).unwrap();
        std::fs::create_dir_all(paths.keys_dir()).unwrap();
        std::fs::copy(t.path().join("k/pub.pub"), paths.keys_dir().join("pub.pub")).unwrap();
        let agent = Agent::with_paths(paths, crate::AgentOptions::default()).unwrap();
        let bid = "ab".repeat(20);
        let patch =
            hotsplice_create::kernel::kernel_patch(b"m", "kpatch01", "d", &bid, "r", vec![]);
        let bytes = hotsplice_trust::sign_file(&patch.to_bytes(), &key).unwrap();
        let entry = FeedEntry {
            sha256: hotsplice_fleet::sha256_hex(&bytes),
            size: bytes.len() as u64,
            id: "kpatch01".into(),
            kind: PatchKind::Kernel,
            target_name: "vmlinux".into(),
            build_id: bid.clone(),
            level: 1,
            description: String::new(),
            cves: vec![],
        };
        assert!(agent.check_patch(&entry, &bytes).is_ok());
        for wrong in [
            FeedEntry {
                id: "kpatch02".into(),
                ..entry.clone()
            },
            FeedEntry {
                level: 2,
                ..entry.clone()
            },
            FeedEntry {
                build_id: "cd".repeat(20),
                ..entry.clone()
            },
            FeedEntry {
                kind: PatchKind::User,
                ..entry.clone()
            },
        ] {
            let e = agent.check_patch(&wrong, &bytes).err().unwrap();
            assert!(chain(&e).contains("mix and match"), "{}", chain(&e));
        }
        // Signed by a key this machine does not trust.
        let other = SecretKey::generate().unwrap();
        let foreign = hotsplice_trust::sign_file(&patch.to_bytes(), &other).unwrap();
        assert!(agent.check_patch(&entry, &foreign).is_err());
        // Unsigned: refused (never --allow-unsigned for a server's patch).
        assert!(agent.check_patch(&entry, &patch.to_bytes()).is_err());
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        let s = "é".repeat(MAX_STRING);
        let c = cut(s);
        assert!(c.len() <= MAX_STRING);
        assert!(c.chars().all(|ch| ch == 'é'));
    }
}
