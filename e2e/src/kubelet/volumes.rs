//! The pod runner's volumes: emptyDir and PersistentVolumeClaim as
//! directories, Secrets, ConfigMaps, the downward API and projected
//! service-account tokens (TokenRequest) as files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use super::Env;

/// Where each volume's files are on this machine, by volume name.
pub(super) type Volumes = BTreeMap<String, PathBuf>;

pub(super) async fn provide_volumes(
    env: &Env,
    pod: &Value,
    spec: &Value,
    dir: &Path,
) -> Result<Volumes> {
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
pub(super) fn write_downward(pod: &Value, dir: &Path, downward: &Value) -> Result<()> {
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

pub(super) fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(super) fn write_items(
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

pub(super) async fn secret_data(
    env: &Env,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
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

pub(super) async fn config_map_data(
    env: &Env,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
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
pub(super) async fn wait_for<T, F, Fut>(mut get: F, what: &str) -> Result<T>
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
pub(super) async fn request_token(
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
pub(super) fn downward_field(pod: &Value, field: &str) -> Result<Vec<u8>> {
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
