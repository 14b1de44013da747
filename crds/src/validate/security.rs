//! Validation of `PeerAuthentication` and `AuthorizationPolicy`.

use std::collections::BTreeSet;

use super::At;
use crate::diagnostic::FieldPath;
use crate::resource::Resource;
use crate::types::{AuthorizationPolicySpec, PeerAuthenticationSpec, WorkloadSelector};

/// At most one selector-less PeerAuthentication per namespace: two would
/// leave the namespace's mode to load order.
pub(super) fn check_peer_authentication(
    pa: &Resource<PeerAuthenticationSpec>,
    namespace_wide: &mut BTreeSet<String>,
    at: &mut At<'_>,
) {
    let spec = FieldPath::root().key("spec");
    check_selector(pa.spec.selector.as_ref(), &spec.key("selector"), at);
    let selects_all = pa
        .spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    if selects_all && !namespace_wide.insert(pa.namespace().to_string()) {
        at.error(
            &FieldPath::root().key("metadata").key("name"),
            format!(
                "namespace {} already has a PeerAuthentication without a selector",
                pa.namespace()
            ),
        );
    }
}

pub(super) fn check_authorization_policy(ap: &Resource<AuthorizationPolicySpec>, at: &mut At<'_>) {
    let spec = FieldPath::root().key("spec");
    check_selector(ap.spec.selector.as_ref(), &spec.key("selector"), at);
    for (r, rule) in ap.spec.rules.iter().flatten().enumerate() {
        let rule_path = spec.key("rules").index(r);
        for (f, from) in rule.from.iter().enumerate() {
            let path = rule_path.key("from").index(f).key("source");
            let s = &from.source;
            for (field, values) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
            ] {
                check_patterns(&path.key(field), values, false, at);
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let path = rule_path.key("to").index(t).key("operation");
            let o = &to.operation;
            check_patterns(&path.key("methods"), &o.methods, false, at);
            check_patterns(&path.key("notMethods"), &o.not_methods, false, at);
            check_patterns(&path.key("paths"), &o.paths, true, at);
            check_patterns(&path.key("notPaths"), &o.not_paths, true, at);
        }
    }
}

fn check_selector(selector: Option<&WorkloadSelector>, path: &FieldPath, at: &mut At<'_>) {
    for key in selector.iter().flat_map(|s| s.match_labels.keys()) {
        if key.trim().is_empty() {
            at.error(&path.key("matchLabels"), "a label name must not be empty");
        }
    }
}

/// Istio's value forms: exact, `prefix*`, `*suffix`, or `*` alone.
fn check_patterns(path: &FieldPath, values: &[String], paths: bool, at: &mut At<'_>) {
    for (i, value) in values.iter().enumerate() {
        let stars = value.matches('*').count();
        let message = if value.is_empty() {
            Some("must not be empty".to_string())
        } else if value != "*"
            && (stars > 1 || (stars == 1 && !value.starts_with('*') && !value.ends_with('*')))
        {
            Some(format!(
                "{value:?}: `*` only once, at the start or the end of a value"
            ))
        } else if paths && !value.starts_with(['/', '*']) {
            Some(format!("{value:?}: a path starts with `/`"))
        } else {
            None
        };
        if let Some(message) = message {
            at.error(&path.index(i), message);
        }
    }
}
