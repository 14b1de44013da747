//! Sidecar injection: one pure function, [`patch`], from a Pod (JSON, as
//! the apiserver sends it) to the JSON Patch that adds the sidecar. The
//! admission webhook ([`webhook`]) and `trellisctl inject -f` (on a
//! Deployment's or StatefulSet's pod template) both call it, so what a
//! cluster runs is what the command prints.
//!
//! The patch adds an init container (`trellis-proxy init-iptables`, root,
//! NET_ADMIN/NET_RAW) that redirects the pod's TCP to the sidecar, and the
//! proxy itself, as uid 1337: a native sidecar (an init container with
//! `restartPolicy: Always` and a startup probe) when the cluster supports
//! it (Kubernetes 1.29 and later), else the first container with a
//! `postStart` hook that returns once the proxy is ready, so the
//! application starts after it. The proxy gets a projected
//! service-account token for the mesh's audience, the mesh root from the
//! `trellis-ca-root-cert` ConfigMap, and the pod's labels from the
//! downward API.
//!
//! The application's HTTP probes are moved to the sidecar's admin port
//! (`/app-health/<container>/readyz|livez|startupz`), which probes the app
//! on localhost: its port is captured, and under STRICT mTLS a kubelet's
//! plaintext probe would be refused (Istio's `rewriteAppHTTPProbers`;
//! `sidecar.trellis.io/rewriteAppProbers: "false"` leaves them alone).
//!
//! Pod annotations (`sidecar.trellis.io/...`, and Istio's
//! `traffic.sidecar.istio.io/...` for the traffic ones) tune it; an
//! annotation of ours that is unknown, or a value that does not parse, is
//! refused with the annotation named, never ignored.

mod annotations;
pub mod webhook;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use annotations::Options;

/// The proxy's uid and gid (excluded from capture).
pub const PROXY_UID: u32 = 1337;
/// The sidecar container's name; its presence means "already injected".
pub const PROXY_CONTAINER: &str = "trellis-proxy";
pub const INIT_CONTAINER: &str = "trellis-init";
/// The annotation the patch sets (and the opt-out one).
pub const STATUS_ANNOTATION: &str = "sidecar.trellis.io/status";
pub const INJECT_ANNOTATION: &str = "sidecar.trellis.io/inject";
/// The pod label that marks a workload with a sidecar (mTLS to it).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const REWRITE_ANNOTATION: &str = "sidecar.trellis.io/rewriteAppProbers";
/// The proxy's admin port (readiness), reachable on the pod IP.
pub const PROXY_ADMIN_PORT: u16 = 15020;
/// Where the mounts go inside the proxy container.
const TOKEN_DIR: &str = "/var/run/secrets/trellis";
const CA_DIR: &str = "/var/run/trellis/ca";
const PODINFO_DIR: &str = "/var/run/trellis/podinfo";

/// How sidecars are added: the same flags on the control plane (webhook)
/// and on `trellisctl inject`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    /// The image of the sidecar and its init container.
    #[arg(
        long = "inject-proxy-image",
        env = "TRELLIS_INJECT_PROXY_IMAGE",
        default_value = "ghcr.io/trellis-mesh/trellis-proxy:0.1.0"
    )]
    pub proxy_image: String,
    /// The control-plane replicas' proxy ports the sidecar streams from
    /// (`host:port,...`).
    #[arg(
        long = "inject-control-plane",
        env = "TRELLIS_INJECT_CONTROL_PLANE",
        value_delimiter = ',',
        default_value = "trellis-control-plane.trellis-system.svc:15010"
    )]
    pub control_plane: Vec<String>,
    /// The audience of the projected service-account token the sidecar
    /// presents for its certificate (the control plane's --token-audience).
    #[arg(
        id = "inject_token_audience",
        long = "inject-token-audience",
        env = "TRELLIS_INJECT_TOKEN_AUDIENCE",
        default_value = "trellis"
    )]
    pub token_audience: String,
    /// The sidecar's log level (TRELLIS_LOG), unless the pod says otherwise.
    #[arg(
        long = "inject-log-level",
        env = "TRELLIS_INJECT_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// The sidecar's CPU request, memory request, CPU limit, memory limit
    /// (empty: none), unless the pod says otherwise.
    #[arg(
        long = "inject-proxy-cpu",
        env = "TRELLIS_INJECT_PROXY_CPU",
        default_value = "50m"
    )]
    pub cpu: String,
    #[arg(
        long = "inject-proxy-memory",
        env = "TRELLIS_INJECT_PROXY_MEMORY",
        default_value = "64Mi"
    )]
    pub memory: String,
    #[arg(
        long = "inject-proxy-cpu-limit",
        env = "TRELLIS_INJECT_PROXY_CPU_LIMIT",
        default_value = ""
    )]
    pub cpu_limit: String,
    #[arg(
        long = "inject-proxy-memory-limit",
        env = "TRELLIS_INJECT_PROXY_MEMORY_LIMIT",
        default_value = "256Mi"
    )]
    pub memory_limit: String,
}

/// The flags' defaults (one place: the `#[arg]`s above).
impl Default for InjectSettings {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: InjectSettings,
        }
        <Defaults as clap::Parser>::parse_from(["defaults"]).settings
    }
}

/// The sidecar's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarForm {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29).
    Native,
    /// The first container, the app held until it is ready (postStart).
    Classic,
}

impl SidecarForm {
    /// The form a cluster of this version supports.
    pub fn for_version(major: u32, minor: u32) -> Self {
        if (major, minor) >= (1, 29) {
            Self::Native
        } else {
            Self::Classic
        }
    }
}

/// Why a pod gets no sidecar, though nothing is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `sidecar.trellis.io/inject: "false"`.
    OptedOut,
    /// It already has the sidecar (created twice through the webhook, or
    /// injected by `trellisctl inject`).
    AlreadyInjected,
    /// `hostNetwork: true`: its traffic is the node's, not capturable here.
    HostNetwork,
}

/// The outcome for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Injection {
    /// JSON Patch (RFC 6902) operations, each an `add` of a whole member.
    Patch(Vec<Value>),
    Skipped(Skip),
}

/// A pod annotation that cannot be honoured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metadata.annotations[{annotation:?}]: {message}")]
pub struct AnnotationError {
    pub annotation: String,
    pub message: String,
}

/// The patch that adds the sidecar to `pod` (a Pod, or a pod template:
/// `metadata` and `spec`), or why it gets none.
pub fn patch(
    pod: &Value,
    settings: &InjectSettings,
    form: SidecarForm,
) -> Result<Injection, AnnotationError> {
    let annotations: BTreeMap<String, String> = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let options = Options::read(&annotations)?;
    if let Some(false) = options.inject {
        return Ok(Injection::Skipped(Skip::OptedOut));
    }
    let spec = pod.get("spec").cloned().unwrap_or_else(|| json!({}));
    let named = |list: &str, name: &str| {
        spec.get(list)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
    };
    if annotations.contains_key(STATUS_ANNOTATION)
        || named("containers", PROXY_CONTAINER)
        || named("initContainers", PROXY_CONTAINER)
    {
        return Ok(Injection::Skipped(Skip::AlreadyInjected));
    }
    if spec["hostNetwork"] == json!(true) {
        return Ok(Injection::Skipped(Skip::HostNetwork));
    }

    let labels = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
    let first_container = spec
        .pointer("/containers/0/name")
        .and_then(Value::as_str)
        .unwrap_or("app")
        .to_string();
    let service = label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .unwrap_or(first_container);

    let init = init_container(settings, &options);
    let mut containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let app_probes = if options.rewrite_probes {
        rewrite_probes(&mut containers)
    } else {
        serde_json::Map::new()
    };
    let mut proxy = proxy_container(settings, &options, &service, form);
    if !app_probes.is_empty() {
        if let Some(env) = proxy["env"].as_array_mut() {
            env.push(json!({"name": "TRELLIS_APP_PROBES", "value": Value::Object(app_probes).to_string()}));
        }
    }
    let mut init_containers: Vec<Value> = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // The capture rules first, then (native) the proxy, then the pod's own
    // init containers (whose traffic the proxy then carries).
    init_containers.insert(0, init);
    match form {
        SidecarForm::Native => init_containers.insert(1, proxy),
        SidecarForm::Classic => containers.insert(0, proxy),
    }
    let mut volumes: Vec<Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    volumes.extend(proxy_volumes(settings));
    let mut new_annotations = annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect::<serde_json::Map<_, _>>();
    new_annotations.insert(
        STATUS_ANNOTATION.into(),
        Value::String(
            match form {
                SidecarForm::Native => "injected (native sidecar)",
                SidecarForm::Classic => "injected",
            }
            .into(),
        ),
    );
    let mut ops = Vec::new();
    if pod.get("metadata").is_none() {
        ops.push(add("/metadata", json!({})));
    }
    // The label that tells other sidecars this pod takes mutual TLS (as
    // Istio's injector sets it; endpoints carry their pod's labels).
    let mut new_labels = labels.clone();
    new_labels.insert(TLS_MODE_LABEL.into(), Value::String("istio".into()));
    ops.extend([
        add("/metadata/labels", Value::Object(new_labels)),
        add("/metadata/annotations", Value::Object(new_annotations)),
        add("/spec/initContainers", Value::Array(init_containers)),
        add("/spec/containers", Value::Array(containers)),
        add("/spec/volumes", Value::Array(volumes)),
    ]);
    Ok(Injection::Patch(ops))
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// Applies `ops` (whole-member `add`s, as [`patch`] makes) to `target`.
pub fn apply(target: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let path = op["path"].as_str().ok_or("an operation without a path")?;
        let (parent, key) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("{path}: not a JSON pointer"))?;
        let parent = if parent.is_empty() {
            Some(&mut *target)
        } else {
            target.pointer_mut(parent)
        };
        let Some(Value::Object(map)) = parent else {
            return Err(format!("{path}: no object to add to"));
        };
        map.insert(
            key.replace("~1", "/").replace("~0", "~"),
            op["value"].clone(),
        );
    }
    Ok(())
}

/// Moves each container's HTTP probes to the sidecar's admin port; the
/// originals, by their new path (`/app-health/<container>/<kind>`).
fn rewrite_probes(containers: &mut [Value]) -> serde_json::Map<String, Value> {
    let mut originals = serde_json::Map::new();
    for c in containers.iter_mut() {
        let name = c["name"].as_str().unwrap_or("app").to_string();
        let ports = c["ports"].clone();
        for (field, kind) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let Some(get) = c.get_mut(field).and_then(|p| p.get_mut("httpGet")) else {
                continue;
            };
            if get["scheme"].as_str().is_some_and(|s| s != "HTTP") {
                continue; // HTTPS probes are the app's own TLS: left alone
            }
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64(),
                Value::String(named) => ports.as_array().and_then(|ps| {
                    ps.iter()
                        .find(|p| p["name"] == named.as_str())
                        .and_then(|p| p["containerPort"].as_u64())
                }),
                _ => None,
            };
            let Some(port) = port else {
                continue;
            };
            let path = format!("/app-health/{name}/{kind}");
            originals.insert(
                path.clone(),
                json!({"port": port, "path": get["path"].as_str().unwrap_or("/")}),
            );
            *get = json!({"path": path, "port": PROXY_ADMIN_PORT, "scheme": "HTTP"});
        }
    }
    originals
}

fn init_container(settings: &InjectSettings, options: &Options) -> Value {
    let mut args = vec![
        "init-iptables".to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--proxy-gid".into(),
        PROXY_UID.to_string(),
    ];
    for (list, flag) in [
        ("includeInboundPorts", "--include-inbound-ports"),
        ("excludeInboundPorts", "--exclude-inbound-ports"),
        ("excludeOutboundPorts", "--exclude-outbound-ports"),
        ("includeOutboundIPRanges", "--include-outbound-cidrs"),
        ("excludeOutboundIPRanges", "--exclude-outbound-cidrs"),
    ] {
        if let Some(value) = options.lists.get(list) {
            let value: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if !value.is_empty() {
                args.extend([flag.to_string(), value.join(",")]);
            }
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": settings.proxy_image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn proxy_container(
    settings: &InjectSettings,
    options: &Options,
    service: &str,
    form: SidecarForm,
) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let args = vec![
        "--control-plane".to_string(),
        settings.control_plane.join(","),
        "--trust-bundle".into(),
        format!("{CA_DIR}/root-cert.pem"),
        "--service-account-token-file".into(),
        format!("{TOKEN_DIR}/token"),
        "--node-id".into(),
        "$(POD_NAME).$(POD_NAMESPACE)".into(),
        "--namespace".into(),
        "$(POD_NAMESPACE)".into(),
        "--service-account".into(),
        "$(SERVICE_ACCOUNT)".into(),
        "--service".into(),
        service.into(),
        "--labels-file".into(),
        format!("{PODINFO_DIR}/labels"),
        "--capture".into(),
        "--inbound-addr".into(),
        "0.0.0.0:15006".into(),
        "--admin-addr".into(),
        format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
        // On SIGTERM: fail readiness, keep carrying the app's last calls.
        "--shutdown-delay".into(),
        "2s".into(),
    ];
    let resources = |pairs: [(&str, &str, &str); 2]| {
        pairs
            .into_iter()
            .filter_map(|(name, annotation, default)| {
                let value = options.proxy_or(annotation, default);
                (!value.is_empty()).then(|| (name.to_string(), Value::String(value.into())))
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let requests = resources([
        ("cpu", "proxyCPU", &settings.cpu),
        ("memory", "proxyMemory", &settings.memory),
    ]);
    let limits = resources([
        ("cpu", "proxyCPULimit", &settings.cpu_limit),
        ("memory", "proxyMemoryLimit", &settings.memory_limit),
    ]);
    let ready = json!({
        "httpGet": {"path": "/ready", "port": PROXY_ADMIN_PORT},
        "periodSeconds": 2,
        "failureThreshold": 30,
    });
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
            {"name": "TRELLIS_LOG", "value": options.proxy_or("logLevel", &settings.log_level)},
        ],
        "ports": [{"name": "trellis-admin", "containerPort": PROXY_ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": ready,
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "trellis-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "trellis-ca", "mountPath": CA_DIR, "readOnly": true},
            {"name": "trellis-podinfo", "mountPath": PODINFO_DIR, "readOnly": true},
        ],
    });
    match form {
        SidecarForm::Native => {
            proxy["restartPolicy"] = json!("Always");
            proxy["startupProbe"] = json!({
                "httpGet": {"path": "/ready", "port": PROXY_ADMIN_PORT},
                "periodSeconds": 1,
                "failureThreshold": 120,
            });
        }
        SidecarForm::Classic => {
            // The kubelet starts the next container once postStart returns.
            proxy["lifecycle"] = json!({
                "postStart": {"exec": {"command": [
                    "trellis-proxy", "wait-ready",
                    "--admin-addr", format!("127.0.0.1:{PROXY_ADMIN_PORT}"),
                    "--timeout", "120s",
                ]}},
            });
        }
    }
    proxy
}

fn proxy_volumes(settings: &InjectSettings) -> Vec<Value> {
    vec![
        json!({"name": "trellis-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": settings.token_audience,
            "expirationSeconds": 43200,
            "path": "token",
        }}]}}),
        json!({"name": "trellis-ca", "configMap": {"name": crate::sources::kube::root_cert::CONFIG_MAP}}),
        json!({"name": "trellis-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        ]}}),
    ]
}

#[cfg(test)]
mod tests;
