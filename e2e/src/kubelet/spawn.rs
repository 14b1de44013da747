//! Starting one container as the pod runner does: the workspace binary its
//! image or command names, in the pod's netns, its volumes bind-mounted in a
//! mount namespace of its own, its env (`$(VAR)` expanded) and user.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::volumes::{downward_field, Volumes};
use super::{Env, COMMANDS, IMAGES};
use crate::harness::tool;

/// Starts container `c`: its binary in the pod's netns, with its mounts
/// (bind mounts in the process's own mount namespace), env and user.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
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
pub(super) fn expand(text: &str, vars: &[(String, String)]) -> String {
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
}
