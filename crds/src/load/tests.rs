//! Tests of YAML loading: kinds, apiVersions, positions and paths of errors.

use super::*;

const CANARY: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
"#;

#[test]
fn loads_istio_documents_and_skips_other_kinds() {
    let rules = load_str("canary.yaml", CANARY).expect("valid");
    assert_eq!(rules.virtual_services.len(), 1);
    let vs = &rules.virtual_services[0];
    assert_eq!(vs.namespace(), "default");
    assert_eq!(vs.spec.http[0].route[1].weight, Some(10));
    assert_eq!(rules.skipped.len(), 1);
}

#[test]
fn type_error_names_line_column_and_path() {
    let bad = CANARY.replace("weight: 10", "weight: ten");
    let errors = load_str("canary.yaml", &bad).unwrap_err();
    assert_eq!(errors.len(), 1);
    let d = &errors.0[0];
    assert_eq!(d.path, "spec.http[0].route[1].weight");
    assert_eq!((d.line, d.column), (Some(13), Some(15)));
    assert!(d.message.contains("expected i32"), "{}", d.message);
    assert!(d
        .to_string()
        .starts_with("canary.yaml:13:15: spec.http[0].route[1].weight: invalid type"));
}

#[test]
fn unknown_field_is_reported_at_the_field() {
    let bad = CANARY.replace("weight: 90", "weigth: 90");
    let d = &load_str("f.yaml", &bad).unwrap_err().0[0];
    assert_eq!(d.path, "spec.http[0].route[0].weigth");
    assert_eq!(d.line, Some(11));
    assert!(
        d.message.contains("unknown field `weigth`"),
        "{}",
        d.message
    );
}

#[test]
fn every_bad_document_is_reported() {
    let two = format!(
        "{}\n---\n{}",
        CANARY.replace("weight: 90", "weight: x"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n"
    );
    let errors = load_str("f.yaml", &two).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors}");
    assert!(errors.0[1]
        .message
        .contains("kind Gateway is not supported"));
}

#[test]
fn syntax_error_has_position() {
    let errors = load_str("f.yaml", "kind: [unclosed\n").unwrap_err();
    assert_eq!(errors.0[0].line, Some(2));
}

#[test]
fn deprecated_fault_percent_is_accepted() {
    let src = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {percent: 100, httpStatus: 500}
    route:
    - destination: {host: ratings, subset: v1}
"#;
    let rules = load_str("f.yaml", src).expect("valid");
    let abort = rules.virtual_services[0].spec.http[0]
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!(abort.percent, Some(100));
    assert_eq!(rules.virtual_services[0].namespace(), "bookinfo");
}
