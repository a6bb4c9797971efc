//! A quick check-in load against a running server (the full benchmark is
//! in hotsplice-bench): registers MACHINES machines, then THREADS
//! clients check in with realistic reports (a kernel and 50 objects) for
//! SECS seconds; prints check-ins per second and latency percentiles.
//!
//! `cargo run --release -p hotsplice-server --example checkin_load -- URL ACCESS_KEY [MACHINES THREADS SECS]`

use hotsplice_fleet::api;
use hotsplice_fleet::report::{ObjectInUse, Report};
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        eprintln!("usage: checkin_load URL ACCESS_KEY [MACHINES THREADS SECS]");
        std::process::exit(2);
    }
    let url = a[1].clone();
    let access = a[2].clone();
    let n: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let threads: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
    let secs: u64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
    let agent = ureq::AgentBuilder::new().build();
    let t = Instant::now();
    let machines: Vec<(String, String)> = (0..n)
        .map(|i| {
            let r: api::RegisterResponse = serde_json::from_reader(
                agent
                    .post(&format!("{url}{}", api::REGISTER))
                    .send_string(
                        &serde_json::json!({"access_key": access, "hostname": format!("m{i}")})
                            .to_string(),
                    )
                    .expect("register")
                    .into_reader(),
            )
            .unwrap();
            (r.uuid, r.machine_key)
        })
        .collect();
    println!(
        "registered {n} machines in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let per = machines.len().div_ceil(threads);
    let handles: Vec<_> = machines
        .chunks(per)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let (uuid, key) = &chunk[i % chunk.len()];
                    i += 1;
                    let mut r = Report::example(uuid);
                    r.objects = (0..50)
                        .map(|j| ObjectInUse {
                            path: format!("/usr/lib/x86_64-linux-gnu/lib{j}.so"),
                            build_id: format!("{j:040x}"),
                            processes: 3,
                        })
                        .collect();
                    let body = serde_json::to_vec(&r).unwrap();
                    let t = Instant::now();
                    agent
                        .post(&format!("{url}{}", api::checkin(uuid)))
                        .set("Authorization", &format!("Bearer {key}"))
                        .send_bytes(&body)
                        .expect("check in")
                        .into_string()
                        .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{} check-ins in {secs} s: {:.0}/s; p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        lat.len() as f64 / secs as f64,
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}
