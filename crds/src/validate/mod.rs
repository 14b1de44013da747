//! The validation pass: everything that parses but is still wrong, reported
//! all at once with the same position and path quality as parse errors.

mod policy;
mod route;
mod security;

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Diagnostics, FieldPath};
use crate::duration::parse_duration;
use crate::host::qualify;
use crate::load::RuleSet;
use crate::locate::locate;
use crate::resource::Resource;

/// Checks a whole rule set; returns every problem found (empty = valid).
pub fn validate(rules: &RuleSet) -> Diagnostics {
    let mut report = Report::default();
    let subsets = SubsetIndex::new(rules);
    check_names(rules, &mut report);
    let mut routed_hosts: BTreeMap<String, String> = BTreeMap::new();
    for vs in &rules.virtual_services {
        let mut at = report.on(vs);
        route::check_virtual_service(vs, &subsets, &mut routed_hosts, &mut at);
    }
    let mut rule_hosts: BTreeMap<String, String> = BTreeMap::new();
    for dr in &rules.destination_rules {
        let mut at = report.on(dr);
        policy::check_destination_rule(dr, &mut rule_hosts, &mut at);
    }
    for se in &rules.service_entries {
        let mut at = report.on(se);
        policy::check_service_entry(se, &mut at);
    }
    let mut namespace_wide = BTreeSet::new();
    for pa in &rules.peer_authentications {
        let mut at = report.on(pa);
        security::check_peer_authentication(pa, &mut namespace_wide, &mut at);
    }
    for ap in &rules.authorization_policies {
        let mut at = report.on(ap);
        security::check_authorization_policy(ap, &mut at);
    }
    let mut diagnostics = report.diagnostics;
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Diagnostics(diagnostics)
}

/// Collected diagnostics.
#[derive(Default)]
struct Report {
    diagnostics: Vec<Diagnostic>,
}

impl Report {
    fn on<'a, S>(&'a mut self, resource: &'a Resource<S>) -> At<'a> {
        At {
            report: self,
            origin: resource.origin.as_ref(),
        }
    }
}

/// Reports problems inside one resource.
struct At<'a> {
    report: &'a mut Report,
    origin: Option<&'a crate::resource::Origin>,
}

impl At<'_> {
    fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        let path = &match self.origin {
            Some(o) => o.base.join(path),
            None => path.clone(),
        };
        let position = self
            .origin
            .and_then(|o| locate(&o.source, o.document, path));
        self.report.diagnostics.push(Diagnostic {
            file: self
                .origin
                .map(|o| o.file.to_string())
                .unwrap_or_else(|| "<memory>".into()),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &FieldPath, value: Option<&String>) {
        if let Some(value) = value {
            if let Err(e) = parse_duration(value) {
                self.error(path, e);
            }
        }
    }

    fn percent(&mut self, path: &FieldPath, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.error(path, format!("must be between 0 and 100, got {value}"));
        }
    }

    fn regex(&mut self, path: &FieldPath, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or("invalid regex").trim();
            let reason = last.strip_prefix("error: ").unwrap_or(last);
            self.error(path, format!("invalid regex {pattern:?}: {reason}"));
        }
    }

    fn host(&mut self, path: &FieldPath, host: &str) {
        if host.trim().is_empty() {
            self.error(path, "host must not be empty");
        } else if host.contains(['/', ' ', ':']) {
            self.error(path, format!("invalid host {host:?}"));
        }
    }
}

/// Subsets defined by DestinationRules, by qualified host.
struct SubsetIndex(BTreeMap<String, BTreeSet<String>>);

impl SubsetIndex {
    fn new(rules: &RuleSet) -> Self {
        let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for dr in &rules.destination_rules {
            let host = qualify(&dr.spec.host, dr.namespace());
            let entry = index.entry(host).or_default();
            entry.extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
        }
        Self(index)
    }

    fn defines(&self, host: &str, subset: &str) -> bool {
        self.0.get(host).is_some_and(|s| s.contains(subset))
    }
}

/// Every resource is named, and no two of a kind share namespace and name.
fn check_names(rules: &RuleSet, report: &mut Report) {
    fn each<S>(kind: &str, list: &[Resource<S>], report: &mut Report) {
        let mut seen = BTreeSet::new();
        let path = FieldPath::root().key("metadata").key("name");
        for r in list {
            let mut at = report.on(r);
            if r.name().is_empty() {
                at.error(&path, "metadata.name is required");
            } else if !seen.insert((r.namespace().to_string(), r.name().to_string())) {
                at.error(
                    &path,
                    format!("duplicate {kind} {}/{}", r.namespace(), r.name()),
                );
            }
        }
    }
    each("VirtualService", &rules.virtual_services, report);
    each("DestinationRule", &rules.destination_rules, report);
    each("ServiceEntry", &rules.service_entries, report);
    each("PeerAuthentication", &rules.peer_authentications, report);
    each("AuthorizationPolicy", &rules.authorization_policies, report);
}

#[cfg(test)]
mod tests;
