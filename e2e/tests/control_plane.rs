//! End-to-end: three `trellis-control-plane` replicas (one Raft group,
//! real processes on loopback), `trellis-proxy` sidecars streaming from
//! them, `trellis-echo` backends, and `trellisctl`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use trellis_e2e::harness::{wait_until, Echo, TempDir};
use trellis_e2e::mesh::{fetch_version, ConnectedProxy, ControlPlane};
use trellis_e2e::rules;

/// These tests measure propagation and election times: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn split(v1: u32, v2: u32) -> String {
    rules::virtual_service(
        "reviews",
        &format!(
            "  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
        ),
    )
}

/// A mesh: 3 replicas watching a directory with `reviews` v1/v2 routed
/// 100/0, and two proxies streaming from different replicas first.
struct Mesh {
    cp: ControlPlane,
    proxies: Vec<ConnectedProxy>,
    echoes: (Echo, Echo),
}

impl Mesh {
    fn start(extra: &[&str]) -> Result<Self> {
        let v1 = Echo::start("reviews", "v1")?;
        let v2 = Echo::start("reviews", "v2")?;
        let cp = ControlPlane::start(3, extra)?;
        let urls: Vec<String> = cp.replicas.iter().map(|r| r.xds.to_string()).collect();
        let proxies = vec![
            ConnectedProxy::spawn_at("client-a", &urls.join(","), &cp.trust_bundle, &[])?,
            ConnectedProxy::spawn_at(
                "client-b",
                &[&urls[1], &urls[2], &urls[0]].map(|s| s.as_str()).join(","),
                &cp.trust_bundle,
                &[],
            )?,
        ];
        let mut mesh = Self {
            cp,
            proxies,
            echoes: (v1, v2),
        };
        mesh.route(100, 0)?;
        for p in &mut mesh.proxies {
            p.wait_ready(Duration::from_secs(15))?;
            // Ready means some config: the rules may come a version later
            // than the root CA.
            let routed = wait_until(Duration::from_secs(10), || {
                p.version_of("reviews").is_ok_and(|v| v == "v1")
            });
            ensure!(routed, "routes to v1 at first");
        }
        Ok(mesh)
    }

    /// Writes the watched `reviews.yaml`: v1/v2 weighted `v1`:`v2`.
    fn route(&self, v1: u32, v2: u32) -> Result<()> {
        let backends = [("v1", &self.echoes.0), ("v2", &self.echoes.1)];
        self.cp.write_rules(
            "reviews.yaml",
            &rules::service("reviews", &backends, &split(v1, v2)),
        )
    }

    /// Waits until every proxy routes `reviews` to `version` only; the time it took.
    fn wait_routing(&self, version: &str, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        wait_until(timeout, || {
            self.proxies
                .iter()
                .all(|p| (0..3).all(|_| p.version_of("reviews").is_ok_and(|v| v == version)))
        })
        .then(|| started.elapsed())
    }
}

/// The proxies' rows of `proxy-status`, by proxy id.
fn rows(cp: &ControlPlane) -> Result<Vec<serde_json::Value>> {
    Ok(cp.proxy_status()?["proxies"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[test]
fn a_rule_change_reaches_every_proxy_within_a_second_and_both_ack() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(&[])?;
    mesh.route(0, 100)?;
    let took = mesh.wait_routing("v2", Duration::from_secs(5));
    let Some(took) = took else {
        bail!("routing did not change within 5 s:\n{}", mesh.cp.logs());
    };
    eprintln!("rule change reached both proxies in {took:?}");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    let ok = wait_until(Duration::from_secs(2), || {
        rows(&mesh.cp).is_ok_and(|rows| {
            rows.len() == 2
                && rows.iter().all(|r| r["status"] == "ACK")
                && rows[0]["version"] == rows[1]["version"]
                && rows[0]["configHash"] == rows[1]["configHash"]
        })
    });
    assert!(ok, "proxy-status: {:#}", mesh.cp.proxy_status()?);
    Ok(())
}

/// Sends requests through every proxy from background threads; counts
/// failures (with the first few reasons) until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxies: &[std::net::SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = proxies
            .iter()
            .map(|&addr| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = fetch_version(addr, "reviews") {
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("{addr}: {e}"));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failures,
            threads,
        }
    }

    /// Stops; (requests sent, failures).
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn killing_the_leader_elects_another_and_fails_no_request() -> Result<()> {
    let _serial = serial();
    let mut mesh = Mesh::start(&[])?;
    let traffic = Traffic::start(&mesh.proxies.iter().map(|p| p.outbound).collect::<Vec<_>>());
    let old = mesh.cp.leader().expect("a leader");
    let killed = Instant::now();
    mesh.cp.kill(old);
    let new = mesh.cp.wait_leader(Duration::from_secs(5));
    let elected = killed.elapsed();
    let Some(new) = new else {
        bail!("no new leader:\n{}", mesh.cp.logs());
    };
    eprintln!("leader {old} killed; node {new} leads after {elected:?}");
    assert_ne!(new, old);
    assert!(
        elected <= Duration::from_secs(2),
        "new leader after {elected:?}"
    );

    // Every proxy streams from a live replica, at the current version.
    let moved = wait_until(Duration::from_secs(5), || {
        rows(&mesh.cp).is_ok_and(|rows| {
            rows.len() == 2
                && rows
                    .iter()
                    .all(|r| r["replica"] != old && r["status"] == "ACK")
        })
    });
    assert!(moved, "proxy-status: {:#}", mesh.cp.proxy_status()?);

    mesh.route(0, 100)?;
    let took = mesh.wait_routing("v2", Duration::from_secs(5));
    assert!(
        took.is_some(),
        "change after failover not propagated:\n{}",
        mesh.cp.logs()
    );
    let (sent, failures) = traffic.stop();
    eprintln!(
        "{sent} requests through the proxies during the failover, {} failed",
        failures.len()
    );
    assert!(sent > 100, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    Ok(())
}

fn service_entry(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: durability}}
spec:
  hosts: [{name}.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: 9}}}}]
"
    )
}

/// Waits until every replica reports the same applied state; its hash.
fn converged(cp: &ControlPlane, timeout: Duration) -> Result<String> {
    let mut last = Vec::new();
    let ok = wait_until(timeout, || {
        last = (1..=3).map(|id| cp.status(id).ok()).collect();
        let hashes: BTreeSet<String> = last
            .iter()
            .map(|s| {
                s.as_ref()
                    .map_or(String::new(), |s| s["stateHash"].to_string())
            })
            .collect();
        hashes.len() == 1 && !hashes.contains("")
    });
    if !ok {
        bail!("replicas did not converge: {last:#?}\n{}", cp.logs());
    }
    Ok(last[0]
        .as_ref()
        .map(|s| s["stateHash"].to_string())
        .unwrap_or_default())
}

#[test]
fn every_acknowledged_write_survives_leader_kills() -> Result<()> {
    let _serial = serial();
    let mut cp = ControlPlane::start(3, &[])?;
    let files = TempDir::new("writes")?;
    let mut acknowledged = Vec::new();
    let mut kills = 0;
    let mut last_kill = Instant::now();
    for i in 0..500 {
        if last_kill.elapsed() >= Duration::from_secs(2) {
            if let Some(leader) = cp.leader() {
                cp.kill(leader);
                cp.spawn(leader)?;
                kills += 1;
            }
            last_kill = Instant::now();
        }
        let name = format!("se-{i}");
        let path = files.path().join(format!("{name}.yaml"));
        std::fs::write(&path, service_entry(&name))?;
        let (ok, _, _) = cp.ctl(&["apply", "-f", &path.display().to_string()])?;
        if ok {
            acknowledged.push(name);
        }
    }
    eprintln!(
        "{} of 500 writes acknowledged; {kills} leader kills",
        acknowledged.len()
    );
    assert!(kills >= 3, "only {kills} leader kills during the writes");
    assert!(
        acknowledged.len() >= 450,
        "only {} of 500 writes succeeded",
        acknowledged.len()
    );
    converged(&cp, Duration::from_secs(20))?;
    let (ok, out, err) = cp.ctl(&["get", "ServiceEntry", "-n", "durability", "-o", "json"])?;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let present: BTreeSet<String> = json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !present.contains(*n))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    Ok(())
}

#[test]
fn a_replica_stopped_during_1000_writes_catches_up_from_a_snapshot() -> Result<()> {
    let _serial = serial();
    let mut cp = ControlPlane::start(3, &["--snapshot-after", "100", "--keep-logs", "20"])?;
    let leader = cp.leader().expect("a leader");
    let stopped = (1..=3).find(|id| *id != leader).expect("a follower");
    cp.kill(stopped);
    trellis_e2e::mesh::write_many(&cp, 1000, |i| service_entry(&format!("bulk-{i}")))?;
    cp.spawn(stopped)?;
    converged(&cp, Duration::from_secs(30))?;
    let status = cp.status(stopped)?;
    assert_eq!(status["resources"], 1000, "{status:#}");
    assert!(
        cp.log_of(stopped).contains("installed snapshot"),
        "caught up without a snapshot:\n{}",
        cp.log_of(stopped)
    );
    Ok(())
}

#[test]
fn an_invalid_file_is_rejected_and_a_config_a_proxy_cannot_run_is_nacked() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(&[])?;
    let cp = &mesh.cp;
    // A subset no DestinationRule defines: the leader logs the error with
    // file, line and column, and proposes nothing.
    cp.write_rules(
        "broken.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: [broken]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
",
    )?;
    let logged = wait_until(Duration::from_secs(5), || {
        (1..=3).any(|id| cp.log_of(id).contains("broken.yaml:8:"))
    });
    assert!(logged, "no located error in the logs:\n{}", cp.logs());
    let (_, out, _) = cp.ctl(&["get", "VirtualService", "broken"])?;
    assert!(out.contains("0 resource(s)"), "{out}");
    for p in &mesh.proxies {
        assert_eq!(p.version_of("reviews")?, "v1");
    }
    std::fs::remove_file(cp.watch_dir.join("broken.yaml"))?;

    // Valid to the control plane, but no proxy can connect to "bad host".
    cp.write_rules(
        "bad-endpoint.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: odd}
spec:
  hosts: [odd.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: bad host}]
",
    )?;
    let nacked = wait_until(Duration::from_secs(5), || {
        rows(cp).is_ok_and(|rows| {
            rows.len() == 2
                && rows.iter().all(|r| {
                    r["status"] == "NACK"
                        && r["lastError"].as_str().is_some_and(|e| {
                            e.contains("bad host") && e.contains("not a valid authority")
                        })
                })
        })
    });
    assert!(nacked, "proxy-status: {:#}", cp.proxy_status()?);
    for p in &mesh.proxies {
        assert_eq!(
            p.version_of("reviews")?,
            "v1",
            "the last good config serves"
        );
    }
    Ok(())
}

#[test]
fn with_every_replica_down_proxies_keep_routing_and_a_restarted_one_serves_its_saved_config(
) -> Result<()> {
    let _serial = serial();
    let mut mesh = Mesh::start(&[])?;
    for id in 1..=3 {
        mesh.cp.kill(id);
    }
    let first = mesh.proxies[0].outbound;
    let traffic = Traffic::start(&[first]);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    // A proxy restarted with no control plane reachable serves what it saved.
    mesh.proxies[1].restart(2)?;
    mesh.proxies[1].wait_ready(Duration::from_secs(5))?;
    let second = Traffic::start(&[mesh.proxies[1].outbound]);
    let rest = Duration::from_secs(60).saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    let (sent, failures) = traffic.stop();
    let (sent2, failures2) = second.stop();
    assert!(sent > 1000 && sent2 > 1000, "sent {sent} and {sent2}");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        failures2.is_empty(),
        "restarted proxy: {} failed: {:?}",
        failures2.len(),
        &failures2[..failures2.len().min(5)]
    );
    Ok(())
}

#[test]
fn trellisctl_forms_and_grows_the_group_and_any_replica_takes_writes() -> Result<()> {
    let _serial = serial();
    let cp = ControlPlane::start_unformed(3)?;
    let addr = |id: u64| cp.replicas[(id - 1) as usize].raft.to_string();
    let (ok, out, err) = cp.ctl_on(1, &["cluster", "init"])?;
    assert!(ok, "init: {out}{err}");
    assert_eq!(
        cp.wait_leader(Duration::from_secs(5)),
        Some(1),
        "{}",
        cp.logs()
    );
    for id in [2u64, 3] {
        let (ok, out, err) =
            cp.ctl_on(1, &["cluster", "add-learner", &id.to_string(), &addr(id)])?;
        assert!(ok, "add-learner {id}: {out}{err}");
    }
    let (ok, out, err) = cp.ctl_on(1, &["cluster", "change-membership", "1", "2", "3"])?;
    assert!(ok, "change-membership: {out}{err}");
    let status = cp.status(3)?;
    assert_eq!(
        status["voters"].as_array().map(Vec::len),
        Some(3),
        "{status:#}"
    );
    assert_eq!(status["leaderId"], 1, "{status:#}");

    // Writes through a follower are forwarded to the leader and return
    // once committed: the next read sees them.
    let dir = TempDir::new("cluster-writes")?;
    let file = dir.path().join("se.yaml");
    std::fs::write(&file, service_entry("via-follower"))?;
    let file = file.display().to_string();
    let (ok, out, err) = cp.ctl_on(3, &["apply", "-f", &file])?;
    assert!(ok, "apply: {out}{err}");
    let (_, out, _) = cp.ctl_on(2, &["get", "ServiceEntry", "-n", "durability"])?;
    assert!(
        out.contains("via-follower") && out.contains("1 resource(s)"),
        "{out}"
    );
    let (ok, out, err) = cp.ctl_on(
        2,
        &["delete", "ServiceEntry/via-follower", "-n", "durability"],
    )?;
    assert!(ok && out.contains("deleted"), "delete: {out}{err}");
    let (_, out, _) = cp.ctl_on(3, &["get", "ServiceEntry", "-n", "durability"])?;
    assert!(out.contains("0 resource(s)"), "{out}");
    converged(&cp, Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn the_root_ca_is_replicated_and_survives_a_leader_change() -> Result<()> {
    let _serial = serial();
    let mut cp = ControlPlane::start(3, &[])?;
    let bundle = |cp: &ControlPlane, id: u64| -> Option<String> {
        cp.ctl_on(id, &["--timeout", "1s", "trust-bundle"])
            .ok()
            .and_then(|(ok, out, _)| ok.then_some(out))
    };
    let mut root = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            root = bundle(&cp, 1);
            root.is_some()
        }),
        "no root CA:\n{}",
        cp.logs()
    );
    let root = root.unwrap_or_default();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    assert!(
        !root.contains("PRIVATE KEY"),
        "the key must not leave the replicas"
    );
    for id in 2..=3 {
        assert!(
            wait_until(Duration::from_secs(5), || bundle(&cp, id).as_ref()
                == Some(&root)),
            "replica {id} has another root"
        );
    }
    let leader = cp.leader().expect("a leader");
    cp.kill(leader);
    assert!(cp.wait_leader(Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_secs(1)); // the new leader's CA check has run
    for id in (1..=3).filter(|id| *id != leader) {
        assert_eq!(
            bundle(&cp, id).as_ref(),
            Some(&root),
            "replica {id} after the leader change"
        );
    }
    Ok(())
}

#[test]
fn a_frozen_leader_first_in_server_holds_up_no_write() -> Result<()> {
    let _serial = serial();
    let cp = ControlPlane::start(3, &[])?;
    let leader = cp.leader().expect("a leader");
    let dir = TempDir::new("frozen")?;
    let file = dir.path().join("se.yaml");
    std::fs::write(&file, service_entry("after-freeze"))?;
    let file = file.display().to_string();
    let frozen = cp.replicas[(leader - 1) as usize].raft.to_string();
    let others: Vec<String> = cp
        .replicas
        .iter()
        .filter(|r| r.id != leader)
        .map(|r| r.raft.to_string())
        .collect();
    let servers = format!("{frozen},{}", others.join(","));

    cp.freeze(leader, true)?;
    // Alone in --server, the frozen replica costs --timeout and no more.
    let started = Instant::now();
    let (ok, _, err) = cp.ctl_at(&frozen, &["--timeout", "2s", "get"])?;
    let took = started.elapsed();
    assert!(!ok, "a frozen replica answered");
    assert!(
        took < Duration::from_secs(4),
        "--timeout 2s took {took:?}: {err}"
    );
    // First in --server, it is passed over: the write lands on the new
    // leader without waiting out the freeze.
    let started = Instant::now();
    let (ok, out, err) = cp.ctl_at(&servers, &["--timeout", "20s", "apply", "-f", &file])?;
    let took = started.elapsed();
    assert!(ok, "{out}{err}");
    eprintln!("write with the leader frozen first in --server: {took:?}");
    assert!(took < Duration::from_secs(8), "the write took {took:?}");
    let (ok, out, err) = cp.ctl_at(&others.join(","), &["get", "se"])?;
    assert!(ok && out.contains("after-freeze"), "{out}{err}");
    cp.freeze(leader, false)?;
    converged(&cp, Duration::from_secs(20))?;
    Ok(())
}
