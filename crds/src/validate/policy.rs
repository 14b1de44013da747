//! Validation of `DestinationRule` policies and `ServiceEntry` declarations.

use std::collections::{BTreeMap, BTreeSet};

use super::At;
use crate::diagnostic::FieldPath;
use crate::host::qualify;
use crate::resource::Resource;
use crate::types::{DestinationRuleSpec, ServiceEntrySpec, TrafficPolicy};

pub(super) fn check_destination_rule(
    dr: &Resource<DestinationRuleSpec>,
    rule_hosts: &mut BTreeMap<String, String>,
    at: &mut At<'_>,
) {
    let spec = FieldPath::root().key("spec");
    at.host(&spec.key("host"), &dr.spec.host);
    let fqdn = qualify(&dr.spec.host, dr.namespace());
    let owner = format!("{}/{}", dr.namespace(), dr.name());
    match rule_hosts.get(&fqdn) {
        Some(other) if *other != owner => at.error(
            &spec.key("host"),
            format!("host {fqdn} already has DestinationRule {other}"),
        ),
        _ => {
            rule_hosts.insert(fqdn, owner);
        }
    }
    if let Some(policy) = &dr.spec.traffic_policy {
        check_policy(&spec.key("trafficPolicy"), policy, at);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        let path = spec.key("subsets").index(i);
        if subset.name.is_empty() {
            at.error(&path.key("name"), "subset name must not be empty");
        } else if !names.insert(subset.name.as_str()) {
            at.error(
                &path.key("name"),
                format!("duplicate subset {:?}", subset.name),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            check_policy(&path.key("trafficPolicy"), policy, at);
        }
    }
}

fn check_policy(path: &FieldPath, policy: &TrafficPolicy, at: &mut At<'_>) {
    if let Some(lb) = &policy.load_balancer {
        let lpath = path.key("loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            at.error(&lpath, "set either simple or consistentHash, not both");
        }
        if let Some(hash) = &lb.consistent_hash {
            let keys = [
                hash.http_header_name.is_some(),
                hash.http_cookie.is_some(),
                hash.use_source_ip == Some(true),
                hash.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                at.error(
                    &lpath.key("consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName must be set",
                );
            }
            if let Some(cookie) = &hash.http_cookie {
                at.duration(
                    &lpath.key("consistentHash").key("httpCookie").key("ttl"),
                    cookie.ttl.as_ref(),
                );
            }
        }
    }
    if let Some(pool) = &policy.connection_pool {
        let ppath = path.key("connectionPool");
        if let Some(tcp) = &pool.tcp {
            at.duration(
                &ppath.key("tcp").key("connectTimeout"),
                tcp.connect_timeout.as_ref(),
            );
            non_negative(
                &ppath.key("tcp").key("maxConnections"),
                tcp.max_connections,
                at,
            );
        }
        if let Some(http) = &pool.http {
            let hpath = ppath.key("http");
            at.duration(&hpath.key("idleTimeout"), http.idle_timeout.as_ref());
            for (name, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
            ] {
                non_negative(&hpath.key(name), v, at);
            }
        }
    }
    if let Some(limit) = &policy.rate_limit {
        super::route::check_rate_limit(&path.key("rateLimit"), limit, at);
    }
    if let Some(budget) = &policy.retry_budget {
        if let Some(p) = budget.percent {
            at.percent(&path.key("retryBudget").key("percent"), p);
        }
    }
    if let Some(outlier) = &policy.outlier_detection {
        let opath = path.key("outlierDetection");
        at.duration(&opath.key("interval"), outlier.interval.as_ref());
        at.duration(
            &opath.key("baseEjectionTime"),
            outlier.base_ejection_time.as_ref(),
        );
        if let Some(p) = outlier.max_ejection_percent {
            at.percent(&opath.key("maxEjectionPercent"), p.into());
        }
        if let Some(p) = outlier.min_health_percent {
            at.percent(&opath.key("minHealthPercent"), p.into());
        }
    }
}

fn non_negative(path: &FieldPath, value: Option<i32>, at: &mut At<'_>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        at.error(path, format!("must not be negative, got {v}"));
    }
}

pub(super) fn check_service_entry(se: &Resource<ServiceEntrySpec>, at: &mut At<'_>) {
    let spec = FieldPath::root().key("spec");
    if se.spec.hosts.is_empty() {
        at.error(&spec.key("hosts"), "at least one host is required");
    }
    for (i, host) in se.spec.hosts.iter().enumerate() {
        at.host(&spec.key("hosts").index(i), host);
    }
    let mut port_names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in se.spec.ports.iter().enumerate() {
        let path = spec.key("ports").index(i);
        if !(1..=65535).contains(&port.number) {
            at.error(
                &path.key("number"),
                format!("port {} is out of range", port.number),
            );
        } else if !numbers.insert(port.number) {
            at.error(
                &path.key("number"),
                format!("duplicate port {}", port.number),
            );
        }
        if !port.name.is_empty() && !port_names.insert(port.name.as_str()) {
            at.error(
                &path.key("name"),
                format!("duplicate port name {:?}", port.name),
            );
        }
        if let Some(p) = &port.protocol {
            let known = [
                "HTTP", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "HTTPS", "TLS", "MONGO", "REDIS",
                "MYSQL",
            ];
            if !known.contains(&p.to_ascii_uppercase().as_str()) {
                at.error(&path.key("protocol"), format!("unknown protocol {p:?}"));
            }
        }
    }
    if !se.spec.endpoints.is_empty() && se.spec.ports.is_empty() {
        at.error(
            &spec.key("ports"),
            "endpoints need at least one port on the service",
        );
    }
    for (i, ep) in se.spec.endpoints.iter().enumerate() {
        let path = spec.key("endpoints").index(i);
        if ep.address.trim().is_empty() {
            at.error(&path.key("address"), "address must not be empty");
        }
        for (name, number) in &ep.ports {
            let ppath = path.key("ports").key(name.clone());
            if !port_names.contains(name.as_str()) {
                at.error(
                    &ppath,
                    format!("port name {name:?} is not declared in spec.ports"),
                );
            }
            if !(1..=65535).contains(number) {
                at.error(&ppath, format!("port {number} is out of range"));
            }
        }
    }
}
