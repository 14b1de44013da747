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
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};

use crate::harness::{bin, tool};
use crate::netns::Network;

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

/// Creates the Node `pod-runner` (Ready) unless it exists.
async fn register_node(env: &Env) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    if api.get_opt(NODE).await?.is_none() {
        let node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        }))?;
        api.create(&PostParams::default(), &node).await?;
    }
    node_status(env).await
}

/// The node's Ready condition, with a fresh heartbeat.
async fn node_status(env: &Env) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let now = timestamp();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "PodRunnerReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": env.gateway}],
    }});
    api.patch_status(NODE, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Binds `pod` to the runner's node, as the scheduler would.
async fn bind(env: &Env, ns: &str, name: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
    });
    let _: Value = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await
        .with_context(|| format!("binding pod {ns}/{name}"))?;
    Ok(())
}

/// What the kubelet does once a deleted pod's containers are gone: removes
/// the pod object for good.
async fn remove_pod(env: &Env, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api.delete(name, &params).await;
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

/// Cluster DNS as a hosts file: Services, headless pods, the apiserver.
fn hosts_file(env: &Env, pods: &Store<Pod>, services: &Store<Service>) -> String {
    let mut lines = vec![
        "127.0.0.1 localhost".to_string(),
        format!(
            "{} kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local",
            env.gateway
        ),
    ];
    for svc in services.state() {
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        if ns == "default" && name == "kubernetes" {
            continue;
        }
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        lines.push(format!(
            "{ip} {name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns} {SHORT}{ns}/{name}"
        ));
    }
    let running: BTreeMap<String, String> = env
        .shared
        .lock()
        .map(|s| {
            s.pods
                .values()
                .map(|p| (p.uid.clone(), p.ip.clone()))
                .collect()
        })
        .unwrap_or_default();
    for pod in pods.state() {
        let Some(ip) = pod.metadata.uid.as_ref().and_then(|u| running.get(u)) else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| pod.name_any());
        if let Some(sub) = spec.and_then(|s| s.subdomain.clone()) {
            lines.push(format!(
                "{ip} {hostname}.{sub}.{ns}.svc.cluster.local {hostname}.{sub}.{ns}.svc"
            ));
        }
    }
    lines.join("\n") + "\n"
}

/// Marks a Service's short name, resolvable only from its own namespace
/// (as the pod's DNS search path makes it).
const SHORT: &str = "#short:";

/// Rewrites every running pod's hosts file in place (the same inode, which
/// `ip netns exec` bind-mounted over `/etc/hosts`): `hosts` with the short
/// names of the pod's own namespace.
fn write_hosts(env: &Env, hosts: &str) {
    let netns: Vec<(String, String)> = env
        .shared
        .lock()
        .map(|s| {
            s.pods
                .values()
                .map(|p| (p.netns.clone(), p.namespace.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (netns, namespace) in netns {
        let own = format!(" {SHORT}{namespace}/");
        let text: String = hosts
            .lines()
            .map(|line| match line.split_once(SHORT) {
                Some((names, _)) if line.contains(&own) => {
                    let short = line.rsplit('/').next().unwrap_or_default();
                    format!("{names}{short}\n")
                }
                Some((names, _)) => format!("{}\n", names.trim_end()),
                None => format!("{line}\n"),
            })
            .collect();
        let path = PathBuf::from("/etc/netns").join(netns).join("hosts");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
        {
            use std::io::Write;
            let _ = f.write_all(text.as_bytes());
        }
    }
}

fn report(env: &Env, message: String) {
    tracing::warn!("pod runner: {message}");
    if let Ok(mut s) = env.shared.lock() {
        s.errors.push(message);
    }
}

/// One container's process and what the runner knows of it.
struct Container {
    spec: Value,
    name: String,
    child: Option<Child>,
    restarts: u32,
    started_at: Option<String>,
    /// Exit code of its last run, once it ended.
    exit: Option<i32>,
    ready: bool,
    next_probe: Instant,
    /// When to start it again after a crash.
    restart_at: Option<Instant>,
    sidecar: bool,
}

/// Runs one pod until `stop` flips (deleted) or it completes.
async fn run_pod(env: Env, pod: Pod, mut stop: watch::Receiver<bool>) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let key = format!("{ns}/{name}");
    // A pod of the same name still stopping (a StatefulSet's replacement)
    // starts once it is gone.
    loop {
        let waiting = env.stopped.notified();
        if !env.stopping.lock().is_ok_and(|s| s.contains(&key)) {
            break;
        }
        tokio::select! {
            _ = waiting => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    if let Err(e) = run_pod_inner(&env, &pod, &mut stop).await {
        report(&env, format!("pod {key}: {e:#}"));
        let _ = patch_status(
            &env,
            &ns,
            &name,
            json!({"phase": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "RunnerError", "message": format!("{e:#}")},
            ]}),
        )
        .await;
        stopped_signal(&mut stop).await;
    }
}

async fn run_pod_inner(env: &Env, pod: &Pod, stop: &mut watch::Receiver<bool>) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let value = serde_json::to_value(pod)?;
    let spec = value["spec"].clone();
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        bind(env, &ns, &name).await?;
    }
    let n = {
        let mut next = env.next.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        let n = *next;
        *next = next.checked_add(1).context("out of pod addresses")?;
        n
    };
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let net = env
        .network
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .pod(&short, n, "")?;
    let dir = env.dir.join(format!("{ns}.{name}.{short}"));
    std::fs::create_dir_all(&dir)?;
    let running = RunningPod {
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        netns: net.netns.clone(),
        ip: net.ip.clone(),
        dir: dir.clone(),
    };
    env.shared
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .pods
        .insert(uid.clone(), running);
    let now = timestamp();
    patch_status(
        env,
        &ns,
        &name,
        json!({
            "phase": "Pending",
            "podIP": net.ip, "podIPs": [{"ip": net.ip}], "hostIP": env.gateway,
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
            ],
        }),
    )
    .await?;
    let result = drive(env, &value, &spec, &net.netns, &net.ip, &dir, stop).await;
    if *stop.borrow() {
        remove_pod(env, &ns, &name, &uid).await;
    }
    // Stopped (deleted, completed or failed): tidy up.
    let key = format!("{ns}/{name}");
    if let Ok(mut s) = env.stopping.lock() {
        s.insert(key.clone());
    }
    if let Ok(mut s) = env.shared.lock() {
        s.pods.remove(&uid);
    }
    if let Ok(mut network) = env.network.lock() {
        network.remove(&net.netns);
    }
    if let Ok(mut s) = env.stopping.lock() {
        s.remove(&key);
    }
    env.stopped.notify_waiters();
    result
}

/// Volumes, init containers, containers, probes, restarts, status: until
/// stopped or done.
#[allow(clippy::too_many_arguments)]
async fn drive(
    env: &Env,
    pod: &Value,
    spec: &Value,
    netns: &str,
    ip: &str,
    dir: &Path,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let volumes = provide_volumes(env, pod, spec, dir).await?;
    let restart_policy = spec["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_string();
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .map_or(MAX_GRACE, |s| Duration::from_secs(s).min(MAX_GRACE));
    let mut containers: Vec<Container> = Vec::new();
    let start = |c: &Value| Container {
        spec: c.clone(),
        name: c["name"].as_str().unwrap_or("?").to_string(),
        child: None,
        restarts: 0,
        started_at: None,
        exit: None,
        ready: false,
        next_probe: Instant::now(),
        restart_at: None,
        sidecar: c["restartPolicy"] == "Always",
    };
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();

    // Init containers, in order.
    for c in spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let mut container = start(&c);
        loop {
            if stopped(stop) {
                return terminate(&mut containers, grace).await;
            }
            let child = spawn(env, pod, spec, &c, netns, ip, dir, &volumes)?;
            container.child = Some(child);
            container.started_at = Some(timestamp());
            if container.sidecar {
                // Native sidecar: on once its startup probe passes.
                let probe = c.get("startupProbe").or_else(|| c.get("readinessProbe"));
                loop {
                    if stopped(stop) {
                        containers.push(container);
                        return terminate(&mut containers, grace).await;
                    }
                    if probe.is_none_or(|p| probe_ok(p, &c, ip)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                break;
            }
            let code = wait_exit(&mut container, stop).await;
            if stopped(stop) {
                return terminate(&mut containers, grace).await;
            }
            if code == Some(0) {
                break;
            }
            container.restarts += 1;
            if restart_policy == "Never" {
                patch_status(env, &ns, &name, json!({"phase": "Failed"})).await?;
                return terminate(&mut containers, grace).await;
            }
            tokio::time::sleep(backoff(container.restarts)).await;
        }
        containers.push(container);
    }
    patch_condition(env, &ns, &name, "Initialized", true).await?;

    // Containers, in order; a postStart hook holds the next one.
    for c in spec["containers"].as_array().cloned().unwrap_or_default() {
        let mut container = start(&c);
        container.child = Some(spawn(env, pod, spec, &c, netns, ip, dir, &volumes)?);
        container.started_at = Some(timestamp());
        if let Some(hook) = c.pointer("/lifecycle/postStart/exec/command") {
            let mut hook_spec = c.clone();
            hook_spec["command"] = hook.clone();
            hook_spec["args"] = json!([]);
            let mut hook = spawn(env, pod, spec, &hook_spec, netns, ip, dir, &volumes)?;
            tokio::select! {
                status = hook.wait() => {
                    if !status.map(|s| s.success()).unwrap_or(false) {
                        report(env, format!("pod {ns}/{name}: container {}: postStart hook failed", container.name));
                    }
                }
                () = stopped_signal(stop) => {
                    let _ = hook.start_kill();
                    containers.push(container);
                    return terminate(&mut containers, grace).await;
                }
            }
        }
        containers.push(container);
    }

    // Watch, probe, restart, report.
    let mut reported = Value::Null;
    loop {
        if stopped(stop) {
            return terminate(&mut containers, grace).await;
        }
        for c in &mut containers {
            if let Some(child) = &mut c.child {
                if let Ok(Some(status)) = child.try_wait() {
                    c.exit = Some(status.code().unwrap_or(-1));
                    c.child = None;
                    c.ready = false;
                    let again = match restart_policy.as_str() {
                        "Always" => true,
                        "OnFailure" => c.exit != Some(0),
                        _ => false,
                    } || c.sidecar;
                    let regular_init = c.exit.is_some()
                        && spec["initContainers"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|i| i["name"] == c.name.as_str()))
                        && !c.sidecar;
                    if again && !regular_init {
                        c.restarts += 1;
                        c.restart_at = Some(Instant::now() + backoff(c.restarts));
                    }
                }
            } else if c.restart_at.is_some_and(|at| Instant::now() >= at) {
                c.restart_at = None;
                c.child = Some(spawn(env, pod, spec, &c.spec, netns, ip, dir, &volumes)?);
                c.started_at = Some(timestamp());
                c.exit = None;
            }
            if c.child.is_some() && Instant::now() >= c.next_probe {
                let probe = c.spec.get("readinessProbe").cloned();
                let period = probe
                    .as_ref()
                    .and_then(|p| p["periodSeconds"].as_u64())
                    .unwrap_or(10)
                    .clamp(1, 10);
                c.ready = match &probe {
                    Some(p) => probe_ok(p, &c.spec, ip),
                    None => true,
                };
                c.next_probe = Instant::now() + Duration::from_secs(period);
            }
        }
        let apps: Vec<&Container> = containers
            .iter()
            .filter(|c| {
                spec["containers"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x["name"] == c.name.as_str()))
            })
            .collect();
        let all_ready = apps.iter().all(|c| c.ready)
            && containers
                .iter()
                .filter(|c| c.sidecar)
                .all(|c| c.child.is_some());
        let finished = restart_policy != "Always"
            && apps
                .iter()
                .all(|c| c.child.is_none() && c.restart_at.is_none());
        let phase = if finished {
            if apps.iter().all(|c| c.exit == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else {
            "Running"
        };
        let status = status_of(&containers, spec, phase, all_ready && !finished);
        if status != reported {
            patch_status(env, &ns, &name, status.clone()).await?;
            reported = status;
        }
        if finished {
            return terminate(&mut containers, grace).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Resolves once `stop` says stop.
async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(restarts.min(4)))
}

async fn wait_exit(c: &mut Container, stop: &mut watch::Receiver<bool>) -> Option<i32> {
    let child = c.child.as_mut()?;
    tokio::select! {
        status = child.wait() => {
            c.child = None;
            let code = status.ok().and_then(|s| s.code());
            c.exit = code;
            code
        }
        () = stopped_signal(stop) => None,
    }
}

/// SIGTERM to every container (the app's first, sidecars after), SIGKILL
/// after `grace`.
async fn terminate(containers: &mut [Container], grace: Duration) -> Result<()> {
    let order: Vec<usize> = (0..containers.len())
        .filter(|i| !containers[*i].sidecar)
        .chain((0..containers.len()).filter(|i| containers[*i].sidecar))
        .collect();
    for i in order {
        let Some(child) = containers[i].child.as_mut() else {
            continue;
        };
        if let Some(pid) = child.id() {
            // The process group: ip netns exec, sh, setpriv and the binary.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            let _ = child.wait().await;
        }
    }
    Ok(())
}

fn status_of(containers: &[Container], spec: &Value, phase: &str, ready: bool) -> Value {
    let state = |c: &Container| match (&c.child, c.exit) {
        (Some(_), _) => json!({"running": {"startedAt": c.started_at}}),
        (None, Some(code)) => {
            json!({"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"}}})
        }
        (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let describe = |c: &Container| {
        json!({
            "name": c.name,
            "image": c.spec["image"],
            "imageID": "",
            "ready": c.ready && c.child.is_some(),
            "started": c.child.is_some(),
            "restartCount": c.restarts,
            "state": state(c),
        })
    };
    let is_init = |c: &Container| {
        spec["initContainers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["name"] == c.name.as_str()))
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    json!({
        "phase": phase,
        "initContainerStatuses": containers.iter().filter(|c| is_init(c)).map(describe).collect::<Vec<_>>(),
        "containerStatuses": containers.iter().filter(|c| !is_init(c)).map(describe).collect::<Vec<_>>(),
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag(ready)},
            {"type": "Ready", "status": flag(ready)},
        ],
    })
}

async fn patch_status(env: &Env, ns: &str, name: &str, status: Value) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .with_context(|| format!("status of pod {ns}/{name}"))?;
    Ok(())
}

async fn patch_condition(env: &Env, ns: &str, name: &str, kind: &str, on: bool) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let Some(pod) = api.get_opt(name).await? else {
        return Ok(());
    };
    let mut conditions = pod
        .status
        .and_then(|s| s.conditions)
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or_else(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        for c in list.iter_mut() {
            if c["type"] == kind {
                c["status"] = json!(if on { "True" } else { "False" });
            }
        }
    }
    patch_status(env, ns, name, json!({"conditions": conditions})).await
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = now / 86_400;
    let secs = now % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// An HTTP(S) GET probe: true on a 2xx/3xx answer. HTTPS is not verified,
/// as the kubelet does not.
fn probe_ok(probe: &Value, container: &Value, ip: &str) -> bool {
    let Some(get) = probe.get("httpGet") else {
        return true; // exec and tcpSocket probes: taken as passing
    };
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => container["ports"].as_array().and_then(|ports| {
            ports
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
        }),
        _ => None,
    };
    let Some(port) = port else {
        return false;
    };
    let path = get["path"].as_str().unwrap_or("/");
    let https = get["scheme"] == "HTTPS";
    let addr = format!("{ip}:{port}");
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let result = if https {
        crate::client::blocking_get_tls(addr, path, crate::tls::any_server_http1())
    } else {
        crate::client::blocking_get(addr, path)
    };
    result.is_ok_and(|(status, _)| (200..400).contains(&status))
}

/// Where each volume's files are on this machine, by volume name.
type Volumes = BTreeMap<String, PathBuf>;

async fn provide_volumes(env: &Env, pod: &Value, spec: &Value, dir: &Path) -> Result<Volumes> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut out = Volumes::new();
    for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
        let name = v["name"].as_str().unwrap_or("?").to_string();
        let path = if let Some(claim) = v.pointer("/persistentVolumeClaim/claimName") {
            // Kept per claim: a StatefulSet's replacement pod finds its data.
            env.dir
                .join("claims")
                .join(ns)
                .join(claim.as_str().unwrap_or("?"))
        } else {
            dir.join("volumes").join(&name)
        };
        std::fs::create_dir_all(&path)?;
        if v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some() {
        } else if let Some(secret) = v.get("secret") {
            let data = secret_data(env, ns, secret["secretName"].as_str().unwrap_or("?")).await?;
            write_items(
                &path,
                &data,
                &secret["items"],
                secret["defaultMode"].as_u64(),
            )?;
        } else if let Some(map) = v.get("configMap") {
            let data = config_map_data(env, ns, map["name"].as_str().unwrap_or("?")).await?;
            write_items(&path, &data, &map["items"], map["defaultMode"].as_u64())?;
        } else if let Some(downward) = v.get("downwardAPI") {
            write_downward(pod, &path, downward)?;
        } else if let Some(projected) = v.get("projected") {
            for source in projected["sources"].as_array().cloned().unwrap_or_default() {
                if let Some(token) = source.get("serviceAccountToken") {
                    let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
                    let text = request_token(
                        env,
                        ns,
                        sa,
                        token["audience"].as_str(),
                        token["expirationSeconds"].as_i64().unwrap_or(3600),
                    )
                    .await?;
                    write_file(
                        &path.join(token["path"].as_str().unwrap_or("token")),
                        &text,
                        0o644,
                    )?;
                } else if let Some(map) = source.get("configMap") {
                    let data =
                        config_map_data(env, ns, map["name"].as_str().unwrap_or("?")).await?;
                    write_items(&path, &data, &map["items"], None)?;
                } else if let Some(secret) = source.get("secret") {
                    let data = secret_data(env, ns, secret["name"].as_str().unwrap_or("?")).await?;
                    write_items(&path, &data, &secret["items"], None)?;
                } else if let Some(downward) = source.get("downwardAPI") {
                    write_downward(pod, &path, downward)?;
                } else {
                    bail!(
                        "volume {name}: a projected source the pod runner cannot provide: {source}"
                    );
                }
            }
        } else {
            bail!("volume {name}: a kind the pod runner cannot provide: {v}");
        }
        out.insert(name, path);
    }
    Ok(out)
}

/// A downwardAPI volume (or projected source): each item's field as a file.
fn write_downward(pod: &Value, dir: &Path, downward: &Value) -> Result<()> {
    for item in downward["items"].as_array().cloned().unwrap_or_default() {
        let field = item.pointer("/fieldRef/fieldPath").and_then(Value::as_str);
        let text = downward_field(pod, field.unwrap_or(""))?;
        write_file(
            &dir.join(item["path"].as_str().unwrap_or("?")),
            &text,
            0o644,
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &Value,
    mode: Option<u64>,
) -> Result<()> {
    let mode = mode.map_or(0o644, |m| m as u32);
    match items.as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or("?");
                let value = data.get(key).with_context(|| format!("no key {key}"))?;
                write_file(&dir.join(item["path"].as_str().unwrap_or(key)), value, mode)?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(&dir.join(key), value, mode)?;
            }
        }
    }
    Ok(())
}

async fn secret_data(env: &Env, ns: &str, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), ns);
    let secret = wait_for(|| api.get_opt(name), &format!("secret {ns}/{name}")).await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .chain(
            secret
                .string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        )
        .collect())
}

async fn config_map_data(env: &Env, ns: &str, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(env.client.clone(), ns);
    let map = wait_for(|| api.get_opt(name), &format!("configmap {ns}/{name}")).await?;
    Ok(map
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect())
}

/// What a kubelet does for a missing Secret or ConfigMap: waits for it
/// (up to a minute here).
async fn wait_for<T, F, Fut>(mut get: F, what: &str) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = get().await? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("{what} does not exist");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A token of service account `ns/sa` from the TokenRequest API.
async fn request_token(
    env: &Env,
    ns: &str,
    sa: &str,
    audience: Option<&str>,
    expiration: i64,
) -> Result<Vec<u8>> {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(env.client.clone(), ns);
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration.max(600),
        },
    });
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(request)?;
    let reply = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token for {ns}/{sa}"))?;
    Ok(reply
        .status
        .map(|s| s.token)
        .unwrap_or_default()
        .into_bytes())
}

/// A downward-API field, as the kubelet writes it.
fn downward_field(pod: &Value, field: &str) -> Result<Vec<u8>> {
    let map = |m: &Value| {
        m.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().unwrap_or_default();
                        format!("{k}={}", serde_json::to_string(v).unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    Ok(match field {
        "metadata.labels" => map(&pod["metadata"]["labels"]),
        "metadata.annotations" => map(&pod["metadata"]["annotations"]),
        "metadata.name" => pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        "metadata.namespace" => pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        other => bail!("downward API field {other:?} is not provided by the pod runner"),
    }
    .into_bytes())
}

/// Starts container `c`: its binary in the pod's netns, with its mounts
/// (bind mounts in the process's own mount namespace), env and user.
#[allow(clippy::too_many_arguments)]
fn spawn(
    env: &Env,
    pod: &Value,
    spec: &Value,
    c: &Value,
    netns: &str,
    ip: &str,
    dir: &Path,
    volumes: &Volumes,
) -> Result<Child> {
    let name = c["name"].as_str().unwrap_or("?");
    let image = c["image"].as_str().unwrap_or_default();
    let repository = image.rsplit('/').next().unwrap_or_default();
    let repository = repository.split([':', '@']).next().unwrap_or_default();
    let mut command: Vec<String> = c["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let args: Vec<String> = c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        let Some((_, binary)) = IMAGES.iter().find(|(img, _)| *img == repository) else {
            bail!(
                "container {name}: unknown image {image:?} (the pod runner runs {:?})",
                IMAGES.iter().map(|i| i.0).collect::<Vec<_>>()
            );
        };
        command.push((*binary).to_string());
    } else if !COMMANDS.contains(&command[0].as_str()) {
        bail!(
            "container {name}: command {:?} is not one of this workspace's binaries",
            command[0]
        );
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        let key = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &vars)
        } else if let Some(field) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            match field {
                "status.podIP" => ip.to_string(),
                "spec.serviceAccountName" => spec["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                "spec.nodeName" => "pod-runner".into(),
                f if f.starts_with("metadata.labels['") => {
                    let key = f
                        .trim_start_matches("metadata.labels['")
                        .trim_end_matches("']");
                    pod["metadata"]["labels"][key]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                }
                f => String::from_utf8_lossy(&downward_field(pod, f)?).into_owned(),
            }
        } else {
            bail!("container {name}: env {key}: only values and fieldRefs are provided");
        };
        vars.push((key, value));
    }
    let argv: Vec<String> = command
        .iter()
        .chain(args.iter())
        .map(|a| expand(a, &vars))
        .collect();
    let security = |field: &str| {
        c.pointer(&format!("/securityContext/{field}"))
            .or_else(|| spec.pointer(&format!("/securityContext/{field}")))
            .and_then(Value::as_u64)
    };
    let uid = security("runAsUser");
    let gid = security("runAsGroup").or(uid);
    let fs_group = spec
        .pointer("/securityContext/fsGroup")
        .and_then(Value::as_u64);
    // Mounts: bind each volume over its mountPath, owned by the container's user.
    let mut script = String::new();
    for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let volume = m["name"].as_str().unwrap_or("?");
        let source = volumes
            .get(volume)
            .with_context(|| format!("container {name}: no volume {volume}"))?;
        let target = m["mountPath"].as_str().unwrap_or("/nonexistent");
        if let Some(uid) = uid {
            let group = fs_group.or(gid).unwrap_or(uid);
            let _ = std::process::Command::new("chown")
                .args(["-R", &format!("{uid}:{group}")])
                .arg(source)
                .status();
        }
        script.push_str(&format!(
            "mkdir -p '{target}' && mount --bind '{}' '{target}' || exit 97\n",
            source.display()
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut cmd = Command::new(tool("ip")?);
    cmd.args(["netns", "exec", netns, "/bin/sh", "-c", &script, "sh"]);
    if let Some(uid) = uid {
        cmd.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={}", gid.unwrap_or(uid)));
        match fs_group {
            Some(g) => cmd.arg(format!("--groups={g}")),
            None => cmd.arg("--clear-groups"),
        };
        cmd.arg("--");
    }
    cmd.args(&argv);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    cmd.env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                env.bin_dir.display()
            ),
        )
        .env("HOME", dir)
        .env(
            "HOSTNAME",
            pod["metadata"]["name"].as_str().unwrap_or_default(),
        )
        .env("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        .env("KUBERNETES_SERVICE_PORT", env.api_port.to_string())
        .envs(vars)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("container {name}: starting {argv:?}"))
}

/// `$(VAR)` replaced by the container's earlier env values (`$$(VAR)`
/// stays literal), as Kubernetes expands `command`, `args` and `env`.
fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("$(") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("$(");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(end) => {
                let key = &after[..end];
                match vars.iter().rev().find(|(k, _)| k == key) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&format!("$({key})")),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_kubernetes_does() {
        let vars = vec![
            ("POD_NAME".to_string(), "web-0".to_string()),
            ("POD_NAMESPACE".to_string(), "shop".to_string()),
        ];
        assert_eq!(expand("$(POD_NAME).$(POD_NAMESPACE)", &vars), "web-0.shop");
        assert_eq!(expand("--x=$(MISSING)", &vars), "--x=$(MISSING)");
        assert_eq!(expand("$$(POD_NAME)", &vars), "$(POD_NAME)");
        assert_eq!(expand("plain", &vars), "plain");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
