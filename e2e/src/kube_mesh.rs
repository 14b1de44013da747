//! The Kubernetes mesh the `kube_*` tests share: a real apiserver and
//! controller-manager with the CRDs and RBAC installed, a Node, the
//! `reviews` Service and four Pods whose Ready status is set as a kubelet
//! would (each an echo backend on its pod IP), a control plane running as
//! the least-privilege service account, connected proxies, and what the
//! tests read back: proxies' routes and endpoints, resources' status.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::harness::{free_port, wait_until, Echo};
use crate::kube::KubeCluster;
use crate::mesh::{fetch_version, ConnectedProxy, ControlPlane};

pub const HOST: &str = "reviews.default.svc.cluster.local";

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The four pods of `reviews`: (pod name, IP, version).
pub const PODS: [(&str, &str, &str); 4] = [
    ("reviews-v1-a", "127.0.0.21", "v1"),
    ("reviews-v1-b", "127.0.0.22", "v1"),
    ("reviews-v2-a", "127.0.0.23", "v2"),
    ("reviews-v2-b", "127.0.0.24", "v2"),
];

/// A cluster with the CRDs and RBAC installed, a Node, the `reviews`
/// Service and its four Ready pods (each an echo backend on its pod IP).
pub struct Cluster {
    pub kube: KubeCluster,
    pub backends: BTreeMap<String, Echo>,
    pub port: u16,
}

impl Cluster {
    pub fn start(watch_cache: bool, compaction: Option<&str>) -> Result<Self> {
        let kube = KubeCluster::up_with(watch_cache, compaction)?;
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
    pub fn control_plane(&self, extra: &[&str]) -> Result<ControlPlane> {
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

pub fn pod_yaml(name: &str, version: &str) -> String {
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
pub fn common_port() -> Result<u16> {
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

pub fn config_dump(proxy: &ConnectedProxy) -> serde_json::Value {
    crate::client::blocking_get(proxy.admin, "/config_dump")
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// The endpoint addresses of `HOST` (any subset) in the proxy's config.
pub fn endpoints(proxy: &ConnectedProxy) -> Vec<String> {
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
pub fn weights(proxy: &ConnectedProxy) -> BTreeMap<String, u64> {
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
pub fn wait_weights(cp: &ControlPlane, proxies: &[ConnectedProxy], split: (u64, u64)) {
    let want: BTreeMap<String, u64> =
        [("v1".to_string(), split.0), ("v2".to_string(), split.1)].into();
    for p in proxies {
        let routed = wait_until(Duration::from_secs(10), || weights(p) == want);
        assert!(routed, "{}: weights {:?}\n{}", p.id, weights(p), cp.logs());
    }
}

/// `n` GETs through `proxy`: answers by version (errors under "error: ...").
pub fn split(proxy: &ConnectedProxy, n: usize) -> BTreeMap<String, usize> {
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

pub fn assert_90_10(proxy: &ConnectedProxy) {
    let counts = split(proxy, 200);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "every request answered: {counts:?}");
    assert!((160..=195).contains(&v1), "about 90/10: {counts:?}");
}

pub const RULES_90_10: &str = "apiVersion: networking.trellis.io/v1
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

pub fn vs(weights: (u32, u32)) -> String {
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
pub struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    sent: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(proxy: SocketAddr) -> Self {
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
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let sent = *self.sent.lock().expect("lock");
        let failures = self.failures.lock().expect("lock").clone();
        (sent, failures)
    }
}

pub fn proxies(cp: &ControlPlane) -> Result<Vec<ConnectedProxy>> {
    let mut out = Vec::new();
    for id in ["proxy-a", "proxy-b"] {
        let mut p = ConnectedProxy::spawn(id, cp)?;
        p.wait_ready(Duration::from_secs(20))?;
        out.push(p);
    }
    Ok(out)
}

/// The `Accepted` condition and `applied` of a rule resource, as kubectl shows.
pub fn status_of(cluster: &KubeCluster, resource: &str) -> (String, String, String) {
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
