//! The inbound policy of this workload, resolved from the config: its mTLS
//! mode (the most specific PeerAuthentication: workload selector, then
//! namespace, then mesh; PERMISSIVE when none says) and the
//! AuthorizationPolicies that select it (DENY first; with no ALLOW policy
//! everything else is allowed, otherwise only what some ALLOW rule matches).

use std::collections::BTreeMap;

use trellis_api as api;

use crate::config::NodeConfig;
use crate::identity::SpiffeId;

/// Which connections the inbound listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS and plaintext, told apart per connection.
    Permissive,
    /// mTLS only.
    Strict,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
            Self::Disable => "DISABLE",
        }
    }
}

/// What the inbound side enforces for this workload.
#[derive(Clone, Debug)]
pub struct InboundPolicy {
    pub mtls: MtlsMode,
    /// Names of the PeerAuthentication that decided (for /config_dump).
    pub mtls_from: String,
    allow: Vec<api::AuthorizationPolicy>,
    deny: Vec<api::AuthorizationPolicy>,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        Self {
            mtls: MtlsMode::Permissive,
            mtls_from: String::new(),
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// What authorization knows of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub principal: Option<&'a SpiffeId>,
    pub method: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
}

/// Why a request was denied: the policy that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// A DENY policy matched.
    ByDeny(String),
    /// ALLOW policies exist and none matched.
    NotAllowed,
}

fn selects(scope: Option<&api::WorkloadScope>, node: &NodeConfig) -> Option<Specificity> {
    let scope = scope?;
    if scope.mesh_wide {
        return Some(Specificity::Mesh);
    }
    if scope.namespace != node.namespace {
        return None;
    }
    if scope.selector.is_empty() {
        return Some(Specificity::Namespace);
    }
    let matches = scope
        .selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    matches.then_some(Specificity::Workload)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Mesh,
    Namespace,
    Workload,
}

impl InboundPolicy {
    pub fn build(config: &api::ProxyConfig, node: &NodeConfig) -> Self {
        // Most specific first; UNSET defers to the next level.
        let mut modes: BTreeMap<std::cmp::Reverse<Specificity>, (&str, api::MtlsMode)> =
            BTreeMap::new();
        for pa in &config.peer_authentications {
            if let Some(level) = selects(pa.scope.as_ref(), node) {
                if pa.mode() != api::MtlsMode::MtlsUnset {
                    modes
                        .entry(std::cmp::Reverse(level))
                        .or_insert((&pa.name, pa.mode()));
                }
            }
        }
        let (mtls_from, mtls) = match modes.values().next() {
            Some((name, api::MtlsMode::MtlsStrict)) => (*name, MtlsMode::Strict),
            Some((name, api::MtlsMode::MtlsDisable)) => (*name, MtlsMode::Disable),
            Some((name, _)) => (*name, MtlsMode::Permissive),
            None => ("", MtlsMode::Permissive),
        };
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for ap in &config.authorization_policies {
            if selects(ap.scope.as_ref(), node).is_some() {
                match ap.action() {
                    api::AuthorizationAction::AuthorizationDeny => deny.push(ap.clone()),
                    api::AuthorizationAction::AuthorizationAllow => allow.push(ap.clone()),
                }
            }
        }
        Self {
            mtls,
            mtls_from: mtls_from.to_string(),
            allow,
            deny,
        }
    }

    /// DENY before ALLOW; no ALLOW policy allows everything else.
    pub fn authorize(&self, facts: &RequestFacts<'_>) -> Result<(), Denied> {
        if let Some(p) = self.deny.iter().find(|p| policy_matches(p, facts)) {
            return Err(Denied::ByDeny(p.name.clone()));
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| policy_matches(p, facts)) {
            Ok(())
        } else {
            Err(Denied::NotAllowed)
        }
    }

    /// An opaque TCP connection from `principal`: only the source fields
    /// apply. A rule that needs HTTP fields (methods, paths) never allows a
    /// TCP connection and, in a DENY policy, denies it (as Istio does).
    pub fn authorize_tcp(&self, principal: Option<&SpiffeId>) -> Result<(), Denied> {
        let facts = RequestFacts {
            principal,
            method: "",
            path: "",
        };
        let matches = |policy: &api::AuthorizationPolicy, deny: bool| {
            policy.rules.iter().any(|rule| {
                let from =
                    rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, &facts));
                let to = rule.to.is_empty() || rule.to.iter().any(|o| !http_only(o) || deny);
                from && to
            })
        };
        if let Some(p) = self.deny.iter().find(|p| matches(p, true)) {
            return Err(Denied::ByDeny(p.name.clone()));
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| matches(p, false)) {
            Ok(())
        } else {
            Err(Denied::NotAllowed)
        }
    }

    /// Names of the ALLOW and DENY policies in force.
    pub fn policy_names(&self) -> (Vec<&str>, Vec<&str>) {
        (names(&self.allow), names(&self.deny))
    }
}

fn names(policies: &[api::AuthorizationPolicy]) -> Vec<&str> {
    policies.iter().map(|p| p.name.as_str()).collect()
}

fn policy_matches(policy: &api::AuthorizationPolicy, facts: &RequestFacts<'_>) -> bool {
    policy.rules.iter().any(|rule| {
        let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, facts));
        let to = rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, facts));
        from && to
    })
}

/// Fields given must all match. A field on the peer's identity never
/// matches a plaintext peer; its `not` form always does.
fn source_matches(s: &api::AuthorizationSource, facts: &RequestFacts<'_>) -> bool {
    let principal = facts.principal.map(SpiffeId::principal);
    let namespace = facts.principal.and_then(SpiffeId::namespace);
    field(&s.principals, principal, false)
        && field(&s.not_principals, principal, true)
        && field(&s.namespaces, namespace, false)
        && field(&s.not_namespaces, namespace, true)
}

/// An operation that says something only HTTP requests have.
fn http_only(o: &api::AuthorizationOperation) -> bool {
    !(o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty())
}

fn operation_matches(o: &api::AuthorizationOperation, facts: &RequestFacts<'_>) -> bool {
    field(&o.methods, Some(facts.method), false)
        && field(&o.not_methods, Some(facts.method), true)
        && field(&o.paths, Some(facts.path), false)
        && field(&o.not_paths, Some(facts.path), true)
}

/// An empty field matches; otherwise `value` must match some pattern (or,
/// `negated`, none).
fn field(patterns: &[String], value: Option<&str>, negated: bool) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let hit = value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, v)));
    hit != negated
}

/// Istio's forms: `*`, `prefix*`, `*suffix`, exact.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

#[cfg(test)]
mod tests;
