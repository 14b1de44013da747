//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager, started by `e2e/kube/cluster.sh up` (binaries
//! from `e2e/kube/install.sh`, cached under `~/.cache/trellis`) and stopped
//! by `down` when dropped. `kubectl` is the real one.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::harness::{tool, TempDir};

/// A running control plane; stopped on drop.
#[derive(Debug)]
pub struct KubeCluster {
    /// The admin's kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    dir: TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/cluster.sh")
}

impl KubeCluster {
    /// Starts one; `watch_cache: false` makes watches see real 410s.
    pub fn up(watch_cache: bool) -> Result<Self> {
        Self::up_with(watch_cache, None)
    }

    /// As [`up`](Self::up), the apiserver compacting etcd every
    /// `compaction` (a duration such as `2s`) instead of every 5 minutes.
    pub fn up_with(watch_cache: bool, compaction: Option<&str>) -> Result<Self> {
        tool("kube-apiserver").context("bash e2e/kube/install.sh builds it")?;
        let dir = TempDir::new("kube")?;
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &dir.path().display().to_string()])
            .env("WATCH_CACHE", watch_cache.to_string())
            .env("COMPACTION_INTERVAL", compaction.unwrap_or("5m"))
            .output()
            .context("running e2e/kube/cluster.sh")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "e2e/kube/cluster.sh up failed:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        Ok(Self { kubeconfig, dir })
    }

    /// `kubectl --kubeconfig <admin> args...`: (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(tool("kubectl")?)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// As [`kubectl`](Self::kubectl), failing unless it succeeds; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let (ok, out, err) = self.kubectl(args)?;
        if !ok {
            bail!("kubectl {}: {err}{out}", args.join(" "));
        }
        Ok(out)
    }

    /// Where the cluster's logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl apply -f crds/manifests/` (the CRDs, the control plane's
    /// namespace, service account and RBAC), waiting until every CRD is
    /// established.
    pub fn install_crds(&self) -> Result<()> {
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests");
        self.kubectl_ok(&["apply", "-f", &manifests.display().to_string()])?;
        self.kubectl_ok(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout",
            "60s",
            "crd/virtualservices.networking.trellis.io",
            "crd/destinationrules.networking.trellis.io",
            "crd/serviceentries.networking.trellis.io",
            "crd/peerauthentications.security.trellis.io",
            "crd/authorizationpolicies.security.trellis.io",
        ])?;
        Ok(())
    }

    /// `kubectl apply` of `yaml` (written to a file named `name` first).
    pub fn apply(&self, name: &str, yaml: &str) -> Result<String> {
        let file = self.dir.path().join(name);
        std::fs::write(&file, yaml)?;
        self.kubectl_ok(&["apply", "-f", &file.display().to_string()])
    }

    /// Sets a Pod's status as a kubelet would: Running at `ip`, Ready or not.
    pub fn set_pod_status(&self, namespace: &str, pod: &str, ip: &str, ready: bool) -> Result<()> {
        let ready = if ready { "True" } else { "False" };
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
        );
        self.kubectl_ok(&[
            "patch",
            "pod",
            pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])?;
        Ok(())
    }

    /// A kubeconfig that authenticates as service account `namespace/name`
    /// (a TokenRequest token, valid for two hours), not as the admin.
    pub fn kubeconfig_of(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration", "2h"])?;
        let admin = std::fs::read_to_string(&self.kubeconfig)?;
        let mut out = String::new();
        for line in admin.lines() {
            match line.trim_start().strip_prefix("token:") {
                Some(_) => out.push_str(&format!("    token: {}\n", token.trim())),
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        let path = self
            .dir
            .path()
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, out)?;
        Ok(path)
    }

    /// Stops the apiserver and starts it again on the same port and etcd.
    pub fn restart_apiserver(&self) -> Result<()> {
        let out = Command::new("bash")
            .arg(script())
            .args(["restart-apiserver", &self.dir.path().display().to_string()])
            .output()
            .context("running e2e/kube/cluster.sh")?;
        if !out.status.success() {
            bail!(
                "e2e/kube/cluster.sh restart-apiserver failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.dir.path().display().to_string()])
            .status();
    }
}
