//! `PeerAuthentication` and `AuthorizationPolicy` (group
//! `security.trellis.io/v1`; Istio's `security.istio.io/v1` is accepted):
//! which connections a sidecar's inbound side accepts (mTLS mode) and which
//! requests it lets through to the application.
//!
//! Istio fields this model does not implement (`when`, `ipBlocks`,
//! `requestPrincipals`, `hosts`, `ports`, `portLevelMtls`, ...) are refused
//! when loading, never ignored: ignoring one would widen an ALLOW rule.

use serde::{Deserialize, Serialize};

use super::WorkloadSelector;

/// Namespaces whose selector-less policies apply to the whole mesh.
pub const MESH_ROOT_NAMESPACES: &[&str] = &["trellis-system", "istio-system"];

/// The mTLS mode of the workloads a policy selects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "security.trellis.io",
        version = "v1",
        kind = "PeerAuthentication",
        root = "PeerAuthenticationResource",
        namespaced,
        status = "crate::ResourceStatus",
        shortname = "pa",
        category = "trellis",
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Applied","type":"string","description":"Proxies running this generation, of those it affects","jsonPath":".status.applied"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads in the policy's namespace with these labels; none = all of
    /// the namespace (all of the mesh in a root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerMtls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum MtlsMode {
    /// Inherit from the namespace or mesh policy.
    UNSET,
    /// mTLS and plaintext, told apart per connection.
    PERMISSIVE,
    /// mTLS only.
    STRICT,
    /// Plaintext only.
    DISABLE,
}

/// Which requests reach the workloads a policy selects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "security.trellis.io",
        version = "v1",
        kind = "AuthorizationPolicy",
        root = "AuthorizationPolicyResource",
        namespaced,
        status = "crate::ResourceStatus",
        shortname = "ap",
        category = "trellis",
        printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Applied","type":"string","description":"Proxies running this generation, of those it affects","jsonPath":".status.applied"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthorizationAction>,
    /// A request matches when it matches any rule. No rules: an ALLOW policy
    /// allows nothing, a DENY policy denies nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<AuthorizationRule>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum AuthorizationAction {
    ALLOW,
    DENY,
    /// Accepted by the schema (Istio has them) and refused by validation.
    AUDIT,
    CUSTOM,
}

/// Matches when some `from` and some `to` match; an absent list matches all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    pub operation: Operation,
}

/// The peer: every field given must match; a field matches when any of its
/// values does (exact, `prefix*`, `*suffix`, or `*`). Principals are SPIFFE
/// ids without the scheme: `cluster.local/ns/default/sa/web`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
}

/// The request: every field given must match, as for [`Source`]. Paths are
/// matched after normalization.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}
