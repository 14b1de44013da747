//! Transparent capture in pods that are network namespaces: each sidecar
//! runs as uid 1337 after `trellis-proxy init-iptables`; the applications
//! (curl, redis-cli, a greeting-first server, a byte sink) know nothing of
//! the mesh. HTTP is routed by the rules; other TCP passes through both
//! sidecars as opaque bytes; destinations outside the mesh pass under
//! ALLOW_ANY and are refused under REGISTRY_ONLY.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use trellis_e2e::harness::{bin, sum_samples, tool, wait_until, Process};
use trellis_e2e::netns::{Network, Pod};

const PROXY_UID: u32 = 1337;

/// The test's small TCP peers: a server that speaks first, a sink that
/// answers with the checksum of all it read once the client half-closes,
/// and their clients.
const PEERS: &str = r#"
import hashlib, socket, sys

def serve(kind, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        if kind == "greet":
            c.sendall(b"HELLO from the database\n")
            line = c.makefile("rb").readline()
            c.sendall(b"ECHO " + line)
        else:
            h, n = hashlib.sha256(), 0
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
            c.sendall(f"{n} {h.hexdigest()}\n".encode())
        c.close()

def data(size):
    block = hashlib.sha256(b"trellis").digest() * 2048
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        yield chunk
        sent += len(chunk)

def client(kind, host, port, size=0):
    c = socket.create_connection((host, port), timeout=60)
    if kind == "greet":
        f = c.makefile("rb")
        hello = f.readline()
        c.sendall(b"ping\n")
        print(hello.decode().strip(), "|", f.readline().decode().strip())
    else:
        h = hashlib.sha256()
        for chunk in data(size):
            h.update(chunk)
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        reply = c.makefile("rb").readline().decode().strip()
        print(reply, "|", f"{size} {h.hexdigest()}")

if sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]))
else:
    client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
"#;

fn rules(v1: &str, v2: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: {v1}, labels: {{version: v1}}}}
  - {{address: {v2}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
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

/// `iptables-save -t nat` of a pod without its comment lines.
fn nat_rules(pod: &Pod) -> Result<String> {
    let text = pod.exec("iptables-save", &["-t", "nat"])?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

struct Sidecar {
    process: Process,
}

/// `init-iptables`, then the proxy as uid 1337 with `--capture`.
fn sidecar(net: &Network, pod: &Pod, name: &str, config: &Path, extra: &[&str]) -> Result<Sidecar> {
    let proxy = bin("trellis-proxy")?.display().to_string();
    pod.exec(
        &proxy,
        &["init-iptables", "--proxy-uid", &PROXY_UID.to_string()],
    )?;
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--capture".into(),
        "--service".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let process = pod.spawn_as(
        &format!("sidecar {name}"),
        Some(PROXY_UID),
        &proxy,
        &args,
        net.dir.path().join(format!("{name}.log")),
    )?;
    let ready = wait_until(Duration::from_secs(20), || {
        pod.try_exec("curl", &["-sf", "http://127.0.0.1:15000/ready"])
            .is_ok_and(|(ok, _, _)| ok)
    });
    if !ready {
        bail!("sidecar {name} not ready:\n{}", process.log_text());
    }
    Ok(Sidecar { process })
}

fn metrics(pod: &Pod) -> String {
    pod.try_exec("curl", &["-s", "http://127.0.0.1:15000/metrics"])
        .map(|(_, out, _)| out)
        .unwrap_or_default()
}

#[test]
fn captured_pods_route_http_and_carry_opaque_tcp_through_both_sidecars() -> Result<()> {
    let mut net = Network::new()?;
    let (b_ip, c_ip, d_ip) = (net.address(3), net.address(4), net.address(5));
    // Cluster DNS: the service name is a virtual address no host owns.
    let hosts = format!("10.96.0.10 reviews\n{c_ip} db\n{d_ip} outside");
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
    for (kind, port) in [("greet", "7000"), ("sink", "7001")] {
        let args = [peers.clone(), "serve".into(), kind.into(), port.into()];
        apps.push(c.spawn_as(kind, None, "python3", &args, log(kind))?);
    }

    let before = nat_rules(&a)?;
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
    // ... and 100 MiB with a half-close, checksummed at the far end.
    let size = (100u64 << 20).to_string();
    let sink = a.exec("python3", &[&peers, "client", "sink", "db", "7001", &size])?;
    let (far, near) = sink.trim().split_once(" | ").unwrap_or(("", "?"));
    assert_eq!(far, near, "bytes arrived intact: {sink}");
    let opened = sum_samples(
        &metrics(&a),
        "trellis_tcp_connections_opened_total",
        &["direction=\"outbound\""],
    );
    assert!(opened >= 5.0, "opaque connections counted: {opened}");
    let sent = sum_samples(&metrics(&a), "trellis_tcp_sent_bytes_total", &[]);
    assert!(sent >= (100u64 << 20) as f64, "bytes counted: {sent}");

    // Outside the mesh: passed through under ALLOW_ANY ...
    let outside = a.exec("curl", &["-s", &format!("http://{d_ip}:8080/")])?;
    assert!(outside.contains(r#""version":"outside""#), "{outside}");
    let allowed = sum_samples(
        &metrics(&a),
        "trellis_outbound_passthrough_total",
        &["result=\"allowed\""],
    );
    assert!(allowed >= 2.0, "passthrough counted: {allowed}");

    // ... and refused under REGISTRY_ONLY, while the mesh's services work.
    sidecar_a.process.kill();
    sidecar_a = sidecar(
        &net,
        &a,
        "client",
        &config,
        &["--outbound-traffic-policy", "REGISTRY_ONLY"],
    )?;
    let code = a.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{d_ip}:8080/"),
        ],
    )?;
    assert_eq!(code, "404", "an unknown host is refused");
    let (ok, out, _) = a.try_exec("redis-cli", &["-h", "db", "PING"])?;
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
