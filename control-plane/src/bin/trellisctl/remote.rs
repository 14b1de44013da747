//! The commands that talk to a control plane (`--server`, any replica):
//! `apply`, `delete`, `get`, `cluster ...`, `proxy-status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};
use trellis_api as api;
use trellis_api::mesh_control_client::MeshControlClient;
use trellis_control_plane::push::registry::record_json;
use trellis_control_plane::raft::network::channel;
use trellis_control_plane::state::resources::documents;

use crate::validate::expand;

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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

impl Server {
    pub fn new(server: Vec<String>, timeout: Duration) -> Self {
        Self { server, timeout }
    }

    /// Runs `call` against each replica in turn until one answers, retrying
    /// while the error says a later try may succeed (no leader yet, a
    /// replica down), up to `--timeout`.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MeshControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0usize;
        loop {
            let addr = &self.server[attempt % self.server.len()];
            attempt += 1;
            let result = match channel(addr) {
                Ok(c) => call(MeshControlClient::new(c)).await,
                Err(e) => Err(Status::invalid_argument(format!("--server {addr}: {e}"))),
            };
            match result {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) if retriable(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// Writes `changes` as one operator-API transaction, as `trellisctl`.
    async fn write(&self, changes: Vec<api::Change>) -> Result<api::WriteReply, Status> {
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

fn retriable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

fn fail(s: &Status) -> ExitCode {
    eprintln!("error: {}", s.message());
    ExitCode::FAILURE
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Rule files (multi-document YAML); a directory means its *.yaml / *.yml files.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

/// `apply -f`: validated here (errors name file, line, column and field),
/// written as one entry, returned once committed.
pub async fn apply(server: &Server, args: &ApplyArgs) -> ExitCode {
    let changes = match changes_of(&args.files, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let count = changes.len();
    match server.write(changes).await {
        Ok(reply) => {
            let what = if reply.changed {
                "applied"
            } else {
                "unchanged"
            };
            out!("{count} resource(s) {what}; config version {}", reply.index);
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

/// The changes that write (or, `!apply`, delete) the rules of `files`.
pub fn changes_of(files: &[PathBuf], apply: bool) -> Result<Vec<api::Change>, ExitCode> {
    let files = expand(files).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let rules = trellis_crds::load_and_validate(&files).map_err(|errors| {
        for e in errors.iter() {
            out!("{e}");
        }
        eprintln!("{} error(s); nothing applied", errors.len());
        ExitCode::FAILURE
    })?;
    let docs = documents(&rules).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    if docs.is_empty() {
        eprintln!("error: no mesh rules in the given files");
        return Err(ExitCode::from(2));
    }
    Ok(docs
        .into_iter()
        .map(|(key, document)| api::Change {
            resource: Some(api::ResourceRef {
                kind: key.kind,
                namespace: key.namespace,
                name: key.name,
            }),
            document_json: if apply {
                document.to_string()
            } else {
                String::new()
            },
        })
        .collect())
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Delete the rules these files declare.
    #[arg(short = 'f', long = "filename", num_args = 1..)]
    files: Vec<PathBuf>,
    /// Or one resource: KIND/NAME (e.g. VirtualService/reviews).
    resource: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

pub async fn delete(server: &Server, args: &DeleteArgs) -> ExitCode {
    let changes = match (&args.resource, args.files.is_empty()) {
        (Some(r), true) => {
            let Some((kind, name)) = r.split_once('/') else {
                eprintln!("error: {r:?} is not KIND/NAME");
                return ExitCode::from(2);
            };
            vec![api::Change {
                resource: Some(api::ResourceRef {
                    kind: kind.into(),
                    namespace: args.namespace.clone(),
                    name: name.into(),
                }),
                document_json: String::new(),
            }]
        }
        (None, false) => match changes_of(&args.files, false) {
            Ok(c) => c,
            Err(code) => return code,
        },
        _ => {
            eprintln!("error: give either -f FILE... or KIND/NAME");
            return ExitCode::from(2);
        }
    };
    match server.write(changes).await {
        Ok(reply) if reply.changed => {
            out!("deleted; config version {}", reply.index);
            ExitCode::SUCCESS
        }
        Ok(_) => {
            out!("nothing to delete");
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Kind to list (VirtualService, DestinationRule, ServiceEntry); all when absent.
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
    let request = api::GetRequest {
        kind: args.kind.clone().unwrap_or_default(),
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
