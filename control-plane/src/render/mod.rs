//! What proxies run: the replicated rules compiled with `crds::compile`,
//! once per config version, shared by every stream of the replica.

use std::sync::Arc;

use tokio::sync::watch;
use trellis_api as api;
use trellis_crds::{compile, Endpoints};

use crate::raft::StateMachineStore;
use crate::state::resources::state_rules;
use crate::state::MeshState;

/// The config of one version.
#[derive(Debug, Default)]
pub struct Rendered {
    pub version: u64,
    pub config: api::ProxyConfig,
}

/// Mesh-wide settings that are flags of the replicas, not rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeshSettings {
    /// outboundTrafficPolicy REGISTRY_ONLY.
    pub registry_only: bool,
}

/// Compiles `state` as config `version`.
pub fn render(state: &MeshState, version: u64, mesh: MeshSettings) -> Rendered {
    let (rules, errors) = state_rules(state);
    for e in &errors {
        tracing::error!(version, "stored resource left out of the config: {e}");
    }
    let mut config = compile(&rules, &Endpoints::from_service_entries(&rules));
    config.version = version;
    config.registry_only = mesh.registry_only;
    config.source = "control-plane".to_string();
    Rendered { version, config }
}

/// Renders every new config version of `sm` into `out` until `shutdown`.
pub async fn run(
    sm: StateMachineStore,
    mesh: MeshSettings,
    out: watch::Sender<Arc<Rendered>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut versions = sm.subscribe();
    let mut last = None;
    loop {
        versions.borrow_and_update();
        // Version and state are read together, then compiled off the lock.
        let (version, state) = sm.read(|a| (a.version, a.state.clone()));
        if last != Some(version) {
            let rendered = tokio::task::spawn_blocking(move || render(&state, version, mesh))
                .await
                .unwrap_or_default();
            out.send_replace(Arc::new(rendered));
            last = Some(version);
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
