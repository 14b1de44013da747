//! Transparent capture in pods that are network namespaces: each sidecar
//! runs as uid 1337 after `trellis-proxy init-iptables`; the applications
//! (curl, redis-cli, a greeting-first server, a byte sink) know nothing of
//! the mesh. HTTP is routed by the rules; other TCP to a service's address
//! goes through both sidecars as opaque bytes, split by `tcp` routes;
//! destinations outside the mesh pass under ALLOW_ANY and are refused
//! under REGISTRY_ONLY.

use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::{bin, sum_samples, tool, wait_until};
use trellis_e2e::netns::Network;
use trellis_e2e::sidecars::*;

fn rules(v1: &str, v2: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example]
  addresses: [10.96.0.20]
  ports:
  - {{number: 6379, name: redis, protocol: REDIS}}
  - {{number: 7000, name: tcp-greet, protocol: TCP}}
  - {{number: 7001, name: tcp-sink, protocol: TCP}}
  resolution: STATIC
  endpoints: [{{address: {v2}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: who}}
spec:
  hosts: [who.example]
  addresses: [10.96.0.30]
  ports: [{{number: 7002, name: tcp-who, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: {v1}, labels: {{version: v1}}}}
  - {{address: {v2}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: who}}
spec:
  host: who.example
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: who}}
spec:
  hosts: [who.example]
  tcp:
  - match: [{{port: 7002}}]
    route:
    - {{destination: {{host: who.example, subset: v1}}, weight: 80}}
    - {{destination: {{host: who.example, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: {v1}, labels: {{version: v1, security.istio.io/tlsMode: istio}}}}
  - {{address: {v2}, labels: {{version: v2, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}
"
    )
}

#[test]
fn captured_pods_route_http_and_carry_opaque_tcp_through_both_sidecars() -> Result<()> {
    let mut net = Network::new()?;
    let (b_ip, c_ip, d_ip) = (net.address(3), net.address(4), net.address(5));
    // Cluster DNS: the service name is a virtual address no host owns.
    let hosts = format!("10.96.0.10 reviews\n10.96.0.20 db\n10.96.0.30 who\n{d_ip} outside");
    let a = net.pod("a", 2, &hosts)?;
    let b = net.pod("b", 3, &hosts)?;
    let c = net.pod("c", 4, &hosts)?;
    let d = net.pod("d", 5, &hosts)?;
    let config = net.dir.path().join("rules.yaml");
    std::fs::write(&config, rules(&b_ip, &c_ip))?;
    let peers = net.dir.path().join("peers.py");
    std::fs::write(&peers, PEERS)?;
    let peers = peers.display().to_string();
    let log = |name: &str| net.dir.path().join(format!("{name}.log"));

    // Applications: echo v1 in B, echo v2, redis and the TCP peers in C,
    // an echo outside the mesh in D (no sidecar).
    let echo = bin("trellis-echo")?.display().to_string();
    let mut apps = Vec::new();
    for (pod, version, port) in [(&b, "v1", 9080), (&c, "v2", 9080), (&d, "outside", 8080)] {
        let args = [
            "--listen".to_string(),
            format!("0.0.0.0:{port}"),
            "--name".into(),
            "reviews".into(),
            "--version".into(),
            version.into(),
        ];
        apps.push(pod.spawn_as(
            &format!("echo {version}"),
            None,
            &echo,
            &args,
            log(&format!("echo-{version}")),
        )?);
    }
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
        "--appendonly",
        "no",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    apps.push(c.spawn_as("redis", None, &redis, &redis_args, log("redis"))?);
    let servers = [
        (&c, "greet", "7000"),
        (&c, "sink", "7001"),
        (&b, "who=b", "7002"),
        (&c, "who=c", "7002"),
    ];
    for (pod, kind, port) in servers {
        let args = [peers.clone(), "serve".into(), kind.into(), port.into()];
        apps.push(pod.spawn_as(kind, None, "python3", &args, log(kind))?);
    }

    let before = nat_rules(&a)?;
    let dry = a.exec(
        &bin("trellis-proxy")?.display().to_string(),
        &["init-iptables", "--dry-run"],
    )?;
    assert!(
        dry.contains("# iptables-restore")
            && dry.contains("# ip6tables-restore")
            && dry.contains("::1/128"),
        "IPv4 and IPv6 rules: {dry}"
    );
    assert_eq!(nat_rules(&a)?, before, "--dry-run changes nothing");
    let mut sidecar_a = sidecar(&net, &a, "client", &config, &[])?;
    let _sidecar_b = sidecar(&net, &b, "reviews-v1", &config, &[])?;
    let _sidecar_c = sidecar(&net, &c, "reviews-v2", &config, &[])?;
    let ready = wait_until(Duration::from_secs(10), || {
        a.try_exec("redis-cli", &["-h", "db", "PING"])
            .is_ok_and(|(_, out, _)| out.trim() == "PONG")
    });

    // HTTP: an unmodified curl to the service name is captured, routed
    // 90/10 and reaches each app on its own port through its sidecar.
    let out = a.exec("curl", &["-s", "http://reviews:9080/?[1-200]"])?;
    let v1 = out.matches(r#""version":"v1""#).count();
    let v2 = out.matches(r#""version":"v2""#).count();
    assert_eq!(
        v1 + v2,
        200,
        "every request answered: v1 {v1}, v2 {v2}\n{}",
        sidecar_a.process.log_text()
    );
    assert!((165..=195).contains(&v1), "about 90/10: v1 {v1}, v2 {v2}");
    assert!(
        sum_samples(
            &metrics(&b),
            "trellis_requests_total",
            &["direction=\"inbound\""]
        ) >= v1 as f64,
        "B's inbound sidecar saw the requests"
    );
    // Between the sidecars it is HTTP/2 (plaintext here): 100 requests on
    // 20 parallel connections from the app share one connection to B.
    a.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "--parallel",
            "--parallel-max",
            "20",
            "http://reviews:9080/?[1-100]",
        ],
    )?;
    let from_a = b.exec(
        "ss",
        &["-Htn", "state", "established", "sport", "=", ":15006"],
    )?;
    let connections = from_a.lines().filter(|l| l.contains(&a.ip)).count();
    assert_eq!(connections, 1, "sidecar-to-sidecar connections:\n{from_a}");

    // Opaque TCP through both sidecars: client-first (redis) ...
    assert!(ready, "redis PING never answered");
    assert_eq!(
        a.exec("redis-cli", &["-h", "db", "SET", "greeting", "hello"])?
            .trim(),
        "OK"
    );
    assert_eq!(
        a.exec("redis-cli", &["-h", "db", "GET", "greeting"])?
            .trim(),
        "hello"
    );
    // ... server-first (nothing from the client until the greeting) ...
    let greeting = a.exec("python3", &[&peers, "client", "greet", "db", "7000"])?;
    assert_eq!(
        greeting.trim(),
        "HELLO from the database | ECHO ping",
        "{greeting}"
    );
    // ... split by a `tcp` route, 80/20 over 500 connections ...
    let split = a.exec("python3", &[&peers, "client", "who", "who", "7002", "500"])?;
    let count = |name: &str| -> u32 {
        split
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("b") + count("c"), 500, "{split}");
    assert!(
        (375..=425).contains(&count("b")),
        "80/20 within 5 points: {split}"
    );
    // ... and 100 MiB with a half-close, checksummed at the far end.
    send_to_sink(&a, &peers, "db", 7001, 100 << 20)?;
    let opened = sum_samples(
        &metrics(&a),
        "trellis_tcp_connections_opened_total",
        &["direction=\"outbound\""],
    );
    assert!(opened >= 5.0, "opaque connections counted: {opened}");
    let sent = sum_samples(&metrics(&a), "trellis_tcp_sent_bytes_total", &[]);
    assert!(sent >= (100u64 << 20) as f64, "bytes counted: {sent}");

    // Outside the mesh: passed through under ALLOW_ANY ...
    assert_passes_through(&a, &format!("http://{d_ip}:8080/"))?;
    let direct = a.exec("redis-cli", &["-h", &c_ip, "PING"])?;
    assert_eq!(
        direct.trim(),
        "PONG",
        "an address no service has passes through"
    );
    let db = sum_samples(
        &metrics(&a),
        "trellis_tcp_connections_opened_total",
        &["destination_service=\"db.example\""],
    );
    assert!(
        db >= 4.0,
        "the database's connections are its service's: {db}"
    );

    // ... and refused under REGISTRY_ONLY, while the mesh's services work.
    sidecar_a.process.kill();
    sidecar_a = sidecar(
        &net,
        &a,
        "client",
        &config,
        &["--outbound-traffic-policy", "REGISTRY_ONLY"],
    )?;
    let code = http_status(&a, &format!("http://{d_ip}:8080/"))?;
    assert_eq!(code, "404", "an unknown host is refused");
    let known = a.exec("redis-cli", &["-h", "db", "PING"])?;
    assert_eq!(known.trim(), "PONG", "the mesh's TCP services still work");
    let (ok, out, _) = a.try_exec("redis-cli", &["-h", &c_ip, "PING"])?;
    assert!(
        !ok || !out.contains("PONG"),
        "opaque TCP outside the mesh refused: {out}"
    );
    let refused = sum_samples(
        &metrics(&a),
        "trellis_outbound_passthrough_total",
        &["result=\"refused\""],
    );
    assert!(refused >= 2.0, "refusals counted: {refused}");
    let known = a.exec("curl", &["-s", "http://reviews:9080/"])?;
    assert!(known.contains(r#""version":"v"#), "{known}");

    // `--cleanup` leaves the pod's rules as they were.
    sidecar_a.process.kill();
    let proxy = bin("trellis-proxy")?.display().to_string();
    a.exec(&proxy, &["init-iptables", "--cleanup"])?;
    assert_eq!(nat_rules(&a)?, before);
    drop(apps);
    Ok(())
}
