//! The walk over a document: refusals with their paths, values, maps.

use super::*;

fn spec(yaml: &str) -> serde_yaml::Value {
    serde_yaml::from_str(yaml).expect("test YAML")
}

fn refused(kind: &str, yaml: &str) -> Vec<String> {
    audit(kind, &spec(yaml))
        .refused
        .into_iter()
        .map(|(path, message)| format!("{path}: {message}"))
        .collect()
}

#[test]
fn a_refused_field_is_named_with_its_path_and_reason() {
    let got = refused(
        "VirtualService",
        "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n- corsPolicy: {}\n  route: [{destination: {host: a}}]\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("spec.http[1].corsPolicy: not supported: CORS"),
        "{got:?}"
    );
}

#[test]
fn values_outside_the_enforced_ones_are_refused_each() {
    let got = refused(
        "DestinationRule",
        "host: a\ntrafficPolicy: {tls: {mode: SIMPLE}}\nsubsets:\n- name: v1\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n",
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("spec.trafficPolicy.tls.mode: \"SIMPLE\" is not supported"));
    assert!(
        got[1].starts_with("spec.subsets[0].trafficPolicy.loadBalancer.simple: \"PASSTHROUGH\"")
    );
    let mesh_only = refused("VirtualService", "hosts: [a]\ngateways: [mesh, public]\n");
    assert_eq!(mesh_only.len(), 1, "{mesh_only:?}");
    assert!(
        mesh_only[0].starts_with("spec.gateways[1]:"),
        "{mesh_only:?}"
    );
    assert!(refused(
        "DestinationRule",
        "host: a\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL}}"
    )
    .is_empty());
}

#[test]
fn map_keys_are_data_not_fields() {
    let got = audit(
        "VirtualService",
        &spec("hosts: [a]\nhttp:\n- match:\n  - headers: {mirror: {exact: x}, tcp: {prefix: y}}\n    sourceLabels: {tls: v}\n  route: [{destination: {host: a}}]\n"),
    );
    assert!(got.refused.is_empty(), "{:?}", got.refused);
    assert!(got.unlisted.is_empty(), "{:?}", got.unlisted);
}

#[test]
fn an_unknown_field_is_left_to_the_typed_loader() {
    let got = audit("VirtualService", &spec("hosts: [a]\nhttp:\n- rout: []\n"));
    assert!(got.refused.is_empty());
    assert_eq!(got.unlisted[0].to_string(), "spec.http[0].rout");
}
