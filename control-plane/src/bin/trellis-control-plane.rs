//! `trellis-control-plane`: one replica of the Raft group. Flags -> start ->
//! wait for a signal -> stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use trellis_control_plane::ca::service::IdentityConfig;
use trellis_control_plane::ca::tokens::Tokens;
use trellis_control_plane::server::{start, ServerConfig};

/// Flags (each also read from a `TRELLIS_*` variable).
#[derive(Parser, Debug)]
#[command(
    name = "trellis-control-plane",
    version,
    about = "A Trellis control-plane replica"
)]
struct Args {
    /// This replica's id in the group (a positive integer, unique).
    #[arg(long, env = "TRELLIS_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Where the Raft log, vote and snapshots are kept (redb).
    #[arg(long, env = "TRELLIS_DATA_DIR")]
    data_dir: PathBuf,
    /// Raft between replicas and the operator API (`trellisctl`).
    #[arg(long, env = "TRELLIS_RAFT_ADDR", default_value = "0.0.0.0:15011")]
    raft_addr: SocketAddr,
    /// How peers reach --raft-addr, host:port (default: from --peers, else --raft-addr).
    #[arg(long, env = "TRELLIS_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// The proxies' config stream.
    #[arg(long, env = "TRELLIS_XDS_ADDR", default_value = "0.0.0.0:15010")]
    xds_addr: SocketAddr,
    /// /metrics /ready /live /proxy-status.
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    admin_addr: SocketAddr,
    /// File source: a directory of rule YAML, synced by the leader.
    #[arg(long, env = "TRELLIS_WATCH_DIR")]
    watch_dir: Option<PathBuf>,
    /// How often the leader checks --watch-dir.
    #[arg(long, env = "TRELLIS_WATCH_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    watch_interval: Duration,
    /// The initial group, `id=host:port,...`: the lowest id forms it when
    /// nothing is stored yet (instead of `trellisctl cluster init`).
    #[arg(long, env = "TRELLIS_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Leader heartbeat interval.
    #[arg(long, env = "TRELLIS_HEARTBEAT", default_value = "50ms", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice it).
    #[arg(long, env = "TRELLIS_ELECTION_TIMEOUT", default_value = "150ms", value_parser = parse_duration)]
    election_timeout: Duration,
    /// Build a snapshot after this many log entries.
    #[arg(long, env = "TRELLIS_SNAPSHOT_AFTER", default_value_t = 500)]
    snapshot_after: u64,
    /// SPIFFE trust domain of the mesh's identities.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Root CA certificate (PEM) to use instead of a generated one; with --ca-key.
    #[arg(long, env = "TRELLIS_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Root CA private key (PEM); with --ca-cert.
    #[arg(long, env = "TRELLIS_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Bootstrap tokens proxies present to get certificates: one
    /// `TOKEN IDENTITY` per line (`ns/sa`, `ns/*` or `*`). Without it no
    /// workload certificate is signed.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates (proxies renew at half of it).
    #[arg(long, env = "TRELLIS_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Log entries kept behind a snapshot for lagging peers.
    #[arg(long, env = "TRELLIS_KEEP_LOGS", default_value_t = 200)]
    keep_logs: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not id=host:port"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {id:?} is not a node id"))?;
    if !addr.contains(':') {
        return Err(format!("{s:?}: {addr:?} is not host:port"));
    }
    Ok((id, addr.trim().to_string()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let tokens = match &args.bootstrap_tokens {
        Some(path) => match Tokens::load(path) {
            Ok(tokens) => tokens,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Tokens::default(),
    };
    let config = ServerConfig {
        node_id: args.node_id,
        data_dir: args.data_dir,
        raft_addr: args.raft_addr,
        advertise: args.advertise_addr,
        xds_addr: args.xds_addr,
        admin_addr: args.admin_addr,
        watch_dir: args.watch_dir,
        watch_interval: args.watch_interval,
        peers: args.peers,
        heartbeat: args.heartbeat,
        election_timeout: args.election_timeout,
        snapshot_after: args.snapshot_after,
        keep_logs: args.keep_logs,
        ca: trellis_control_plane::ca::CaSource {
            trust_domain: args.trust_domain,
            files: args.ca_cert.zip(args.ca_key),
        },
        identity: IdentityConfig {
            tokens: Arc::new(tokens),
            cert_ttl: args.cert_ttl,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis-control-plane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
