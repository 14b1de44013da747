//! Command-line flags and environment -> typed, validated configuration,
//! one struct per subsystem. All parsing lives here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use trellis_api::tls::channel;

mod limits;

pub use limits::{BodyPace, ConnLimits, HeadLimits, LimitArgs, RequestLimits};

/// `trellis-proxy` flags (each also read from a `TRELLIS_*` variable).
#[derive(Parser, Debug, Clone)]
#[command(name = "trellis-proxy", version, about = "The Trellis sidecar proxy")]
pub struct Args {
    /// Static mode: rules and ServiceEntry endpoints from this YAML file, watched for changes.
    #[arg(long, env = "TRELLIS_CONFIG", conflicts_with = "control_plane")]
    pub config: Option<PathBuf>,
    /// Connected mode: control-plane replicas' --xds-addr (`host:port` or a
    /// URL), comma-separated; the proxy moves to the next when one fails.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Connected mode: the mesh's root certificate(s), PEM, that the
    /// replicas' certificates must chain to (`trellisctl trust-bundle`; in
    /// Kubernetes the `trellis-ca-root-cert` ConfigMap).
    #[arg(long, env = "TRELLIS_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Connected mode: where the last accepted config is kept, so a restart
    /// serves it before any control plane answers.
    #[arg(long, env = "TRELLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the outbound listener accepts the application's requests.
    #[arg(long, env = "TRELLIS_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    /// Where the inbound listener accepts other sidecars' requests (with
    /// --inbound-forward).
    #[arg(long, env = "TRELLIS_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    /// The local application, for inbound requests when no iptables
    /// redirect is in place; the inbound listener runs only with it or
    /// with --capture.
    #[arg(long, env = "TRELLIS_INBOUND_FORWARD")]
    pub inbound_forward: Option<SocketAddr>,
    /// iptables redirects the pod's traffic to the listeners
    /// (`trellis-proxy init-iptables`): the inbound listener runs and
    /// delivers to the original port on localhost.
    #[arg(long, env = "TRELLIS_CAPTURE")]
    pub capture: bool,
    /// Captured traffic to a destination the mesh does not know:
    /// ALLOW_ANY passes it through, REGISTRY_ONLY refuses it.
    #[arg(long, env = "TRELLIS_OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY", value_parser = ["ALLOW_ANY", "REGISTRY_ONLY"])]
    pub outbound_traffic_policy: String,
    /// How long a captured connection's first bytes are awaited before it
    /// is taken as opaque TCP (server-first protocols send nothing).
    #[arg(long, env = "TRELLIS_PROTOCOL_DETECTION_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub protocol_detection_timeout: Duration,
    /// Admin endpoint: /live /ready /metrics /config_dump.
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Identity of this sidecar.
    #[arg(long, env = "TRELLIS_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The service account this workload runs as: its SPIFFE id is
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Connected mode: the bootstrap token that gets this proxy a workload
    /// certificate (turns mTLS on); see also --bootstrap-token-file.
    #[arg(
        long,
        env = "TRELLIS_BOOTSTRAP_TOKEN",
        conflicts_with = "bootstrap_token_file"
    )]
    pub bootstrap_token: Option<String>,
    /// Connected mode: a file holding the bootstrap token.
    #[arg(
        long,
        env = "TRELLIS_BOOTSTRAP_TOKEN_FILE",
        conflicts_with = "service_account_token_file"
    )]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Connected mode in Kubernetes: the projected service-account token
    /// (audience `trellis`), read again at every renewal as the kubelet
    /// rotates it; the control plane checks it with a TokenReview.
    #[arg(
        long,
        env = "TRELLIS_SERVICE_ACCOUNT_TOKEN_FILE",
        conflicts_with = "bootstrap_token"
    )]
    pub service_account_token_file: Option<PathBuf>,
    /// The workload this sidecar serves (the `source_workload` metric label).
    #[arg(long, env = "TRELLIS_SERVICE", default_value = "unknown")]
    pub service: String,
    /// Labels of this workload, `k=v,k2=v2` (matched by `sourceLabels`).
    #[arg(long, env = "TRELLIS_LABELS", default_value = "")]
    pub labels: String,
    /// The application's HTTP probes the admin port answers for (what the
    /// sidecar injector moves them to): JSON, `{"/app-health/NAME/readyz":
    /// {"port": 8080, "path": "/healthz"}}`.
    #[arg(long, env = "TRELLIS_APP_PROBES")]
    pub app_probes: Option<String>,
    /// Labels from a file of `key="value"` lines, as the Kubernetes
    /// downward API writes `metadata.labels` (--labels adds to them).
    #[arg(long, env = "TRELLIS_LABELS_FILE")]
    pub labels_file: Option<PathBuf>,
    /// How often the static config file is checked for changes.
    #[arg(long, env = "TRELLIS_WATCH_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub watch_interval: Duration,
    /// Upper bound on connecting to an endpoint.
    #[arg(long, env = "TRELLIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Runtime worker threads; 1 (the default, a sidecar's usual CPU share)
    /// runs everything on one thread with no cross-thread scheduling.
    #[arg(long, env = "TRELLIS_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "TRELLIS_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long the proxy keeps serving, failing readiness,
    /// before it stops accepting (time for endpoints to drop it and for
    /// the application's last calls).
    #[arg(long, env = "TRELLIS_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    #[command(flatten)]
    pub limits: LimitArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

/// TLS to the control plane: replicas' certificates must chain to the
/// `--trust-bundle`.
fn control_plane_tls(bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let path = bundle.ok_or(ConfigError::NoTrustBundle)?;
    let roots = channel::load_bundle(path).map_err(ConfigError::TrustBundle)?;
    channel::client_config(&roots, None).map_err(ConfigError::TrustBundle)
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("give --config FILE (static mode) or --control-plane URL[,URL...] (connected mode)")]
    NoSource,
    #[error("--labels: {0:?} is not k=v")]
    BadLabel(String),
    #[error("--app-probes: {0} (expected {{\"/app-health/NAME/readyz\": {{\"port\": 8080, \"path\": \"/\"}}}})")]
    AppProbes(String),
    #[error("--labels-file {0}: {1}")]
    LabelsFile(PathBuf, String),
    #[error("token file {0}: {1}")]
    TokenFile(PathBuf, String),
    #[error("a bootstrap token needs --control-plane (the CA that signs the certificate)")]
    TokenWithoutControlPlane,
    #[error("--control-plane needs --trust-bundle FILE (the mesh root the replicas' certificates chain to; `trellisctl trust-bundle` prints it)")]
    NoTrustBundle,
    #[error("--trust-bundle {0}")]
    TrustBundle(String),
}

/// The whole proxy configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub outbound: OutboundConfig,
    pub inbound: Option<InboundConfig>,
    pub admin: AdminConfig,
    pub discovery: DiscoveryConfig,
    /// Workload identity (mTLS), when a bootstrap token is given.
    pub identity: Option<IdentityConfig>,
    /// Time allowed for in-flight requests after a shutdown signal.
    pub drain_timeout: Duration,
    /// Time between failing readiness and closing the listeners on SIGTERM.
    pub shutdown_delay: Duration,
    /// Runtime worker threads (1 = a current-thread runtime).
    pub workers: usize,
    /// What requests must keep to, on the outbound and inbound listeners.
    pub request_limits: RequestLimits,
    /// Connection timeouts and the largest request head.
    pub conn_limits: ConnLimits,
}

/// Who this sidecar is.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Unique id (defaults to `<service>.<namespace>`).
    pub id: String,
    pub namespace: String,
    /// Name of the workload; `source_workload` in metrics.
    pub service: String,
    /// Labels of the workload, for `sourceLabels` matches.
    pub labels: BTreeMap<String, String>,
}

/// The outbound listener and its connections to endpoints.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    pub addr: SocketAddr,
    /// Upper bound on establishing a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Refuse captured traffic to destinations outside the mesh.
    pub registry_only: bool,
    pub detection_timeout: Duration,
    /// iptables captures the pod's traffic (`--capture`): the listeners
    /// also take the IPv6 side (`[::1]` / `[::]` on the same ports).
    pub capture: bool,
}

/// The inbound listener and the application behind it.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub addr: SocketAddr,
    /// Where requests go when the connection was not redirected by
    /// iptables (`--inbound-forward`); a captured one goes to its original
    /// port on localhost.
    pub forward: Option<SocketAddr>,
}

/// How the proxy obtains its workload certificate.
#[derive(Clone)]
pub struct IdentityConfig {
    /// Presented to the control plane's CA.
    pub token: Credential,
    pub service_account: String,
}

/// The token a proxy presents for its certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bootstrap token, fixed.
    Token(String),
    /// A file read at every request (a rotated service-account token).
    File(PathBuf),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl Credential {
    /// The token now.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Token(t) => Ok(t.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("token", &"<redacted>")
            .field("service_account", &self.service_account)
            .finish()
    }
}

/// The admin listener.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// `/app-health/...` paths answered by probing the application on
    /// localhost (probes the injector moved off the captured app port).
    pub app_probes: BTreeMap<String, AppProbe>,
}

/// Where an application's own HTTP probe goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct AppProbe {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

/// Where configuration comes from.
#[derive(Clone, Debug)]
pub enum DiscoveryConfig {
    /// A YAML file of rules and ServiceEntries, polled every `interval`.
    Static { path: PathBuf, interval: Duration },
    /// The control-plane stream: replicas' URLs, where to persist, and
    /// the TLS that verifies the replicas.
    Remote {
        urls: Vec<String>,
        state_dir: Option<PathBuf>,
        tls: Arc<rustls::ClientConfig>,
    },
}

impl Config {
    /// Builds the configuration from parsed flags.
    pub fn build(args: Args) -> Result<Self, ConfigError> {
        let discovery = match args.config {
            Some(path) => DiscoveryConfig::Static {
                path,
                interval: args.watch_interval,
            },
            None if !args.control_plane.is_empty() => DiscoveryConfig::Remote {
                urls: args
                    .control_plane
                    .iter()
                    .map(|u| u.trim())
                    .filter(|u| !u.is_empty())
                    .map(|u| {
                        if u.contains("://") {
                            u.to_string()
                        } else {
                            format!("http://{u}")
                        }
                    })
                    .collect(),
                state_dir: args.state_dir,
                tls: control_plane_tls(args.trust_bundle.as_deref())?,
            },
            None => return Err(ConfigError::NoSource),
        };
        let mut labels = match &args.labels_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::LabelsFile(path.clone(), e.to_string()))?;
                parse_downward_labels(&text)
                    .map_err(|e| ConfigError::LabelsFile(path.clone(), e))?
            }
            None => BTreeMap::new(),
        };
        labels.extend(parse_labels(&args.labels)?);
        let token = match (&args.bootstrap_token, &args.bootstrap_token_file) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::TokenFile(path.clone(), e.to_string()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        }
        .map(Credential::Token);
        let token = match (&args.service_account_token_file, token) {
            (Some(path), None) => {
                // Checked now so a wrong path fails at start, read again later.
                std::fs::metadata(path)
                    .map_err(|e| ConfigError::TokenFile(path.clone(), e.to_string()))?;
                Some(Credential::File(path.clone()))
            }
            (_, token) => token,
        };
        if token.is_some() && !matches!(discovery, DiscoveryConfig::Remote { .. }) {
            return Err(ConfigError::TokenWithoutControlPlane);
        }
        let identity = token.map(|token| IdentityConfig {
            token,
            service_account: args.service_account.clone(),
        });
        Ok(Self {
            node: NodeConfig {
                id: args
                    .node_id
                    .unwrap_or_else(|| format!("{}.{}", args.service, args.namespace)),
                namespace: args.namespace,
                service: args.service,
                labels,
            },
            outbound: OutboundConfig {
                addr: args.outbound_addr,
                connect_timeout: args.connect_timeout,
                registry_only: args.outbound_traffic_policy == "REGISTRY_ONLY",
                detection_timeout: args.protocol_detection_timeout,
                capture: args.capture,
            },
            inbound: (args.capture || args.inbound_forward.is_some()).then_some(InboundConfig {
                addr: args.inbound_addr,
                forward: args.inbound_forward,
            }),
            admin: AdminConfig {
                addr: args.admin_addr,
                app_probes: match &args.app_probes {
                    Some(json) => serde_json::from_str(json)
                        .map_err(|e| ConfigError::AppProbes(e.to_string()))?,
                    None => BTreeMap::new(),
                },
            },
            discovery,
            identity,
            drain_timeout: args.drain_timeout,
            shutdown_delay: args.shutdown_delay,
            workers: usize::from(args.workers),
            request_limits: args.limits.request(),
            conn_limits: args.limits.conn(),
        })
    }
}

/// `key="value"` lines (Go-quoted values), as the downward API writes them.
fn parse_downward_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {}: {line:?} is not key=\"value\"", n + 1);
        let (key, quoted) = line.split_once('=').ok_or_else(bad)?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .ok_or_else(bad)?;
        let mut value = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => return Err(bad()),
                }
            } else {
                value.push(c);
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
    Ok(labels)
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(ConfigError::BadLabel(kv.to_string())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["trellis-proxy"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("flags parse")
    }

    #[test]
    fn static_mode_defaults() {
        let c = Config::build(args(&[
            "--config",
            "r.yaml",
            "--labels",
            "app=web, version=v1",
        ]))
        .expect("valid");
        assert_eq!(c.outbound.addr.port(), 15001);
        assert_eq!(c.admin.addr.port(), 15000);
        assert_eq!(c.node.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(c.node.id, "unknown.default");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Config::build(args(&[])),
            Err(ConfigError::NoSource)
        ));
        assert!(matches!(
            Config::build(args(&["--config", "r", "--labels", "novalue"])),
            Err(ConfigError::BadLabel(_))
        ));
        assert!(Args::try_parse_from(["p", "--connect-timeout", "3"]).is_err());
        assert!(
            Args::try_parse_from(["p", "--config", "r", "--control-plane", "a:1"]).is_err(),
            "one source only"
        );
    }

    #[test]
    fn connected_mode_takes_every_replica() {
        let flags = [
            "--control-plane",
            "127.0.0.1:15010, https://cp-1:15010",
            "--state-dir",
            "/var/lib/trellis",
        ];
        assert!(matches!(
            Config::build(args(&flags)),
            Err(ConfigError::NoTrustBundle)
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        let bundle = std::env::temp_dir().join(format!("bundle-{}.pem", std::process::id()));
        std::fs::write(&bundle, root.pem()).expect("write");
        let bundle_flag = bundle.display().to_string();
        let mut with_bundle = flags.to_vec();
        with_bundle.extend(["--trust-bundle", &bundle_flag]);
        let c = Config::build(args(&with_bundle)).expect("valid");
        let _ = std::fs::remove_file(&bundle);
        let DiscoveryConfig::Remote {
            urls, state_dir, ..
        } = c.discovery
        else {
            panic!("connected mode expected");
        };
        assert_eq!(urls, ["http://127.0.0.1:15010", "https://cp-1:15010"]);
        assert_eq!(state_dir, Some(PathBuf::from("/var/lib/trellis")));
    }

    #[test]
    fn downward_api_labels_parse() {
        let labels = parse_downward_labels(
            "app=\"reviews\"\npod-template-hash=\"5d8f\"\nnote=\"a \\\"quoted\\\" word\"\n",
        )
        .expect("parses");
        assert_eq!(labels["app"], "reviews");
        assert_eq!(labels["pod-template-hash"], "5d8f");
        assert_eq!(labels["note"], "a \"quoted\" word");
        assert!(parse_downward_labels("app=reviews\n").is_err());
    }
}
