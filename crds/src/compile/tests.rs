//! Tests of compile: canary subsets, default routes, policy merging.

use super::*;
use crate::load::load_str;

const RULES: &str = r#"
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 18002}, labels: {version: v2}}
---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
---
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.1, ports: {http: 18003}}]
"#;

fn compiled() -> api::ProxyConfig {
    let rules = load_str("rules.yaml", RULES).expect("valid");
    assert!(
        crate::validate(&rules).is_empty(),
        "{}",
        crate::validate(&rules)
    );
    compile(&rules, &Endpoints::from_service_entries(&rules))
}

#[test]
fn canary_routes_and_subsets() {
    let config = compiled();
    let reviews = config
        .hosts
        .iter()
        .find(|h| h.name == "reviews.default.svc.cluster.local")
        .expect("reviews host");
    assert_eq!(reviews.namespace, "default");
    assert_eq!(reviews.routes.len(), 2);
    assert_eq!(reviews.routes[0].matches[0].headers[0].name, "end-user");
    let split: Vec<_> = reviews.routes[1]
        .destinations
        .iter()
        .map(|d| (d.cluster.as_str(), d.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("reviews.default.svc.cluster.local:9080|v1", 90),
            ("reviews.default.svc.cluster.local:9080|v2", 10)
        ]
    );
    let v2 = config
        .clusters
        .iter()
        .find(|c| c.subset == "v2")
        .expect("v2 cluster");
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(v2.endpoints[0].port, 18002);
    let policy = v2.policy.as_ref().expect("policy");
    // subset overrides the load balancer, inherits outlier detection
    assert_eq!(
        policy.load_balancer.as_ref().map(|l| l.simple),
        Some(api::load_balancer::Simple::RoundRobin as i32)
    );
    assert_eq!(
        policy
            .outlier_detection
            .as_ref()
            .map(|o| o.consecutive_5xx_errors),
        Some(5)
    );
}

#[test]
fn service_without_rules_routes_to_all_endpoints() {
    let config = compiled();
    let ratings = config
        .hosts
        .iter()
        .find(|h| h.name == "ratings.default.svc.cluster.local")
        .expect("ratings host");
    assert_eq!(ratings.routes.len(), 1);
    let cluster = &ratings.routes[0].destinations[0].cluster;
    let c = config
        .clusters
        .iter()
        .find(|c| &c.name == cluster)
        .expect("cluster");
    assert_eq!(c.endpoints.len(), 1);
}

#[test]
fn compile_is_deterministic() {
    assert_eq!(compiled(), compiled());
}

#[test]
fn sidecar_endpoints_get_mtls_and_their_identity() {
    let rules = load_str(
        "m.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  ports: [{number: 80, name: http}]
  endpoints:
  - {address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio, v: a}, serviceAccount: reviews}
  - {address: 10.0.0.2, labels: {security.istio.io/tlsMode: istio, v: b}}
  - {address: 10.0.0.3, labels: {v: c}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: plain, labels: {v: a}, trafficPolicy: {tls: {mode: DISABLE}}}
  - {name: forced, labels: {v: c}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: plain}, weight: 50}
    - {destination: {host: reviews, subset: forced}, weight: 50}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#,
    )
    .expect("loads");
    let config = compile(&rules, &Endpoints::from_service_entries(&rules));
    let unrouted = compile(
        &RuleSet {
            virtual_services: Vec::new(),
            ..rules.clone()
        },
        &Endpoints::from_service_entries(&rules),
    );
    let all = unrouted
        .clusters
        .iter()
        .find(|c| c.subset.is_empty())
        .expect("default cluster");
    let view: Vec<(bool, Vec<String>)> = all
        .endpoints
        .iter()
        .map(|e| (e.mtls, e.identities.clone()))
        .collect();
    assert_eq!(
        view,
        [
            (true, vec!["ns/shop/sa/reviews".to_string()]),
            (true, vec!["ns/shop/sa/default".to_string()]),
            (false, vec!["ns/shop/sa/default".to_string()]),
        ]
    );
    let subset = |name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.subset == name)
            .map(|c| c.endpoints.iter().map(|e| e.mtls).collect::<Vec<_>>())
    };
    assert_eq!(
        subset("plain"),
        Some(vec![false]),
        "DISABLE wins over the label"
    );
    assert_eq!(
        subset("forced"),
        Some(vec![true]),
        "ISTIO_MUTUAL without the label"
    );
    let pa = &config.peer_authentications[0];
    assert_eq!(pa.mode(), api::MtlsMode::MtlsStrict);
    assert!(pa.scope.as_ref().is_some_and(|s| s.mesh_wide));
}
