//! Loading rule documents from multi-document YAML into a [`RuleSet`].
//!
//! Each document is parsed into a YAML tree, dispatched on `kind`, then typed;
//! a typing error is located in the file through its field path. Every
//! document is tried, so one bad document does not hide the others' errors.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostic, Diagnostics, FieldPath};
use crate::locate::locate;
use crate::resource::{Origin, Resource, NETWORKING_API_VERSIONS, SECURITY_API_VERSIONS};
use crate::support;
use crate::types::{
    AuthorizationPolicySpec, DestinationRuleSpec, PeerAuthenticationSpec, ServiceEntrySpec,
    VirtualServiceSpec,
};

/// Rules loaded from one or more files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub virtual_services: Vec<Resource<VirtualServiceSpec>>,
    pub destination_rules: Vec<Resource<DestinationRuleSpec>>,
    pub service_entries: Vec<Resource<ServiceEntrySpec>>,
    pub peer_authentications: Vec<Resource<PeerAuthenticationSpec>>,
    pub authorization_policies: Vec<Resource<AuthorizationPolicySpec>>,
    /// Documents of kinds outside the mesh API (a Deployment beside the
    /// rules), as `file: kind name`; they are not rules and are left alone.
    pub skipped: Vec<String>,
}

impl RuleSet {
    /// Appends every rule of `other`.
    pub fn extend(&mut self, other: RuleSet) {
        self.virtual_services.extend(other.virtual_services);
        self.destination_rules.extend(other.destination_rules);
        self.service_entries.extend(other.service_entries);
        self.peer_authentications.extend(other.peer_authentications);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.skipped.extend(other.skipped);
    }

    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.peer_authentications.len()
            + self.authorization_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses every document of `source` (named `file` in errors).
pub fn load_str(file: &str, source: &str) -> Result<RuleSet, Diagnostics> {
    let file: Arc<str> = Arc::from(file);
    let text: Arc<str> = Arc::from(source);
    let mut rules = RuleSet::default();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(source).enumerate() {
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // A syntax error ends the stream: later documents cannot be read.
                errors.push(Diagnostic {
                    file: file.to_string(),
                    line: e.location().map(|l| l.line()),
                    column: e.location().map(|l| l.column()),
                    path: String::new(),
                    message: bare_message(&e.to_string()),
                });
                break;
            }
        };
        let origin = Origin {
            file: file.clone(),
            document: index,
            source: text.clone(),
        };
        if let Err(mut d) = load_document(value, origin, &mut rules) {
            errors.append(&mut d);
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(Diagnostics(errors))
    }
}

/// Reads and parses each file; errors of every file are returned together.
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<RuleSet, Diagnostics> {
    let mut rules = RuleSet::default();
    let mut errors = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(source) => match load_str(&name, &source) {
                Ok(loaded) => rules.extend(loaded),
                Err(Diagnostics(mut e)) => errors.append(&mut e),
            },
            Err(e) => errors.push(Diagnostic {
                file: name,
                line: None,
                column: None,
                path: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(Diagnostics(errors))
    }
}

fn load_document(
    value: serde_yaml::Value,
    origin: Origin,
    rules: &mut RuleSet,
) -> Result<(), Vec<Diagnostic>> {
    let at = |path: FieldPath, message: String| {
        let position = locate(&origin.source, origin.document, &path);
        vec![Diagnostic {
            file: origin.file.to_string(),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            path: path.to_string(),
            message,
        }]
    };
    let root = FieldPath::root();
    let mapping = match &value {
        serde_yaml::Value::Null => return Ok(()),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(at(root, "a document must be a mapping".into())),
    };
    let field = |name: &str| mapping.get(name).and_then(serde_yaml::Value::as_str);
    let Some(api_version) = field("apiVersion") else {
        return Err(at(root.key("apiVersion"), "apiVersion is required".into()));
    };
    let Some(kind) = field("kind") else {
        return Err(at(root.key("kind"), "kind is required".into()));
    };
    let group = api_version.split('/').next().unwrap_or_default();
    let mesh_group = group.starts_with("networking.") || group.starts_with("security.");
    if !(mesh_group && (group.ends_with(".istio.io") || group.ends_with(".trellis.io"))) {
        let name = mapping
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or("");
        rules
            .skipped
            .push(format!("{}: {api_version} {kind} {name}", origin.file));
        return Ok(());
    }
    let supported = [
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "PeerAuthentication",
        "AuthorizationPolicy",
    ];
    if !supported.contains(&kind) {
        return Err(at(
            root.key("kind"),
            format!(
                "kind {kind} is not supported (supported: {})",
                supported.join(", ")
            ),
        ));
    }
    let versions = match kind {
        "PeerAuthentication" | "AuthorizationPolicy" => SECURITY_API_VERSIONS,
        _ => NETWORKING_API_VERSIONS,
    };
    if !versions.contains(&api_version) {
        return Err(at(
            root.key("apiVersion"),
            format!(
                "apiVersion {api_version} is not accepted for {kind} (use one of: {})",
                versions.join(", ")
            ),
        ));
    }
    let spec = mapping.get("spec").unwrap_or(&serde_yaml::Value::Null);
    let refused = support::audit(kind, spec).refused;
    if !refused.is_empty() {
        return Err(refused
            .into_iter()
            .flat_map(|(path, message)| at(path, message))
            .collect());
    }
    match kind {
        "VirtualService" => rules
            .virtual_services
            .push(typed::<VirtualServiceSpec>(value, &origin, at)?),
        "DestinationRule" => rules
            .destination_rules
            .push(typed::<DestinationRuleSpec>(value, &origin, at)?),
        "PeerAuthentication" => rules
            .peer_authentications
            .push(typed::<PeerAuthenticationSpec>(value, &origin, at)?),
        "AuthorizationPolicy" => rules
            .authorization_policies
            .push(typed::<AuthorizationPolicySpec>(value, &origin, at)?),
        _ => rules
            .service_entries
            .push(typed::<ServiceEntrySpec>(value, &origin, at)?),
    }
    Ok(())
}

fn typed<S: DeserializeOwned>(
    value: serde_yaml::Value,
    origin: &Origin,
    at: impl Fn(FieldPath, String) -> Vec<Diagnostic>,
) -> Result<Resource<S>, Vec<Diagnostic>> {
    match serde_path_to_error::deserialize::<_, Resource<S>>(value) {
        Ok(mut resource) => {
            resource.origin = Some(origin.clone());
            Ok(resource)
        }
        Err(e) => {
            let path = to_field_path(e.path());
            Err(at(path, bare_message(&e.inner().to_string())))
        }
    }
}

fn to_field_path(path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment as S;
    path.iter()
        .fold(FieldPath::root(), |p, segment| match segment {
            S::Seq { index } => p.index(*index),
            S::Map { key } => p.key(key.clone()),
            S::Enum { variant } => p.key(variant.clone()),
            S::Unknown => p.key("?"),
        })
}

/// serde_yaml's message without the position suffix we report separately.
fn bare_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    message.to_string()
}

#[cfg(test)]
mod tests;
