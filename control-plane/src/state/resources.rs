//! Between the rule model (`trellis_crds::RuleSet`) and what the log
//! stores: each resource as its JSON document under a [`ResourceKey`].

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use trellis_crds::{Origin, Resource, RuleSet};

use super::{MeshCommand, MeshState, ResourceKey};

/// The kind under which a Kubernetes Service is stored (its document's
/// spec is a ServiceEntry spec).
pub const KUBERNETES_SERVICE: &str = "Service";

/// Every rule of `rules` as `(key, document)`.
pub fn documents(rules: &RuleSet) -> Result<Vec<(ResourceKey, serde_json::Value)>, String> {
    let mut out = Vec::with_capacity(rules.len());
    for vs in &rules.virtual_services {
        out.push(document(vs)?);
    }
    for dr in &rules.destination_rules {
        out.push(document(dr)?);
    }
    for se in &rules.service_entries {
        out.push(document(se)?);
    }
    for pa in &rules.peer_authentications {
        out.push(document(pa)?);
    }
    for ap in &rules.authorization_policies {
        out.push(document(ap)?);
    }
    Ok(out)
}

fn document<S: Serialize>(r: &Resource<S>) -> Result<(ResourceKey, serde_json::Value), String> {
    let key = ResourceKey {
        kind: r.kind.clone(),
        namespace: r.namespace().to_string(),
        name: r.name().to_string(),
    };
    let value = serde_json::to_value(r).map_err(|e| format!("{key}: {e}"))?;
    Ok((key, value))
}

/// The rules `state` holds, typed again. A document that does not type
/// (written by another version, say) or that sets a field Trellis refuses
/// (the support list applies to every writer) is reported and left out.
/// Each rule's origin names it (`VirtualService default/reviews`), so a
/// validation error says which resource it is in.
pub fn rule_set<'a>(
    resources: impl IntoIterator<Item = (&'a ResourceKey, &'a serde_json::Value)>,
) -> (RuleSet, Vec<String>) {
    let mut rules = RuleSet::default();
    let mut errors = Vec::new();
    for (key, document) in resources {
        let origin = Origin {
            file: format!("{} {}/{}", key.kind, key.namespace, key.name).into(),
            document: 0,
            source: "".into(),
            base: Default::default(),
        };
        let refused = refused_fields(&key.kind, document);
        let result = if !refused.is_empty() {
            Err(refused.join("; "))
        } else {
            match key.kind.as_str() {
                "VirtualService" => typed(document, origin).map(|r| rules.virtual_services.push(r)),
                "DestinationRule" => {
                    typed(document, origin).map(|r| rules.destination_rules.push(r))
                }
                // A Kubernetes Service, as the kube source stores it: a
                // ServiceEntry of its host, ports and ready endpoints.
                "ServiceEntry" | KUBERNETES_SERVICE => {
                    typed(document, origin).map(|r| rules.service_entries.push(r))
                }
                "PeerAuthentication" => {
                    typed(document, origin).map(|r| rules.peer_authentications.push(r))
                }
                "AuthorizationPolicy" => {
                    typed(document, origin).map(|r| rules.authorization_policies.push(r))
                }
                other => Err(format!("kind {other} is not a rule")),
            }
        };
        if let Err(e) = result {
            errors.push(format!("{key}: {e}"));
        }
    }
    (rules, errors)
}

/// `path: message` for each field of `document` the support list refuses.
fn refused_fields(kind: &str, document: &serde_json::Value) -> Vec<String> {
    let kind = if kind == KUBERNETES_SERVICE {
        "ServiceEntry"
    } else {
        kind
    };
    let Some(spec) = document.get("spec") else {
        return Vec::new();
    };
    let Ok(spec) = serde_yaml::to_value(spec) else {
        return Vec::new(); // JSON always converts; typing reports it otherwise
    };
    trellis_crds::support::audit(kind, &spec)
        .refused
        .into_iter()
        .map(|(path, message)| format!("{path}: {message}"))
        .collect()
}

fn typed<S: DeserializeOwned>(
    document: &serde_json::Value,
    origin: Origin,
) -> Result<Resource<S>, String> {
    let mut resource = Resource::<S>::deserialize(document).map_err(|e| e.to_string())?;
    resource.origin = Some(origin);
    Ok(resource)
}

/// The rules of the whole state.
pub fn state_rules(state: &MeshState) -> (RuleSet, Vec<String>) {
    rule_set(state.resources().map(|(k, r)| (k, &r.document)))
}

/// Every error of the rules in `state`.
pub fn errors_of(state: &MeshState) -> Vec<String> {
    let (rules, mut errors) = state_rules(state);
    errors.extend(trellis_crds::validate(&rules).to_lines());
    errors
}

/// A change a source may not make: the errors it would add.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub key: ResourceKey,
    pub errors: Vec<String>,
}

/// Splits `commands` (single applies and deletes) into those that can be
/// applied to `state` together without adding an error, and the others
/// with the errors each would add. A change that is valid only with
/// another one (a route and the subset it names) is admitted with it.
pub fn admit(state: &MeshState, commands: Vec<MeshCommand>) -> (Vec<MeshCommand>, Vec<Refused>) {
    let known: BTreeSet<String> = errors_of(state).into_iter().collect();
    let added = |s: &MeshState| -> Vec<String> {
        errors_of(s)
            .into_iter()
            .filter(|e| !known.contains(e))
            .collect()
    };
    let with = |s: &MeshState, c: &MeshCommand| {
        let mut s = s.clone();
        s.apply(c.clone(), u64::MAX);
        s
    };
    let mut all = state.clone();
    for c in &commands {
        all.apply(c.clone(), u64::MAX);
    }
    if added(&all).is_empty() {
        return (commands, Vec::new());
    }
    let (mut admitted, mut current, mut pending) = (Vec::new(), state.clone(), commands);
    loop {
        let before = pending.len();
        let mut still = Vec::new();
        for c in pending {
            let next = with(&current, &c);
            if added(&next).is_empty() {
                current = next;
                admitted.push(c);
            } else {
                still.push(c);
            }
        }
        pending = still;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    let refused = pending
        .iter()
        .filter_map(|c| {
            let key = match c {
                MeshCommand::Apply { key, .. } | MeshCommand::Delete { key } => key.clone(),
                _ => return None,
            };
            Some(Refused {
                key,
                errors: added(&with(&current, c)),
            })
        })
        .collect();
    (admitted, refused)
}

/// The fewest commands that make the resources owned by `source` equal to
/// `desired`: applies for new or changed ones, deletes for the ones gone.
/// A resource another source wrote is taken over when `desired` names it.
pub fn diff(
    state: &MeshState,
    source: &str,
    desired: Vec<(ResourceKey, serde_json::Value)>,
) -> Vec<MeshCommand> {
    let desired: BTreeMap<ResourceKey, serde_json::Value> = desired.into_iter().collect();
    let mut commands = Vec::new();
    for (key, record) in state.resources() {
        if record.source == source && !desired.contains_key(key) {
            commands.push(MeshCommand::Delete { key: key.clone() });
        }
    }
    for (key, document) in desired {
        if !state.get(&key).is_some_and(|r| r.same(&document, source)) {
            commands.push(MeshCommand::Apply {
                key,
                document,
                source: source.to_string(),
            });
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"#;

    fn loaded() -> RuleSet {
        trellis_crds::load_str("rules.yaml", RULES).expect("valid")
    }

    #[test]
    fn documents_round_trip_to_the_same_rules() {
        let docs = documents(&loaded()).expect("serializes");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0.to_string(), "VirtualService/shop/reviews");
        let mut state = MeshState::default();
        for command in diff(&state.clone(), "file", docs) {
            state.apply(command, 1);
        }
        let (mut rules, errors) = state_rules(&state);
        assert!(errors.is_empty(), "{errors:?}");
        // Rules from the state are named by their key, not a file.
        let named = rules.virtual_services[0]
            .origin
            .as_ref()
            .map(|o| o.file.to_string());
        assert_eq!(named.as_deref(), Some("VirtualService shop/reviews"));
        for vs in &mut rules.virtual_services {
            vs.origin = None;
        }
        for dr in &mut rules.destination_rules {
            dr.origin = None;
        }
        let mut expected = loaded();
        for vs in &mut expected.virtual_services {
            vs.origin = None;
        }
        for dr in &mut expected.destination_rules {
            dr.origin = None;
        }
        assert_eq!(rules.virtual_services, expected.virtual_services);
        assert_eq!(rules.destination_rules, expected.destination_rules);
    }

    fn apply_of(yaml: &str) -> MeshCommand {
        let rules = trellis_crds::load_str("x.yaml", yaml).expect("loads");
        let (key, document) = documents(&rules).expect("serializes").remove(0);
        MeshCommand::Apply {
            key,
            document,
            source: "kube".into(),
        }
    }

    #[test]
    fn admit_keeps_out_only_the_changes_that_add_errors() {
        let docs = documents(&loaded()).expect("serializes");
        let (vs, dr) = (docs[0].clone(), docs[1].clone());
        let apply = |(key, document): (ResourceKey, serde_json::Value)| MeshCommand::Apply {
            key,
            document,
            source: "kube".into(),
        };
        // The route before the subset it needs: admitted together.
        let (admitted, refused) = admit(&MeshState::default(), vec![apply(vs), apply(dr)]);
        assert_eq!((admitted.len(), refused.len()), (2, 0));

        let bad = apply_of(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: shop}
spec:
  hosts: [bad]
  http:
  - route:
    - {destination: {host: reviews}, weight: 90}
    - {destination: {host: reviews}, weight: 20}
",
        );
        let good = apply_of(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good, namespace: shop}
spec:
  hosts: [good]
  http:
  - route:
    - destination: {host: reviews}
",
        );
        let (admitted, refused) = admit(&MeshState::default(), vec![bad, good.clone()]);
        assert_eq!(admitted, vec![good]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].key.name, "bad");
        assert!(
            refused[0]
                .errors
                .iter()
                .any(|e| e.contains("spec.http[0].route")),
            "{:?}",
            refused[0].errors
        );
    }

    #[test]
    fn diff_is_minimal_and_keeps_other_sources() {
        let docs = documents(&loaded()).expect("serializes");
        let mut state = MeshState::default();
        state.apply(
            MeshCommand::Apply {
                key: ResourceKey {
                    kind: "VirtualService".into(),
                    namespace: "shop".into(),
                    name: "by-hand".into(),
                },
                document: serde_json::json!({}),
                source: "cli".into(),
            },
            1,
        );
        for c in diff(&state.clone(), "file", docs.clone()) {
            state.apply(c, 2);
        }
        assert!(
            diff(&state, "file", docs.clone()).is_empty(),
            "nothing changed"
        );
        let only_vs = vec![docs[0].clone()];
        let commands = diff(&state, "file", only_vs);
        assert_eq!(
            commands,
            vec![MeshCommand::Delete {
                key: docs[1].0.clone()
            }],
            "the rule removed from the files is deleted; the cli's stays"
        );
    }
}
