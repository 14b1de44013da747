//! `trellisctl demo`: a whole mesh on this machine. Three control-plane
//! replicas (one Raft group), `reviews` v1 and v2 (echo backends) each
//! behind its sidecar's inbound listener, and a client sidecar; applies `examples/demo/`, sends
//! traffic through the client sidecar and prints a live table while it
//! walks through a weight change, a leader kill and a full cut-over.
//! Ctrl-C (or the end of `--once`) stops every process it started.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_api as api;

use crate::apply::{changes, load};
use crate::pki::Secrets;
use crate::remote::Server;

/// `examples/demo/`, built into the binary so the demo runs wherever it is installed.
const DEMO_RULES: &[(&str, &str)] = &[
    (
        "examples/demo/reviews-service.yaml",
        include_str!("../../../../examples/demo/reviews-service.yaml"),
    ),
    (
        "examples/demo/reviews-routes.yaml",
        include_str!("../../../../examples/demo/reviews-routes.yaml"),
    ),
];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Rules applied at the start (file or directory); the built-in
    /// `examples/demo/` when absent.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Seconds each step of the walkthrough runs.
    #[arg(long, default_value_t = 6)]
    step_seconds: u64,
    /// Stop after the walkthrough instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// The backends' ports, and their sidecars' inbound ports (which
/// `examples/demo/` names as the endpoints).
const V1_PORT: u16 = 19181;
const V2_PORT: u16 = 19182;
const V1_INBOUND: u16 = 19191;
const V2_INBOUND: u16 = 19192;

/// A child process, killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn built_in_rules() -> Result<trellis_crds::RuleSet, ExitCode> {
    let mut rules = trellis_crds::RuleSet::default();
    for (name, text) in DEMO_RULES {
        let loaded = trellis_crds::load_str(name, text).map_err(|errors| {
            eprintln!("{errors}");
            ExitCode::FAILURE
        })?;
        rules.extend(loaded);
    }
    Ok(rules)
}

/// Where the demo runs from: the binaries beside `trellisctl`, a scratch dir.
struct Env {
    bin_dir: PathBuf,
    dir: PathBuf,
    /// The root CA and operator tokens the replicas start from.
    secrets: Secrets,
}

impl Env {
    /// A client of the replicas at `servers`, as the operator.
    fn server(&self, servers: Vec<String>, timeout: Duration) -> Server {
        Server::new(
            servers,
            timeout,
            self.secrets.ca_cert.clone(),
            self.secrets.admin_token.clone(),
        )
    }
}

impl Env {
    fn spawn(&self, bin: &str, log: &str, args: &[String]) -> Result<Proc> {
        let program = self.bin_dir.join(bin);
        let out = std::fs::File::create(self.dir.join(log))?;
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc { child })
    }
}

struct Replica {
    id: u64,
    raft: SocketAddr,
    xds: SocketAddr,
    admin: SocketAddr,
    process: Option<Proc>,
}

struct Demo {
    env: Env,
    replicas: Vec<Replica>,
    server: Server,
    starts: usize,
}

impl Demo {
    fn start_replica(&mut self, index: usize) -> Result<()> {
        let peers: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.id, r.raft))
            .collect();
        self.starts += 1;
        let r = &self.replicas[index];
        let args = vec![
            "--node-id".to_string(),
            r.id.to_string(),
            "--data-dir".into(),
            self.env
                .dir
                .join(format!("data-{}", r.id))
                .display()
                .to_string(),
            "--raft-addr".into(),
            r.raft.to_string(),
            "--xds-addr".into(),
            r.xds.to_string(),
            "--admin-addr".into(),
            r.admin.to_string(),
            "--peers".into(),
            peers.join(","),
            "--ca-cert".into(),
            self.env.secrets.ca_cert.display().to_string(),
            "--ca-key".into(),
            self.env.secrets.ca_key.display().to_string(),
            "--operator-tokens".into(),
            self.env.secrets.operator_tokens.display().to_string(),
        ];
        let log = format!("replica-{}.{}.log", r.id, self.starts);
        let process = self.env.spawn("trellis-control-plane", &log, &args)?;
        self.replicas[index].process = Some(process);
        Ok(())
    }

    /// The leader and the config version, as the running replicas say.
    async fn leader(&self) -> Option<(u64, u64)> {
        for r in self.replicas.iter().filter(|r| r.process.is_some()) {
            let one = self
                .env
                .server(vec![r.raft.to_string()], Duration::from_millis(500));
            let status = one
                .call(|mut c| async move {
                    let mut request = tonic::Request::new(api::StatusRequest {});
                    request.set_timeout(Duration::from_millis(500));
                    c.status(request).await
                })
                .await;
            if let Ok(s) = status {
                if s.role == "Leader" {
                    return Some((s.node_id, s.config_version));
                }
            }
        }
        None
    }

    async fn write(&self, changes: Vec<api::Change>) -> Result<u64> {
        let request = api::WriteRequest {
            changes,
            source: "cli".into(),
        };
        let reply = self
            .server
            .call(|mut c| {
                let r = request.clone();
                async move { c.write(r).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(reply.index)
    }
}

/// Requests of one table row.
#[derive(Default)]
struct Window {
    v1: u64,
    v2: u64,
    errors: u64,
}

/// Whether a sidecar's admin `/ready` answers 200.
async fn ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let request = b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let mut reply = Vec::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_end(&mut reply).await.is_ok()
        && reply.starts_with(b"HTTP/1.1 200")
}

/// One `GET /` with `Host: reviews` through the client sidecar.
async fn request(proxy: SocketAddr) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).await?;
    let text = String::from_utf8_lossy(&text);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("{}", text.lines().next().unwrap_or("no response"));
    }
    Ok(if text.contains("\"version\":\"v2\"") {
        "v2".into()
    } else {
        "v1".into()
    })
}

pub async fn run(args: &DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: &DemoArgs) -> Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("trellisctl lives in a directory")?
        .to_path_buf();
    for bin in ["trellis-control-plane", "trellis-proxy", "trellis-echo"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} is missing beside trellisctl; build everything first: cargo build --release",
                bin_dir.join(bin).display()
            );
        }
    }
    let (rules, rules_name) = match &args.rules {
        Some(path) => (load(std::slice::from_ref(path)), path.display().to_string()),
        None => (built_in_rules(), "examples/demo/ (built in)".to_string()),
    };
    let rules = rules
        .and_then(|r| changes(&r, true))
        .map_err(|_| anyhow::anyhow!("{rules_name} does not load"))?;
    let dir = std::env::temp_dir().join(format!("trellis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secrets =
        crate::pki::init(&dir.join("pki"), "cluster.local").map_err(anyhow::Error::msg)?;
    let env = Env {
        bin_dir,
        dir,
        secrets,
    };

    out!("Trellis demo: 3 control-plane replicas, reviews v1/v2 with sidecars, a client sidecar");
    out!("  logs and data in {}", env.dir.display());
    let mut _backends = Vec::new();
    for port in [V1_INBOUND, V2_INBOUND] {
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} (a reviews sidecar) is taken"))?;
    }
    for (version, port) in [("v1", V1_PORT), ("v2", V2_PORT)] {
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} (reviews {version}) is taken"))?;
        let args = [
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--name".into(),
            "reviews".into(),
            "--version".into(),
            version.into(),
        ];
        _backends.push(env.spawn("trellis-echo", &format!("reviews-{version}.log"), &args)?);
    }
    let mut replicas = Vec::new();
    for id in 1..=3u64 {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        replicas.push(Replica {
            id,
            raft: addr(free_port()?),
            xds: addr(free_port()?),
            admin: addr(free_port()?),
            process: None,
        });
    }
    let server = env.server(
        replicas.iter().map(|r| r.raft.to_string()).collect(),
        Duration::from_secs(10),
    );
    let mut demo = Demo {
        env,
        replicas,
        server,
        starts: 0,
    };
    for i in 0..3 {
        demo.start_replica(i)?;
    }
    let version = demo.write(rules.clone()).await?;
    let (leader, _) = demo.leader().await.context("no leader")?;
    out!(
        "  replicas  {} (leader: node {leader})",
        demo.replicas
            .iter()
            .map(|r| format!("node {} raft {} xds {}", r.id, r.raft, r.xds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out!("  applied   {rules_name} at config version {version}");

    let urls: Vec<String> = demo.replicas.iter().map(|r| r.xds.to_string()).collect();
    let client_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let client_admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut _sidecars = Vec::new();
    for (name, labels, order, inbound) in [
        ("client", "app=client", [0, 1, 2], None),
        (
            "reviews-v1",
            "app=reviews,version=v1",
            [1, 2, 0],
            Some((V1_INBOUND, V1_PORT)),
        ),
        (
            "reviews-v2",
            "app=reviews,version=v2",
            [2, 0, 1],
            Some((V2_INBOUND, V2_PORT)),
        ),
    ] {
        let outbound = if name == "client" {
            client_addr
        } else {
            SocketAddr::from(([127, 0, 0, 1], free_port()?))
        };
        let mut args = vec![
            "--control-plane".to_string(),
            order.map(|i| urls[i].as_str()).join(","),
            "--trust-bundle".into(),
            demo.env.secrets.ca_cert.display().to_string(),
            "--node-id".into(),
            name.into(),
            "--service".into(),
            name.split('-').next().unwrap_or(name).into(),
            "--labels".into(),
            labels.into(),
            "--state-dir".into(),
            demo.env
                .dir
                .join(format!("state-{name}"))
                .display()
                .to_string(),
            "--outbound-addr".into(),
            outbound.to_string(),
            "--admin-addr".into(),
            if name == "client" {
                client_admin.to_string()
            } else {
                format!("127.0.0.1:{}", free_port()?)
            },
        ];
        if let Some((inbound, app)) = inbound {
            args.extend([
                "--inbound-addr".to_string(),
                format!("127.0.0.1:{inbound}"),
                "--inbound-forward".into(),
                format!("127.0.0.1:{app}"),
            ]);
        }
        _sidecars.push(
            demo.env
                .spawn("trellis-proxy", &format!("{name}.log"), &args)?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready(client_admin).await {
        if Instant::now() > deadline {
            bail!(
                "the client sidecar got no config within 15 s (logs in {})",
                demo.env.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out!("  path      client -> client sidecar {client_addr} -> reviews sidecar inbound :{V1_INBOUND}/:{V2_INBOUND} -> reviews v1/v2 :{V1_PORT}/:{V2_PORT}");
    out!("  try       curl -H 'Host: reviews' http://{client_addr}/");
    out!();

    let window = Arc::new(Mutex::new(Window::default()));
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..4 {
        let (window, stop) = (window.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = request(client_addr).await;
                if let Ok(mut w) = window.lock() {
                    match result.as_deref() {
                        Ok("v2") => w.v2 += 1,
                        Ok(_) => w.v1 += 1,
                        Err(_) => w.errors += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    let step = Duration::from_secs(args.step_seconds);
    let weights = |v1: u64, v2: u64| -> Vec<api::Change> {
        rules
            .iter()
            .cloned()
            .map(|mut c| {
                if c.resource
                    .as_ref()
                    .is_some_and(|r| r.kind == "VirtualService")
                {
                    if let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&c.document_json)
                    {
                        doc["spec"]["http"][0]["route"][0]["weight"] = v1.into();
                        doc["spec"]["http"][0]["route"][1]["weight"] = v2.into();
                        c.document_json = doc.to_string();
                    }
                }
                c
            })
            .collect()
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let started = Instant::now();
    out!(
        "  {:>5}  {:>7}  {:>7}  {:>8}  {:>7}  {:>6}  {:>7}",
        "time",
        "v1",
        "v2",
        "success",
        "version",
        "leader",
        "proxies"
    );
    let mut steps: Vec<&str> = vec!["weights", "kill", "restart", "cutover"];
    let mut killed: Option<usize> = None;
    let mut next_step = Instant::now() + step;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => { out!("\nCtrl-C: stopping everything"); break; }
        }
        let w = window
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let total = (w.v1 + w.v2 + w.errors).max(1) as f64;
        let (leader, version) = match demo.leader().await {
            Some((l, v)) => (l.to_string(), v.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let acked = proxies_acked(&demo).await;
        out!(
            "  {:>4}s  {:>6.1}%  {:>6.1}%  {:>7.1}%  {:>7}  {:>6}  {:>7}",
            started.elapsed().as_secs(),
            w.v1 as f64 * 100.0 / total,
            w.v2 as f64 * 100.0 / total,
            (w.v1 + w.v2) as f64 * 100.0 / total,
            version,
            leader,
            acked,
        );
        if Instant::now() < next_step {
            continue;
        }
        next_step = Instant::now() + step;
        match steps.first().copied() {
            Some("weights") => {
                let v = demo.write(weights(50, 50)).await?;
                out!("  -> trellisctl apply: reviews 50% v1 / 50% v2 (config version {v})");
            }
            Some("kill") => {
                if let Some(i) = demo
                    .replicas
                    .iter()
                    .position(|r| r.id.to_string() == leader)
                {
                    demo.replicas[i].process = None;
                    killed = Some(i);
                    out!("  -> SIGKILL the leader, node {leader}: the others elect a new one; traffic flows on");
                }
            }
            Some("restart") => {
                if let Some(i) = killed.take() {
                    demo.start_replica(i)?;
                    out!("  -> node {} restarts and catches up", demo.replicas[i].id);
                }
            }
            Some("cutover") => {
                let v = demo.write(weights(0, 100)).await?;
                out!("  -> trellisctl apply: reviews 100% v2 (config version {v})");
            }
            _ if args.once => break,
            _ => {
                out!("  (walkthrough done; Ctrl-C stops everything)");
                next_step = Instant::now() + Duration::from_secs(u64::MAX / 4);
            }
        }
        if !steps.is_empty() {
            steps.remove(0);
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(_sidecars);
    drop(demo);
    drop(_backends);
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("trellis-demo-{}", std::process::id())),
    );
    out!("stopped: every process the demo started has exited");
    Ok(())
}

/// `acked/connected` proxies across the replicas.
async fn proxies_acked(demo: &Demo) -> String {
    let request = api::ProxyStatusRequest { local_only: false };
    let short = demo
        .env
        .server(demo.server_list(), Duration::from_millis(500));
    match short
        .call(|mut c| async move { c.proxy_status(request).await })
        .await
    {
        Ok(reply) => {
            let acked = reply.proxies.iter().filter(|p| p.status == "ACK").count();
            format!("{acked}/{} ACK", reply.proxies.len())
        }
        Err(_) => "-".into(),
    }
}

impl Demo {
    fn server_list(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| r.process.is_some())
            .map(|r| r.raft.to_string())
            .collect()
    }
}
