//! Spec types of the rule model, with Istio's field names (camelCase) and
//! meaning. Durations stay strings here ("1.5s") and are checked by the
//! validation pass, so one bad value does not hide every other error.

mod destination_rule;
mod security;
mod service_entry;
mod virtual_service;

pub use destination_rule::*;
pub use security::*;
pub use service_entry::*;
pub use virtual_service::*;

use serde::{Deserialize, Serialize};

/// A string matched exactly, by prefix, or by a regular expression (RE2 syntax).
/// Exactly one field is set; for headers and query parameters none set means
/// "present with any value".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A percentage, 0.0 to 100.0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Selects workloads by their labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// A local rate limit (Trellis extension): a token bucket holding `burst`
/// requests, refilled at `requestsPerSecond`; over it the proxy answers 429.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Requests that may pass at once; `requestsPerSecond` (rounded up,
    /// at least 1) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}
