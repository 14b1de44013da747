//! The services and instances `compile` routes to: from ServiceEntries
//! outside Kubernetes, from Services and EndpointSlices inside it.

use std::collections::BTreeMap;

use crate::host::qualify;
use crate::load::RuleSet;
use crate::types::{Location, Resolution};

/// Known services by fully qualified host name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoints {
    pub services: BTreeMap<String, Service>,
}

/// A service: its ports and where its instances run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// Fully qualified name.
    pub host: String,
    /// Other names that address this service exactly.
    pub aliases: Vec<String>,
    /// IP addresses the application dials for it (ServiceEntry
    /// `addresses`, a Kubernetes ClusterIP): captured traffic to one of
    /// them, on one of its ports, is this service's.
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePortSpec>,
    pub instances: Vec<Instance>,
    /// Where the service is declared (the default namespace of its
    /// instances' service accounts).
    pub namespace: String,
    /// SPIFFE ids allowed to serve it, when declared (ServiceEntry
    /// `subjectAltNames`); otherwise each instance's service account.
    pub subject_alt_names: Vec<String>,
    /// Declared `MESH_EXTERNAL`: no sidecar runs beside its instances, so
    /// mTLS is never originated to them by label (a DestinationRule can
    /// still ask for it).
    pub external: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServicePortSpec {
    pub name: String,
    pub number: u32,
    /// Upper-case protocol name: HTTP, HTTP2, GRPC, TCP, ...
    pub protocol: String,
    pub target_port: Option<u32>,
}

/// One instance of a service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    /// IP address or DNS name.
    pub address: String,
    /// Port name -> port number on this instance.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    /// The instance's service account (its mTLS identity).
    pub service_account: Option<String>,
}

impl Service {
    /// A service known only by name (no ports, no instances).
    pub fn named(host: &str) -> Self {
        Self {
            host: host.to_string(),
            ..Self::default()
        }
    }
}

impl Instance {
    /// The instance's port for a service port: its named port, else the
    /// service's target port, else the service port itself.
    pub fn port_for(&self, port: &ServicePortSpec) -> Option<u32> {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .or(Some(port.number))
    }
}

impl Endpoints {
    /// Services and instances declared by the ServiceEntries of `rules`.
    pub fn from_service_entries(rules: &RuleSet) -> Self {
        let mut services = BTreeMap::new();
        for se in &rules.service_entries {
            let ports: Vec<ServicePortSpec> = se
                .spec
                .ports
                .iter()
                .map(|p| ServicePortSpec {
                    name: p.name.clone(),
                    number: p.number,
                    protocol: p.protocol.as_deref().unwrap_or("HTTP").to_ascii_uppercase(),
                    target_port: p.target_port,
                })
                .collect();
            for host in &se.spec.hosts {
                let fqdn = qualify(host, se.namespace());
                let mut instances: Vec<Instance> = se
                    .spec
                    .endpoints
                    .iter()
                    .map(|e| Instance {
                        address: e.address.clone(),
                        ports: e.ports.clone(),
                        labels: e.labels.clone(),
                        weight: e.weight.unwrap_or(1),
                        service_account: e.service_account.clone(),
                    })
                    .collect();
                let dns = matches!(
                    se.spec.resolution,
                    Some(Resolution::DNS | Resolution::DNS_ROUND_ROBIN)
                );
                if instances.is_empty() && dns {
                    // DNS resolution without endpoints: the host itself.
                    instances.push(Instance {
                        address: host.clone(),
                        weight: 1,
                        ..Instance::default()
                    });
                }
                services.insert(
                    fqdn.clone(),
                    Service {
                        host: fqdn,
                        aliases: Vec::new(),
                        addresses: se.spec.addresses.clone(),
                        ports: ports.clone(),
                        instances,
                        namespace: se.namespace().to_string(),
                        subject_alt_names: se.spec.subject_alt_names.clone(),
                        external: se.spec.location == Some(Location::MESH_EXTERNAL),
                    },
                );
            }
        }
        Self { services }
    }
}
