//! The API suite against the real server, once on SQLite and once on
//! PostgreSQL (a private server from `hotsplice_testsupport::postgres`,
//! one database per test). The PostgreSQL half is skipped (listed as
//! ignored) only with HOTSPLICE_SKIP_POSTGRES_TESTS set; a PostgreSQL
//! that cannot start fails those tests.

mod common;

use common::*;
use hotsplice_fleet::api;
use hotsplice_fleet::feed::{check_blob, FeedState};
use hotsplice_testsupport::harness::libtest_mimic::{self, Arguments, Trial};
use hotsplice_testsupport::postgres;
use serde_json::json;

static PG: postgres::Shared = postgres::Shared::new();

fn pg_database() -> String {
    PG.database()
}

type Suite = fn(Option<String>);

fn main() {
    let suite: Vec<(&str, Suite)> = vec![
        ("auth", auth),
        (
            "feed_channels_groups_authorization",
            feed_channels_groups_authorization,
        ),
        ("tampered_uploads", tampered_uploads),
        ("uptrack_v1", uptrack_v1),
        ("bad_input", bad_input),
        ("v2_admin_and_search", v2_admin_and_search),
        ("kill_during_upload", kill_during_upload),
        ("cli_admin_commands", cli_admin_commands),
        ("concurrent_writers", concurrent_writers),
        ("grouped_checkins", grouped_checkins),
    ];
    let args = Arguments::from_args();
    let skip = postgres::skip_reason();
    if let Some(why) = &skip {
        eprintln!("ignoring the PostgreSQL tests: {why}");
    }
    let mut trials = Vec::new();
    for (name, f) in suite.iter().copied() {
        trials.push(Trial::test(format!("sqlite_{name}"), move || {
            f(None);
            Ok(())
        }));
        trials.push(
            Trial::test(format!("postgres_{name}"), move || {
                f(Some(pg_database()));
                Ok(())
            })
            .with_ignored_flag(skip.is_some()),
        );
    }
    trials.push(
        Trial::test("postgres_two_instances", || {
            two_instances(pg_database());
            Ok(())
        })
        .with_ignored_flag(skip.is_some()),
    );
    trials.push(Trial::test("feed_validity_and_interval", || {
        feed_validity_and_interval();
        Ok(())
    }));
    trials.push(Trial::test("openapi_document", || {
        openapi_document(None);
        Ok(())
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop PostgreSQL before exiting.
    PG.stop();
    conclusion.exit()
}

fn auth(db: Option<String>) {
    let c = Ctx::new(db);
    // No credentials, wrong ones.
    let r = c.get("/api/1/machines", &Auth::None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.error().contains("X-Uptrack-User"), "{}", r.error());
    let wrong = Auth::Api(c.creds.api_user.clone(), "0".repeat(64));
    assert_eq!(c.get("/api/1/machines", &wrong).status, 401);
    let nobody = Auth::Api("nobody".into(), c.creds.api_key.clone());
    assert_eq!(c.get("/api/v2/machines", &nobody).status, 401);
    assert_eq!(c.get("/api/v2/machines", &c.admin()).ok().status, 200);
    // Read-only: GETs only.
    let ro = c.token("read-only");
    assert_eq!(c.get("/api/1/machines", &ro).status, 200);
    let (uuid, key) = c.register(&c.creds.access_key, None);
    let r = c.post_json(
        &format!("/api/1/machine/{uuid}/authorize"),
        &ro,
        &json!({"authorized": false}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("read-only"), "{}", r.error());
    let r = c.post(api::PUBLISH, &ro, b"x");
    assert_eq!(r.status, 403);
    // Operator: no tokens.
    let op = c.token("operator");
    assert_eq!(
        c.post_json("/api/v2/tokens", &op, &json!({"role": "admin"}))
            .status,
        403
    );
    assert_eq!(c.get("/api/v2/tokens", &op).status, 403);
    assert_eq!(c.get("/api/v2/tokens", &c.admin()).status, 200);
    // Machine keys and API keys are different things.
    let as_api = Auth::Api(uuid.clone(), key.clone());
    assert_eq!(c.get("/api/1/machines", &as_api).status, 401);
    let r = c.get("/api/1/machines", &Auth::Machine(key.clone()));
    assert_eq!(r.status, 401);
    assert!(r.error().contains("machine key"), "{}", r.error());
    let body = serde_json::to_vec(&report(&uuid)).unwrap();
    let r = c.post(
        &api::checkin(&uuid),
        &Auth::Machine(c.creds.api_key.clone()),
        &body,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = c.post(&api::checkin(&uuid), &c.admin(), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    // A machine key for another machine's check-in and feed.
    let (other, other_key) = c.register(&c.creds.access_key, None);
    let r = c.post(&api::checkin(&other), &Auth::Machine(key.clone()), &body);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.get(&api::machine_feed(&other), &Auth::Machine(key.clone()));
    assert_eq!(r.status, 403, "{}", r.text());
    // ... even with a report naming the other machine.
    let body2 = serde_json::to_vec(&report(&other)).unwrap();
    assert_eq!(
        c.post(&api::checkin(&other), &Auth::Machine(key.clone()), &body2)
            .status,
        403
    );
    // Its own works; a report for another UUID on its own path does not.
    checkin(&c, &uuid, &key, &report(&uuid));
    assert_eq!(
        c.post(&api::checkin(&uuid), &Auth::Machine(key.clone()), &body2)
            .status,
        400
    );
    c.get(&api::machine_feed(&other), &Auth::Machine(other_key))
        .ok();
    // Registering needs a valid access key.
    let r = c.post_json(
        api::REGISTER,
        &Auth::None,
        &json!({"access_key": "0".repeat(64), "hostname": "h"}),
    );
    assert_eq!(r.status, 401);
    // The open calls.
    assert!(c
        .get(api::FEED_KEY, &Auth::None)
        .ok()
        .text()
        .starts_with("hotsplice-ed25519-public "));
    c.get(api::OPENAPI, &Auth::None).ok();
    // A revoked token stops working.
    let Auth::Api(name, _) = &ro else {
        unreachable!()
    };
    assert_eq!(
        call(
            "DELETE",
            &c.url(&format!("/api/v2/tokens/{name}")),
            &c.admin(),
            None
        )
        .status,
        204
    );
    assert_eq!(c.get("/api/1/machines", &ro).status, 401);
}

fn publish(c: &Ctx, bytes: &[u8], channel: Option<&str>) -> String {
    let path = match channel {
        Some(ch) => format!("{}?channel={ch}", api::PUBLISH),
        None => api::PUBLISH.to_string(),
    };
    let r = c.post(&path, &c.admin(), bytes);
    assert_eq!(r.status, 201, "{}", r.text());
    let rec: api::PatchRecord = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(rec.sha256, hotsplice_fleet::sha256_hex(bytes));
    rec.sha256
}

fn version(l: &hotsplice_fleet::feed::FeedList) -> u64 {
    l.version
}

fn feed_channels_groups_authorization(db: Option<String>) {
    let c = Ctx::new(db);
    let k = c.publisher();
    let user = patch(
        "user0001",
        LIBC_BID,
        false,
        1,
        &["CVE-2024-1111"],
        Some(&k),
        64,
    );
    let user2 = patch(
        "user0002",
        LIBC_BID,
        false,
        2,
        &["CVE-2024-2222"],
        Some(&k),
        64,
    );
    let kern = patch(
        "kern0001",
        KERNEL_BID,
        true,
        1,
        &["CVE-2024-3333"],
        Some(&k),
        64,
    );
    let other = patch("othr0001", &"ef".repeat(20), false, 1, &[], Some(&k), 64);
    let (a, ak) = c.register(&c.creds.access_key, None);
    let l0 = checkin(&c, &a, &ak, &report(&a));
    assert!(l0.patches.is_empty());
    assert_eq!(l0.authorization, "allowed");
    assert_eq!(l0.channel, "stable");

    let s_user = publish(&c, &user, Some("stable"));
    let s_kern = publish(&c, &kern, Some("stable"));
    let s_other = publish(&c, &other, Some("stable"));
    let s_user2 = publish(&c, &user2, Some("testing"));
    let l1 = checkin(&c, &a, &ak, &report(&a));
    assert!(version(&l1) > version(&l0), "publishing moves the version");
    let mut got: Vec<&str> = l1.patches.iter().map(|p| p.id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["kern0001", "user0001"], "only what fits, only stable");
    // The feed endpoint gives the same list; it rolls forward, not back.
    let fr = c
        .get(&api::machine_feed(&a), &Auth::Machine(ak.clone()))
        .ok();
    let f2 = open_feed(&c, &a, &serde_json::from_slice(&fr.body).unwrap());
    assert_eq!(f2.patches, l1.patches);
    let state = FeedState {
        version: l1.version,
        expires_at: l1.expires_at,
        sha256: String::new(),
    };
    hotsplice_fleet::feed::accept(&f2, &a, Some(&state), hotsplice_fleet::now()).unwrap();
    // Downloads: what is in its feed, byte for byte; not what is not.
    for e in &l1.patches {
        let r = c
            .get(&api::patch_file(&e.sha256), &Auth::Machine(ak.clone()))
            .ok();
        check_blob(e, &r.body).unwrap();
    }
    let r = c.get(&api::patch_file(&s_other), &Auth::Machine(ak.clone()));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.get(&api::patch_file(&s_user2), &Auth::Machine(ak.clone()));
    assert_eq!(r.status, 403);
    assert_eq!(
        c.get(&api::patch_file(&s_other), &c.admin()).ok().body,
        other
    );
    assert_eq!(c.get(&api::patch_file(&s_kern), &Auth::None).status, 401);

    // Status and CVEs follow what it applied.
    let m = c
        .get(&format!("/api/v2/machines/{a}"), &c.admin())
        .ok()
        .json();
    assert_eq!(m["status"], "outofdate");
    assert_eq!(m["missing_cves"], json!(["CVE-2024-1111", "CVE-2024-3333"]));
    let mut r = report(&a);
    r.kernel
        .applied
        .push(hotsplice_fleet::report::AppliedKernelPatch {
            id: "kern0001".into(),
            description: "CVE-2024-3333 fix".into(),
        });
    r.processes.push(hotsplice_fleet::report::ProcessPatches {
        pid: 42,
        comm: "prog".into(),
        patches: vec!["user0001".into()],
    });
    checkin(&c, &a, &ak, &r);
    let m = c
        .get(&format!("/api/v2/machines/{a}"), &c.admin())
        .ok()
        .json();
    assert_eq!(m["status"], "uptodate");
    assert_eq!(m["fixed_cves"], json!(["CVE-2024-1111", "CVE-2024-3333"]));
    assert_eq!(m["report"]["processes"][0]["pid"], 42);
    let h = c
        .get(&format!("/api/v2/machines/{a}/history"), &c.admin())
        .ok()
        .json();
    let applied: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "applied")
        .map(|e| e["patch"].as_str().unwrap())
        .collect();
    assert_eq!(applied, ["kern0001", "user0001"]);

    // A group bound to `testing` gets testing's patches only.
    let g = call(
        "PUT",
        &c.url("/api/v2/groups/beta"),
        &c.admin(),
        Some(json!({"channel": "testing"}).to_string().as_bytes()),
    )
    .ok()
    .json();
    assert_eq!(g["channel"], "testing");
    let (b, bk) = c.register(&c.creds.access_key, Some("beta"));
    let lb = checkin(&c, &b, &bk, &report(&b));
    assert_eq!(lb.channel, "testing");
    let ids: Vec<&str> = lb.patches.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["user0002"]);
    // Promotion: one call; machines of groups on that channel get it.
    let before = lb.version;
    let r = c
        .post_json(
            "/api/v2/channels/testing/patches",
            &c.admin(),
            &json!({"sha256": s_kern}),
        )
        .ok()
        .json();
    assert_eq!(r["changed"], true);
    let lb2 = checkin(&c, &b, &bk, &report(&b));
    assert!(lb2.version > before);
    let mut ids: Vec<&str> = lb2.patches.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["kern0001", "user0002"]);
    // ... and machine a (stable) does not get user0002.
    let la = checkin(&c, &a, &ak, &report(&a));
    assert!(!la.patches.iter().any(|p| p.id == "user0002"));
    // Removal from a channel.
    let r = call(
        "DELETE",
        &c.url(&format!("/api/v2/channels/testing/patches/{s_kern}")),
        &c.admin(),
        None,
    )
    .ok()
    .json();
    assert_eq!(r["changed"], true);
    let lb3 = checkin(&c, &b, &bk, &report(&b));
    assert!(lb3.version > lb2.version);
    assert_eq!(lb3.patches.len(), 1);
    // Promote an unknown patch: 404.
    let r = c.post_json(
        "/api/v2/channels/testing/patches",
        &c.admin(),
        &json!({"sha256": "0".repeat(64)}),
    );
    assert_eq!(r.status, 404);

    // Pending machines get nothing until authorized; denied ones neither.
    let pk = c
        .post_json("/api/v2/access-keys", &c.admin(), &json!({"pending": true}))
        .ok()
        .json();
    let (p, pkey) = c.register(pk["key"].as_str().unwrap(), None);
    let lp = checkin(&c, &p, &pkey, &report(&p));
    assert_eq!(lp.authorization, "pending");
    assert!(lp.patches.is_empty());
    assert_eq!(
        c.get(&api::patch_file(&s_user), &Auth::Machine(pkey.clone()))
            .status,
        403
    );
    c.post_json(
        &format!("/api/1/machine/{p}/authorize"),
        &c.admin(),
        &json!({"authorized": true}),
    )
    .ok();
    let lp2 = checkin(&c, &p, &pkey, &report(&p));
    assert!(lp2.version > lp.version, "authorizing moves the version");
    assert_eq!(lp2.authorization, "allowed");
    assert_eq!(lp2.patches.len(), 2);
    c.get(&api::patch_file(&s_user), &Auth::Machine(pkey.clone()))
        .ok();
    c.post_json(
        &format!("/api/1/machine/{p}/authorize"),
        &c.admin(),
        &json!({"authorized": false}),
    )
    .ok();
    let lp3 = checkin(&c, &p, &pkey, &report(&p));
    assert_eq!(lp3.authorization, "denied");
    assert!(lp3.patches.is_empty());
    assert!(lp3.version > lp2.version);
    // Registering again keeps the denial.
    let again = c
        .post_json(
            api::REGISTER,
            &Auth::None,
            &json!({"access_key": c.creds.access_key, "hostname": "h", "uuid": p}),
        )
        .ok()
        .json();
    assert_eq!(again["uuid"], p.as_str());
    assert_eq!(again["authorization"], "denied");
    // ... and the old machine key stops working.
    assert_eq!(
        c.get(&api::machine_feed(&p), &Auth::Machine(pkey)).status,
        401
    );

    // The channel's own list, for mirrors.
    let cf = c.get(&api::channel_feed("stable"), &c.admin()).ok();
    let cl = open_feed(&c, "any-uuid", &serde_json::from_slice(&cf.body).unwrap());
    assert_eq!(cl.machine, "*");
    assert_eq!(cl.patches.len(), 3);
}

fn tampered_uploads(db: Option<String>) {
    let c = Ctx::new(db);
    let k = c.publisher();
    let good = patch("good0001", LIBC_BID, false, 1, &[], Some(&k), 256);
    let n_before = c
        .get(api::PUBLISH, &c.admin())
        .ok()
        .json()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n_before, 0);
    // One byte flipped in the image.
    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    let r = c.post(api::PUBLISH, &c.admin(), &flipped);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    // Unsigned.
    let unsigned = patch("good0001", LIBC_BID, false, 1, &[], None, 256);
    let r = c.post(api::PUBLISH, &c.admin(), &unsigned);
    assert!((400..500).contains(&r.status));
    assert!(r.error().contains("not signed"), "{}", r.error());
    // Signed by a key the server does not trust: named.
    let stranger = hotsplice_trust::SecretKey::generate().unwrap();
    let r = c.post(
        api::PUBLISH,
        &c.admin(),
        &patch("good0001", LIBC_BID, false, 1, &[], Some(&stranger), 256),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains(&stranger.public().id()), "{}", r.error());
    // Not a patch at all.
    let r = c.post(api::PUBLISH, &c.admin(), b"hello");
    assert_eq!(r.status, 422);
    // Nothing stored.
    assert!(c
        .get(api::PUBLISH, &c.admin())
        .ok()
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let sha = hotsplice_fleet::sha256_hex(&flipped);
    assert_eq!(c.get(&api::patch_file(&sha), &c.admin()).status, 404);
    // The good one goes in; again is 200 (already stored), not twice.
    publish(&c, &good, None);
    assert_eq!(c.post(api::PUBLISH, &c.admin(), &good).status, 200);
    assert_eq!(
        c.get(api::PUBLISH, &c.admin())
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A removed publisher key is no longer trusted.
    call(
        "DELETE",
        &c.url(&format!("/api/v2/publisher-keys/{}", k.public().id())),
        &c.admin(),
        None,
    )
    .ok();
    let r = c.post(
        api::PUBLISH,
        &c.admin(),
        &patch("good0002", LIBC_BID, false, 1, &[], Some(&k), 256),
    );
    assert_eq!(r.status, 403);
}

fn uptrack_v1(db: Option<String>) {
    let c = Ctx::new(db);
    let k = c.publisher();
    publish(
        &c,
        &patch(
            "kern0001",
            KERNEL_BID,
            true,
            1,
            &["CVE-2024-3333"],
            Some(&k),
            64,
        ),
        Some("stable"),
    );
    let (a, ak) = c.register(&c.creds.access_key, None);
    let mut r = report(&a);
    r.client_version = "0.1.0".into();
    checkin(&c, &a, &ak, &r);
    let list = c.get("/api/1/machines", &c.admin()).ok().json();
    let m = &list.as_array().unwrap()[0];
    for f in [
        "status",
        "autoinstall",
        "uuid",
        "mmap_min_addr",
        "ip",
        "hostname",
        "uptrack_client_version",
        "active",
        "authorization",
        "last_seen",
    ] {
        assert!(m.get(f).is_some(), "field {f} missing in {m}");
    }
    assert_eq!(m["uuid"], a.as_str());
    assert_eq!(m["status"], "outofdate");
    assert_eq!(m["authorization"], "allowed");
    assert_eq!(m["active"], true);
    assert_eq!(m["autoinstall"], true);
    assert_eq!(m["ip"], "192.0.2.10");
    assert_eq!(m["hostname"], "host1.example.com");
    assert_eq!(m["uptrack_client_version"], "0.1.0");
    assert_eq!(m["mmap_min_addr"], 65536, "carried from the report: {m}");
    let seen = m["last_seen"].as_str().unwrap();
    assert!(
        seen.len() == 20 && seen.ends_with('Z') && seen.as_bytes()[10] == b'T',
        "{seen}"
    );
    let d = c
        .get(&format!("/api/1/machine/{a}/describe"), &c.admin())
        .ok()
        .json();
    assert_eq!(d["uuid"], a.as_str());
    assert_eq!(d["original_kernel"], "6.1.0-28-amd64");
    assert_eq!(d["effective_kernel"], "6.1.0-28-amd64");
    assert_eq!(d["group"], "default");
    assert_eq!(d["mmap_min_addr"], 65536);
    assert_eq!(d["installed_updates"], json!([]));
    assert_eq!(d["steps"][0][0], "Install");
    assert_eq!(d["steps"][0][1]["ID"], "kern0001");
    assert!(d["steps"][0][1]["Name"]
        .as_str()
        .unwrap()
        .contains("CVE-2024-3333"));
    // Installed updates carry ID and Name.
    r.kernel
        .applied
        .push(hotsplice_fleet::report::AppliedKernelPatch {
            id: "kern0001".into(),
            description: "CVE-2024-3333 fix".into(),
        });
    // A report of an older client, without mmap_min_addr: still valid,
    // and the field is null again (not the previous report's).
    r.mmap_min_addr = None;
    assert!(!serde_json::to_string(&r).unwrap().contains("mmap_min_addr"));
    checkin(&c, &a, &ak, &r);
    let d = c
        .get(&format!("/api/1/machine/{a}/describe"), &c.admin())
        .ok()
        .json();
    assert_eq!(
        d["installed_updates"],
        json!([{"ID": "kern0001", "Name": "CVE-2024-3333 fix"}])
    );
    assert_eq!(d["steps"], json!([]));
    assert_eq!(d["status"], "uptodate");
    assert!(d["mmap_min_addr"].is_null(), "{d}");
    // Authorize.
    c.post_json(
        &format!("/api/1/machine/{a}/authorize"),
        &c.admin(),
        &json!({"authorized": false}),
    )
    .ok();
    let list = c.get("/api/1/machines", &c.admin()).ok().json();
    assert_eq!(list[0]["authorization"], "denied");
    // Group: created, then ungrouped.
    c.post_json(
        &format!("/api/1/machine/{a}/group"),
        &c.admin(),
        &json!({"group_name": "web servers"}),
    )
    .ok();
    let d = c
        .get(&format!("/api/1/machine/{a}/describe"), &c.admin())
        .ok()
        .json();
    assert_eq!(d["group"], "web servers");
    let groups = c.get("/api/v2/groups", &c.admin()).ok().json();
    assert!(groups
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "web servers" && g["channel"] == "stable"));
    let r = c.post_json(
        &format!("/api/1/machine/{a}/group"),
        &c.admin(),
        &json!({"group_name": "a\u{1}b"}),
    );
    assert_eq!(r.status, 400);
    c.post_json(
        &format!("/api/1/machine/{a}/group"),
        &c.admin(),
        &json!({"group_name": ""}),
    )
    .ok();
    let d = c
        .get(&format!("/api/1/machine/{a}/describe"), &c.admin())
        .ok()
        .json();
    assert_eq!(d["group"], serde_json::Value::Null);
    // Unknown UUIDs: 404 on all four paths' machine calls.
    let u = "00086980-47cb-4486-81c0-4fe3299bad90";
    let r = c.get(&format!("/api/1/machine/{u}/describe"), &c.admin());
    assert_eq!(r.status, 404);
    assert!(r.error().contains(u));
    assert_eq!(
        c.post_json(
            &format!("/api/1/machine/{u}/authorize"),
            &c.admin(),
            &json!({"authorized": true})
        )
        .status,
        404
    );
    assert_eq!(
        c.post_json(
            &format!("/api/1/machine/{u}/group"),
            &c.admin(),
            &json!({"group_name": "x"})
        )
        .status,
        404
    );
    assert_eq!(
        c.get("/api/1/machine/not-a-uuid/describe", &c.admin())
            .status,
        404
    );
}

fn bad_input(db: Option<String>) {
    let c = Ctx::new(db);
    let (a, ak) = c.register(&c.creds.access_key, None);
    let m = Auth::Machine(ak.clone());
    // Malformed JSON.
    let r = c.post(&api::checkin(&a), &m, b"{\"format\": 1,");
    assert_eq!(r.status, 400);
    assert!(r.error().contains("bad report"), "{}", r.error());
    let r = c.post(api::REGISTER, &Auth::None, b"not json");
    assert_eq!(r.status, 400);
    assert!(r.error().contains("JSON"), "{}", r.error());
    // Unknown field.
    let mut v = serde_json::to_value(report(&a)).unwrap();
    v["surprise"] = json!(1);
    let r = c.post_json(&api::checkin(&a), &m, &v);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("surprise"), "{}", r.error());
    let r = c.post_json(
        &format!("/api/1/machine/{a}/authorize"),
        &c.admin(),
        &json!({"authorized": true, "extra": 1}),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("extra"), "{}", r.error());
    // Wrong types, bad values.
    let r = c.post_json(
        &format!("/api/1/machine/{a}/authorize"),
        &c.admin(),
        &json!({"authorized": "yes"}),
    );
    assert_eq!(r.status, 400);
    let r = c.post_json(
        &format!("/api/v2/machines/{a}/authorize"),
        &c.admin(),
        &json!({"authorization": "maybe"}),
    );
    assert_eq!(r.status, 400);
    let mut bad = report(&a);
    bad.addresses = vec!["not-an-ip".into()];
    let r = c.post(&api::checkin(&a), &m, &serde_json::to_vec(&bad).unwrap());
    assert_eq!(r.status, 400);
    assert!(r.error().contains("addresses"), "{}", r.error());
    // Oversized bodies.
    let big = vec![b' '; hotsplice_fleet::report::MAX_REPORT_BYTES + 1024];
    let r = c.post(&api::checkin(&a), &m, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("too large"));
    let r = c.post(api::REGISTER, &Auth::None, &big);
    assert_eq!(r.status, 413);
    // Bad path and query parameters.
    let r = c.get("/api/v2/patches/xyz", &c.admin());
    assert_eq!(r.status, 400);
    assert!(r.error().contains("SHA-256"), "{}", r.error());
    let r = c.get("/api/v2/machines?seen_within=soon", &c.admin());
    assert_eq!(r.status, 400);
    assert!(r.error().contains("seen_within"), "{}", r.error());
    let r = c.get("/api/v2/machines?color=red", &c.admin());
    assert_eq!(r.status, 400);
    let r = c.post(&format!("{}?channel=a/b", api::PUBLISH), &c.admin(), b"x");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = call(
        "PUT",
        &c.url("/api/v2/groups/g"),
        &c.admin(),
        Some(b"{\"channel\": \"bad name\"}"),
    );
    assert_eq!(r.status, 400);
    // NUL and control characters never reach the database (PostgreSQL's
    // TEXT refuses NUL: that would be a 500).
    let r = call("DELETE", &c.url("/api/v2/tokens/a%00b"), &c.admin(), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(
        "DELETE",
        &c.url("/api/v2/access-keys/%00"),
        &c.admin(),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(
        "DELETE",
        &c.url("/api/v2/publisher-keys/%00"),
        &c.admin(),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = c.get("/api/v2/machines?group=%00", &c.admin());
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.get("/api/v2/channels/a%00/patches", &c.admin());
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.post_json(
        api::REGISTER,
        &Auth::None,
        &json!({"access_key": c.creds.access_key, "hostname": "a\u{0}b"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let mut nul = report(&a);
    nul.last_run = Some(hotsplice_fleet::report::RunReport {
        at: 5,
        feed_version: 1,
        applied: vec![],
        removed: vec![],
        failures: vec![hotsplice_fleet::report::RunFailure {
            patch: "abcd1234".into(),
            target: "kernel".into(),
            error: "a\0b".into(),
        }],
    });
    checkin(&c, &a, &ak, &nul);
    // Unknown path and method.
    let r = c.get("/api/v2/nothing", &c.admin());
    assert_eq!(r.status, 404);
    r.error();
    let r = call("DELETE", &c.url("/api/1/machines"), &c.admin(), None);
    assert_eq!(r.status, 405);
    r.error();
    // The server is still fine.
    checkin(&c, &a, &ak, &report(&a));
    assert!(!c.server.log_text().contains("panicked"));
}

fn v2_admin_and_search(db: Option<String>) {
    let c = Ctx::new(db);
    let k = c.publisher();
    publish(
        &c,
        &patch(
            "user0001",
            LIBC_BID,
            false,
            1,
            &["CVE-2024-1111"],
            Some(&k),
            64,
        ),
        Some("stable"),
    );
    let (a, ak) = c.register(&c.creds.access_key, None);
    let (b, bk) = c.register(&c.creds.access_key, Some("db"));
    let mut ra = report(&a);
    ra.processes.push(hotsplice_fleet::report::ProcessPatches {
        pid: 7,
        comm: "prog".into(),
        patches: vec!["user0001".into()],
    });
    ra.last_run = Some(hotsplice_fleet::report::RunReport {
        at: 100,
        feed_version: 1,
        applied: vec![],
        removed: vec![],
        failures: vec![hotsplice_fleet::report::RunFailure {
            patch: "user0002".into(),
            target: "pid:8".into(),
            error: "code busy".into(),
        }],
    });
    checkin(&c, &a, &ak, &ra);
    checkin(&c, &a, &ak, &ra); // the same last_run: recorded once
    let mut rb = report(&b);
    rb.kernel.original_release = "6.9.0".into();
    rb.kernel.effective_release = "6.9.0".into();
    checkin(&c, &b, &bk, &rb);
    let q = |qs: &str| -> Vec<String> {
        let mut v: Vec<String> = c
            .get(&format!("/api/v2/machines?{qs}"), &c.admin())
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["uuid"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(q("cve_fixed=CVE-2024-1111"), vec![a.clone()]);
    assert_eq!(q("cve_missing=CVE-2024-1111"), vec![b.clone()]);
    assert_eq!(q("kernel=6.9.0"), vec![b.clone()]);
    assert_eq!(q("group=db"), vec![b.clone()]);
    assert_eq!(q("status=uptodate"), vec![a.clone()]);
    assert_eq!(q("status=outofdate"), vec![b.clone()]);
    assert_eq!(q("seen_within=3600").len(), 2);
    assert_eq!(q("authorization=pending").len(), 0);
    let h = c
        .get(&format!("/api/v2/machines/{a}/history"), &c.admin())
        .ok()
        .json();
    let failed: Vec<_> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{h}");
    assert_eq!(failed[0]["detail"], "code busy");
    // v2 authorize / group.
    let s = c
        .post_json(
            &format!("/api/v2/machines/{b}/authorize"),
            &c.admin(),
            &json!({"authorization": "pending"}),
        )
        .ok()
        .json();
    assert_eq!(s["authorization"], "pending");
    let s = c
        .post_json(
            &format!("/api/v2/machines/{b}/group"),
            &c.admin(),
            &json!({"group": "web"}),
        )
        .ok()
        .json();
    assert_eq!(s["group"], "web");
    // History says who did it.
    let hb = c
        .get(&format!("/api/v2/machines/{b}/history"), &c.admin())
        .ok()
        .json();
    let by: Vec<(&str, &str, &str)> = hb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["detail"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .filter(|e| e.0 != "applied" && e.0 != "removed")
        .collect();
    assert_eq!(
        by,
        [
            ("registered", "host.example", "machine"),
            ("authorization", "pending", "admin"),
            ("group", "web", "admin")
        ]
    );
    // Channels and patches.
    let ch = c.get("/api/v2/channels", &c.admin()).ok().json();
    let stable = ch
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stable")
        .unwrap();
    assert_eq!(stable["patches"], 1);
    let ps = c
        .get("/api/v2/channels/stable/patches", &c.admin())
        .ok()
        .json();
    assert_eq!(ps[0]["id"], "user0001");
    assert_eq!(ps[0]["cves"], json!(["CVE-2024-1111"]));
    assert_eq!(ps[0]["kind"], "user");
    assert_eq!(ps[0]["key_id"], k.public().id());
    let sha = ps[0]["sha256"].as_str().unwrap();
    let rec = c
        .get(&format!("/api/v2/patches/{sha}/record"), &c.admin())
        .ok()
        .json();
    assert_eq!(rec["channels"], json!(["stable"]));
    // Keys, tokens, access keys.
    let keys = c.get("/api/v2/publisher-keys", &c.admin()).ok().json();
    assert_eq!(keys[0]["key_id"], k.public().id());
    let t = c
        .post_json(
            "/api/v2/tokens",
            &c.admin(),
            &json!({"name": "ci", "role": "operator"}),
        )
        .ok()
        .json();
    assert_eq!(t["name"], "ci");
    assert_eq!(
        c.post_json(
            "/api/v2/tokens",
            &c.admin(),
            &json!({"name": "ci", "role": "operator"})
        )
        .status,
        409
    );
    let ak2 = c
        .post_json("/api/v2/access-keys", &c.admin(), &json!({"group": "lab"}))
        .ok()
        .json();
    let (m, _) = c.register(ak2["key"].as_str().unwrap(), None);
    assert_eq!(summary_of(&c, &m)["group"], "lab");
    call(
        "DELETE",
        &c.url(&format!(
            "/api/v2/access-keys/{}",
            ak2["id"].as_str().unwrap()
        )),
        &c.admin(),
        None,
    )
    .ok();
    let r = c.post_json(
        api::REGISTER,
        &Auth::None,
        &json!({"access_key": ak2["key"], "hostname": "h"}),
    );
    assert_eq!(r.status, 401);
    // Import a report of a machine the server does not know.
    let u = "11111111-2222-4333-8444-555555555555";
    let r = c.post(
        api::IMPORT_REPORT,
        &c.admin(),
        &serde_json::to_vec(&report(u)).unwrap(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let s = summary_of(&c, u);
    assert_eq!(s["kernel_build_id"], KERNEL_BID);
    assert_eq!(s["status"], "outofdate");
    let ro = c.token("read-only");
    assert_eq!(
        c.post(
            api::IMPORT_REPORT,
            &ro,
            &serde_json::to_vec(&report(u)).unwrap()
        )
        .status,
        403
    );
    // The imported machine registers with its UUID and then checks in.
    let reg = c
        .post_json(
            api::REGISTER,
            &Auth::None,
            &json!({"access_key": c.creds.access_key, "hostname": "airgap", "uuid": u}),
        )
        .ok()
        .json();
    checkin(&c, u, reg["machine_key"].as_str().unwrap(), &report(u));
}

fn summary_of(c: &Ctx, uuid: &str) -> serde_json::Value {
    c.get(&format!("/api/v2/machines/{uuid}"), &c.admin())
        .ok()
        .json()
}

/// SIGKILL in the middle of a large upload: after a restart nothing of
/// it is stored, and what was acknowledged before is intact.
fn kill_during_upload(db: Option<String>) {
    use std::io::Write;
    let mut c = Ctx::new(db);
    let k = c.publisher();
    let small = patch("keep0001", LIBC_BID, false, 1, &[], Some(&k), 4096);
    let small_sha = publish(&c, &small, Some("stable"));
    let (a, ak) = c.register(&c.creds.access_key, None);
    checkin(&c, &a, &ak, &report(&a));
    let large = patch("lost0001", LIBC_BID, false, 1, &[], Some(&k), 32 << 20);
    let large_sha = hotsplice_fleet::sha256_hex(&large);
    let addr = c.server.url.strip_prefix("http://").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST {}?channel=stable HTTP/1.1\r\nHost: {addr}\r\nX-Uptrack-User: {}\r\nX-Uptrack-Key: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        api::PUBLISH,
        c.creds.api_user,
        c.creds.api_key,
        large.len()
    )
    .unwrap();
    s.write_all(&large[..large.len() * 3 / 4]).unwrap();
    s.flush().unwrap();
    c.server.kill();
    drop(s);
    c.server = Server::start(&c.data(), None);
    let list = c.get(api::PUBLISH, &c.admin()).ok().json();
    let shas: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [small_sha.as_str()]);
    assert_eq!(c.get(&api::patch_file(&large_sha), &c.admin()).status, 404);
    assert_eq!(
        c.get(&api::patch_file(&small_sha), &c.admin()).ok().body,
        small
    );
    // The machine and its key survived too.
    let l = checkin(&c, &a, &ak, &report(&a));
    assert_eq!(l.patches.len(), 1);
    // And the large one can be published now.
    publish(&c, &large, Some("stable"));
}

fn cli_admin_commands(db: Option<String>) {
    let c = Ctx::new(db);
    let data = c.data();
    let d = data.to_str().unwrap();
    let k = hotsplice_trust::SecretKey::generate().unwrap();
    let kdir = c.dir.path().join("keys");
    hotsplice_trust::write_key_pair(&kdir, "pub1", &k).unwrap();
    let out = cli(&[
        "key",
        "add-publisher",
        "--data",
        d,
        kdir.join("pub1.pub").to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), format!("key-id: {}", k.public().id()));
    assert!(cli(&["key", "list", "--data", d]).contains(&k.public().id()));
    let out = cli(&["token", "create", "--data", d, "--role", "operator"]);
    let user = out
        .lines()
        .find_map(|l| l.strip_prefix("api-user: "))
        .unwrap();
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("api-key: "))
        .unwrap();
    let op = Auth::Api(user.into(), key.into());
    // The running server sees what the command stored.
    let rec = c
        .post(
            &format!("{}?channel=stable", api::PUBLISH),
            &op,
            &patch("clip0001", LIBC_BID, false, 1, &[], Some(&k), 64),
        )
        .ok()
        .json();
    assert_eq!(rec["key_id"], k.public().id());
    let out = cli(&[
        "access-key",
        "create",
        "--data",
        d,
        "--group",
        "g1",
        "--pending",
    ]);
    let ak = out
        .lines()
        .find_map(|l| l.strip_prefix("access-key: "))
        .unwrap();
    let r = c
        .post_json(
            api::REGISTER,
            &Auth::None,
            &json!({"access_key": ak, "hostname": "h"}),
        )
        .ok()
        .json();
    assert_eq!(r["authorization"], "pending");
    assert_eq!(r["group"], "g1");
    assert!(cli(&["token", "list", "--data", d]).contains(user));
    // run refuses a feed key that is not the database's, and a store
    // that was never initialized.
    let other = c.dir.path().join("other");
    hotsplice_trust::write_key_pair(
        &other,
        "feed",
        &hotsplice_trust::SecretKey::generate().unwrap(),
    )
    .unwrap();
    let url =
        c.db.clone()
            .unwrap_or_else(|| format!("sqlite://{}/hotsplice.db", d));
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--data",
            other.to_str().unwrap(),
            "--database",
            &url,
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("copy feed.key"), "{err}");
    let empty = c.dir.path().join("empty");
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--data",
            empty.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("init"));
    assert_eq!(
        cli(&["migrate", "--data", d]).trim(),
        &format!("schema-version: {}", hotsplice_server::db::SCHEMA_VERSION)
    );
    // init refuses an initialized store.
    let out = std::process::Command::new(BIN)
        .args(["init", "--data", d])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("initialized already"));
}

/// Many machines checking in at once, with nothing but their rows to
/// write: the check-ins are committed together (several rows per
/// statement), and every machine's row is its own last report, never
/// another machine's.
fn grouped_checkins(db: Option<String>) {
    let c = Ctx::new(db);
    let machines: Vec<(String, String)> = (0..24)
        .map(|_| c.register(&c.creds.access_key, None))
        .collect();
    std::thread::scope(|s| {
        for (n, (uuid, key)) in machines.iter().enumerate() {
            let c = &c;
            s.spawn(move || {
                for i in 0..8 {
                    let mut r = report(uuid);
                    r.hostname = format!("m{n}-r{i}.example.com");
                    r.kernel.effective_release = format!("6.1.0-28-amd64.{n}");
                    checkin(c, uuid, key, &r);
                }
            });
        }
    });
    for (n, (uuid, _)) in machines.iter().enumerate() {
        let m = c
            .get(&format!("/api/1/machine/{uuid}/describe"), &c.admin())
            .ok()
            .json();
        assert_eq!(m["hostname"], format!("m{n}-r7.example.com"), "{m}");
        assert_eq!(m["effective_kernel"], format!("6.1.0-28-amd64.{n}"), "{m}");
    }
    assert!(
        !c.server.log_text().contains("ERROR"),
        "{}",
        c.server.log_text()
    );
}

/// Check-ins (with history to write), registrations, publishes and an
/// administration command writing from another process, all at once:
/// every call answers 2xx (no SQLITE_BUSY, no 500).
fn concurrent_writers(db: Option<String>) {
    let c = Ctx::new(db);
    let k = c.publisher();
    let d = c.data();
    let machines: Vec<(String, String)> = (0..6)
        .map(|_| c.register(&c.creds.access_key, None))
        .collect();
    std::thread::scope(|s| {
        for (uuid, key) in &machines {
            let c = &c;
            s.spawn(move || {
                for i in 0..30 {
                    let mut r = report(uuid);
                    if i % 2 == 1 {
                        r.processes.push(hotsplice_fleet::report::ProcessPatches {
                            pid: 1000 + i,
                            comm: "prog".into(),
                            patches: vec![format!("conc{:04}", i % 10)],
                        });
                    }
                    checkin(c, uuid, key, &r);
                }
            });
        }
        s.spawn(|| {
            for i in 0..10 {
                publish(
                    &c,
                    &patch(
                        &format!("conc{i:04}"),
                        LIBC_BID,
                        false,
                        i + 1,
                        &[],
                        Some(&k),
                        64,
                    ),
                    Some("stable"),
                );
                c.register(&c.creds.access_key, Some("busy"));
            }
        });
        s.spawn(|| {
            for _ in 0..5 {
                cli(&["access-key", "create", "--data", d.to_str().unwrap()]);
            }
        });
    });
    let h = c
        .get(
            &format!("/api/v2/machines/{}/history", machines[0].0),
            &c.admin(),
        )
        .ok()
        .json();
    assert!(h.as_array().unwrap().len() > 10, "{h}");
    assert!(
        !c.server.log_text().contains("ERROR"),
        "{}",
        c.server.log_text()
    );
}

fn two_instances(db: String) {
    let mut c = Ctx::new(Some(db.clone()));
    // A second instance: its own data directory with a copy of the feed key.
    let data2 = c.dir.path().join("data2");
    std::fs::create_dir(&data2).unwrap();
    for f in ["feed.key", "feed.pub"] {
        std::fs::copy(c.data().join(f), data2.join(f)).unwrap();
    }
    let mut s2 = Server::start(&data2, Some(&db));
    let url2 = |p: &str| format!("{}{p}", s2.url);
    let k = c.publisher();
    publish(
        &c,
        &patch("user0001", LIBC_BID, false, 1, &[], Some(&k), 64),
        Some("stable"),
    );
    // Register through one, check in through the other.
    let (a, ak) = c.register(&c.creds.access_key, None);
    let r = call(
        "POST",
        &url2(&api::checkin(&a)),
        &Auth::Machine(ak.clone()),
        Some(&serde_json::to_vec(&report(&a)).unwrap()),
    )
    .ok();
    let cr: api::CheckinResponse = serde_json::from_slice(&r.body).unwrap();
    let l = open_feed(&c, &a, &cr.feed);
    assert_eq!(l.patches.len(), 1);
    // A change through the first reaches the second's lists (caches
    // keyed by the shared version).
    c.post_json(
        &format!("/api/1/machine/{a}/authorize"),
        &c.admin(),
        &json!({"authorized": false}),
    )
    .ok();
    let r = call(
        "GET",
        &url2(&api::machine_feed(&a)),
        &Auth::Machine(ak.clone()),
        None,
    )
    .ok();
    let l2 = open_feed(&c, &a, &serde_json::from_slice(&r.body).unwrap());
    assert!(l2.patches.is_empty());
    assert!(l2.version > l.version);
    // Kill the first: the second answers.
    c.server.kill();
    let r = call("GET", &url2("/api/1/machines"), &c.admin(), None)
        .ok()
        .json();
    assert_eq!(r[0]["uuid"], a.as_str());
    s2.kill();
}

/// `--feed-validity` and `--checkin-interval` reach the answers.
fn feed_validity_and_interval() {
    let dir = hotsplice_testsupport::temp_dir("server");
    let data = dir.path().join("data");
    let creds = init(&data, None);
    let server = Server::start_with(
        &data,
        None,
        &["--feed-validity", "600", "--checkin-interval", "120"],
    );
    let c = Ctx {
        server,
        creds,
        db: None,
        dir,
    };
    let (a, ak) = c.register(&c.creds.access_key, None);
    let r = c
        .post(
            &api::checkin(&a),
            &Auth::Machine(ak),
            &serde_json::to_vec(&report(&a)).unwrap(),
        )
        .ok();
    let cr: api::CheckinResponse = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(cr.next_checkin, 120);
    let l = open_feed(&c, &a, &cr.feed);
    assert_eq!(l.expires_at - l.issued_at, 600);
}

fn openapi_document(db: Option<String>) {
    let c = Ctx::new(db);
    let doc = c.get(api::OPENAPI, &Auth::None).ok().json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        api::REGISTER.to_string(),
        api::FEED_KEY.to_string(),
        api::OPENAPI.to_string(),
        api::checkin("{uuid}"),
        api::machine_feed("{uuid}"),
        api::patch_file("{sha}"),
        api::PUBLISH.to_string(),
        api::channel_feed("{channel}"),
        api::IMPORT_REPORT.to_string(),
        "/api/1/machines".into(),
        "/api/1/machine/{uuid}/describe".into(),
        "/api/1/machine/{uuid}/authorize".into(),
        "/api/1/machine/{uuid}/group".into(),
    ] {
        assert!(
            paths.contains_key(&p),
            "{p} missing from the OpenAPI document"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in ["Report", "SignedFeed", "RegisterRequest", "UptrackMachine"] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    // SIGTERM: a clean stop.
    let mut c = c;
    let st = c.server.stop().unwrap();
    assert!(st.success(), "{st}: {}", c.server.log_text());
}
