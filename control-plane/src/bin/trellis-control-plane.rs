//! `trellis-control-plane`: one replica of the Raft group. Flags -> start ->
//! wait for a signal -> stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use trellis_control_plane::ca::load_root;
use trellis_control_plane::ca::review::TokenReviewer;
use trellis_control_plane::ca::service::IdentityConfig;
use trellis_control_plane::ca::tokens::Tokens;
use trellis_control_plane::inject::webhook::{form_of, Webhook};
use trellis_control_plane::inject::InjectSettings;
use trellis_control_plane::operator::OperatorTokens;
use trellis_control_plane::server::{start, Kubernetes, ServerConfig, WebhookConfig};

/// Flags (each also read from a `TRELLIS_*` variable).
#[derive(Parser, Debug)]
#[command(
    name = "trellis-control-plane",
    version,
    about = "A Trellis control-plane replica"
)]
struct Args {
    /// This replica's id in the group (a positive integer, unique).
    #[arg(
        long,
        env = "TRELLIS_NODE_ID",
        value_parser = clap::value_parser!(u64).range(1..),
        required_unless_present = "pod_name"
    )]
    node_id: Option<u64>,
    /// In a StatefulSet: this pod's name (`NAME-ORDINAL`); the node id is
    /// the ordinal plus one, unless --node-id is given.
    #[arg(long, env = "TRELLIS_POD_NAME")]
    pod_name: Option<String>,
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
    /// The mesh's root CA certificate (PEM), the same on every replica
    /// (`trellisctl pki init` writes one). It signs workload certificates
    /// and each replica's own TLS certificate.
    #[arg(long, env = "TRELLIS_CA_CERT")]
    ca_cert: PathBuf,
    /// The root CA's private key (PEM); keep it mode 0600.
    #[arg(long, env = "TRELLIS_CA_KEY")]
    ca_key: PathBuf,
    /// Operator API access: one `TOKEN read|write` per line; `trellisctl`
    /// presents one. Without it only replicas may call the operator API.
    #[arg(long, env = "TRELLIS_OPERATOR_TOKENS")]
    operator_tokens: Option<PathBuf>,
    /// Bootstrap tokens proxies present to get certificates: one
    /// `TOKEN IDENTITY` per line (`ns/sa`, `ns/*` or `*`). Without it no
    /// workload certificate is signed.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates (proxies renew at half of it).
    #[arg(long, env = "TRELLIS_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Kubernetes source: mirror rule custom resources, Services,
    /// EndpointSlices and Pods into the mesh (leader only), write status
    /// back, and sign certificates for service-account tokens (TokenReview).
    /// In-cluster config unless --kubeconfig is given.
    #[arg(long, env = "TRELLIS_KUBERNETES")]
    kubernetes: bool,
    /// A kubeconfig file for --kubernetes (implies it).
    #[arg(long, env = "TRELLIS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The audience proxies' service-account tokens must be issued for.
    #[arg(long, env = "TRELLIS_TOKEN_AUDIENCE", default_value = "trellis")]
    token_audience: String,
    /// Mesh setting, pushed to every proxy: captured traffic to a
    /// destination the mesh does not know is passed through (ALLOW_ANY) or
    /// refused (REGISTRY_ONLY).
    #[arg(long, env = "TRELLIS_OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY", value_parser = ["ALLOW_ANY", "REGISTRY_ONLY"])]
    outbound_traffic_policy: String,
    /// How often the leader refreshes `status.applied` of rule resources.
    #[arg(long, env = "TRELLIS_STATUS_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    status_interval: Duration,
    /// With --kubernetes: where the sidecar-injection webhook listens
    /// (HTTPS, `POST /inject`); none without it.
    #[arg(long, env = "TRELLIS_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// The DNS names the apiserver calls the webhook by (its certificate's).
    #[arg(
        long,
        env = "TRELLIS_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        default_value = "trellis-control-plane.trellis-system.svc"
    )]
    webhook_dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps
    /// equal to the mesh root.
    #[arg(
        long,
        env = "TRELLIS_WEBHOOK_CONFIG",
        default_value = "trellis-sidecar-injector"
    )]
    webhook_config: String,
    /// With --kubernetes: the installation's ClusterRole, made the owner of
    /// what the control plane creates (root-certificate ConfigMaps) and of
    /// --data-claim, so uninstalling removes them.
    #[arg(long, env = "TRELLIS_OWNER_CLUSTER_ROLE")]
    owner_cluster_role: Option<String>,
    /// This replica's PersistentVolumeClaim, `namespace/name`.
    #[arg(long, env = "TRELLIS_DATA_CLAIM")]
    data_claim: Option<String>,
    /// What the webhook injects.
    #[command(flatten)]
    inject: InjectSettings,
    /// Log entries kept behind a snapshot for lagging peers.
    #[arg(long, env = "TRELLIS_KEEP_LOGS", default_value_t = 200)]
    keep_logs: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

/// The ordinal of a StatefulSet pod's name (`trellis-control-plane-2` -> 2).
fn ordinal(pod: &str) -> Option<u64> {
    pod.rsplit_once('-')?.1.parse().ok()
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
            // openraft's own logging only when asked for by name.
            match std::env::var("TRELLIS_LOG") {
                Ok(filter) if filter.contains("openraft") => {
                    tracing_subscriber::EnvFilter::new(filter)
                }
                Ok(filter) => tracing_subscriber::EnvFilter::new(format!("{filter},openraft=off")),
                Err(_) => tracing_subscriber::EnvFilter::new("info,openraft=off"),
            },
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let loaded = (|| {
        let tokens = match &args.bootstrap_tokens {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        let operators = match &args.operator_tokens {
            Some(path) => OperatorTokens::load(path)?,
            None => OperatorTokens::default(),
        };
        let root = load_root(&args.ca_cert, &args.ca_key, &args.trust_domain)?;
        Ok::<_, String>((tokens, operators, root))
    })();
    let node_id = match (args.node_id, &args.pod_name) {
        (Some(id), _) => id,
        (None, Some(pod)) => match ordinal(pod) {
            Some(ordinal) => ordinal + 1,
            None => {
                eprintln!("error: --pod-name {pod:?} does not end in -ORDINAL");
                return ExitCode::from(2);
            }
        },
        (None, None) => unreachable!("clap requires one"),
    };
    let (tokens, operators, root) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = ServerConfig {
        node_id,
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
        ca: root,
        operator_tokens: Arc::new(operators),
        identity: IdentityConfig {
            tokens: Arc::new(tokens),
            reviewer: None,
            cert_ttl: args.cert_ttl,
        },
        kubernetes: None,
        mesh: trellis_control_plane::render::MeshSettings {
            registry_only: args.outbound_traffic_policy == "REGISTRY_ONLY",
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
        if args.kubernetes || args.kubeconfig.is_some() {
            let client = match kube_client(args.kubeconfig.as_deref()).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!("--kubernetes: {e}");
                    return ExitCode::FAILURE;
                }
            };
            config.identity.reviewer = Some(TokenReviewer {
                client: client.clone(),
                audience: args.token_audience,
            });
            let webhook = match args.webhook_addr {
                Some(addr) => {
                    let form = match form_of(&client).await {
                        Ok(form) => form,
                        Err(e) => {
                            tracing::error!("--kubernetes: the apiserver's version: {e}");
                            return ExitCode::FAILURE;
                        }
                    };
                    Some(WebhookConfig {
                        addr,
                        dns_names: args.webhook_dns_names.clone(),
                        config_name: args.webhook_config.clone(),
                        webhook: Webhook {
                            settings: args.inject.clone(),
                            form,
                        },
                    })
                }
                None => None,
            };
            config.kubernetes = Some(Kubernetes {
                client,
                status_interval: args.status_interval,
                webhook,
                owner_cluster_role: args.owner_cluster_role.clone(),
                data_claim: args.data_claim.as_ref().and_then(|c| {
                    c.split_once('/')
                        .map(|(ns, name)| (ns.to_string(), name.to_string()))
                }),
            });
        }
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

/// A client of the apiserver: from `kubeconfig`, else in-cluster (or the
/// usual kubeconfig lookup).
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
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
