//! Loading rule documents from multi-document YAML into a [`RuleSet`].
//!
//! Each document is parsed into a YAML tree, dispatched on `kind`, then typed;
//! a typing error is located in the file through its field path. Every
//! document is tried, so one bad document does not hide the others' errors.
//! A file over the size or nesting bounds is refused before it is parsed;
//! a file with no document at all (empty, comments only) is an error, as a
//! half-written file would be: no rules is written as an empty `List`.
//! A `v1` `List` (what `kubectl get -o yaml` prints) is read item by item.

mod bounds;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostic, Diagnostics, FieldPath};
use crate::locate::locate;
use crate::resource::{Origin, Resource, NETWORKING_API_VERSIONS, SECURITY_API_VERSIONS};
use crate::support;
pub use bounds::{MAX_FLOW_DEPTH, MAX_SOURCE_BYTES};

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
    let whole = |line: Option<usize>, column: Option<usize>, message: String| {
        Err(Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            line,
            column,
            path: String::new(),
            message,
        }]))
    };
    if source.len() > MAX_SOURCE_BYTES {
        let message = format!(
            "the file is {} bytes; rule files are limited to {} MiB",
            source.len(),
            MAX_SOURCE_BYTES >> 20
        );
        return whole(None, None, message);
    }
    if let Some((line, column)) = bounds::too_deep(source, MAX_FLOW_DEPTH) {
        let message = format!("collections nested deeper than {MAX_FLOW_DEPTH} levels");
        return whole(Some(line), Some(column), message);
    }
    let file: Arc<str> = Arc::from(file);
    let text: Arc<str> = Arc::from(source);
    let mut rules = RuleSet::default();
    let mut errors = Vec::new();
    let mut documents = 0;
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
        if value.is_null() {
            continue; // `---` with nothing after it, or only comments
        }
        documents += 1;
        let origin = Origin {
            file: file.clone(),
            document: index,
            source: text.clone(),
            base: FieldPath::root(),
        };
        if let Err(mut d) = load_list_or_document(value, origin, &mut rules) {
            errors.append(&mut d);
        }
    }
    if documents == 0 && errors.is_empty() {
        let message = "no YAML document (the file is empty or only comments); write no rules as \
                       `apiVersion: v1`, `kind: List`, `items: []`"
            .to_string();
        return whole(None, None, message);
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

/// A `v1` `List`'s items one by one, else the document itself.
fn load_list_or_document(
    value: serde_yaml::Value,
    origin: Origin,
    rules: &mut RuleSet,
) -> Result<(), Vec<Diagnostic>> {
    let is_list = value.get("apiVersion").and_then(serde_yaml::Value::as_str) == Some("v1")
        && value.get("kind").and_then(serde_yaml::Value::as_str) == Some("List");
    if !is_list {
        return load_document(value, origin, FieldPath::root(), rules);
    }
    let items = match value.get("items") {
        None | Some(serde_yaml::Value::Null) => return Ok(()),
        Some(serde_yaml::Value::Sequence(items)) => items.clone(),
        Some(_) => {
            let path = FieldPath::root().key("items");
            let position = locate(&origin.source, origin.document, &path);
            return Err(vec![Diagnostic {
                file: origin.file.to_string(),
                line: position.map(|p| p.0),
                column: position.map(|p| p.1),
                path: path.to_string(),
                message: "a List's items must be a sequence".into(),
            }]);
        }
    };
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let base = FieldPath::root().key("items").index(i);
        let origin = Origin {
            base: base.clone(),
            ..origin.clone()
        };
        if let Err(mut e) = load_document(item, origin, base, rules) {
            errors.append(&mut e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// One document (or List item) at `base` in its YAML document.
fn load_document(
    value: serde_yaml::Value,
    origin: Origin,
    base: FieldPath,
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
    let root = base.clone();
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
            .flat_map(|(path, message)| at(base.join(&path), message))
            .collect());
    }
    match kind {
        "VirtualService" => rules
            .virtual_services
            .push(typed::<VirtualServiceSpec>(value, &origin, &base, at)?),
        "DestinationRule" => rules
            .destination_rules
            .push(typed::<DestinationRuleSpec>(value, &origin, &base, at)?),
        "PeerAuthentication" => rules
            .peer_authentications
            .push(typed::<PeerAuthenticationSpec>(value, &origin, &base, at)?),
        "AuthorizationPolicy" => rules
            .authorization_policies
            .push(typed::<AuthorizationPolicySpec>(value, &origin, &base, at)?),
        _ => rules
            .service_entries
            .push(typed::<ServiceEntrySpec>(value, &origin, &base, at)?),
    }
    Ok(())
}

fn typed<S: DeserializeOwned>(
    value: serde_yaml::Value,
    origin: &Origin,
    base: &FieldPath,
    at: impl Fn(FieldPath, String) -> Vec<Diagnostic>,
) -> Result<Resource<S>, Vec<Diagnostic>> {
    match serde_path_to_error::deserialize::<_, Resource<S>>(value) {
        Ok(mut resource) => {
            resource.origin = Some(origin.clone());
            Ok(resource)
        }
        Err(e) => {
            let path = to_field_path(base, e.path());
            Err(at(path, bare_message(&e.inner().to_string())))
        }
    }
}

fn to_field_path(base: &FieldPath, path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment as S;
    path.iter().fold(base.clone(), |p, segment| match segment {
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
