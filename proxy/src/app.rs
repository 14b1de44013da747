//! Wires the subsystems together: `App::build(config)` binds the listeners,
//! `App::spawn()` starts them, `Running::shutdown()` drains and stops them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config::{Config, DiscoveryConfig};
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
    outbound: TcpListener,
    inbound: Option<TcpListener>,
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
        let outbound = bind(config.outbound.addr, "outbound").await?;
        let admin = bind(config.admin.addr, "admin").await?;
        let inbound = match &config.inbound {
            Some(inbound) => Some(bind(inbound.addr, "inbound").await?),
            None => None,
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
        let outbound_addr = self.outbound.local_addr()?;
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
        tasks.spawn(serve(
            "outbound",
            self.outbound,
            capture,
            outbound,
            rx.clone(),
            drain,
        ));
        if let (Some(listener), Some(inbound)) = (self.inbound, &self.config.inbound) {
            let handler = Arc::new(Inbound::new(
                inbound.forward,
                self.config.outbound.connect_timeout,
                &self.config.node.service,
                store.clone(),
                metrics.clone(),
                identity.clone(),
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
            tasks.spawn(serve(
                "inbound",
                listener,
                handshake,
                service,
                rx.clone(),
                drain,
            ));
        }
        let admin = Arc::new(Admin {
            store: store.clone(),
            metrics,
            identity,
            app_probes: self.config.admin.app_probes.clone(),
        });
        let admin = service_with(admin, |a, req| async move { a.respond(req).await });
        tasks.spawn(serve("admin", self.admin, Plaintext, admin, rx, drain));
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

async fn bind(addr: SocketAddr, name: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({name}): {e}"))
    })
}
