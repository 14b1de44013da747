//! The envelope every rule document has (`apiVersion`, `kind`, `metadata`,
//! `spec`) and where it was loaded from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The group/version Trellis writes; Istio's are accepted on input.
pub const NETWORKING_API_VERSION: &str = "networking.trellis.io/v1";

/// `apiVersion`s accepted for networking kinds.
pub const NETWORKING_API_VERSIONS: &[&str] = &[
    NETWORKING_API_VERSION,
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// The group/version Trellis writes for security kinds.
pub const SECURITY_API_VERSION: &str = "security.trellis.io/v1";

/// `apiVersion`s accepted for security kinds.
pub const SECURITY_API_VERSIONS: &[&str] = &[
    SECURITY_API_VERSION,
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];

/// Namespace of a rule that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A rule document: `spec` typed by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Accepted and ignored on input (a `kubectl get -o yaml` dump has one).
    #[serde(default, skip_serializing)]
    pub status: Option<serde_yaml::Value>,
    /// Where the document came from; not part of the document.
    #[serde(skip)]
    pub origin: Option<Origin>,
}

impl<S> Resource<S> {
    /// The namespace, `default` when the document names none.
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// The parts of Kubernetes object metadata the mesh reads; other fields
/// (uid, resourceVersion, managedFields, ...) are accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where a document was read: the file, its index in the file, and the
/// file's text (kept so later passes can point at a line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub file: Arc<str>,
    pub document: usize,
    pub source: Arc<str>,
    /// Where the resource sits in its YAML document: the root, or
    /// `items[i]` of a `List`.
    pub base: crate::diagnostic::FieldPath,
}

/// `status` of the CRDs: conditions the control plane writes back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `N/M`: N of the M connected proxies the resource affects have
    /// acknowledged a config that contains its observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}
