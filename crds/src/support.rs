//! What Trellis does with each field of the rule model: the one list of
//! what is enforced and what is refused, and the walk that applies it to a
//! document before it is typed.
//!
//! A field is either compiled into the proxy's config and enforced, or
//! refused with the reason, never accepted and ignored. The list covers
//! every field of Istio's `networking/v1` VirtualService, DestinationRule
//! and ServiceEntry and `security/v1` PeerAuthentication and
//! AuthorizationPolicy; a field in none of these is left to the typed
//! loader, which reports it as unknown.

mod fields;

use crate::diagnostic::FieldPath;

pub use fields::table;

/// What happens to one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Compiled into the proxy's config and enforced.
    Enforced,
    /// A name that identifies the object for people (logs, metrics); it
    /// has no behaviour to enforce.
    Name,
    /// A map whose keys are data (labels, header names), not fields; its
    /// values are objects of the named table, or scalars when `None`.
    Map(Option<&'static str>),
    /// An object described by the named table.
    Object(&'static str),
    /// Enforced for these values only (a sequence: for each element).
    Values(&'static [&'static str], &'static str),
    /// Accepted only with the values that say what Trellis always does
    /// (`gateways: [mesh]`); any other value is refused.
    Fixed(&'static [&'static str], &'static str),
    /// Refused, with the reason a user is told.
    Refused(&'static str),
}

/// One entry of a table: a path relative to the table's object, with `[]`
/// for "each element of a sequence" (`http[].route[].weight`).
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub path: &'static str,
    pub support: Support,
}

/// What the walk found in one document.
#[derive(Debug, Default)]
pub struct Audit {
    /// Fields (or values) refused, with the message for the user.
    pub refused: Vec<(FieldPath, String)>,
    /// Fields present and accepted, with how.
    pub accepted: Vec<(FieldPath, Support)>,
    /// Fields in no table: the typed loader decides (unknown field).
    pub unlisted: Vec<FieldPath>,
}

/// Walks `spec` of a document of `kind` against the list.
pub fn audit(kind: &str, spec: &serde_yaml::Value) -> Audit {
    let mut audit = Audit::default();
    if let Some(fields) = table(kind) {
        walk(spec, fields, "", &FieldPath::root().key("spec"), &mut audit);
    }
    audit
}

fn lookup(fields: &'static [Field], path: &str) -> Option<Support> {
    fields.iter().find(|f| f.path == path).map(|f| f.support)
}

fn walk(
    value: &serde_yaml::Value,
    fields: &'static [Field],
    pattern: &str,
    at: &FieldPath,
    audit: &mut Audit,
) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, child) in map {
                let Some(key) = key.as_str() else { continue };
                let pattern = if pattern.is_empty() {
                    key.to_string()
                } else {
                    format!("{pattern}.{key}")
                };
                let path = at.key(key);
                let Some(support) = lookup(fields, &pattern) else {
                    audit.unlisted.push(path);
                    continue;
                };
                match support {
                    Support::Refused(why) => {
                        audit.refused.push((path, format!("not supported: {why}")));
                        continue;
                    }
                    Support::Values(allowed, why) | Support::Fixed(allowed, why) => {
                        for (value_path, text) in scalars(child, &path) {
                            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&text)) {
                                audit.refused.push((
                                    value_path,
                                    format!(
                                        "{text:?} is not supported (supported: {}): {why}",
                                        allowed.join(", ")
                                    ),
                                ));
                            }
                        }
                    }
                    Support::Enforced | Support::Name => {
                        walk(child, fields, &pattern, &path, audit)
                    }
                    Support::Object(name) => {
                        if let Some(inner) = table(name) {
                            walk(child, inner, "", &path, audit);
                        }
                    }
                    Support::Map(values) => {
                        if let (Some(name), serde_yaml::Value::Mapping(entries)) = (values, child) {
                            let inner = table(name).unwrap_or_default();
                            for (k, v) in entries {
                                if let Some(k) = k.as_str() {
                                    walk(v, inner, "", &path.key(k), audit);
                                }
                            }
                        }
                    }
                }
                audit.accepted.push((path, support));
            }
        }
        serde_yaml::Value::Sequence(items) => {
            let pattern = format!("{pattern}[]");
            for (i, item) in items.iter().enumerate() {
                walk(item, fields, &pattern, &at.index(i), audit);
            }
        }
        _ => {}
    }
}

/// The scalar at `value`, or each scalar of a sequence, as text.
fn scalars(value: &serde_yaml::Value, at: &FieldPath) -> Vec<(FieldPath, String)> {
    let text = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| text(v).map(|t| (at.index(i), t)))
            .collect(),
        v => text(v).map(|t| (at.clone(), t)).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests;
