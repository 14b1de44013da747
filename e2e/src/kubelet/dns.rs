//! Cluster DNS for the pod runner: one hosts file per pod network namespace,
//! every Service by name (short names in its own namespace), headless pods,
//! and the apiserver as `kubernetes.default.svc`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::Store;
use kube::ResourceExt;

use super::Env;

/// Cluster DNS as a hosts file: Services, headless pods, the apiserver.
pub(super) fn hosts_file(env: &Env, pods: &Store<Pod>, services: &Store<Service>) -> String {
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
pub(super) const SHORT: &str = "#short:";

/// Rewrites every running pod's hosts file in place (the same inode, which
/// `ip netns exec` bind-mounted over `/etc/hosts`): `hosts` with the short
/// names of the pod's own namespace.
pub(super) fn write_hosts(env: &Env, hosts: &str) {
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
