//! The Trellis rule model: Istio-shaped `VirtualService`, `DestinationRule`
//! and `ServiceEntry` types, loading from YAML with precise errors, a
//! validation pass, and [`compile`], the single translation from rules to the
//! [`trellis_api::ProxyConfig`] a proxy runs.
//!
//! The Kubernetes derives (CustomResource, JSON schema) and the `crdgen`
//! binary are behind the `kube` feature, which the proxy does not enable.

#![forbid(unsafe_code)]

pub mod compile;
pub mod diagnostic;
pub mod duration;
pub mod host;
pub mod load;
pub mod locate;
pub mod resource;
pub mod support;
pub mod types;
pub mod validate;

#[cfg(feature = "kube")]
pub mod crd;

pub use compile::{compile, Endpoints, Instance, Service, ServicePortSpec};
pub use diagnostic::{Diagnostic, Diagnostics, FieldPath};
pub use load::{load_files, load_str, RuleSet, MAX_FLOW_DEPTH, MAX_SOURCE_BYTES};
pub use resource::{ObjectMeta, Origin, Resource, ResourceStatus};
pub use validate::validate;

/// Loads `paths` and validates the result: the rules, or every error.
pub fn load_and_validate<P: AsRef<std::path::Path>>(paths: &[P]) -> Result<RuleSet, Diagnostics> {
    let rules = load_files(paths)?;
    let errors = validate(&rules);
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}
