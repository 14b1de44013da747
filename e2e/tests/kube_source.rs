//! `trellis-control-plane --kubernetes` against the real apiserver and
//! controller-manager: rules applied with `kubectl` (Trellis's CRDs, and
//! Istio's bookinfo samples unchanged under Istio's group), Services and
//! Pods whose Ready status the test sets as a kubelet would, EndpointSlices
//! from the real controller; 3 replicas running as the least-privilege
//! service account of `crds/manifests/rbac.yaml`; proxies routing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use trellis_e2e::harness::{free_port, wait_until, Echo};
use trellis_e2e::kube::KubeCluster;
use trellis_e2e::mesh::{fetch_version, ConnectedProxy, ControlPlane};

const HOST: &str = "reviews.default.svc.cluster.local";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The four pods of `reviews`: (pod name, IP, version).
const PODS: [(&str, &str, &str); 4] = [
    ("reviews-v1-a", "127.0.0.21", "v1"),
    ("reviews-v1-b", "127.0.0.22", "v1"),
    ("reviews-v2-a", "127.0.0.23", "v2"),
    ("reviews-v2-b", "127.0.0.24", "v2"),
];

/// A cluster with the CRDs and RBAC installed, a Node, the `reviews`
/// Service and its four Ready pods (each an echo backend on its pod IP).
struct Cluster {
    kube: KubeCluster,
    backends: BTreeMap<String, Echo>,
    port: u16,
}

impl Cluster {
    fn start(watch_cache: bool, compaction: Option<&str>) -> Result<Self> {
        if let Some(interval) = compaction {
            std::env::set_var("COMPACTION_INTERVAL", interval);
        }
        let kube = KubeCluster::up(watch_cache)?;
        kube.install_crds()?;
        let port = common_port()?;
        let mut backends = BTreeMap::new();
        for (pod, ip, version) in PODS {
            let addr = SocketAddr::new(ip.parse::<IpAddr>()?, port);
            backends.insert(pod.to_string(), Echo::start_at(addr, pod, version)?);
        }
        let mut objects = format!(
            "apiVersion: v1
kind: Node
metadata: {{name: node-1}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: bookinfo-reviews}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
"
        );
        for (pod, _, version) in PODS {
            objects.push_str(&pod_yaml(pod, version));
        }
        kube.apply("objects.yaml", &objects)?;
        for (pod, ip, _) in PODS {
            kube.set_pod_status("default", pod, ip, true)?;
        }
        Ok(Self {
            kube,
            backends,
            port,
        })
    }

    /// 3 replicas with `--kubeconfig` of the control plane's service account.
    fn control_plane(&self, extra: &[&str]) -> Result<ControlPlane> {
        let kubeconfig = self
            .kube
            .kubeconfig_of("trellis-system", "trellis-control-plane")?
            .display()
            .to_string();
        let mut flags = vec![
            "--kubeconfig",
            kubeconfig.as_str(),
            "--status-interval",
            "200ms",
        ];
        flags.extend_from_slice(extra);
        ControlPlane::start(3, &flags)
    }
}

fn pod_yaml(name: &str, version: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: reviews, version: {version}}}
spec:
  nodeName: node-1
  serviceAccountName: bookinfo-reviews
  containers: [{{name: app, image: trellis-echo}}]
"
    )
}

/// A port free on every pod IP.
fn common_port() -> Result<u16> {
    for _ in 0..50 {
        let port = free_port();
        let free = PODS.iter().all(|(_, ip, _)| {
            std::net::TcpListener::bind((
                ip.parse::<IpAddr>().unwrap_or(IpAddr::from([127, 0, 0, 1])),
                port,
            ))
            .is_ok()
        });
        if free {
            return Ok(port);
        }
    }
    bail!("no port free on every pod IP")
}

fn config_dump(proxy: &ConnectedProxy) -> serde_json::Value {
    trellis_e2e::client::blocking_get(proxy.admin, "/config_dump")
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// The endpoint addresses of `HOST` (any subset) in the proxy's config.
fn endpoints(proxy: &ConnectedProxy) -> Vec<String> {
    let dump = config_dump(proxy);
    let mut out: Vec<String> = dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["service"] == HOST)
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            e["address"]
                .as_str()
                .map(|a| a.split(':').next().unwrap_or("").to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The weights of the route of `HOST` by subset, in the proxy's config.
fn weights(proxy: &ConnectedProxy) -> BTreeMap<String, u64> {
    let dump = config_dump(proxy);
    let clusters: BTreeMap<String, String> = dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_string(),
                c["subset"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect();
    dump["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| {
            h["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == HOST))
        })
        .flat_map(|h| h["routes"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["destinations"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let subset = clusters.get(d["cluster"].as_str()?)?.clone();
            Some((subset, d["weight"].as_u64()?))
        })
        .collect()
}

/// Waits until every proxy routes `HOST` v1/v2 by `split`.
fn wait_weights(cp: &ControlPlane, proxies: &[ConnectedProxy], split: (u64, u64)) {
    let want: BTreeMap<String, u64> =
        [("v1".to_string(), split.0), ("v2".to_string(), split.1)].into();
    for p in proxies {
        let routed = wait_until(Duration::from_secs(10), || weights(p) == want);
        assert!(routed, "{}: weights {:?}\n{}", p.id, weights(p), cp.logs());
    }
}

/// `n` GETs through `proxy`: answers by version (errors under "error: ...").
fn split(proxy: &ConnectedProxy, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match fetch_version(proxy.outbound, HOST) {
            Ok(v) => v,
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn assert_90_10(proxy: &ConnectedProxy) {
    let counts = split(proxy, 200);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "every request answered: {counts:?}");
    assert!((160..=195).contains(&v1), "about 90/10: {counts:?}");
}

const RULES_90_10: &str = "apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
";

fn vs(weights: (u32, u32)) -> String {
    format!(
        "apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
",
        weights.0, weights.1
    )
}

/// Requests at about 50 per second through a proxy until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    sent: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let (s, f, n) = (stop.clone(), failures.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if let Err(e) = fetch_version(proxy, HOST) {
                    f.lock().expect("lock").push(e.to_string());
                }
                *n.lock().expect("lock") += 1;
                next += Duration::from_millis(20);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Self {
            stop,
            failures,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops; (requests sent, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let sent = *self.sent.lock().expect("lock");
        let failures = self.failures.lock().expect("lock").clone();
        (sent, failures)
    }
}

fn proxies(cp: &ControlPlane) -> Result<Vec<ConnectedProxy>> {
    let mut out = Vec::new();
    for id in ["proxy-a", "proxy-b"] {
        let mut p = ConnectedProxy::spawn(id, &cp.xds_urls())?;
        p.wait_ready(Duration::from_secs(20))?;
        out.push(p);
    }
    Ok(out)
}

/// The `Accepted` condition and `applied` of a rule resource, as kubectl shows.
fn status_of(cluster: &KubeCluster, resource: &str) -> (String, String, String) {
    let out = cluster
        .kubectl_ok(&["get", resource, "-o", "json"])
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let accepted = json["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap_or_default();
    (
        accepted["status"].as_str().unwrap_or("").to_string(),
        accepted["message"].as_str().unwrap_or("").to_string(),
        json["status"]["applied"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn kubernetes_services_pods_and_rules_route_the_mesh() -> Result<()> {
    let cluster = Cluster::start(true, None)?;
    let kube = &cluster.kube;
    let cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;

    // The Service and its Ready pods, through EndpointSlices: all four.
    let all: Vec<String> = PODS.iter().map(|(_, ip, _)| ip.to_string()).collect();
    for p in &proxies {
        let found = wait_until(Duration::from_secs(20), || endpoints(p) == all);
        assert!(
            found,
            "{}: endpoints {:?}\n{}",
            p.id,
            endpoints(p),
            cp.logs()
        );
    }

    // A 90/10 split applied with kubectl routes within a second.
    let file = kube.dir().join("rules.yaml");
    std::fs::write(&file, RULES_90_10)?;
    kube.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    let applied_at = Instant::now();
    wait_weights(&cp, &proxies, (90, 10));
    let took = applied_at.elapsed();
    eprintln!("kubectl apply -> both proxies route: {took:?}");
    assert!(took < Duration::from_secs(1), "routed after {took:?}");
    for p in &proxies {
        assert_90_10(p);
    }

    // Status: Accepted, and applied on both proxies.
    let shown = wait_until(Duration::from_secs(10), || {
        status_of(kube, "vs/reviews") == ("True".into(), String::new(), "2/2".into())
    });
    assert!(shown, "status: {:?}", status_of(kube, "vs/reviews"));
    let table = kube.kubectl_ok(&["get", "vs", "reviews"])?;
    assert!(
        table.contains("APPLIED") && table.contains("2/2") && table.contains("True"),
        "{table}"
    );

    // `trellisctl wait --for=applied` returns once both proxies ACK.
    let next = kube.dir().join("next.yaml");
    std::fs::write(&next, vs((80, 20)))?;
    kube.kubectl_ok(&["apply", "-f", &next.display().to_string()])?;
    let started = Instant::now();
    let waiter = std::thread::spawn({
        let servers = cp.servers();
        let next = next.clone();
        move || {
            let out = trellis_e2e::mesh::ctl_at(
                &servers,
                &[
                    "wait",
                    "--for=applied",
                    "-f",
                    &next.display().to_string(),
                    "--timeout",
                    "20s",
                ],
            );
            (out, started.elapsed())
        }
    });
    let want: BTreeMap<String, u64> = [("v1".to_string(), 80), ("v2".to_string(), 20)].into();
    let mut acked = Duration::ZERO;
    let both = wait_until(Duration::from_secs(10), || {
        acked = started.elapsed();
        proxies.iter().all(|p| weights(p) == want)
    });
    assert!(
        both,
        "not routed: {:?}",
        proxies.iter().map(weights).collect::<Vec<_>>()
    );
    let (out, returned) = waiter.join().expect("the waiter");
    let (ok, stdout, stderr) = out?;
    assert!(ok, "wait failed: {stdout}{stderr}");
    eprintln!("both proxies routed by {acked:?}; trellisctl wait returned at {returned:?}");
    assert!(
        returned < acked + Duration::from_secs(1),
        "returned {returned:?}, acknowledged by {acked:?}"
    );

    // An invalid VirtualService: Accepted False with the field path; the
    // last good rules keep routing.
    let bad = kube.dir().join("bad.yaml");
    std::fs::write(&bad, vs((90, 20)))?;
    kube.kubectl_ok(&["apply", "-f", &bad.display().to_string()])?;
    let refused = wait_until(Duration::from_secs(10), || {
        let (accepted, message, _) = status_of(kube, "vs/reviews");
        eprintln!("{accepted} {message}");
        accepted == "False" && message.contains("spec.http[0].route")
    });
    assert!(
        refused,
        "status: {:?}\n{}",
        status_of(kube, "vs/reviews"),
        cp.logs()
    );
    let table = kube.kubectl_ok(&["get", "vs", "reviews"])?;
    assert!(table.contains("False"), "{table}");
    for p in &proxies {
        assert_eq!(weights(p), want, "the last good rules stay");
    }
    std::fs::write(&file, RULES_90_10)?;
    kube.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;

    // A rule the proxies refuse (an endpoint no proxy can dial): wait times out.
    let odd = kube.dir().join("odd.yaml");
    std::fs::write(
        &odd,
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: odd}
spec:
  hosts: [odd.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: bad host}]
",
    )?;
    kube.kubectl_ok(&["apply", "-f", &odd.display().to_string()])?;
    let (ok, stdout, stderr) = cp.ctl(&[
        "wait",
        "--for=applied",
        "-f",
        &odd.display().to_string(),
        "--timeout",
        "3s",
    ])?;
    assert!(!ok, "wait succeeded on a NACKed rule: {stdout}");
    assert!(stderr.contains("NACK"), "{stderr}");
    kube.kubectl_ok(&["delete", "-f", &odd.display().to_string()])?;

    // A pod set not Ready, then one deleted, leave within a second; the
    // backends stop once withdrawn, and no request fails at 50 rps.
    for p in &proxies {
        assert!(wait_until(Duration::from_secs(10), || weights(p).get("v1")
            == Some(&90)));
    }
    let load = Load::start(proxies[0].outbound);
    std::thread::sleep(Duration::from_millis(300));
    kube.set_pod_status("default", "reviews-v1-a", "127.0.0.21", false)?;
    let t = Instant::now();
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(10), || {
            endpoints(p) == ["127.0.0.22", "127.0.0.23", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let took = t.elapsed();
    eprintln!("not Ready -> withdrawn from both proxies: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "not Ready withdrawn after {took:?}"
    );
    let mut backends = cluster.backends;
    if let Some(mut b) = backends.remove("reviews-v1-a") {
        b.process.kill();
    }
    kube.kubectl_ok(&[
        "delete",
        "pod",
        "reviews-v2-a",
        "--grace-period=0",
        "--force",
    ])?;
    let t = Instant::now();
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(10), || {
            endpoints(p) == ["127.0.0.22", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let took = t.elapsed();
    eprintln!("deleted -> withdrawn from both proxies: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "deleted pod withdrawn after {took:?}"
    );
    if let Some(mut b) = backends.remove("reviews-v2-a") {
        b.process.kill();
    }
    std::thread::sleep(Duration::from_secs(1));
    let (sent, failures) = load.finish();
    assert!(sent >= 50, "only {sent} requests");
    eprintln!("{sent} requests at 50 rps, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        failures
    );
    let _ = cluster.port;
    Ok(())
}

/// Istio's CRDs (the shape, under Istio's group) for a test: Trellis's
/// schemas renamed, without short names so `vs` stays unambiguous.
fn istio_crds(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("istio-crds.yaml");
    let mut text = String::new();
    for (file, group) in [
        ("virtualservices.networking.trellis.io.yaml", "networking"),
        ("destinationrules.networking.trellis.io.yaml", "networking"),
    ] {
        let yaml = std::fs::read_to_string(repo("crds/manifests").join(file))?;
        let yaml = yaml.replace(&format!("{group}.trellis.io"), &format!("{group}.istio.io"));
        // Drop the `categories:` and `shortNames:` lists.
        let mut skipping = None;
        for line in yaml.lines() {
            let indent = line.len() - line.trim_start().len();
            if let Some(at) = skipping {
                if indent >= at && line.trim_start().starts_with("- ") {
                    continue;
                }
                skipping = None;
            }
            if matches!(line.trim(), "categories:" | "shortNames:") {
                skipping = Some(indent);
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("---\n");
    }
    std::fs::write(&out, text)?;
    Ok(out)
}

#[test]
fn istio_bookinfo_yaml_applies_unchanged_and_tokens_get_their_own_identity() -> Result<()> {
    let cluster = Cluster::start(true, None)?;
    let kube = &cluster.kube;
    let crds = istio_crds(kube.dir())?;
    kube.kubectl_ok(&["apply", "-f", &crds.display().to_string()])?;
    kube.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
    ])?;
    let cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;
    let bookinfo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-bookinfo");
    for file in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-90-10.yaml",
    ] {
        kube.kubectl_ok(&["apply", "-f", &bookinfo.join(file).display().to_string()])?;
    }
    wait_weights(&cp, &proxies, (90, 10));
    for p in &proxies {
        assert_90_10(p);
    }
    let shown = wait_until(Duration::from_secs(10), || {
        status_of(kube, "virtualservices.networking.istio.io/reviews").0 == "True"
    });
    assert!(
        shown,
        "{:?}",
        status_of(kube, "virtualservices.networking.istio.io/reviews")
    );

    // A proxy with pod A's service-account token gets A's identity.
    kube.kubectl_ok(&["create", "serviceaccount", "ratings"])?;
    let token = kube.kubectl_ok(&[
        "create",
        "token",
        "bookinfo-reviews",
        "--audience",
        "trellis",
    ])?;
    let token_file = kube.dir().join("reviews.token");
    std::fs::write(&token_file, token.trim())?;
    let with_token = |id: &str, sa: &str| -> Result<ConnectedProxy> {
        ConnectedProxy::spawn_with(
            id,
            &cp.xds_urls(),
            &[
                "--service-account-token-file".into(),
                token_file.display().to_string(),
                "--service-account".into(),
                sa.into(),
                "--namespace".into(),
                "default".into(),
            ],
        )
    };
    let own = with_token("reviews-pod", "bookinfo-reviews")?;
    let id = || {
        config_dump(&own)["identity"]["spiffe_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let certified = wait_until(Duration::from_secs(20), || {
        id() == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    });
    assert!(certified, "identity {:?}\n{}", id(), own.process.log_text());

    // The same token asking for another identity is refused.
    let other = with_token("ratings-pod", "ratings")?;
    let refused = wait_until(Duration::from_secs(20), || {
        other.process.log_text().contains("PermissionDenied")
    });
    assert!(refused, "{}", other.process.log_text());
    assert!(
        config_dump(&other)["identity"].is_null(),
        "{}",
        config_dump(&other)["identity"]
    );
    assert!(
        cp.logs()
            .contains("bookinfo-reviews's; it may not ask for default/ratings"),
        "{}",
        cp.logs()
    );
    Ok(())
}

fn numbered_vs(i: usize) -> String {
    format!(
        "apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {{name: r{i}}}
spec:
  hosts: [r{i}]
  http:
  - route:
    - destination: {{host: reviews}}
"
    )
}

/// The hosts `r<N>.default.svc.cluster.local` the proxy routes.
fn numbered_hosts(proxy: &ConnectedProxy) -> Vec<usize> {
    let dump = config_dump(proxy);
    let mut out: Vec<usize> = dump["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["domains"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            d.as_str()?
                .strip_suffix(".default.svc.cluster.local")?
                .strip_prefix('r')?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every proxy routes exactly the hosts `r<N>` of `range`, and the mesh
/// stores each of those VirtualServices once.
fn assert_routed_once(
    cp: &ControlPlane,
    proxies: &[ConnectedProxy],
    range: std::ops::Range<usize>,
) -> Result<()> {
    let want: Vec<usize> = range.collect();
    for p in proxies {
        let routed = wait_until(Duration::from_secs(30), || numbered_hosts(p) == want);
        let got = numbered_hosts(p);
        assert!(
            routed,
            "{}: {} of {} routed\n{}",
            p.id,
            got.len(),
            want.len(),
            cp.logs()
        );
    }
    let (_, out, _) = cp.ctl(&["get", "vs"])?;
    let stored = out
        .lines()
        .filter(|l| l.starts_with("VirtualService"))
        .count();
    assert_eq!(stored, want.len(), "each change stored once: {out}");
    Ok(())
}

#[test]
fn no_change_is_lost_or_repeated_across_a_leader_kill_and_an_apiserver_restart() -> Result<()> {
    // No watch cache and frequent compaction: a watch resumed after the
    // apiserver restart gets a real 410 Gone.
    let cluster = Cluster::start(false, Some("2s"))?;
    let kube = &cluster.kube;
    let mut cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;
    let dir = kube.dir().join("numbered");
    std::fs::create_dir_all(&dir)?;
    for i in 0..200 {
        std::fs::write(dir.join(format!("r{i}.yaml")), numbered_vs(i))?;
    }

    // 200 `kubectl apply`s from 4 clients; the leader is SIGKILLed after 60.
    let done = Arc::new(Mutex::new(0usize));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (done, failed) = (done.clone(), failed.clone());
            let kubeconfig = kube.kubeconfig.clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in (w..200).step_by(4) {
                    let out = std::process::Command::new(
                        trellis_e2e::harness::tool("kubectl").expect("kubectl"),
                    )
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["apply", "-f"])
                    .arg(dir.join(format!("r{i}.yaml")))
                    .output();
                    match out {
                        Ok(o) if o.status.success() => *done.lock().expect("lock") += 1,
                        Ok(o) => failed
                            .lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&o.stderr).into_owned()),
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(120), || *done
        .lock()
        .expect("lock")
        >= 60));
    let leader = cp.leader().expect("a leader");
    cp.kill(leader);
    eprintln!(
        "killed leader {leader} after {} applies",
        *done.lock().expect("lock")
    );
    for w in workers {
        let _ = w.join();
    }
    assert!(
        failed.lock().expect("lock").is_empty(),
        "{:?}",
        failed.lock().expect("lock")
    );
    assert_routed_once(&cp, &proxies, 0..200)?;

    // The apiserver restarts; changes made after it are all routed, and a
    // watch resumed from before it got 410 Gone and relisted.
    kube.restart_apiserver()?;
    let names: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    let mut args = vec!["delete", "vs"];
    args.extend(names.iter().map(String::as_str));
    kube.kubectl_ok(&args)?;
    kube.kubectl_ok(&[
        "delete",
        "pod",
        "reviews-v1-b",
        "--grace-period=0",
        "--force",
    ])?;
    assert_routed_once(&cp, &proxies, 100..200)?;
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(30), || {
            endpoints(p) == ["127.0.0.21", "127.0.0.23", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let relisted = wait_until(Duration::from_secs(30), || {
        (1..=3).any(|id| cp.log_of(id).contains("watch expired (410 Gone)"))
    });
    assert!(relisted, "no watch saw 410 Gone:\n{}", cp.logs());
    Ok(())
}
