//! One pod's life in the pod runner: its network namespace, init containers
//! (native sidecars waited for), containers (postStart hooks), readiness
//! probes, restarts, status, and termination (SIGTERM, grace, SIGKILL).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::sync::watch;

use super::node::{bind, patch_condition, patch_status, remove_pod, timestamp};
use super::spawn::spawn;
use super::volumes::provide_volumes;
use super::{report, Env, RunningPod, MAX_GRACE};

/// One container's process and what the runner knows of it.
pub(super) struct Container {
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
pub(super) async fn run_pod(env: Env, pod: Pod, mut stop: watch::Receiver<bool>) {
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
    // As a kubelet does with a pod sandbox it could not set up: report,
    // and try again (with a new network namespace) until deleted.
    let mut attempt = 0;
    while let Err(e) = run_pod_inner(&env, &pod, &mut stop, attempt).await {
        report(&env, format!("pod {key} (attempt {attempt}): {e:#}"));
        let _ = patch_status(
            &env,
            &ns,
            &name,
            json!({"phase": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "RunnerError", "message": format!("{e:#}")},
            ]}),
        )
        .await;
        attempt += 1;
        tokio::select! {
            () = stopped_signal(&mut stop) => return,
            () = tokio::time::sleep(backoff(attempt)) => {}
        }
    }
}

pub(super) async fn run_pod_inner(
    env: &Env,
    pod: &Pod,
    stop: &mut watch::Receiver<bool>,
    attempt: u32,
) -> Result<()> {
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
    if *stop.borrow() {
        return Ok(());
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
        .take(7)
        .chain(std::iter::once(char::from(b'a' + (attempt % 26) as u8)))
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
    let reported = patch_status(
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
    .await;
    let result = match reported {
        Ok(()) => drive(env, &value, &spec, &net.netns, &net.ip, &dir, stop).await,
        Err(e) => Err(e),
    };
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
pub(super) async fn drive(
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
pub(super) async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub(super) fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(restarts.min(4)))
}

pub(super) async fn wait_exit(c: &mut Container, stop: &mut watch::Receiver<bool>) -> Option<i32> {
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
pub(super) async fn terminate(containers: &mut [Container], grace: Duration) -> Result<()> {
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

pub(super) fn status_of(containers: &[Container], spec: &Value, phase: &str, ready: bool) -> Value {
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

/// An HTTP(S) GET probe: true on a 2xx/3xx answer. HTTPS is not verified,
/// as the kubelet does not.
pub(super) fn probe_ok(probe: &Value, container: &Value, ip: &str) -> bool {
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
