//! The pod runner: what these machines lack to run pods (no kubelet, no
//! container runtime, no cluster DNS), played for the real apiserver so the
//! chart and the injected pods run exactly as stored.
//!
//! It stands in for:
//! * the kubelet: it watches every Pod (those `kubectl` creates and those
//!   the real controller-manager makes for ReplicaSets and StatefulSets),
//!   gives each a network namespace with its own IP on a bridge ([`Network`]),
//!   mounts the volumes it can provide (emptyDir and PersistentVolumeClaim
//!   as directories kept per claim; secret, configMap, downwardAPI and
//!   projected sources, service-account tokens from the TokenRequest API
//!   with the asked audience), runs the init containers in order (a native
//!   sidecar, `restartPolicy: Always`, is started and waited for by its
//!   startup probe) and then the containers in order (a `postStart` exec
//!   hook runs before the next container starts), each as the processes of
//!   this workspace's binaries its image names (`trellis-proxy`,
//!   `trellis-control-plane`, `trellis-echo`; `command` may name
//!   `trellisctl`; an unknown image is an error reported in the pod's
//!   status), with its `args` (`$(VAR)` expanded), `env` (values and
//!   downward-API fields) and `runAsUser`/`runAsGroup`/`fsGroup`; restarts
//!   them per `restartPolicy`; reports `podIP`, container states, restart
//!   counts, phase and the Ready condition from HTTP(S) readiness probes; and
//!   on deletion sends SIGTERM, waits the grace period (at most 10 s here),
//!   then SIGKILL, and removes the pod for good. It registers itself as the
//!   Node `pod-runner` (status heartbeat every 10 s) and binds each pending
//!   pod to it, as the scheduler would (the endpoint controllers list only
//!   pods on a node).
//! * cluster DNS: `/etc/netns/<netns>/hosts` lists every Service (ClusterIP)
//!   by its names, the pods of headless Services by `hostname.subdomain`,
//!   and `kubernetes.default.svc` as the apiserver (the bridge's gateway).
//!
//! Not emulated: images (the binaries run from `target/`), resource limits,
//! read-only root filesystems, capabilities (processes run as root or
//! `setpriv` to the asked uid), kube-proxy (ClusterIPs are routed only by
//! sidecars; the apiserver reaches webhooks through endpoints,
//! `--enable-aggregator-routing`), scheduling constraints (every pod goes
//! to the one node).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{watch, Notify};

use crate::harness::bin;
use crate::netns::Network;

mod dns;
mod node;
mod pod;
mod spawn;
mod volumes;

use dns::{hosts_file, write_hosts};
use node::{node_status, register_node};
use pod::run_pod;

/// The images the runner knows, by repository name, and the binary each runs.
const IMAGES: &[(&str, &str)] = &[
    ("trellis-proxy", "trellis-proxy"),
    ("trellis-control-plane", "trellis-control-plane"),
    ("trellis-echo", "trellis-echo"),
];
/// The binaries a container's `command` may name.
const COMMANDS: &[&str] = &[
    "trellis-proxy",
    "trellis-control-plane",
    "trellisctl",
    "trellis-echo",
];
/// The node the runner registers and binds pods to.
pub const NODE: &str = "pod-runner";
/// The longest grace period the runner waits before SIGKILL.
const MAX_GRACE: Duration = Duration::from_secs(10);

/// A running pod runner; stops every pod's processes when dropped.
pub struct PodRunner {
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    pub dir: PathBuf,
}

impl std::fmt::Debug for PodRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRunner").field("dir", &self.dir).finish()
    }
}

/// A pod the runner runs, as tests see it.
#[derive(Clone, Debug)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub ip: String,
    /// Where its containers' logs are (`<container>.log`).
    pub dir: PathBuf,
}

#[derive(Default)]
struct Shared {
    /// By uid.
    pods: BTreeMap<String, RunningPod>,
    /// Problems a test should see (an unknown image, a failed mount).
    errors: Vec<String>,
}

/// What the pods' processes are started from.
#[derive(Clone)]
struct Env {
    client: kube::Client,
    network: Arc<Mutex<Network>>,
    shared: Arc<Mutex<Shared>>,
    dir: PathBuf,
    /// The apiserver's port (reached at the bridge's gateway).
    api_port: u16,
    gateway: String,
    bin_dir: PathBuf,
    /// Next pod address (2..=254) on the bridge.
    next: Arc<Mutex<u8>>,
    /// Pods whose processes are still stopping, by namespace/name.
    stopping: Arc<Mutex<BTreeSet<String>>>,
    stopped: Arc<Notify>,
}

impl PodRunner {
    /// Starts running the pods of the cluster whose admin kubeconfig is
    /// `kubeconfig`, on a new bridge.
    pub fn start(kubeconfig: &Path, dir: &Path) -> Result<Self> {
        let network = Network::new()?;
        let gateway = network.address(1);
        let kubeconfig_text = std::fs::read_to_string(kubeconfig)?;
        let api_port: u16 = kubeconfig_text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .context("the kubeconfig's server port")?;
        // Binaries come from the workspace's target directory.
        let bin_dir = bin("trellis-proxy")?
            .parent()
            .context("target dir")?
            .to_path_buf();
        for b in COMMANDS {
            bin(b)?;
        }
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (shutdown, rx) = watch::channel(false);
        let kubeconfig = kubeconfig.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let shared = shared.clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match client(&kubeconfig).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let env = Env {
                        client,
                        network: Arc::new(Mutex::new(network)),
                        shared,
                        dir,
                        api_port,
                        gateway,
                        bin_dir,
                        next: Arc::new(Mutex::new(2)),
                        stopping: Arc::new(Mutex::new(BTreeSet::new())),
                        stopped: Arc::new(Notify::new()),
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(env, rx).await;
                });
            })
        };
        ready_rx.recv().context("the pod runner's thread ended")??;
        Ok(Self {
            shutdown,
            thread: Some(thread),
            shared,
            dir,
        })
    }

    /// The running pod `namespace/name`, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<RunningPod> {
        self.shared
            .lock()
            .ok()?
            .pods
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }

    /// Every running pod of `namespace` whose name starts with `prefix`.
    pub fn pods(&self, namespace: &str, prefix: &str) -> Vec<RunningPod> {
        self.shared
            .lock()
            .map(|s| {
                s.pods
                    .values()
                    .filter(|p| p.namespace == namespace && p.name.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Problems seen so far (unknown images, volumes it could not provide).
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .lock()
            .map(|s| s.errors.clone())
            .unwrap_or_default()
    }

    /// Every container log of every pod that ran, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let Ok(files) = std::fs::read_dir(&d) else {
                continue;
            };
            for f in files.filter_map(|e| e.ok().map(|e| e.path())) {
                if f.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&f).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    out.push_str(&format!("---- {} ----\n{}\n", f.display(), tail.join("\n")));
                }
            }
        }
        out
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// The runner's loop: starts a task per new pod, stops those deleted, and
/// keeps every pod's hosts file current.
async fn run(env: Env, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = register_node(&env).await {
        report(&env, format!("node {NODE}: {e:#}"));
    }
    let heartbeat = tokio::spawn({
        let env = env.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = node_status(&env).await;
            }
        }
    });
    let changed = Arc::new(Notify::new());
    let pods: Store<Pod> = follow(Api::all(env.client.clone()), changed.clone());
    let services: Store<Service> = follow(Api::all(env.client.clone()), changed.clone());
    let _ = pods.wait_until_ready().await;
    let _ = services.wait_until_ready().await;
    // uid -> stop signal of its task.
    let mut running: BTreeMap<String, watch::Sender<bool>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut hosts_written = String::new();
    loop {
        let present: BTreeMap<String, Arc<Pod>> = pods
            .state()
            .into_iter()
            .filter_map(|p| p.metadata.uid.clone().map(|uid| (uid, p)))
            .collect();
        for (uid, pod) in &present {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let done = phase == "Succeeded" || phase == "Failed";
            if !running.contains_key(uid) && pod.metadata.deletion_timestamp.is_none() && !done {
                let (stop_tx, stop_rx) = watch::channel(false);
                running.insert(uid.clone(), stop_tx);
                tasks.spawn(run_pod(env.clone(), (**pod).clone(), stop_rx));
            }
        }
        for (uid, stop) in &running {
            let gone = present
                .get(uid)
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if gone {
                let _ = stop.send(true);
            }
        }
        running.retain(|uid, stop| !stop.is_closed() || present.contains_key(uid));
        let hosts = hosts_file(&env, &pods, &services);
        // Written again when it changes or a pod appears.
        let key = format!(
            "{hosts}{:?}",
            env.shared.lock().map(|s| s.pods.len()).unwrap_or(0)
        );
        if key != hosts_written {
            write_hosts(&env, &hosts);
            hosts_written = key;
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    for stop in running.values() {
        let _ = stop.send(true);
    }
    while tasks.join_next().await.is_some() {}
    heartbeat.abort();
}

fn follow<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                changed.notify_one();
            }
        }
    });
    reader
}

fn report(env: &Env, message: String) {
    tracing::warn!("pod runner: {message}");
    if let Ok(mut s) = env.shared.lock() {
        s.errors.push(message);
    }
}
