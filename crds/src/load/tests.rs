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

#[test]
fn an_empty_or_comment_only_file_is_an_error_an_empty_list_is_not() {
    for text in ["", "\n\n", "# only a comment\n", "---\n# nothing\n---\n"] {
        let errors = load_str("rules.yaml", text).unwrap_err();
        assert_eq!(errors.len(), 1, "{text:?}");
        assert!(errors.0[0].message.contains("no YAML document"), "{errors}");
    }
    let empty =
        load_str("rules.yaml", "apiVersion: v1\nkind: List\nitems: []\n").expect("explicit");
    assert!(empty.is_empty());
}

#[test]
fn a_list_is_read_item_by_item_and_errors_name_the_item() {
    let item = CANARY.split("---").next().expect("first document");
    let indented: String = item
        .trim()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("- {l}\n")
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let list = format!("apiVersion: v1\nkind: List\nitems:\n{indented}");
    let rules = load_str("list.yaml", &list).expect("valid");
    assert_eq!(rules.virtual_services.len(), 1);
    let bad = list.replace("weight: 10", "weight: ten");
    let errors = load_str("list.yaml", &bad).unwrap_err();
    assert_eq!(errors.0[0].path, "items[0].spec.http[0].route[1].weight");
    assert_eq!(errors.0[0].line, Some(15), "{errors}");
    let invalid = list.replace("weight: 10", "weight: 20");
    let rules = load_str("list.yaml", &invalid).expect("loads");
    let errors = crate::validate(&rules);
    assert!(
        errors
            .0
            .iter()
            .any(|d| d.path.starts_with("items[0].spec.http[0]") && d.line.is_some()),
        "{errors}"
    );
}

#[test]
fn oversized_and_deeply_nested_files_are_refused_before_parsing() {
    let deep = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let started = std::time::Instant::now();
    let errors = load_str("deep.yaml", &deep).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(errors.0[0].line, Some(5));
    assert!(
        errors.0[0].message.contains("nested deeper than 64"),
        "{errors}"
    );
    let big = format!("# {}\n", "x".repeat(MAX_SOURCE_BYTES));
    let errors = load_str("big.yaml", &big).unwrap_err();
    assert!(errors.0[0].message.contains("limited to 8 MiB"), "{errors}");
}
