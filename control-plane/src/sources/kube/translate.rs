//! From Kubernetes objects to the documents the log stores: a rule custom
//! resource is loaded and checked like a file (the same errors `trellisctl
//! validate` prints); a Service with its EndpointSlices and Pods becomes a
//! ServiceEntry-shaped document of its host, ClusterIP, TCP ports (HTTP or
//! opaque) and ready endpoints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::DynamicObject;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::{json, Value};
use trellis_crds::host::CLUSTER_SUFFIX;
use trellis_crds::types::{Resolution, ServiceEntrySpec, ServicePort, WorkloadEntry};

use crate::state::resources::{documents, KUBERNETES_SERVICE};
use crate::state::ResourceKey;

/// A rule custom resource as a stored document, or the errors that keep it
/// out. `label` names it in errors (`VirtualService shop/reviews`).
pub fn rule_document(
    object: &DynamicObject,
    kind: &str,
) -> Result<(ResourceKey, Value), Vec<String>> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let label = format!("{kind} {namespace}/{name}");
    let api_version = object
        .types
        .as_ref()
        .map(|t| t.api_version.clone())
        .unwrap_or_default();
    let document = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": object.labels(),
        },
        "spec": object.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    let text = serde_yaml::to_string(&document).map_err(|e| vec![format!("{label}: {e}")])?;
    let rules = trellis_crds::load_str(&label, &text).map_err(|d| d.to_lines())?;
    let mut docs = documents(&rules).map_err(|e| vec![e])?;
    match docs.pop() {
        Some(doc) if docs.is_empty() => Ok(doc),
        _ => Err(vec![format!("{label}: not one rule")]),
    }
}

/// The parts of an EndpointSlice (`discovery.k8s.io` v1 or v1beta1: the
/// same shape for what is read here).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slice {
    /// `null` in a slice of a Service with no endpoints.
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    target_ref: Option<TargetRef>,
}

#[derive(Debug, Default, Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct TargetRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct SlicePort {
    #[serde(default)]
    name: Option<String>,
    port: Option<u32>,
}

/// A list the apiserver may send as `null`, as empty.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The label the EndpointSlice controller puts on a Service's slices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every Service with at least one TCP port as a stored document: host
/// `name.ns.svc.cluster.local`, its ClusterIP, its ports, and one endpoint per
/// ready address of its EndpointSlices, labelled with its Pod's labels and
/// identified by its Pod's service account. Sorted, so the same cluster
/// state gives the same documents.
pub fn service_documents(
    services: &[std::sync::Arc<Service>],
    slices: &[std::sync::Arc<DynamicObject>],
    pod: impl Fn(&str, &str) -> Option<std::sync::Arc<Pod>>,
) -> Vec<(ResourceKey, Value)> {
    let mut by_service: BTreeMap<(String, String), Vec<Slice>> = BTreeMap::new();
    for object in slices {
        let Some(service) = object.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        let namespace = object.namespace().unwrap_or_default();
        match Slice::deserialize(&object.data) {
            Ok(slice) => by_service
                .entry((namespace, service.clone()))
                .or_default()
                .push(slice),
            Err(e) => {
                tracing::warn!(slice = %object.name_any(), error = %e, "EndpointSlice left out")
            }
        }
    }
    let mut out = Vec::new();
    for service in services {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let ports = tcp_ports(service);
        if ports.is_empty() {
            continue;
        }
        let mut endpoints = Vec::new();
        for slice in by_service
            .get(&(namespace.clone(), name.clone()))
            .into_iter()
            .flatten()
        {
            let port_numbers: BTreeMap<String, u32> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
                .collect();
            for endpoint in &slice.endpoints {
                // Absent means ready (the API's documented default).
                if endpoint.conditions.ready == Some(false) {
                    continue;
                }
                let pod = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind == "Pod")
                    .and_then(|r| pod(&namespace, &r.name));
                for address in &endpoint.addresses {
                    endpoints.push(WorkloadEntry {
                        address: address.clone(),
                        ports: port_numbers.clone(),
                        labels: pod.as_ref().map(|p| p.labels().clone()).unwrap_or_default(),
                        service_account: pod
                            .as_ref()
                            .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
                            .or_else(|| pod.as_ref().map(|_| "default".to_string())),
                        ..WorkloadEntry::default()
                    });
                }
            }
        }
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.dedup_by(|a, b| a.address == b.address);
        let addresses = service
            .spec
            .as_ref()
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .collect();
        let spec = ServiceEntrySpec {
            hosts: vec![format!("{name}.{namespace}.{CLUSTER_SUFFIX}")],
            addresses,
            ports,
            resolution: Some(Resolution::STATIC),
            endpoints,
            ..ServiceEntrySpec::default()
        };
        let document = json!({
            "apiVersion": "v1",
            "kind": KUBERNETES_SERVICE,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        let key = ResourceKey {
            kind: KUBERNETES_SERVICE.to_string(),
            namespace,
            name,
        };
        out.push((key, document));
    }
    out
}

/// The Service's TCP ports, with the protocol Trellis gives them (UDP and
/// SCTP ports are left out).
fn tcp_ports(service: &Service) -> Vec<ServicePort> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let protocol = protocol(p.app_protocol.as_deref(), &name)?;
            let target_port = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    u32::try_from(*n).ok()
                }
                _ => None,
            };
            Some(ServicePort {
                number: u32::try_from(p.port).ok()?,
                protocol: Some(protocol.to_string()),
                name,
                target_port,
            })
        })
        .collect()
}

/// The protocol of a Service port, as Istio reads it: `appProtocol`, else
/// the port name's prefix (`http-web`, `grpc`). A port that declares
/// neither is taken as HTTP; one that declares anything else is opaque TCP.
fn protocol(app_protocol: Option<&str>, name: &str) -> Option<&'static str> {
    let declared = match app_protocol {
        Some(p) => p.to_ascii_lowercase(),
        None => name.split('-').next().unwrap_or("").to_ascii_lowercase(),
    };
    match declared.as_str() {
        "http" => Some("HTTP"),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some("HTTP2"),
        "grpc" => Some("GRPC"),
        "grpc-web" => Some("GRPC-WEB"),
        _ if app_protocol.is_some() => Some("TCP"),
        "" => Some("HTTP"),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kafka" | "zookeeper" => {
            Some("TCP")
        }
        _ => Some("HTTP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_follow_app_protocol_then_the_name() {
        assert_eq!(protocol(None, "http"), Some("HTTP"));
        assert_eq!(protocol(None, "http-web"), Some("HTTP"));
        assert_eq!(protocol(None, "grpc"), Some("GRPC"));
        assert_eq!(protocol(None, ""), Some("HTTP"));
        assert_eq!(protocol(None, "tcp-db"), Some("TCP"));
        assert_eq!(protocol(None, "https"), Some("TCP"));
        assert_eq!(protocol(Some("kubernetes.io/h2c"), "tcp"), Some("HTTP2"));
        assert_eq!(protocol(Some("mysql"), "http"), Some("TCP"));
    }

    fn object(value: Value) -> std::sync::Arc<DynamicObject> {
        std::sync::Arc::new(serde_json::from_value(value).expect("an object"))
    }

    #[test]
    fn a_slice_without_endpoints_is_an_empty_one() {
        // The apiserver sends `endpoints: null` for a Service with no pods.
        let slice: Slice = serde_json::from_value(json!({
            "endpoints": null, "ports": [{"name": "http", "port": 9080}]
        }))
        .expect("parses");
        assert!(slice.endpoints.is_empty());
    }

    #[test]
    fn a_service_takes_its_ready_endpoints_and_their_pods() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 9080, "targetPort": 9080},
                {"name": "tcp-admin", "port": 9999}
            ]}
        }))
        .expect("a service");
        let slice = object(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "reviews-x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9080}],
            "endpoints": [
                {"addresses": ["127.0.0.12"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "b", "namespace": "shop"}},
                {"addresses": ["127.0.0.11"], "conditions": {},
                 "targetRef": {"kind": "Pod", "name": "a", "namespace": "shop"}},
                {"addresses": ["127.0.0.13"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "c", "namespace": "shop"}}
            ]
        }));
        let pod = |ns: &str, name: &str| -> Option<std::sync::Arc<Pod>> {
            let value = json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"version": format!("v-{name}")}},
                "spec": {"containers": [], "serviceAccountName": "bookinfo-reviews"}
            });
            Some(std::sync::Arc::new(serde_json::from_value(value).ok()?))
        };
        let docs = service_documents(&[std::sync::Arc::new(service)], &[slice], pod);
        assert_eq!(docs.len(), 1);
        let (key, doc) = &docs[0];
        assert_eq!(key.to_string(), "Service/shop/reviews");
        let spec = &doc["spec"];
        assert_eq!(spec["hosts"], json!(["reviews.shop.svc.cluster.local"]));
        assert_eq!(spec["ports"].as_array().map(Vec::len), Some(2), "{spec}");
        assert_eq!(spec["ports"][1]["protocol"], "TCP", "{spec}");
        assert_eq!(spec["addresses"], json!(["10.96.0.7"]));
        let endpoints = spec["endpoints"].as_array().expect("endpoints");
        let addresses: Vec<&str> = endpoints
            .iter()
            .filter_map(|e| e["address"].as_str())
            .collect();
        assert_eq!(
            addresses,
            ["127.0.0.11", "127.0.0.12"],
            "not-ready left out, sorted"
        );
        assert_eq!(endpoints[0]["labels"]["version"], "v-a");
        assert_eq!(endpoints[0]["serviceAccount"], "bookinfo-reviews");
        assert_eq!(endpoints[0]["ports"]["http"], 9080);
    }
}
