//! Proxies connected to a [`ControlPlane`](super::ControlPlane): a
//! `trellis-proxy` started against its replicas, restarted, probed for
//! readiness and routes, and one GET through it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::ControlPlane;
use crate::harness::{bin, free_addr, wait_until, Process, TempDir};

/// A `trellis-proxy` in connected mode.
#[derive(Debug)]
pub struct ConnectedProxy {
    pub id: String,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    pub process: Process,
    args: Vec<String>,
    dir: TempDir,
}

impl ConnectedProxy {
    /// Starts proxy `id` streaming from `urls` (comma-separated), with a
    /// state dir; does not wait for a config.
    pub fn spawn(id: &str, cp: &ControlPlane) -> Result<Self> {
        Self::spawn_with(id, cp, &[])
    }

    /// As [`spawn`](Self::spawn), with `extra` flags.
    pub fn spawn_with(id: &str, cp: &ControlPlane, extra: &[String]) -> Result<Self> {
        Self::spawn_at(id, &cp.xds_urls(), &cp.trust_bundle, extra)
    }

    /// Proxy `id` streaming from `urls` (in that order), trusting `trust_bundle`.
    pub fn spawn_at(id: &str, urls: &str, trust_bundle: &Path, extra: &[String]) -> Result<Self> {
        let dir = TempDir::new("connected-proxy")?;
        let (outbound, admin) = (free_addr(), free_addr());
        let state_dir = dir.path().join("state");
        let mut args = vec![
            "--control-plane".to_string(),
            urls.to_string(),
            "--trust-bundle".into(),
            trust_bundle.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--node-id".into(),
            id.to_string(),
            "--outbound-addr".into(),
            outbound.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn(
            &format!("proxy {id}"),
            &bin("trellis-proxy")?,
            &args,
            dir.path().join("proxy.1.log"),
        )?;
        Ok(Self {
            id: id.to_string(),
            outbound,
            admin,
            state_dir,
            process,
            args,
            dir,
        })
    }

    /// Kills the process and starts it again with the same flags and state.
    pub fn restart(&mut self, attempt: usize) -> Result<()> {
        self.process.kill();
        self.process = Process::spawn(
            &format!("proxy {} (restarted)", self.id),
            &bin("trellis-proxy")?,
            &self.args,
            self.dir.path().join(format!("proxy.{attempt}.log")),
        )?;
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        crate::client::blocking_get(self.admin, "/ready").is_ok_and(|(s, _)| s == 200)
    }

    /// The proxy's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        Ok(crate::client::blocking_get(self.admin, "/metrics")?.1)
    }

    /// Waits until the proxy's config routes `host` (a name it answers
    /// to): ready alone may mean an earlier config (the root CA's).
    pub fn wait_host(&self, host: &str, timeout: Duration) -> Result<()> {
        let knows = || {
            crate::client::blocking_get(self.admin, "/config_dump").is_ok_and(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|dump| {
                    dump["hosts"].as_array().into_iter().flatten().any(|h| {
                        h["domains"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|d| d == host)
                    })
                })
            })
        };
        if !wait_until(timeout, knows) {
            bail!(
                "proxy {} has no route for {host}:\n{}",
                self.id,
                self.process.log_text()
            );
        }
        Ok(())
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        if !wait_until(timeout, || self.is_ready()) {
            self.process.check_running()?;
            bail!("proxy {} not ready:\n{}", self.id, self.process.log_text());
        }
        Ok(())
    }

    /// `GET / Host: host` through the proxy: the `version` of the echo
    /// backend that answered, or an error naming the status.
    pub fn version_of(&self, host: &str) -> Result<String> {
        fetch_version(self.outbound, host)
    }
}

/// One blocking HTTP/1.1 GET through a proxy; the echo backend's `version`.
pub fn fetch_version(proxy: SocketAddr, host: &str) -> Result<String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        let head = text.lines().take(8).collect::<Vec<_>>().join(" | ");
        bail!("status {status} after {:?}: {head}", started.elapsed());
    }
    let body = text.split("\r\n\r\n").nth(1).context("no body")?;
    let json: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("echo body is not JSON: {body:?}"))?;
    Ok(json["version"].as_str().unwrap_or_default().to_string())
}
