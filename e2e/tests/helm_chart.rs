//! The Helm chart `charts/trellis`, as Helm 3 and Helm 4 see it:
//! `helm lint --strict` is clean, and what `helm template` renders for the
//! default values and the usual variations passes `kubernetes-validate
//! --strict` and says what a user relies on (3 replicas in one group, a
//! quorum-keeping PodDisruptionBudget, the webhook, least privilege).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use trellis_e2e::harness::tool;
use trellis_e2e::kube_mesh::repo;

fn helm(helm: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool(helm)?)
        .args(args)
        .output()
        .with_context(|| format!("running {helm}"))?;
    ensure!(
        out.status.success(),
        "{helm} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn validate(manifests: &str) -> Result<()> {
    let mut child = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifests.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The rendered documents of `kind`.
fn documents<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_chart_lints_and_renders_valid_manifests() -> Result<()> {
    let chart = repo("charts/trellis").display().to_string();
    for h in ["helm", "helm4"] {
        let lint = helm(h, &["lint", "--strict", &chart])?;
        ensure!(lint.contains("0 chart(s) failed"), "{h} lint: {lint}");
        for set in [
            vec![],
            vec!["--set", "injection.enabled=false"],
            vec![
                "--set",
                "ca.existingSecret=mesh-root",
                "--set",
                "replicas=5",
            ],
            vec!["--kube-version", "1.20.0"],
        ] {
            let mut args = vec!["template", "trellis", &chart, "-n", "trellis-system"];
            args.extend(set.iter().copied());
            let rendered = helm(h, &args)?;
            if !set.contains(&"1.20.0") {
                // (kubernetes-validate knows current APIs; 1.20's
                // policy/v1beta1 is checked by the apiserver in the e2e.)
                validate(&rendered)?;
            }
            let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
                .map(serde::Deserialize::deserialize)
                .collect::<std::result::Result<_, _>>()?;
            let replicas = if set.contains(&"replicas=5") { 5 } else { 3 };
            let sts = documents(&docs, "StatefulSet");
            ensure!(sts.len() == 1, "{set:?}: one StatefulSet");
            ensure!(sts[0]["spec"]["replicas"] == replicas, "{set:?}: replicas");
            let args = serde_yaml::to_string(
                &sts[0]["spec"]["template"]["spec"]["containers"][0]["args"],
            )?;
            let peers = args
                .lines()
                .find(|l| l.contains("--peers="))
                .context("--peers")?;
            ensure!(
                peers.matches(".svc:15011").count() == replicas,
                "{set:?}: {peers}"
            );
            let pdb = documents(&docs, "PodDisruptionBudget");
            ensure!(
                pdb.len() == 1 && pdb[0]["spec"]["minAvailable"] == (replicas - 1) as u64,
                "{set:?}: PodDisruptionBudget"
            );
            let injection = !set.contains(&"injection.enabled=false");
            ensure!(
                documents(&docs, "MutatingWebhookConfiguration").len() == usize::from(injection),
                "{set:?}: webhook"
            );
            let secrets: Vec<_> = documents(&docs, "Secret")
                .iter()
                .filter_map(|s| s["metadata"]["name"].as_str())
                .map(String::from)
                .collect();
            let own_ca = set.contains(&"ca.existingSecret=mesh-root");
            ensure!(
                secrets.contains(&"trellis-ca".to_string()) != own_ca,
                "{set:?}: secrets {secrets:?}"
            );
            // Least privilege: nothing cluster-wide beyond what the
            // control plane uses, and no wildcard.
            let role = serde_yaml::to_string(&documents(&docs, "ClusterRole")[0]["rules"])?;
            ensure!(!role.contains('*'), "{set:?}: a wildcard in {role}");
            for verb in [
                "delete",
                "deletecollection",
                "escalate",
                "bind",
                "impersonate",
            ] {
                ensure!(!role.contains(verb), "{set:?}: {verb} in {role}");
            }
        }
    }
    Ok(())
}
