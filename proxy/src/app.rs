//! Wires the subsystems together: `App::build(config)` binds the listeners,
//! `App::spawn()` starts them, `Running::shutdown()` drains and stops them.
//! With capture each of the outbound and inbound listeners has an IPv6
//! twin on the same port, where ip6tables redirects the pod's IPv6 traffic.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config::{Config, ConnLimits, DiscoveryConfig};
use crate::discovery::remote::Remote;
use crate::discovery::static_file::StaticFile;
use crate::discovery::{ConfigStore, Env};
use crate::identity::certify::Certifier;
use crate::identity::Identity;
use crate::inbound::accept::InboundHandshake;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::capture::CaptureHandshake;
use crate::outbound::forward::Forward;
use crate::outbound::Outbound;
use crate::transport::listen::{serve, service_with, Plaintext};

/// A proxy with its listeners bound, not yet serving.
#[derive(Debug)]
pub struct App {
    config: Config,
    /// The outbound listener first, then its IPv6 twin (capture).
    outbound: Vec<TcpListener>,
    /// Empty without an inbound side.
    inbound: Vec<TcpListener>,
    admin: TcpListener,
}

/// A serving proxy.
#[derive(Debug)]
pub struct Running {
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    store: Arc<ConfigStore>,
    shutdown_delay: std::time::Duration,
}

impl App {
    /// Binds the listeners (so a bad address fails before anything starts).
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let capture = config.outbound.capture;
        let outbound = bind_all(config.outbound.addr, "outbound", capture).await?;
        let admin = bind(config.admin.addr, "admin").await?;
        let inbound = match &config.inbound {
            Some(inbound) => bind_all(inbound.addr, "inbound", capture).await?,
            None => Vec::new(),
        };
        Ok(Self {
            config,
            outbound,
            inbound,
            admin,
        })
    }

    /// Starts the listeners and the config source.
    pub fn spawn(self) -> std::io::Result<Running> {
        let outbound_addr = self.outbound[0].local_addr()?;
        let admin_addr = self.admin.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let store = Arc::new(ConfigStore::new());
        let metrics = Arc::new(Metrics::new());
        let mut tasks = JoinSet::new();

        let identity = self
            .config
            .identity
            .as_ref()
            .map(|_| Arc::new(Identity::new(metrics.clone())));
        if let (Some(settings), Some(identity), DiscoveryConfig::Remote { urls, tls, .. }) =
            (&self.config.identity, &identity, &self.config.discovery)
        {
            let certifier = Certifier {
                urls: urls.clone(),
                tls: tls.clone(),
                token: settings.token.clone(),
                namespace: self.config.node.namespace.clone(),
                service_account: settings.service_account.clone(),
                node: self.config.node.id.clone(),
                identity: identity.clone(),
            };
            tasks.spawn(certifier.run(rx.clone()));
        }
        let env = Env {
            connect_timeout: self.config.outbound.connect_timeout,
            metrics: metrics.clone(),
            identity: identity.clone(),
        };
        let node = self.config.node.clone();
        match &self.config.discovery {
            DiscoveryConfig::Static { path, interval } => {
                let source = StaticFile::new(
                    path.clone(),
                    *interval,
                    store.clone(),
                    metrics.clone(),
                    node,
                    env,
                );
                tasks.spawn(source.run(rx.clone()));
            }
            DiscoveryConfig::Remote {
                urls,
                state_dir,
                tls,
            } => {
                let source = Remote::new(
                    urls.clone(),
                    tls.clone(),
                    state_dir.clone(),
                    store.clone(),
                    node,
                    env,
                );
                tasks.spawn(source.run(rx.clone()));
            }
        }

        let forward = Forward::new(metrics.clone());
        let outbound = Arc::new(Outbound::new(
            store.clone(),
            forward,
            metrics.clone(),
            self.config.node.clone(),
            self.config.request_limits,
        ));
        let drain = self.config.drain_timeout;
        let outbound = service_with(outbound, |o, req| async move { o.handle(req).await });
        let capture = CaptureHandshake {
            store: store.clone(),
            source_workload: self.config.node.service.clone(),
            detection_timeout: self.config.outbound.detection_timeout,
            connect_timeout: self.config.outbound.connect_timeout,
            registry_only: self.config.outbound.registry_only,
            metrics: metrics.clone(),
        };
        for listener in self.outbound {
            tasks.spawn(serve(
                "outbound",
                listener,
                capture.clone(),
                outbound.clone(),
                rx.clone(),
                drain,
                self.config.conn_limits,
            ));
        }
        if let Some(inbound) = self
            .config
            .inbound
            .as_ref()
            .filter(|_| !self.inbound.is_empty())
        {
            let handler = Arc::new(Inbound::new(
                inbound.forward,
                self.config.outbound.connect_timeout,
                &self.config.node.service,
                store.clone(),
                metrics.clone(),
                identity.clone(),
                self.config.request_limits,
            ));
            let service = service_with(handler, |i, req| async move { i.handle(req).await });
            let handshake = InboundHandshake {
                store: store.clone(),
                identity: identity.clone(),
                metrics: metrics.clone(),
                service: self.config.node.service.clone(),
                connect_timeout: self.config.outbound.connect_timeout,
                detection_timeout: self.config.outbound.detection_timeout,
            };
            tracing::info!(addr = %inbound.addr, forward = ?inbound.forward, mtls = identity.is_some(), "inbound listener started");
            for listener in self.inbound {
                tasks.spawn(serve(
                    "inbound",
                    listener,
                    handshake.clone(),
                    service.clone(),
                    rx.clone(),
                    drain,
                    self.config.conn_limits,
                ));
            }
        }
        let admin = Arc::new(Admin {
            store: store.clone(),
            metrics,
            identity,
            app_probes: self.config.admin.app_probes.clone(),
        });
        let admin = service_with(admin, |a, req| async move { a.respond(req).await });
        tasks.spawn(serve(
            "admin",
            self.admin,
            Plaintext,
            admin,
            rx,
            drain,
            ConnLimits::default(),
        ));
        tracing::info!(%outbound_addr, %admin_addr, node = %self.config.node.id, "proxy started");
        Ok(Running {
            outbound_addr,
            admin_addr,
            shutdown,
            tasks,
            store,
            shutdown_delay: self.config.shutdown_delay,
        })
    }
}

impl Running {
    /// Fails readiness, keeps serving for the shutdown delay, then stops
    /// accepting, lets in-flight requests finish (up to the drain timeout),
    /// and waits for every task.
    pub async fn shutdown(mut self) {
        self.store.start_draining();
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "failing readiness before closing the listeners");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Connections the kernel may hold for a listener until they are accepted
/// (it caps this at `net.core.somaxconn`). A burst of new connections over
/// it has their handshakes dropped and retried; tokio's default is 1024.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, name: &str) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| bind_error(e, addr, name))
}

fn bind_error(e: std::io::Error, addr: SocketAddr, name: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({name}): {e}"))
}

/// `addr`, and with capture its IPv6 twin when the host has IPv6 (a host
/// without it keeps the IPv4 listener alone, with a warning).
async fn bind_all(
    addr: SocketAddr,
    name: &str,
    capture: bool,
) -> std::io::Result<Vec<TcpListener>> {
    let first = bind(addr, name).await?;
    let port = first.local_addr()?.port();
    let mut listeners = vec![first];
    if let Some(twin) = ipv6_twin(addr).filter(|_| capture) {
        let twin = SocketAddr::new(twin, port);
        match bind_ipv6_only(twin) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                tracing::warn!(%twin, listener = name, error = %e, "no IPv6 listener: IPv6 traffic is not captured")
            }
        }
    }
    Ok(listeners)
}

/// Where ip6tables `REDIRECT` delivers what iptables sends to `addr`:
/// locally generated traffic to `::1`, traffic from outside to the
/// interface's address (so the wildcard).
fn ipv6_twin(addr: SocketAddr) -> Option<IpAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(Ipv6Addr::LOCALHOST.into()),
        IpAddr::V4(ip) if ip.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED.into()),
        _ => None,
    }
}

/// An IPv6-only listener (the IPv4 side has its own on the same port).
fn bind_ipv6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG as i32)?;
    TcpListener::from_std(socket.into())
}
