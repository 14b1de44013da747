//! The security half of the compiled config: PeerAuthentications and
//! AuthorizationPolicies with their scope, and whether (and to whom) a
//! proxy originates mTLS for an endpoint.

use trellis_api as api;

use super::{Instance, Service};
use crate::load::RuleSet;
use crate::types::{
    AuthorizationAction, MtlsMode, TlsMode, WorkloadSelector, MESH_ROOT_NAMESPACES,
};

/// The endpoint label saying a sidecar runs beside it (Istio's name).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// mTLS to an instance: a DestinationRule's `tls.mode` decides when given
/// (ISTIO_MUTUAL); otherwise the instance's sidecar label does (auto mTLS),
/// unless its service is outside the mesh.
pub(super) fn originates_mtls(
    rule_mode: Option<TlsMode>,
    service: &Service,
    instance: &Instance,
) -> bool {
    match rule_mode {
        Some(mode) => mode == TlsMode::ISTIO_MUTUAL,
        None => {
            !service.external
                && instance.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio")
        }
    }
}

/// Who may serve `instance`: the service's `subjectAltNames` when declared,
/// else the instance's service account (`default` when it names none) in
/// the service's namespace, as `ns/<ns>/sa/<sa>` for the proxy to complete
/// with its trust domain.
pub(super) fn identities(service: &Service, instance: &Instance) -> Vec<String> {
    if !service.subject_alt_names.is_empty() {
        return service.subject_alt_names.clone();
    }
    let sa = instance.service_account.as_deref().unwrap_or("default");
    vec![format!("ns/{}/sa/{sa}", service.namespace)]
}

fn scope(namespace: &str, selector: Option<&WorkloadSelector>) -> api::WorkloadScope {
    let selector: std::collections::BTreeMap<String, String> =
        selector.map(|s| s.match_labels.clone()).unwrap_or_default();
    api::WorkloadScope {
        namespace: namespace.to_string(),
        mesh_wide: selector.is_empty() && MESH_ROOT_NAMESPACES.contains(&namespace),
        selector,
    }
}

pub(super) fn peer_authentications(rules: &RuleSet) -> Vec<api::PeerAuthentication> {
    rules
        .peer_authentications
        .iter()
        .map(|pa| api::PeerAuthentication {
            name: pa.name().to_string(),
            scope: Some(scope(pa.namespace(), pa.spec.selector.as_ref())),
            mode: match pa.spec.mtls.as_ref().and_then(|m| m.mode) {
                None | Some(MtlsMode::UNSET) => api::MtlsMode::MtlsUnset,
                Some(MtlsMode::PERMISSIVE) => api::MtlsMode::MtlsPermissive,
                Some(MtlsMode::STRICT) => api::MtlsMode::MtlsStrict,
                Some(MtlsMode::DISABLE) => api::MtlsMode::MtlsDisable,
            } as i32,
        })
        .collect()
}

pub(super) fn authorization_policies(rules: &RuleSet) -> Vec<api::AuthorizationPolicy> {
    rules
        .authorization_policies
        .iter()
        .map(|ap| api::AuthorizationPolicy {
            name: format!("{}.{}", ap.namespace(), ap.name()),
            scope: Some(scope(ap.namespace(), ap.spec.selector.as_ref())),
            action: match ap.spec.action {
                Some(AuthorizationAction::DENY) => api::AuthorizationAction::AuthorizationDeny,
                // AUDIT and CUSTOM are refused by validation.
                _ => api::AuthorizationAction::AuthorizationAllow,
            } as i32,
            rules: ap
                .spec
                .rules
                .iter()
                .flatten()
                .map(|rule| api::AuthorizationRule {
                    from: rule
                        .from
                        .iter()
                        .map(|f| api::AuthorizationSource {
                            principals: f.source.principals.clone(),
                            not_principals: f.source.not_principals.clone(),
                            namespaces: f.source.namespaces.clone(),
                            not_namespaces: f.source.not_namespaces.clone(),
                        })
                        .collect(),
                    to: rule
                        .to
                        .iter()
                        .map(|t| api::AuthorizationOperation {
                            methods: t.operation.methods.clone(),
                            not_methods: t.operation.not_methods.clone(),
                            paths: t.operation.paths.clone(),
                            not_paths: t.operation.not_paths.clone(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}
