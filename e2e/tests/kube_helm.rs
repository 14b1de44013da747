//! Trellis as a Kubernetes user meets it, on a real apiserver and
//! controller-manager with the pod runner playing kubelet: `helm install`
//! brings up three control-plane pods that form one Raft group (`helm
//! test` passes); a namespace labelled for injection gets sidecars in its
//! pods through the webhook; an unmodified `curl http://reviews:9080/` from
//! productpage's network namespace is captured and split 90/10 by a
//! VirtualService applied with kubectl, over STRICT mTLS, the callers'
//! SPIFFE ids reaching the app; opt-out, idempotence and `trellisctl
//! inject` agree with the webhook; `helm upgrade` rolls the replicas one
//! at a time with traffic flowing; `helm uninstall` leaves nothing of ours.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use trellis_e2e::harness::{bin, tool, wait_until, TempDir};
use trellis_e2e::kube::KubeCluster;
use trellis_e2e::kube_mesh::repo;
use trellis_e2e::kubelet::PodRunner;

const NS: &str = "trellis-system";

fn helm(kube: &KubeCluster, args: &[&str]) -> Result<String> {
    let out = Command::new(tool("helm")?)
        .arg("--kubeconfig")
        .arg(&kube.kubeconfig)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pods of `namespace` matching `selector` that are Ready: name -> uid.
fn ready_pods(kube: &KubeCluster, namespace: &str, selector: &str) -> BTreeMap<String, String> {
    let Ok((true, out, _)) =
        kube.kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])
    else {
        return BTreeMap::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// `curl http://reviews:9080/` from productpage's netns, as its app (root).
fn curl(netns: &str) -> Result<serde_json::Value> {
    let out = Command::new(tool("ip")?)
        .args(["netns", "exec", netns, "curl", "-sS", "--max-time", "5"])
        .arg("http://reviews:9080/")
        .output()?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn helm_installs_a_mesh_that_injects_captures_and_splits() -> Result<()> {
    let kube = KubeCluster::up(true)?;
    let dir = TempDir::new("kube-helm")?;
    let runner = PodRunner::start(&kube.kubeconfig, &dir.path().join("pods"))?;
    let chart = repo("charts/trellis").display().to_string();
    let installed = helm(
        &kube,
        &[
            "install",
            "trellis",
            &chart,
            "-n",
            NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    if let Err(e) = installed {
        bail!("{e:#}\n{}\nerrors: {:?}", runner.logs(), runner.errors());
    }
    let replicas = ready_pods(&kube, NS, "app.kubernetes.io/name=trellis-control-plane");
    ensure!(replicas.len() == 3, "replicas: {replicas:?}");
    let test = helm(&kube, &["test", "trellis", "-n", NS, "--timeout", "2m"]);
    if let Err(e) = test {
        bail!(
            "{e:#}\n{}\nrunner errors: {:?}\n{}",
            runner.logs(),
            runner.errors(),
            kube.kubectl(&["get", "events,configmaps,pods", "-n", NS])?
                .1
        );
    }

    // A namespace labelled for injection; its pods get the sidecar.
    kube.kubectl_ok(&["create", "namespace", "shop"])?;
    kube.kubectl_ok(&["label", "namespace", "shop", "trellis-injection=enabled"])?;
    // The README's Kubernetes quick start, its files as they are.
    let files = dir.path();
    for example in ["bookinfo.yaml", "reviews-90-10.yaml"] {
        let path = repo("examples/kubernetes").join(example);
        kube.kubectl_ok(&["apply", "-f", &path.display().to_string()])?;
    }
    let all_up = wait_until(Duration::from_secs(90), || {
        ready_pods(&kube, "shop", "app in (productpage, reviews)").len() == 3
    });
    ensure!(
        all_up,
        "shop pods not ready:\n{}\n{:?}\nevents: {}",
        runner.logs(),
        runner.errors(),
        kube.kubectl(&["get", "events", "-n", "shop"])?.1
            + &kube
                .kubectl(&["get", "endpoints", "-n", NS, "-o", "yaml"])?
                .1
            + &kube.kubectl(&["get", "pods", "-n", NS, "-o", "yaml"])?.1
    );
    let pods = kube.kubectl_ok(&["get", "pods", "-n", "shop", "-o", "json"])?;
    let pods: serde_json::Value = serde_json::from_str(&pods)?;
    for p in pods["items"].as_array().context("items")? {
        let names = |list: &str| -> Vec<String> {
            p["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        };
        ensure!(
            names("initContainers") == ["trellis-init"],
            "{:?}",
            names("initContainers")
        );
        ensure!(
            names("containers")[0] == "trellis-proxy",
            "{:?}",
            names("containers")
        );
    }

    // An unmodified curl from productpage: captured, routed 90/10, mTLS.
    let productpage = runner
        .pods("shop", "productpage")
        .pop()
        .context("productpage runs")?;
    let mut last = String::new();
    let routed = wait_until(Duration::from_secs(30), || match curl(&productpage.netns) {
        Ok(_) => true,
        Err(e) => {
            last = format!("{e:#}");
            false
        }
    });
    ensure!(
        routed,
        "curl never answered ({last}); hosts:\n{}\n{}",
        std::fs::read_to_string(format!("/etc/netns/{}/hosts", productpage.netns))
            .unwrap_or_default(),
        runner.logs()
    );
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    let mut callers = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let reply = curl(&productpage.netns)?;
        *versions
            .entry(reply["version"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        if let Some(xfcc) = reply["headers"]["x-forwarded-client-cert"].as_str() {
            callers.insert(xfcc.to_string());
        }
    }
    let v2 = versions.get("v2").copied().unwrap_or(0);
    ensure!((8..=40).contains(&v2), "90/10 over 200: {versions:?}");
    ensure!(
        callers
            .iter()
            .all(|c| c.contains("spiffe://cluster.local/ns/shop/sa/productpage"))
            && !callers.is_empty(),
        "the app saw callers {callers:?}"
    );
    let applied = wait_until(Duration::from_secs(20), || {
        kube.kubectl_ok(&["get", "vs", "reviews", "-n", "shop"])
            .is_ok_and(|t| t.contains("3/3"))
    });
    ensure!(
        applied,
        "{}",
        kube.kubectl_ok(&["get", "vs", "reviews", "-n", "shop"])?
    );

    // Opt-out, idempotence, and the webhook equal to `trellisctl inject`.
    let bare = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: shop, labels: {app: plain}}\nspec:\n  containers: [{name: plain, image: ghcr.io/trellis-mesh/trellis-echo:0.1.0}]\n";
    let bare_file = write(files, "bare.yaml", bare)?;
    let by_webhook =
        kube.kubectl_ok(&["create", "--dry-run=server", "-o", "json", "-f", &bare_file])?;
    let injected = Command::new(bin("trellisctl")?)
        .args(["inject", "--kubernetes-version", "1.20", "-f", &bare_file])
        .args(["--inject-control-plane", &control_plane_addrs()])
        .output()?;
    ensure!(injected.status.success(), "{injected:?}");
    let injected_file = write(
        files,
        "injected.yaml",
        &String::from_utf8_lossy(&injected.stdout),
    )?;
    let by_cli = kube.kubectl_ok(&[
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        &injected_file,
    ])?;
    // (Volumes compared by name: the apiserver's service-account admission
    // adds its token volume before the webhook runs, after a file's.)
    let spec = |json: &str| -> Result<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(json)?;
        if let Some(volumes) = v["spec"]["volumes"].as_array_mut() {
            volumes.sort_by_key(|vol| vol["name"].as_str().unwrap_or_default().to_string());
        }
        Ok(serde_json::json!({
            "spec": v["spec"],
            "annotations": v["metadata"]["annotations"],
            "labels": v["metadata"]["labels"],
        }))
    };
    ensure!(
        spec(&by_webhook)? == spec(&by_cli)?,
        "webhook:\n{by_webhook}\ntrellisctl inject (then the webhook, which left it alone):\n{by_cli}"
    );
    let opted_out = bare.replace(
        "labels: {app: plain}",
        "labels: {app: plain}, annotations: {sidecar.trellis.io/inject: \"false\"}",
    );
    let out = kube.kubectl_ok(&[
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        &write(files, "optout.yaml", &opted_out)?,
    ])?;
    ensure!(
        !out.contains("trellis-proxy"),
        "opted out, yet injected: {out}"
    );

    // `helm upgrade` with a changed value rolls the replicas one at a time,
    // never below the PodDisruptionBudget, while traffic flows.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let netns = productpage.netns.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if curl(&netns).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let lowest = Arc::new(AtomicUsize::new(3));
    let watcher = {
        let (stop, lowest) = (stop.clone(), lowest.clone());
        let kubeconfig = kube.kubeconfig.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(out) = Command::new(tool("kubectl").expect("kubectl"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "get",
                        "pods",
                        "-n",
                        NS,
                        "-l",
                        "app.kubernetes.io/name=trellis-control-plane",
                        "-o",
                        "json",
                    ])
                    .output()
                {
                    let list: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    let ready = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| {
                            p["metadata"]["deletionTimestamp"].is_null()
                                && p["status"]["conditions"].as_array().is_some_and(|c| {
                                    c.iter()
                                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                                })
                        })
                        .count();
                    if out.status.success() {
                        lowest.fetch_min(ready, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let upgraded = helm(
        &kube,
        &[
            "upgrade",
            "trellis",
            &chart,
            "-n",
            NS,
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "4m",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    let _ = watcher.join();
    if let Err(e) = upgraded {
        bail!("{e:#}\n{}", runner.logs());
    }
    let after = ready_pods(&kube, NS, "app.kubernetes.io/name=trellis-control-plane");
    ensure!(
        after.len() == 3
            && after
                .values()
                .all(|uid| !replicas.values().any(|old| old == uid)),
        "every replica replaced: before {replicas:?}, after {after:?}"
    );
    eprintln!(
        "helm upgrade: {} requests during the roll, {} failed; fewest ready replicas {}",
        sent.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        lowest.load(Ordering::Relaxed)
    );
    ensure!(
        failures.load(Ordering::Relaxed) == 0,
        "requests failed during the roll"
    );
    ensure!(
        lowest.load(Ordering::Relaxed) >= 2,
        "fewer than 2 replicas ready during the roll"
    );

    // Uninstall: nothing of ours left (CRDs stay, as Helm does).
    helm(
        &kube,
        &[
            "uninstall",
            "trellis",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "2m",
        ],
    )?;
    // (The root-certificate ConfigMaps in every namespace and the data
    // claims are the control plane's, owned by the release's ClusterRole.)
    let leftovers = || -> Result<String> {
        let labelled = kube.kubectl_ok(&[
            "get",
            "statefulsets,services,pods,secrets,configmaps,serviceaccounts,poddisruptionbudgets,persistentvolumeclaims,roles,rolebindings,mutatingwebhookconfigurations,clusterroles,clusterrolebindings",
            "-A",
            "-l",
            "app.kubernetes.io/instance=trellis",
            "-o",
            "name",
        ])?;
        let root_certs = kube.kubectl_ok(&[
            "get",
            "configmaps",
            "-A",
            "--field-selector",
            "metadata.name=trellis-ca-root-cert",
            "-o",
            "name",
        ])?;
        let claims = kube.kubectl_ok(&["get", "persistentvolumeclaims", "-n", NS, "-o", "name"])?;
        Ok(format!("{labelled}{root_certs}{claims}").trim().to_string())
    };
    let gone = wait_until(Duration::from_secs(60), || {
        leftovers().is_ok_and(|l| l.is_empty())
    });
    ensure!(gone, "left behind after uninstall:\n{}", leftovers()?);
    Ok(())
}

/// The replicas' proxy ports, as the chart tells the webhook.
fn control_plane_addrs() -> String {
    (0..3)
        .map(|i| format!("trellis-control-plane-{i}.trellis-control-plane-peers.{NS}.svc:15010"))
        .collect::<Vec<_>>()
        .join(",")
}
