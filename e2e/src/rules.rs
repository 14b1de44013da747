//! Rule YAML for tests: a service declared by ServiceEntry (one endpoint per
//! version, labelled `version: <v>`) with a DestinationRule defining one
//! subset per version, followed by whatever routes a test adds.

use crate::harness::Echo;

/// `ServiceEntry` + `DestinationRule` for `host`, then `extra`.
pub fn service(host: &str, backends: &[(&str, &Echo)], extra: &str) -> String {
    service_with_policy(host, backends, "", extra)
}

/// As [`service`], with endpoints given by port (a sidecar's inbound
/// listener, say) rather than by echo backend.
pub fn service_at(host: &str, backends: &[(&str, u16)], extra: &str) -> String {
    service_text(host, backends, "", extra)
}

/// A `VirtualService` for `host` whose `http:` list is `http` (YAML lines
/// starting at two spaces of indentation).
pub fn virtual_service(host: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
{http}"
    )
}

/// A `ServiceEntry` for `hosts` with one port (`number`, `protocol`) and
/// one endpoint, 127.0.0.1 at `port` (none when `port` is `None`).
pub fn single_endpoint(hosts: &[&str], number: u16, protocol: &str, port: Option<u16>) -> String {
    let endpoints = port
        .map(|p| format!("  endpoints: [{{address: 127.0.0.1, ports: {{app: {p}}}}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {}}}
spec:
  hosts: [{}]
  ports: [{{number: {number}, name: app, protocol: {protocol}}}]
  resolution: STATIC
{endpoints}",
        hosts[0],
        hosts.join(", ")
    )
}

/// The `ServiceEntry` of [`service`] alone (for tests that bring their own
/// DestinationRule, such as Istio's samples).
pub fn service_entry(host: &str, backends: &[(&str, &Echo)]) -> String {
    service_entry_at(host, &ports(backends))
}

fn ports<'a>(backends: &[(&'a str, &Echo)]) -> Vec<(&'a str, u16)> {
    backends.iter().map(|(v, e)| (*v, e.port())).collect()
}

fn service_entry_at(host: &str, backends: &[(&str, u16)]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|(v, port)| {
            format!(
                "  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: {v}}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
{endpoints}"
    )
}

/// As [`service`], with `policy` (YAML lines indented under
/// `trafficPolicy:`) in the DestinationRule.
pub fn service_with_policy(
    host: &str,
    backends: &[(&str, &Echo)],
    policy: &str,
    extra: &str,
) -> String {
    service_text(host, &ports(backends), policy, extra)
}

fn service_text(host: &str, backends: &[(&str, u16)], policy: &str, extra: &str) -> String {
    let subsets: String = backends
        .iter()
        .map(|(v, _)| format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"))
        .collect();
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!("  trafficPolicy:\n{policy}")
    };
    format!(
        "{}---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
{policy}  subsets:
{subsets}---
{extra}",
        service_entry_at(host, backends)
    )
}
