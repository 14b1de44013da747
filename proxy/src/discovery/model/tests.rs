//! Tests of the compiled route table: host aliases, match order, weights.

use super::*;
use crate::discovery::cluster::Env;

fn node(ns: &str, labels: &[(&str, &str)]) -> NodeConfig {
    NodeConfig {
        id: "test".into(),
        namespace: ns.into(),
        service: "client".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

const RULES: &str = r#"
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 1001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 1002}, labels: {version: v2}}
  - {address: 127.0.0.1, ports: {http: 1003}, labels: {version: v3}}
---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    - uri: {regex: "/v2/.*"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: canaries
    match: [{sourceLabels: {track: canary}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: rest
    route: [{destination: {host: reviews, subset: v3}}]
"#;

fn table(node: &NodeConfig) -> RouteTable {
    let rules = trellis_crds::load_str("r.yaml", RULES).expect("valid");
    let config = trellis_crds::compile(
        &rules,
        &trellis_crds::Endpoints::from_service_entries(&rules),
    );
    RouteTable::build(&config, node, None, &Env::default()).expect("builds")
}

fn route_name(t: &RouteTable, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let view = RequestView {
        method: "GET",
        path,
        query: None,
        authority: host,
        port: 80,
        headers: &map,
    };
    let vh = t.host(host)?;
    vh.routes
        .iter()
        .find(|r| r.matches(&view))
        .map(|r| r.name.clone())
}

#[test]
fn host_aliases_resolve_to_one_service() {
    let t = table(&node("shop", &[]));
    for name in [
        "reviews",
        "reviews:9080",
        "reviews.shop",
        "reviews.shop.svc",
        "Reviews.shop.svc.cluster.local:9080",
    ] {
        assert_eq!(
            t.host(name).map(|v| v.name.as_str()),
            Some("reviews.shop.svc.cluster.local"),
            "{name}"
        );
    }
    assert!(t.host("ratings").is_none());
}

#[test]
fn short_names_work_from_another_namespace_when_unambiguous() {
    let t = table(&node("other", &[]));
    assert!(t.host("reviews").is_some());
}

#[test]
fn routes_match_in_order() {
    let t = table(&node("shop", &[]));
    assert_eq!(
        route_name(&t, "reviews", "/", &[("end-user", "jason")]).as_deref(),
        Some("jason")
    );
    assert_eq!(
        route_name(&t, "reviews", "/", &[("end-user", "bob")]).as_deref(),
        Some("rest")
    );
    assert_eq!(
        route_name(&t, "reviews", "/v2/x", &[]).as_deref(),
        Some("jason")
    );
    // regexes match the whole path
    assert_eq!(
        route_name(&t, "reviews", "/a/v2/x", &[]).as_deref(),
        Some("rest")
    );
}

#[test]
fn source_labels_select_by_this_sidecar() {
    let canary = table(&node("shop", &[("track", "canary")]));
    assert_eq!(
        route_name(&canary, "reviews", "/", &[]).as_deref(),
        Some("canaries")
    );
    let plain = table(&node("shop", &[("track", "stable")]));
    assert_eq!(
        route_name(&plain, "reviews", "/", &[]).as_deref(),
        Some("rest")
    );
}

#[test]
fn weighted_pick_follows_weights() {
    let rules = trellis_crds::load_str("r.yaml", &RULES.replace(
        "  - name: rest\n    route: [{destination: {host: reviews, subset: v3}}]",
        "  - name: rest\n    route:\n    - {destination: {host: reviews, subset: v1}, weight: 75}\n    - {destination: {host: reviews, subset: v3}, weight: 25}",
    ))
    .expect("valid");
    let config = trellis_crds::compile(
        &rules,
        &trellis_crds::Endpoints::from_service_entries(&rules),
    );
    let t = RouteTable::build(&config, &node("shop", &[]), None, &Env::default()).expect("builds");
    let route = t
        .host("reviews")
        .expect("host")
        .routes
        .iter()
        .find(|r| r.name == "rest")
        .expect("route");
    let v3 = (0..20_000)
        .filter(|_| route.pick().map(|d| d.cluster.subset.as_str()) == Some("v3"))
        .count();
    assert!((4_400..5_600).contains(&v3), "v3 picked {v3} of 20000");
}

#[test]
fn invalid_regex_is_refused() {
    let mut config = api::ProxyConfig::default();
    config.hosts.push(api::VirtualHost {
        name: "a".into(),
        routes: vec![api::Route {
            name: "r".into(),
            matches: vec![api::RouteMatch {
                uri: Some(api::StringMatch {
                    kind: Some(api::string_match::Kind::Regex("(".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    let errors =
        RouteTable::build(&config, &node("default", &[]), None, &Env::default()).unwrap_err();
    assert!(
        errors[0].to_string().contains("invalid regex"),
        "{}",
        errors[0]
    );
}
