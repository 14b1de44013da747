//! Opaque TCP between two captured sidecars goes over mutual TLS: STRICT
//! PeerAuthentication covers a database, AuthorizationPolicy applies to its
//! connections, and the mesh's REGISTRY_ONLY setting reaches the proxies.

use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::{sum_samples, tool, wait_until};
use trellis_e2e::netns::Network;
use trellis_e2e::sidecars::*;

#[test]
fn opaque_tcp_between_sidecars_is_mutual_tls_under_strict() -> Result<()> {
    let mut net = Network::new()?;
    let c_ip = net.address(4);
    let hosts = "10.96.0.20 db";
    let a = net.pod("a", 2, hosts)?;
    let c = net.pod("c", 4, hosts)?;
    let d = net.pod("d", 5, hosts)?;
    let gateway: std::net::IpAddr = net.address(1).parse()?;
    let tokens = net.dir.path().join("tokens");
    let token = "e2e-capture-token-0123456789";
    std::fs::write(&tokens, format!("{token} *\n"))?;
    let cp = trellis_e2e::mesh::ControlPlane::start_reachable(
        1,
        gateway,
        &[
            "--bootstrap-tokens",
            tokens.to_str().unwrap_or_default(),
            "--outbound-traffic-policy",
            "REGISTRY_ONLY",
        ],
    )?;
    cp.write_rules(
        "db.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example]
  addresses: [10.96.0.20]
  ports:
  - {{number: 6379, name: redis, protocol: REDIS}}
  - {{number: 7000, name: tcp-greet, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - {{address: {c_ip}, serviceAccount: db, labels: {{security.istio.io/tlsMode: istio}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: trellis-system}}
spec:
  mtls: {{mode: STRICT}}
"
        ),
    )?;
    let redis = tool("redis-server")?.display().to_string();
    let redis_args: Vec<String> = [
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let _redis = c.spawn_as(
        "redis",
        None,
        &redis,
        &redis_args,
        net.dir.path().join("redis.log"),
    )?;
    let peers = net.dir.path().join("peers.py");
    std::fs::write(&peers, PEERS)?;
    let peers = peers.display().to_string();
    let greet_args = [peers.clone(), "serve".into(), "greet".into(), "7000".into()];
    let _greet = c.spawn_as(
        "greet",
        None,
        "python3",
        &greet_args,
        net.dir.path().join("greet.log"),
    )?;
    let url = format!("http://{gateway}:{}", cp.replicas[0].xds.port());
    let connected = |sa: &'static str| {
        vec![
            "--control-plane".to_string(),
            url.clone(),
            "--trust-bundle".into(),
            cp.trust_bundle.display().to_string(),
            "--bootstrap-token".into(),
            token.into(),
            "--service-account".into(),
            sa.into(),
        ]
    };
    let a_args = connected("client");
    let c_args = connected("db");
    let _sidecar_c = sidecar_with(
        &net,
        &c,
        "db",
        &c_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let _sidecar_a = sidecar_with(
        &net,
        &a,
        "client",
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    // Both have certificates and the STRICT policy before traffic counts.
    for pod in [&a, &c] {
        let ready = wait_until(Duration::from_secs(20), || {
            let dump = pod
                .try_exec("curl", &["-s", "http://127.0.0.1:15000/config_dump"])
                .map(|(_, o, _)| o)
                .unwrap_or_default();
            dump.contains("spiffe_id") && dump.contains("\"mtls\": \"STRICT\"")
        });
        assert!(ready, "no certificate or policy in {}", pod.netns);
    }
    let pong = wait_until(Duration::from_secs(10), || {
        a.try_exec("redis-cli", &["-h", "db", "PING"])
            .is_ok_and(|(_, out, _)| out.trim() == "PONG")
    });
    assert!(pong, "redis through two sidecars under STRICT");
    let greeting = a.exec("python3", &[&peers, "client", "greet", "db", "7000"])?;
    assert_eq!(
        greeting.trim(),
        "HELLO from the database | ECHO ping",
        "server-first under STRICT"
    );
    assert_eq!(
        a.exec("redis-cli", &["-h", "db", "SET", "k", "over-mtls"])?
            .trim(),
        "OK"
    );
    assert_eq!(
        a.exec("redis-cli", &["-h", "db", "GET", "k"])?.trim(),
        "over-mtls"
    );
    let inbound = sum_samples(
        &metrics(&c),
        "trellis_tcp_connections_opened_total",
        &[
            "direction=\"inbound\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        ],
    );
    let outbound = sum_samples(
        &metrics(&a),
        "trellis_tcp_connections_opened_total",
        &[
            "direction=\"outbound\"",
            "source_workload=\"client\"",
            "destination_service=\"db.example\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert!(
        outbound >= 3.0,
        "the client's side counted them as mTLS: {outbound}"
    );
    assert!(
        inbound >= 3.0,
        "the database's sidecar relayed them: {inbound}"
    );
    // The mesh's REGISTRY_ONLY setting reached the client's sidecar: an
    // address no service has is refused, counted.
    let d_ip = net.address(5);
    let code = http_status(&a, &format!("http://{d_ip}:8080/"))?;
    assert_eq!(code, "404", "REGISTRY_ONLY from the control plane");
    let refused = sum_samples(
        &metrics(&a),
        "trellis_outbound_passthrough_total",
        &["result=\"refused\""],
    );
    assert!(refused >= 1.0, "refusal counted: {refused}");
    // AuthorizationPolicy applies to TCP: the client's principal denied.
    cp.write_rules(
        "deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
",
    )?;
    let denied = wait_until(Duration::from_secs(10), || {
        a.try_exec("redis-cli", &["-h", "db", "PING"])
            .is_ok_and(|(_, out, _)| !out.contains("PONG"))
    });
    assert!(denied, "the DENY policy did not stop the connection");
    let counted = sum_samples(&metrics(&c), "trellis_tcp_connections_denied_total", &[]);
    assert!(counted >= 1.0, "denials counted: {counted}");
    // A client without a sidecar (plaintext) is refused by STRICT.
    let (ok, out, _) = d.try_exec("redis-cli", &["-h", &c_ip, "PING"])?;
    assert!(
        !ok || !out.contains("PONG"),
        "plaintext reached the database: {out}"
    );
    Ok(())
}
