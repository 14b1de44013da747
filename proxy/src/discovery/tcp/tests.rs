//! Tests of the TCP table: `tcp` routes by source labels and namespace,
//! declared-opaque endpoints, the connection limit.

use std::collections::BTreeMap;

use super::*;
use crate::discovery::cluster::Env;
use crate::discovery::RouteTable;

const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.example]
  addresses: [10.96.0.20, "fd00:96::20"]
  ports:
  - {number: 5432, name: tcp-pg, protocol: TCP}
  - {number: 8080, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db.example
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.example]
  tcp:
  - match: [{port: 5432, sourceLabels: {app: batch}}]
    route: [{destination: {host: db.example, subset: v2}}]
  - match: [{sourceNamespace: ops}]
    route: [{destination: {host: db.example, subset: v2}}]
  - route: [{destination: {host: db.example, subset: v1}}]
"#;

fn table(namespace: &str, labels: &[(&str, &str)]) -> RouteTable {
    let rules = trellis_crds::load_str("r.yaml", RULES).expect("loads");
    let errors = trellis_crds::validate(&rules);
    assert!(errors.is_empty(), "{errors}");
    let config = trellis_crds::compile(
        &rules,
        &trellis_crds::Endpoints::from_service_entries(&rules),
    );
    let node = NodeConfig {
        id: "n".into(),
        namespace: namespace.into(),
        service: "client".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    };
    RouteTable::build(&config, &node, None, &Env::default()).expect("builds")
}

fn subset(t: &RouteTable, addr: &str) -> String {
    let service = t
        .tcp
        .service(addr.parse().expect("addr"))
        .expect("a service");
    service.pick().expect("a cluster").subset.clone()
}

#[test]
fn source_labels_and_namespace_pick_the_route() {
    let batch = table("shop", &[("app", "batch")]);
    assert_eq!(subset(&batch, "10.96.0.20:5432"), "v2");
    assert_eq!(subset(&batch, "[fd00:96::20]:5432"), "v2");
    // the labelled route matches port 5432 only; 8080 falls to the last
    assert_eq!(subset(&batch, "10.96.0.20:8080"), "v1");
    let web = table("shop", &[("app", "web")]);
    assert_eq!(subset(&web, "10.96.0.20:5432"), "v1");
    let ops = table("ops", &[]);
    assert_eq!(subset(&ops, "10.96.0.20:5432"), "v2");
    assert_eq!(subset(&ops, "10.96.0.20:8080"), "v2");
}

#[test]
fn endpoints_of_opaque_ports_are_known() {
    let t = table("shop", &[]);
    // the route for this sidecar leads to v1; its port 5432 is declared TCP
    assert!(t
        .tcp
        .is_opaque_endpoint("10.0.0.1:5432".parse().expect("addr")));
    // HTTP port: detection stays
    assert!(!t
        .tcp
        .is_opaque_endpoint("10.0.0.1:8080".parse().expect("addr")));
    assert!(!t
        .tcp
        .is_opaque_endpoint("10.0.0.9:5432".parse().expect("addr")));
}

#[test]
fn max_connections_limits_open_connections() {
    let t = table("shop", &[]);
    let service = t
        .tcp
        .service("10.96.0.20:5432".parse().expect("addr"))
        .expect("db");
    let limit = service.destinations[0]
        .0
        .tcp_connections
        .clone()
        .expect("maxConnections set");
    let first = limit.try_open().expect("1 of 2");
    let _second = limit.try_open().expect("2 of 2");
    assert!(limit.try_open().is_none(), "a third is over the limit");
    drop(first);
    assert!(
        limit.try_open().is_some(),
        "a closed connection frees its place"
    );
}
