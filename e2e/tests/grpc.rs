//! End-to-end gRPC through a real `trellis-proxy`, with a real gRPC server
//! and client (Python `grpcio`, `e2e/grpc/peer.py`): unary and server
//! streaming calls with their trailers, `te: trailers` reaching the server
//! (it refuses calls without it), a local reply that is a gRPC status, and
//! `retryOn: unavailable` recovering from a server that answers UNAVAILABLE
//! once.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use trellis_e2e::harness::{free_addr, tool, wait_for_port, Process, Proxy, TempDir};
use trellis_e2e::rules;

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py")
}

/// The Python gRPC server, listening on a free port.
fn server(dir: &TempDir) -> Result<(Process, u16)> {
    let addr = free_addr();
    let process = Process::spawn(
        "grpc-server",
        &tool("python3")?,
        &[
            peer_script().display().to_string(),
            "server".into(),
            addr.port().to_string(),
        ],
        dir.path().join("grpc-server.log"),
    )?;
    ensure!(
        wait_for_port(addr, Duration::from_secs(15)),
        "the gRPC server did not start:\n{}",
        process.log_text()
    );
    Ok((process, addr.port()))
}

/// Every call of the client through `proxy` with `:authority` `authority`.
fn client(proxy: &Proxy, authority: &str) -> Result<Value> {
    let out = Command::new(tool("python3")?)
        .arg(peer_script())
        .args(["client", &proxy.outbound.to_string(), authority])
        .output()?;
    ensure!(
        out.status.success(),
        "the gRPC client failed (is grpcio installed? bash e2e/tools/install.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("the client's JSON")
}

fn rules(port: u16) -> String {
    format!(
        "{}---
{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: greeter}}
spec:
  host: greeter
  trafficPolicy:
    retryBudget: {{percent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greeter}}
spec:
  hosts: [greeter]
  http:
  - retries: {{attempts: 2, perTryTimeout: 2s, retryOn: unavailable}}
    route: [{{destination: {{host: greeter}}}}]
",
        rules::single_endpoint(&["greeter", "greeter-plain"], 50051, "GRPC", Some(port)),
        rules::single_endpoint(&["empty"], 50051, "GRPC", None),
    )
}

#[test]
fn grpc_calls_trailers_local_replies_and_retries() -> Result<()> {
    let dir = TempDir::new("grpc")?;
    let (_server, port) = server(&dir)?;
    let proxy = Proxy::start(&rules(port))?;

    let calls = client(&proxy, "greeter")?;
    assert_eq!(calls["unary"]["code"], "OK", "{calls}");
    assert_eq!(calls["unary"]["value"], "hello");
    assert_eq!(calls["unary"]["trailers"]["x-trailer"], "unary", "{calls}");
    assert_eq!(calls["stream"]["code"], "OK", "{calls}");
    assert_eq!(
        calls["stream"]["value"],
        serde_json::json!(["0", "1", "2", "3", "4"])
    );
    assert_eq!(
        calls["stream"]["trailers"]["x-trailer"], "stream",
        "{calls}"
    );
    // UNAVAILABLE once, then the retry answers.
    assert_eq!(calls["flaky"]["code"], "OK", "{calls}");
    let retried = proxy.metric_sum("trellis_retries_total", &["reason=\"grpc-status\""])?;
    assert_eq!(retried, 1.0);

    // The same server without a retry policy: the UNAVAILABLE is the answer.
    let plain = client(&proxy, "greeter-plain")?;
    assert_eq!(plain["unary"]["code"], "OK", "{plain}");
    assert_eq!(plain["flaky"]["code"], "UNAVAILABLE", "{plain}");

    // The proxy's own replies are gRPC statuses.
    let empty = client(&proxy, "empty")?;
    assert_eq!(empty["unary"]["code"], "UNAVAILABLE", "{empty}");
    assert_eq!(empty["unary"]["details"], "no-healthy-upstream", "{empty}");
    let unknown = client(&proxy, "nowhere")?;
    assert_eq!(unknown["unary"]["code"], "UNIMPLEMENTED", "{unknown}");
    Ok(())
}
