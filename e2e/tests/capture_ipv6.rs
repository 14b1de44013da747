//! Capture over IPv6 in dual-stack pods: ip6tables redirects to the
//! sidecars' IPv6 listeners and `SO_ORIGINAL_DST` recovers IPv6
//! destinations on both sides. HTTP to a name that resolves to IPv6 only,
//! opaque TCP to a service's IPv6 address (checksummed, half-closed),
//! passthrough to an IPv6 address outside the mesh; a port declared TCP
//! skips protocol detection on both sidecars (a server-first protocol
//! does not wait for it), and `maxConnections` caps opaque connections.

use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_e2e::harness::{bin, sum_samples, wait_until};
use trellis_e2e::netns::Network;
use trellis_e2e::sidecars::*;

/// Holds one connection to the greeting server, tries a second while it is
/// open, then closes the first and tries again until one is greeted (the
/// sidecar frees the place once both directions of the first have ended):
/// the first line each read.
const HOLD: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def first_line(c):
    try:
        return c.makefile("rb").readline().decode().strip() or "closed"
    except OSError:
        return "closed"
held = socket.create_connection((host, port), timeout=10)
print(first_line(held))
extra = socket.create_connection((host, port), timeout=10)
print(first_line(extra))
held.close()
extra.close()
deadline = time.time() + 5
while True:
    later = socket.create_connection((host, port), timeout=10)
    line = first_line(later)
    later.close()
    if line != "closed" or time.time() > deadline:
        break
    time.sleep(0.02)
print(line)
"#;

/// Longer than the test allows a greeting to take: a sidecar that ran
/// detection on the declared-TCP port would be caught waiting.
const DETECTION: &str = "3s";

#[test]
fn ipv6_traffic_is_captured_and_carried() -> Result<()> {
    let mut net = Network::new()?;
    let (b6, d6) = (net.address6(3), net.address6(5));
    // Cluster DNS answers IPv6 only: the service names are virtual addresses.
    let hosts = "fd00:96::10 reviews\nfd00:96::20 db";
    let a = net.pod("a", 2, hosts)?;
    let b = net.pod("b", 3, hosts)?;
    let d = net.pod("d", 5, hosts)?;
    let config = net.dir.path().join("rules.yaml");
    std::fs::write(
        &config,
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{b6}", labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example]
  addresses: ["fd00:96::20"]
  ports:
  - {{number: 7000, name: tcp-greet, protocol: TCP}}
  - {{number: 7001, name: tcp-sink, protocol: TCP}}
  resolution: STATIC
  endpoints: [{{address: "{b6}"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: db.example
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 1}}}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: trellis-system}}
spec:
  mtls: {{mode: DISABLE}}
"#
        ),
    )?;
    let peers = net.dir.path().join("peers.py");
    std::fs::write(&peers, PEERS)?;
    let peers = peers.display().to_string();
    let hold = net.dir.path().join("hold.py");
    std::fs::write(&hold, HOLD)?;
    let log = |name: &str| net.dir.path().join(format!("{name}.log"));

    let echo = bin("trellis-echo")?.display().to_string();
    let echo_args = |listen: &str, version: &str| {
        [
            "--listen",
            listen,
            "--name",
            "reviews",
            "--version",
            version,
        ]
        .map(String::from)
    };
    let mut apps = vec![
        b.spawn_as(
            "echo",
            None,
            &echo,
            &echo_args("0.0.0.0:9080", "v1"),
            log("echo"),
        )?,
        d.spawn_as(
            "outside",
            None,
            &echo,
            &echo_args("[::]:8080", "outside"),
            log("outside"),
        )?,
    ];
    for (kind, port) in [("greet", "7000"), ("sink", "7001")] {
        let args = [peers.clone(), "serve".into(), kind.into(), port.into()];
        apps.push(b.spawn_as(kind, None, "python3", &args, log(kind))?);
    }
    let detection = ["--protocol-detection-timeout", DETECTION];
    let sidecar_a = sidecar(&net, &a, "client", &config, &detection)?;
    let _sidecar_b = sidecar(&net, &b, "reviews-v1", &config, &detection)?;

    // HTTP: the name resolves to IPv6 only; captured and routed to B.
    let served = wait_until(Duration::from_secs(10), || {
        a.try_exec("curl", &["-s", "http://reviews:9080/"])
            .is_ok_and(|(_, out, _)| out.contains(r#""version":"v1""#))
    });
    assert!(
        served,
        "HTTP over IPv6 never served:\n{}",
        sidecar_a.process.log_text()
    );
    let out = a.exec("curl", &["-s", "http://reviews:9080/?[1-20]"])?;
    assert_eq!(out.matches(r#""version":"v1""#).count(), 20, "{out}");
    let inbound = sum_samples(
        &metrics(&b),
        "trellis_requests_total",
        &["direction=\"inbound\""],
    );
    assert!(
        inbound >= 20.0,
        "B's sidecar served them inbound: {inbound}"
    );

    // Opaque TCP to the service's IPv6 address: a server-first protocol on
    // a port declared TCP gets its greeting without either sidecar
    // waiting out protocol detection ...
    let started = Instant::now();
    let greeting = a.exec("python3", &[&peers, "client", "greet", "db", "7000"])?;
    let took = started.elapsed();
    assert_eq!(greeting.trim(), "HELLO from the database | ECHO ping");
    assert!(
        took < Duration::from_millis(2500),
        "greeting took {took:?}: a sidecar waited for detection ({DETECTION})"
    );
    // ... bytes arrive intact with a half-close ...
    send_to_sink(&a, &peers, "db", 7001, 8 << 20)?;
    // ... and maxConnections: 1 closes a second connection while one is open.
    let held = a.exec("python3", &[&hold.display().to_string(), "db", "7000"])?;
    let lines: Vec<&str> = held.lines().collect();
    assert_eq!(
        lines,
        [
            "HELLO from the database",
            "closed",
            "HELLO from the database"
        ],
        "{held}"
    );
    let overflow = sum_samples(
        &metrics(&a),
        "trellis_circuit_overflow_total",
        &["destination_service=\"db.example\""],
    );
    assert!(
        overflow >= 1.0,
        "the refused connection is counted: {overflow}"
    );
    let opened = sum_samples(
        &metrics(&a),
        "trellis_tcp_connections_opened_total",
        &["destination_service=\"db.example\""],
    );
    assert_eq!(opened, 4.0, "greet, sink, held, later");

    // An IPv6 address outside the mesh passes through (ALLOW_ANY).
    assert_passes_through(&a, &format!("http://[{d6}]:8080/"))?;
    drop(apps);
    Ok(())
}
