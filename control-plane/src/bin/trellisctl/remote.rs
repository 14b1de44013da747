//! The commands that talk to a control plane (`--server`, any replica):
//! `apply`, `delete`, `get`, `cluster ...`, `proxy-status`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tonic::{Code, Status};
use trellis_api as api;
use trellis_api::tls::channel::{client_config, load_bundle};
use trellis_control_plane::operator::{self, Bearer, OperatorClient};
use trellis_control_plane::push::registry::record_json;
use trellis_control_plane::raft::network::channel;

/// Where the control plane is.
#[derive(clap::Args, Debug, Clone)]
pub struct Server {
    /// Replicas' --raft-addr, host:port,...; the next is tried when one is down.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:15011"
    )]
    server: Vec<String>,
    /// How long to keep retrying while no replica can take the request.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// The mesh's root certificate (PEM) the replicas' certificates must
    /// chain to (`ca.pem` of `trellisctl pki init`).
    #[arg(long, global = true, env = "TRELLIS_TRUST_BUNDLE")]
    trust_bundle: Option<PathBuf>,
    /// A file holding an operator token (`read` or `write`, as the
    /// replicas' --operator-tokens say); or the TRELLIS_TOKEN variable.
    #[arg(long, global = true, env = "TRELLIS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS and token, built on first use.
    #[arg(skip)]
    access: OnceLock<(Arc<rustls::ClientConfig>, Bearer)>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

/// How long one replica may take to answer before the next is asked.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    pub fn new(
        server: Vec<String>,
        timeout: Duration,
        trust_bundle: PathBuf,
        token_file: PathBuf,
    ) -> Self {
        Self {
            server,
            timeout,
            trust_bundle: Some(trust_bundle),
            token_file: Some(token_file),
            access: OnceLock::new(),
        }
    }

    /// The TLS config and token every call uses.
    fn access(&self) -> Result<(Arc<rustls::ClientConfig>, Bearer), Status> {
        if let Some(access) = self.access.get() {
            return Ok(access.clone());
        }
        let bundle = self.trust_bundle.as_ref().ok_or_else(|| {
            Status::invalid_argument(
                "--trust-bundle FILE (or TRELLIS_TRUST_BUNDLE) is needed: the mesh root the replicas' certificates chain to",
            )
        })?;
        let tls = load_bundle(bundle)
            .and_then(|roots| client_config(&roots, None))
            .map_err(|e| Status::invalid_argument(format!("--trust-bundle {e}")))?;
        let token = match &self.token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                Status::invalid_argument(format!("--token-file {}: {e}", path.display()))
            })?),
            None => std::env::var("TRELLIS_TOKEN").ok(),
        };
        let bearer = Bearer::new(token.as_deref()).map_err(Status::invalid_argument)?;
        Ok(self.access.get_or_init(|| (tls, bearer)).clone())
    }

    /// `--timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `call` against each replica in turn until one answers, retrying
    /// while the error says a later try may succeed (no leader yet, a
    /// replica down), up to `--timeout`.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(OperatorClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (tls, bearer) = self.access()?;
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0usize;
        loop {
            let addr = &self.server[attempt % self.server.len()];
            attempt += 1;
            // A replica that accepts connections but never answers (frozen,
            // overloaded) holds one attempt, not the whole --timeout, while
            // there is another replica to ask.
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if self.server.len() > 1 {
                left.min(ATTEMPT_TIMEOUT)
            } else {
                left
            };
            let result = match channel(addr, tls.clone()) {
                Ok(c) => {
                    match tokio::time::timeout(budget, call(operator::client(c, bearer.clone())))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer within {budget:?}"
                        ))),
                    }
                }
                Err(e) => Err(Status::invalid_argument(format!("--server {addr}: {e}"))),
            };
            match result {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) if retriable(&s) && !foreign(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => return Err(explain(addr, s)),
            }
        }
    }

    /// Writes `changes` as one operator-API transaction, as `trellisctl`.
    pub async fn write(&self, changes: Vec<api::Change>) -> Result<api::WriteReply, Status> {
        let request = api::WriteRequest {
            changes,
            source: "cli".into(),
        };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.write(r).await }
        })
        .await
    }
}

/// The peer answered, but not as a Trellis replica does (plaintext HTTP/1,
/// another gRPC server, a certificate the trust bundle does not vouch
/// for): retrying will not help.
fn foreign(s: &Status) -> bool {
    s.code() == Code::Unimplemented
        || causes(s).iter().any(|c| {
            c.contains("protocol error") || c.contains("invalid") || c.contains("corrupt message")
        })
}

/// The TLS handshake failed on the replica's certificate.
fn untrusted(s: &Status) -> bool {
    causes(s)
        .iter()
        .any(|c| c.contains("invalid peer certificate"))
}

/// The status's message and each of its causes.
fn causes(s: &Status) -> Vec<String> {
    let mut out = vec![s.message().to_string()];
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        out.push(e.to_string());
        source = e.source();
    }
    out
}

/// `s` with the address it came from, and what it most likely means.
fn explain(addr: &str, s: Status) -> Status {
    let mut detail = String::new();
    for cause in causes(&s) {
        if !detail.contains(&cause) {
            detail = if detail.is_empty() {
                cause
            } else {
                format!("{detail}: {cause}")
            };
        }
    }
    let message = if untrusted(&s) {
        format!("{addr}: its certificate is not a replica's of this mesh ({detail}); check --trust-bundle")
    } else if foreign(&s) {
        format!("{addr} is not a Trellis replica ({detail}); --server takes replicas' --raft-addr")
    } else if s.code() == Code::Unavailable && detail.contains("connect") {
        format!("cannot reach a replica at {addr}: {detail}")
    } else {
        format!("{addr}: {}", s.message())
    };
    Status::new(s.code(), message)
}

fn retriable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

pub fn fail(s: &Status) -> ExitCode {
    eprintln!("error: {}", s.message());
    ExitCode::FAILURE
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Kind to list (VirtualService or vs, DestinationRule or dr, ServiceEntry
    /// or se, PeerAuthentication or pa, AuthorizationPolicy or ap); all when absent.
    kind: Option<String>,
    name: Option<String>,
    /// Namespace; all when absent.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// `table` (default) or `json` (the documents).
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
}

pub async fn get(server: &Server, args: &GetArgs) -> ExitCode {
    let kind = match args.kind.as_deref().map(kind_name).transpose() {
        Ok(kind) => kind,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let request = api::GetRequest {
        kind: kind.unwrap_or_default().to_string(),
        namespace: args.namespace.clone().unwrap_or_default(),
        name: args.name.clone().unwrap_or_default(),
    };
    let reply = match server
        .call(|mut c| {
            let r = request.clone();
            async move { c.get(r).await }
        })
        .await
    {
        Ok(r) => r,
        Err(s) => return fail(&s),
    };
    if args.output == "json" {
        let docs: Vec<serde_json::Value> = reply
            .resources
            .iter()
            .filter_map(|r| serde_json::from_str(&r.document_json).ok())
            .collect();
        let out = serde_json::json!({
            "version": reply.version, "stateHash": reply.state_hash, "items": docs,
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    out!("{:<18} {:<14} {:<28} SOURCE", "KIND", "NAMESPACE", "NAME");
    for r in &reply.resources {
        let key = r.resource.clone().unwrap_or_default();
        out!(
            "{:<18} {:<14} {:<28} {}",
            key.kind,
            key.namespace,
            key.name,
            r.source
        );
    }
    out!(
        "{} resource(s); config version {}; state {}",
        reply.resources.len(),
        reply.version,
        &reply.state_hash[..reply.state_hash.len().min(12)]
    );
    ExitCode::SUCCESS
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Form the group: of the replica at --server alone, or of every --member.
    Init {
        /// id=host:port of each voter (the --raft-addr peers reach).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Add a replica as a learner; returns once it has caught up.
    AddLearner { id: u64, addr: String },
    /// Make exactly these nodes the voters.
    ChangeMembership {
        #[arg(required = true)]
        voters: Vec<u64>,
    },
    /// Role, term, leader, log and state of the replica at --server.
    Status {
        /// `text` (default) or `json`.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
}

pub async fn cluster(server: &Server, command: &ClusterCommand) -> ExitCode {
    let reply = match command {
        ClusterCommand::Init { members } => {
            let mut parsed = Vec::new();
            for m in members {
                match m
                    .split_once('=')
                    .map(|(id, addr)| (id.parse::<u64>(), addr))
                {
                    Some((Ok(id), addr)) => parsed.push(api::Member {
                        id,
                        addr: addr.to_string(),
                    }),
                    _ => {
                        eprintln!("error: --member {m:?} is not id=host:port");
                        return ExitCode::from(2);
                    }
                }
            }
            let request = api::ClusterInitRequest { members: parsed };
            server
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.cluster_init(r).await }
                })
                .await
        }
        ClusterCommand::AddLearner { id, addr } => {
            let request = api::Member {
                id: *id,
                addr: addr.clone(),
            };
            server
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.add_learner(r).await }
                })
                .await
        }
        ClusterCommand::ChangeMembership { voters } => {
            let request = api::ChangeMembershipRequest {
                voters: voters.clone(),
            };
            server
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.change_membership(r).await }
                })
                .await
        }
        ClusterCommand::Status { output } => {
            return match server
                .call(|mut c| {
                    let r = api::StatusRequest {};
                    async move { c.status(r).await }
                })
                .await
            {
                Ok(s) => {
                    print_status(&s, output == "json");
                    ExitCode::SUCCESS
                }
                Err(s) => fail(&s),
            };
        }
    };
    match reply {
        Ok(r) => {
            out!("{}", r.message);
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

fn print_status(s: &api::StatusReply, json: bool) {
    let members = |m: &[api::Member]| -> Vec<String> {
        m.iter().map(|m| format!("{}={}", m.id, m.addr)).collect()
    };
    if json {
        let out = serde_json::json!({
            "nodeId": s.node_id, "role": s.role, "term": s.term,
            "leaderId": s.leader_id, "leaderAddr": s.leader_addr,
            "lastLogIndex": s.last_log_index, "lastApplied": s.last_applied,
            "snapshotIndex": s.snapshot_index, "configVersion": s.config_version,
            "stateHash": s.state_hash, "resources": s.resources,
            "voters": members(&s.voters), "learners": members(&s.learners),
            "connectedProxies": s.connected_proxies,
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    out!("node:           {} ({})", s.node_id, s.role);
    out!("term:           {}", s.term);
    out!("leader:         {} {}", s.leader_id, s.leader_addr);
    out!(
        "log:            last {} applied {} snapshot {}",
        s.last_log_index,
        s.last_applied,
        s.snapshot_index
    );
    out!(
        "config:         version {}, {} resource(s), state {}",
        s.config_version,
        s.resources,
        s.state_hash
    );
    out!("voters:         {}", members(&s.voters).join(", "));
    out!("learners:       {}", members(&s.learners).join(", "));
    out!("proxies:        {}", s.connected_proxies);
}

#[derive(clap::Args, Debug)]
pub struct ProxyStatusArgs {
    /// `table` (default) or `json`.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
}

/// Every proxy connected to any replica: its replica, version, ACK/NACK.
pub async fn proxy_status(server: &Server, args: &ProxyStatusArgs) -> ExitCode {
    let request = api::ProxyStatusRequest { local_only: false };
    let reply = match server
        .call(|mut c| {
            let r = request;
            async move { c.proxy_status(r).await }
        })
        .await
    {
        Ok(r) => r,
        Err(s) => return fail(&s),
    };
    if args.output == "json" {
        let proxies: Vec<serde_json::Value> = reply.proxies.iter().map(record_json).collect();
        let out = serde_json::json!({ "proxies": proxies, "unreachable": reply.unreachable });
        out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    out!(
        "{:<24} {:<12} {:<8} {:<8} {:<8} {:<8} ERROR",
        "PROXY",
        "NAMESPACE",
        "REPLICA",
        "VERSION",
        "STATUS",
        "AGE"
    );
    for p in &reply.proxies {
        out!(
            "{:<24} {:<12} {:<8} {:<8} {:<8} {:<8} {}",
            p.proxy,
            p.namespace,
            p.replica,
            p.acked_version,
            p.status,
            format!("{:.1}s", p.age_ms as f64 / 1000.0),
            p.last_error
        );
    }
    for u in &reply.unreachable {
        eprintln!("unreachable: {u}");
    }
    ExitCode::SUCCESS
}

/// `trust-bundle`: the root certificate, PEM, on stdout.
pub async fn trust_bundle(server: &Server) -> ExitCode {
    let reply = server
        .call(|mut c| async move { c.trust_bundle(api::TrustBundleRequest {}).await })
        .await;
    match reply {
        Ok(r) if r.pem.is_empty() => {
            eprintln!("error: no root CA yet (the group has no leader, or it has not stored one)");
            ExitCode::FAILURE
        }
        Ok(r) => {
            eprintln!("trust domain: {}", r.trust_domain);
            print!("{}", r.pem);
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

/// The kind a user named, by its name or kubectl-style short name
/// (case-insensitive, plural accepted).
pub fn kind_name(name: &str) -> Result<&'static str, String> {
    const KINDS: &[(&str, &str, &str)] = &[
        ("VirtualService", "vs", "virtualservices"),
        ("DestinationRule", "dr", "destinationrules"),
        ("ServiceEntry", "se", "serviceentries"),
        ("PeerAuthentication", "pa", "peerauthentications"),
        ("AuthorizationPolicy", "ap", "authorizationpolicies"),
    ];
    KINDS
        .iter()
        .find(|(kind, short, plural)| {
            [*kind, *short, *plural]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|(kind, _, _)| *kind)
        .ok_or_else(|| {
            format!(
                "unknown kind {name:?} (use {})",
                KINDS
                    .iter()
                    .map(|(k, s, _)| format!("{k} ({s})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
