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
        tool("kube-apiserver").context("bash e2e/kube/install.sh builds it")?;
        let dir = TempDir::new("kube")?;
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &dir.path().display().to_string()])
            .env("WATCH_CACHE", watch_cache.to_string())
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
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.dir.path().display().to_string()])
            .status();
    }
}
