//! Every field of Istio's VirtualService, DestinationRule and ServiceEntry
//! (`fixtures/every-field.yaml`) is either refused with its path, or
//! compiled: removing it changes the compiled config or makes the rules
//! invalid. Nothing is accepted and ignored.

use trellis_crds::diagnostic::Segment;
use trellis_crds::support::{audit, Support};
use trellis_crds::{compile, load_str, validate, Endpoints, FieldPath};

const FIXTURE: &str = include_str!("fixtures/every-field.yaml");

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("fixture parses"))
        .collect()
}

fn text(docs: &[serde_yaml::Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc.get("kind").and_then(|k| k.as_str()).expect("kind")
}

fn spec(doc: &serde_yaml::Value) -> &serde_yaml::Value {
    doc.get("spec").expect("spec")
}

/// Removes the node at `path`, then its parents that this left empty.
fn strip(doc: &mut serde_yaml::Value, path: &FieldPath) {
    remove(doc, path);
    let mut parent = path.segments().to_vec();
    while parent.len() > 1 {
        parent.pop();
        let path = parent.iter().fold(FieldPath::root(), |p, s| match s {
            Segment::Key(k) => p.key(k.clone()),
            Segment::Index(i) => p.index(*i),
        });
        let node = parent.iter().try_fold(&*doc, |node, s| match s {
            Segment::Key(k) => node.get(k.as_str()),
            Segment::Index(i) => node.get(*i),
        });
        match node {
            Some(serde_yaml::Value::Mapping(m)) if m.is_empty() => remove(doc, &path),
            _ => break,
        }
    }
}

/// Removes the node at `path` (a key, or an element of a sequence).
fn remove(doc: &mut serde_yaml::Value, path: &FieldPath) {
    let (last, parents) = path.segments().split_last().expect("non-empty path");
    let mut node = doc;
    for segment in parents {
        node = match segment {
            Segment::Key(k) => node.get_mut(k.as_str()).expect("path exists"),
            Segment::Index(i) => node.get_mut(*i).expect("path exists"),
        };
    }
    match (last, node) {
        (Segment::Key(k), serde_yaml::Value::Mapping(m)) => {
            m.remove(k.as_str());
        }
        (Segment::Index(i), serde_yaml::Value::Sequence(s)) => {
            s.remove(*i);
        }
        (segment, _) => panic!("cannot remove {segment:?} in {path}"),
    }
}

/// The compiled config, or why the rules are refused.
fn compiled(docs: &[serde_yaml::Value]) -> Result<trellis_api::ProxyConfig, String> {
    let rules = load_str("every-field.yaml", &text(docs)).map_err(|e| e.to_string())?;
    let errors = validate(&rules);
    if !errors.is_empty() {
        return Err(errors.to_string());
    }
    Ok(compile(&rules, &Endpoints::from_service_entries(&rules)))
}

#[test]
fn every_field_is_compiled_or_refused_with_its_position() {
    let mut docs = documents(FIXTURE);
    let diagnostics =
        load_str("every-field.yaml", FIXTURE).expect_err("the fixture has refused fields");
    let mut refused = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let found = audit(kind(doc), spec(doc));
        assert!(
            found.unlisted.is_empty(),
            "document {index}: fields the support list does not know: {:?}",
            found.unlisted
        );
        refused.extend(found.refused.into_iter().map(|(path, _)| (index, path)));
    }
    // Each refusal is reported once, with file, line, column and path.
    assert_eq!(diagnostics.len(), refused.len(), "{diagnostics}");
    for d in diagnostics.iter() {
        assert!(d.line.is_some() && d.column.is_some(), "no position: {d}");
        assert!(
            refused.iter().any(|(_, p)| p.to_string() == d.path),
            "reported but not refused by the list: {d}"
        );
    }
    // What a user tried and found silently ignored before is refused now.
    for named in [
        "spec.tls",
        "spec.gateways[1]",
        "spec.subsets[4].trafficPolicy.tls.mode",
        "spec.subsets[4].trafficPolicy.loadBalancer.simple",
        "spec.trafficPolicy.connectionPool.http.idleTimeout",
        "spec.endpoints[0].weight",
    ] {
        assert!(
            diagnostics.iter().any(|d| d.path == named),
            "{named} is not refused:\n{diagnostics}"
        );
    }

    // Without the refused fields the rules load; each field left is compiled.
    for (index, path) in refused.iter().rev() {
        strip(&mut docs[*index], path);
    }
    let baseline = compiled(&docs).expect("valid without the refused fields");
    let mut checked = 0;
    let mut ignored = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let found = audit(kind(doc), spec(doc));
        assert!(found.refused.is_empty());
        for (path, support) in found.accepted {
            if matches!(support, Support::Name | Support::Fixed(..)) {
                continue; // nothing to enforce: names, and values stating the only behaviour
            }
            let mut without = docs.clone();
            remove(&mut without[index], &path);
            if compiled(&without).is_ok_and(|config| config == baseline) {
                ignored.push(format!("document {index}: {path}"));
            }
            checked += 1;
        }
    }
    assert!(
        ignored.is_empty(),
        "accepted but removing them changes nothing: {ignored:#?}"
    );
    assert!(checked > 100, "only {checked} fields checked");
}
