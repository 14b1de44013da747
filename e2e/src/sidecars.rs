//! Sidecars in pods that are network namespaces, as the capture tests run
//! them: `init-iptables`, then the proxy as uid 1337 with `--capture`; the
//! pods' nat rules and metrics; and the small TCP peers (a server that
//! speaks first, a byte sink, a "who are you" server) with their clients.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::harness::{bin, wait_until, Process};
use crate::netns::{Network, Pod};

pub const PROXY_UID: u32 = 1337;

/// The test's small TCP peers: a server that speaks first, a sink that
/// answers with the checksum of all it read once the client half-closes,
/// and their clients.
pub const PEERS: &str = r#"
import hashlib, socket, sys

def serve(kind, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        if kind.startswith("who="):
            c.makefile("rb").readline()
            c.sendall(kind[4:].encode() + b"\n")
        elif kind == "greet":
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
    if kind == "who":
        counts = {}
        for _ in range(size):
            c = socket.create_connection((host, port), timeout=60)
            c.sendall(b"who?\n")
            name = c.makefile("rb").readline().decode().strip()
            counts[name] = counts.get(name, 0) + 1
            c.close()
        print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return
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

/// `iptables-save -t nat` of a pod without its comment lines.
pub fn nat_rules(pod: &Pod) -> Result<String> {
    let mut text = pod.exec("iptables-save", &["-t", "nat"])?;
    text.push_str(&pod.exec("ip6tables-save", &["-t", "nat"])?);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

pub struct Sidecar {
    pub process: Process,
}

/// A sidecar in static mode, with the rules of `config`.
pub fn sidecar(
    net: &Network,
    pod: &Pod,
    name: &str,
    config: &Path,
    extra: &[&str],
) -> Result<Sidecar> {
    let mut args = vec!["--config", config.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    sidecar_with(net, pod, name, &args)
}

/// `init-iptables`, then the proxy as uid 1337 with `--capture` and `args`.
pub fn sidecar_with(net: &Network, pod: &Pod, name: &str, args: &[&str]) -> Result<Sidecar> {
    let proxy = bin("trellis-proxy")?.display().to_string();
    pod.exec(
        &proxy,
        &["init-iptables", "--proxy-uid", &PROXY_UID.to_string()],
    )?;
    let extra = args;
    let mut args = vec!["--capture".to_string(), "--service".into(), name.into()];
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

/// The status code of `curl URL` from inside `pod`.
pub fn http_status(pod: &Pod, url: &str) -> Result<String> {
    pod.exec(
        "curl",
        &["-s", "-o", "/dev/null", "-w", "%{http_code}", url],
    )
}

pub fn metrics(pod: &Pod) -> String {
    pod.try_exec("curl", &["-s", "http://127.0.0.1:15000/metrics"])
        .map(|(_, out, _)| out)
        .unwrap_or_default()
}

/// Sends `size` bytes from `pod` to the sink at `host:port` (the PEERS
/// script at `peers`), half-closes, and fails unless the sink read exactly
/// those bytes (count and SHA-256).
pub fn send_to_sink(pod: &Pod, peers: &str, host: &str, port: u16, size: u64) -> Result<()> {
    let (port, size) = (port.to_string(), size.to_string());
    let sink = pod.exec("python3", &[peers, "client", "sink", host, &port, &size])?;
    let (far, near) = sink.trim().split_once(" | ").unwrap_or(("", "?"));
    if far != near {
        bail!("bytes did not arrive intact: {sink}");
    }
    Ok(())
}

/// `curl url` from `pod` reaches the echo called `outside` (a destination
/// outside the mesh), and the pod's sidecar counted it as passed through.
pub fn assert_passes_through(pod: &Pod, url: &str) -> Result<()> {
    let outside = pod.exec("curl", &["-s", url])?;
    if !outside.contains(r#""version":"outside""#) {
        bail!("{url} not reached: {outside}");
    }
    let allowed = crate::harness::sum_samples(
        &metrics(pod),
        "trellis_outbound_passthrough_total",
        &["result=\"allowed\""],
    );
    if allowed < 1.0 {
        bail!("passthrough not counted: {allowed}");
    }
    Ok(())
}
