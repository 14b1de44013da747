//! A control plane of real `trellis-control-plane` replicas on loopback,
//! secured as a user runs it (a root and operator tokens from `trellisctl
//! pki init`, TLS on every port), proxies connected to it, and `trellisctl`
//! against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::{bin, free_addr, sum_samples, wait_until, Process, TempDir};

mod connected;

pub use connected::{fetch_version, ConnectedProxy};

/// One replica: its addresses, data directory and (while running) process.
#[derive(Debug)]
pub struct Replica {
    pub id: u64,
    pub raft: SocketAddr,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub data: PathBuf,
    pub process: Option<Process>,
    starts: usize,
    /// The network namespace it runs in, when not on the host's loopback.
    pub pod: Option<crate::netns::Pod>,
}

/// A Raft group of replicas sharing one watched directory.
#[derive(Debug)]
pub struct ControlPlane {
    pub replicas: Vec<Replica>,
    /// The `--watch-dir` of every replica.
    pub watch_dir: PathBuf,
    extra: Vec<String>,
    /// Whether replicas are started with `--peers` (else they wait for
    /// `trellisctl cluster init`).
    peers: bool,
    /// Where the proxy stream listens, when not only on loopback (proxies
    /// in network namespaces reach the replicas through a bridge).
    pub xds_bind: Option<std::net::IpAddr>,
    /// The mesh root (`--trust-bundle` of proxies and `trellisctl`).
    pub trust_bundle: PathBuf,
    /// `--ca-cert`/`--ca-key` the harness passes (none when the test gives its own).
    ca_flags: Vec<String>,
    /// `--operator-tokens` of the replicas, and the tokens that may write / only read.
    pub operator_tokens: PathBuf,
    pub admin_token: PathBuf,
    pub reader_token: PathBuf,
    /// TLS to the replicas' admin ports.
    admin_tls: std::sync::Arc<rustls::ClientConfig>,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts `n` replicas formed by `--peers` and waits for a leader.
    /// `extra` flags go to every replica.
    pub fn start(n: u64, extra: &[&str]) -> Result<Self> {
        let cp = Self::spawn_all(n, extra, true)?;
        if cp.wait_leader(Duration::from_secs(10)).is_none() {
            bail!("no leader within 10 s:\n{}", cp.logs());
        }
        Ok(cp)
    }

    /// Starts `n` replicas whose proxy stream listens on `ip` (the port of
    /// `Replica::xds`), for proxies in network namespaces.
    pub fn start_reachable(n: u64, ip: std::net::IpAddr, extra: &[&str]) -> Result<Self> {
        let cp = Self::spawn_all_with(n, extra, true, Some(ip))?;
        if cp.wait_leader(Duration::from_secs(10)).is_none() {
            bail!("no leader within 10 s:\n{}", cp.logs());
        }
        Ok(cp)
    }

    /// Starts `n` replicas that know no peers: no group until
    /// `trellisctl cluster init`.
    pub fn start_unformed(n: u64) -> Result<Self> {
        Self::spawn_all(n, &[], false)
    }

    fn spawn_all(n: u64, extra: &[&str], peers: bool) -> Result<Self> {
        Self::spawn_all_with(n, extra, peers, None)
    }

    fn spawn_all_with(
        n: u64,
        extra: &[&str],
        peers: bool,
        xds_bind: Option<std::net::IpAddr>,
    ) -> Result<Self> {
        Self::spawn_replicas(n, extra, peers, xds_bind, Vec::new())
    }

    /// Starts `n` replicas, each in a pod of `net` of its own (so one can
    /// be cut off from the others: [`partition`](Self::partition)), formed
    /// by `--peers`, and waits for a leader.
    pub fn start_in_pods(net: &mut crate::netns::Network, n: u64, extra: &[&str]) -> Result<Self> {
        let pods = (1..=n)
            .map(|id| net.pod(&format!("cp{id}"), 10 + id as u8, ""))
            .collect::<Result<Vec<_>>>()?;
        let cp = Self::spawn_replicas(n, extra, true, None, pods)?;
        if cp.wait_leader(Duration::from_secs(20)).is_none() {
            bail!("no leader within 20 s:\n{}", cp.logs());
        }
        Ok(cp)
    }

    /// Cuts replica `id`'s pod off the network (every packet in and out
    /// dropped), or heals it.
    pub fn partition(&self, id: u64, cut: bool) -> Result<()> {
        let pod = self
            .replica(id)
            .pod
            .as_ref()
            .context("replica not in a pod")?;
        let op = if cut { "-I" } else { "-D" };
        pod.exec("iptables", &[op, "INPUT", "-i", "eth0", "-j", "DROP"])?;
        pod.exec("iptables", &[op, "OUTPUT", "-o", "eth0", "-j", "DROP"])?;
        Ok(())
    }

    fn spawn_replicas(
        n: u64,
        extra: &[&str],
        peers: bool,
        xds_bind: Option<std::net::IpAddr>,
        pods: Vec<crate::netns::Pod>,
    ) -> Result<Self> {
        let dir = TempDir::new("control-plane")?;
        let watch_dir = dir.path().join("rules");
        std::fs::create_dir_all(&watch_dir)?;
        let pki = dir.path().join("pki");
        pki_init(&pki)?;
        // A test that brings its own root (`--ca-cert`) is trusted by it.
        let own_ca = extra
            .iter()
            .position(|f| *f == "--ca-cert")
            .and_then(|i| extra.get(i + 1));
        let (trust_bundle, ca_flags) = match own_ca {
            Some(cert) => (PathBuf::from(cert), Vec::new()),
            None => (
                pki.join("ca.pem"),
                vec![
                    "--ca-cert".to_string(),
                    pki.join("ca.pem").display().to_string(),
                    "--ca-key".into(),
                    pki.join("ca-key.pem").display().to_string(),
                ],
            ),
        };
        let roots =
            trellis_api::tls::channel::load_bundle(&trust_bundle).map_err(anyhow::Error::msg)?;
        let admin_tls = trellis_api::tls::channel::client_config_alpn(&roots, None, &[b"http/1.1"])
            .map_err(anyhow::Error::msg)?;
        let replicas = (1..=n)
            .map(|id| {
                let pod = pods.get((id - 1) as usize).cloned();
                let at = |port: u16| match &pod {
                    Some(p) => p.ip.parse().map(|ip| SocketAddr::new(ip, port)),
                    None => Ok(free_addr()),
                };
                Ok(Replica {
                    id,
                    raft: at(15011)?,
                    xds: at(15010)?,
                    admin: at(15014)?,
                    data: dir.path().join(format!("data-{id}")),
                    process: None,
                    starts: 0,
                    pod,
                })
            })
            .collect::<Result<Vec<_>, std::net::AddrParseError>>()?;
        let mut cp = Self {
            replicas,
            watch_dir,
            extra: extra.iter().map(ToString::to_string).collect(),
            peers,
            xds_bind,
            trust_bundle,
            ca_flags,
            operator_tokens: pki.join("operator-tokens"),
            admin_token: pki.join("admin.token"),
            reader_token: pki.join("reader.token"),
            admin_tls,
            dir,
        };
        for id in 1..=n {
            cp.spawn(id)?;
        }
        Ok(cp)
    }

    fn replica(&self, id: u64) -> &Replica {
        &self.replicas[(id - 1) as usize]
    }

    /// Starts replica `id` (again), on its old addresses and data.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let peers: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.id, r.raft))
            .collect();
        let peers = peers.join(",");
        let watch = self.watch_dir.display().to_string();
        let log_dir = self.dir.path().to_path_buf();
        let mut extra = self.ca_flags.clone();
        extra.extend([
            "--operator-tokens".to_string(),
            self.operator_tokens.display().to_string(),
        ]);
        extra.extend(self.extra.iter().cloned());
        let with_peers = self.peers;
        let xds_bind = self.xds_bind;
        let r = &mut self.replicas[(id - 1) as usize];
        r.starts += 1;
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--data-dir".into(),
            r.data.display().to_string(),
            "--raft-addr".into(),
            r.raft.to_string(),
            "--xds-addr".into(),
            xds_bind
                .map_or(r.xds, |ip| SocketAddr::new(ip, r.xds.port()))
                .to_string(),
            "--admin-addr".into(),
            r.admin.to_string(),
            "--watch-dir".into(),
            watch,
        ];
        if with_peers {
            args.extend(["--peers".to_string(), peers]);
        }
        args.extend(extra);
        let log = log_dir.join(format!("replica-{id}.{}.log", r.starts));
        let program = bin("trellis-control-plane")?;
        let process = match &r.pod {
            // `ip netns exec` execs the replica: the process is the replica.
            Some(pod) => {
                let mut all = vec!["netns".to_string(), "exec".into(), pod.netns.clone()];
                all.push(program.display().to_string());
                all.extend(args);
                Process::spawn(
                    &format!("replica {id}"),
                    &crate::harness::tool("ip")?,
                    &all,
                    log,
                )?
            }
            None => Process::spawn(&format!("replica {id}"), &program, &args, log)?,
        };
        r.process = Some(process);
        if !crate::harness::wait_for_port(r.admin, Duration::from_secs(10)) {
            bail!("replica {id} did not open its admin port:\n{}", self.logs());
        }
        Ok(())
    }

    /// SIGKILLs replica `id`.
    pub fn kill(&mut self, id: u64) {
        let r = &mut self.replicas[(id - 1) as usize];
        if let Some(mut p) = r.process.take() {
            p.kill();
        }
    }

    /// SIGSTOPs (`frozen`) or SIGCONTs replica `id`: alive, connections
    /// accepted by the kernel, nothing answered.
    pub fn freeze(&self, id: u64, frozen: bool) -> Result<()> {
        let process = self.replica(id).process.as_ref().context("not running")?;
        process.signal(if frozen { "STOP" } else { "CONT" })
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.replica(id).process.is_some()
    }

    /// The leader as the running replicas' admin metrics say (one that says
    /// it leads).
    pub fn leader(&self) -> Option<u64> {
        self.replicas
            .iter()
            .filter(|r| r.process.is_some())
            .find(|r| {
                self.admin_get(r.admin, "/metrics")
                    .is_ok_and(|(_, body)| sum_samples(&body, "trellis_raft_is_leader", &[]) == 1.0)
            })
            .map(|r| r.id)
    }

    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let mut leader = None;
        wait_until(timeout, || {
            leader = self.leader();
            leader.is_some()
        });
        leader
    }

    /// Every running replica's stream address, as `--control-plane` takes them.
    pub fn xds_urls(&self) -> String {
        let urls: Vec<String> = self.replicas.iter().map(|r| r.xds.to_string()).collect();
        urls.join(",")
    }

    /// `--server` for trellisctl: every replica.
    pub fn servers(&self) -> String {
        let s: Vec<String> = self.replicas.iter().map(|r| r.raft.to_string()).collect();
        s.join(",")
    }

    /// `GET path` on a replica's admin port (HTTPS): (status, body).
    pub fn admin_get(&self, admin: SocketAddr, path: &str) -> Result<(u16, String)> {
        crate::client::blocking_get_tls(admin, path, self.admin_tls.clone())
    }

    /// `trellisctl --server <replica id> args...`.
    pub fn ctl_on(&self, id: u64, args: &[&str]) -> Result<(bool, String, String)> {
        self.ctl_at(&self.replica(id).raft.to_string(), args)
    }

    /// Runs `trellisctl --server <all replicas> args...`: (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        self.ctl_at(&self.servers(), args)
    }

    /// `trellisctl --server servers args...` as the operator (the write
    /// token, this mesh's trust bundle).
    pub fn ctl_at(&self, servers: &str, args: &[&str]) -> Result<(bool, String, String)> {
        ctl_as(&self.trust_bundle, Some(&self.admin_token), servers, args)
    }

    /// `trellisctl cluster status -o json` of replica `id` alone.
    pub fn status(&self, id: u64) -> Result<serde_json::Value> {
        let r = self.replica(id);
        let (ok, out, err) = self.ctl_at(
            &r.raft.to_string(),
            &["--timeout", "1s", "cluster", "status", "-o", "json"],
        )?;
        if !ok {
            bail!("status of replica {id}: {err}");
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// `trellisctl proxy-status -o json`.
    pub fn proxy_status(&self) -> Result<serde_json::Value> {
        let (ok, out, err) = self.ctl(&["proxy-status", "-o", "json"])?;
        if !ok {
            bail!("proxy-status: {err}");
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// Writes `name` into the watched directory atomically.
    pub fn write_rules(&self, name: &str, yaml: &str) -> Result<()> {
        write_atomic(&self.watch_dir.join(name), yaml)
    }

    /// Every replica's log so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "log"));
        names.sort();
        names
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("---- {} ----\n{}\n", p.display(), tail.join("\n"))
            })
            .collect()
    }

    /// The text of every log of replica `id`.
    pub fn log_of(&self, id: u64) -> String {
        let r = self.replica(id);
        (1..=r.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("replica-{id}.{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// `trellisctl pki init --dir dir`: a root CA and operator tokens.
pub fn pki_init(dir: &Path) -> Result<()> {
    let out = Command::new(bin("trellisctl")?)
        .args(["pki", "init", "--dir"])
        .arg(dir)
        .output()
        .context("trellisctl pki init")?;
    if !out.status.success() {
        bail!(
            "trellisctl pki init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `trellisctl --server servers args...` trusting `trust_bundle`, with the
/// token in `token_file` (none: no token).
pub fn ctl_as(
    trust_bundle: &Path,
    token_file: Option<&Path>,
    servers: &str,
    args: &[&str],
) -> Result<(bool, String, String)> {
    let mut command = Command::new(bin("trellisctl")?);
    command
        .env_remove("TRELLIS_TOKEN")
        .env("TRELLIS_TRUST_BUNDLE", trust_bundle);
    match token_file {
        Some(file) => command.env("TRELLIS_TOKEN_FILE", file),
        None => command.env_remove("TRELLIS_TOKEN_FILE"),
    };
    let out = command
        .arg("--server")
        .arg(servers)
        .args(args)
        .output()
        .context("running trellisctl")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Replaces `path` atomically (write + rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `n` writes through the operator API (gRPC, one resource each), retried
/// on any replica while none can take them: for tests that need many
/// writes faster than `trellisctl` processes start.
pub fn write_many(cp: &ControlPlane, n: usize, yaml: impl Fn(usize) -> String) -> Result<()> {
    use trellis_control_plane::operator::{client, Bearer};
    let servers: Vec<String> = cp.servers().split(',').map(String::from).collect();
    let roots =
        trellis_api::tls::channel::load_bundle(&cp.trust_bundle).map_err(anyhow::Error::msg)?;
    let tls = trellis_api::tls::channel::client_config(&roots, None).map_err(anyhow::Error::msg)?;
    let token = std::fs::read_to_string(&cp.admin_token)?;
    let bearer = Bearer::new(Some(&token)).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let clients: Vec<_> = servers
            .iter()
            .map(|s| {
                trellis_control_plane::raft::network::channel(s, tls.clone())
                    .map(|c| client(c, bearer.clone()))
            })
            .collect::<std::result::Result<_, _>>()?;
        for i in 0..n {
            let rules = trellis_crds::load_str("generated.yaml", &yaml(i))
                .map_err(|e| anyhow::anyhow!("{:?}", e.to_lines()))?;
            let changes = trellis_control_plane::state::resources::documents(&rules)
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|(key, document)| trellis_api::Change {
                    resource: Some(trellis_api::ResourceRef {
                        kind: key.kind,
                        namespace: key.namespace,
                        name: key.name,
                    }),
                    document_json: document.to_string(),
                })
                .collect();
            let request = trellis_api::WriteRequest {
                changes,
                source: "cli".into(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut attempt = 0;
            loop {
                let mut client = clients[attempt % clients.len()].clone();
                attempt += 1;
                match client.write(request.clone()).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "write retried");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => bail!("write {i}: {}", e.message()),
                }
            }
        }
        Ok(())
    })
}
