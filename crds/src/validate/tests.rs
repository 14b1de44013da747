//! Tests of the validation pass: every error, with position.

use super::*;
use crate::load::load_str;

const BROKEN: &str = r#"apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v1
    labels: {version: v2}
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: "/api/(v1"}
    timeout: 3 seconds
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v4}
      weight: 10
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: empty}
spec:
  hosts: [""]
  http:
  - route:
    - destination: {host: ratings}
"#;

#[test]
fn reports_every_error_with_position() {
    let rules = load_str("broken.yaml", BROKEN).expect("parses");
    let errors = validate(&rules);
    let lines: Vec<String> = errors.to_lines();
    let expect = [
        "broken.yaml:9:11: spec.subsets[1].name: duplicate subset \"v1\"",
        "broken.yaml:19:20: spec.http[0].match[0].uri.regex: invalid regex",
        "broken.yaml:22:5: spec.http[0].route: weights sum to 90, expected 100",
        "broken.yaml:24:44: spec.http[0].route[1].destination.subset: subset \"v4\" is not defined",
        "broken.yaml:20:14: spec.http[0].timeout: invalid duration \"3 seconds\"",
        "broken.yaml:31:11: spec.hosts[0]: host must not be empty",
    ];
    for want in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "missing {want:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(lines.len(), expect.len(), "{}", lines.join("\n"));
}

#[test]
fn valid_canary_has_no_errors() {
    let ok = BROKEN
        .split("---")
        .take(2)
        .collect::<Vec<_>>()
        .join("---")
        .replace(
            "name: v1\n    labels: {version: v2}",
            "name: v2\n    labels: {version: v2}",
        )
        .replace("(v1", "v1")
        .replace("3 seconds", "1.5s")
        .replace(
            "subset: v4}\n      weight: 10",
            "subset: v2}\n      weight: 20",
        );
    let rules = load_str("ok.yaml", &ok).expect("parses");
    let errors = validate(&rules);
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn duplicate_resources_and_hosts_are_errors() {
    let src = "apiVersion: networking.trellis.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n";
    let twice = format!("{src}---\n{src}");
    let rules = load_str("d.yaml", &twice).expect("parses");
    let errors = validate(&rules);
    assert!(
        errors
            .iter()
            .any(|d| d.message == "duplicate VirtualService default/a"),
        "{errors}"
    );
}

const SECURITY: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.trellis.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: shop}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/*/sa/web"]}}]
    to: [{operation: {paths: ["admin", "/ok/*"]}}]
"#;

#[test]
fn security_kinds_are_checked() {
    let rules = load_str("sec.yaml", SECURITY).expect("parses");
    assert_eq!(rules.peer_authentications.len(), 2);
    let errors: Vec<String> = validate(&rules).0.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "sec.yaml:9:18: metadata.name: namespace shop already has a PeerAuthentication without a selector",
            "sec.yaml:19:35: spec.rules[0].from[0].source.principals[0]: \"cluster.local/*/sa/web\": `*` only once, at the start or the end of a value",
            "sec.yaml:20:31: spec.rules[0].to[0].operation.paths[0]: \"admin\": a path starts with `/`",
        ]
    );
}

#[test]
fn unimplemented_authorization_fields_are_refused_not_ignored() {
    let doc = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c}
spec:
  action: AUDIT
  rules:
  - when: [{key: "request.headers[x]", values: ["1"]}]
"#;
    let errors = load_str("when.yaml", doc).expect_err("`when` is not supported");
    let text = errors.to_string();
    assert!(
        text.contains("when.yaml:7:11: spec.rules[0].when: not supported"),
        "{text}"
    );
    assert!(
        text.contains("when.yaml:5:11: spec.action: \"AUDIT\" is not supported"),
        "{text}"
    );
}
