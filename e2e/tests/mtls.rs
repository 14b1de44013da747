//! mTLS between sidecars, end to end: a control-plane replica (with a test
//! root CA given by `--ca-cert/--ca-key`, so tests can also forge
//! certificates the mesh would never issue), the `reviews` app behind its
//! sidecar's inbound listener, and a `web` client sidecar. Every proxy gets
//! its certificate by CSR with a bootstrap token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use trellis_e2e::client::{self, get};
use trellis_e2e::harness::{free_addr, sum_samples, wait_until, Echo, TempDir};
use trellis_e2e::mesh::{ConnectedProxy, ControlPlane};
use trellis_e2e::tls::{self, Leaf, Outcome, TestCa};

const TOKEN: &str = "e2e-bootstrap-token-0123456789";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// The ServiceEntry of `reviews` (its endpoint is the sidecar's inbound
/// port, marked as running a sidecar) and the security `policies`.
fn rules(inbound: u16, policies: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {inbound}}}
    labels: {{app: reviews, security.istio.io/tlsMode: istio}}
    serviceAccount: reviews
{policies}"
    )
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: {mode}}}
"
    )
}

/// Only `web` may call reviews, and nobody may reach `/admin`.
const AUTHORIZATION: &str = "---
apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/web]}}]
---
apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*]}}]
";

struct Mesh {
    ca: TestCa,
    cp: ControlPlane,
    app: Echo,
    inbound: SocketAddr,
    server: ConnectedProxy,
    client: ConnectedProxy,
    _dir: TempDir,
}

impl Mesh {
    fn start(policies: &str, extra: &[&str]) -> Result<Self> {
        let dir = TempDir::new("mtls")?;
        let ca = TestCa::new("e2e root")?;
        let (cert, key) = ca.write(dir.path())?;
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN} *\n"))?;
        let (cert, key, tokens) = (
            cert.display().to_string(),
            key.display().to_string(),
            tokens.display().to_string(),
        );
        let mut flags = vec![
            "--ca-cert",
            &cert,
            "--ca-key",
            &key,
            "--bootstrap-tokens",
            &tokens,
        ];
        flags.extend_from_slice(extra);
        let cp = ControlPlane::start(1, &flags)?;
        let app = Echo::start("reviews", "v1")?;
        let inbound = free_addr();
        cp.write_rules("mesh.yaml", &rules(inbound.port(), policies))?;
        let sidecar = |sa: &str, more: &[String]| {
            let mut args: Vec<String> = [
                "--service-account",
                sa,
                "--service",
                sa,
                "--bootstrap-token",
                TOKEN,
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            args.extend_from_slice(more);
            args
        };
        let mut server = ConnectedProxy::spawn_with(
            "reviews-sidecar",
            &cp,
            &sidecar(
                "reviews",
                &[
                    "--labels".into(),
                    "app=reviews".into(),
                    "--inbound-addr".into(),
                    inbound.to_string(),
                    "--inbound-forward".into(),
                    app.addr.to_string(),
                ],
            ),
        )?;
        let mut client = ConnectedProxy::spawn_with("web-sidecar", &cp, &sidecar("web", &[]))?;
        server.wait_ready(Duration::from_secs(15))?;
        client.wait_ready(Duration::from_secs(15))?;
        client.wait_host("reviews.default.svc.cluster.local", Duration::from_secs(10))?;
        Ok(Self {
            ca,
            cp,
            app,
            inbound,
            server,
            client,
            _dir: dir,
        })
    }

    /// Requests the app has received.
    fn app_requests(&self) -> Result<u64> {
        Ok(self.app.stats()?["requests"].as_u64().unwrap_or(0))
    }

    /// `GET path` straight to the inbound listener over mTLS as `leaf`.
    async fn forged(&self, leaf: &Leaf, path: &str) -> Result<Outcome> {
        tls::request(self.inbound, &self.ca.leaf(leaf)?, path).await
    }

    /// Waits until the server sidecar enforces `policies`: `web` gets 200
    /// on `/` and another identity gets 403.
    async fn wait_enforced(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = self.forged(&Leaf::id(WEB), "/").await?;
            let other = self
                .forged(
                    &Leaf::id("spiffe://cluster.local/ns/default/sa/intruder"),
                    "/",
                )
                .await?;
            if matches!(ok, Outcome::Response(200, _)) && matches!(other, Outcome::Response(403, _))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "policies not enforced: web {ok:?}, intruder {other:?}\n{}",
                    self.cp.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_hop_is_mutual_tls_for_http1_and_http2() -> Result<()> {
    let mesh = Mesh::start(
        &format!("{}{AUTHORIZATION}", peer_authentication("STRICT")),
        &[],
    )?;
    let mut n = 0;
    for client in [client::http1(), client::http2(mesh.client.outbound).await?] {
        for _ in 0..10 {
            let r = get(&client, mesh.client.outbound, "reviews", "/items?x=1", &[]).await?;
            ensure!(
                r.status == 200,
                "{} {:?}\n{}",
                r.status,
                r.body,
                mesh.server.process.log_text()
            );
            let json = r.json()?;
            assert_eq!(json["path"], "/items");
            assert_eq!(json["query"], "x=1");
            assert_eq!(json["protocol"], "HTTP/1.1", "the app speaks HTTP/1.1");
            assert_eq!(json["headers"]["host"], "reviews");
            let xfcc = json["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap_or_default();
            assert!(
                xfcc.ends_with(&format!("URI={WEB}")),
                "the app learns the caller's identity: {xfcc:?}"
            );
            assert!(
                xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/reviews;"),
                "{xfcc:?}"
            );
            n += 1;
        }
    }
    let metrics = mesh.server.metrics()?;
    let by_web = sum_samples(
        &metrics,
        "trellis_requests_total",
        &[
            "direction=\"inbound\"",
            "connection_security_policy=\"mutual_tls\"",
            &format!("source_principal=\"{WEB}\""),
            "response_code=\"200\"",
        ],
    );
    assert_eq!(by_web, f64::from(n));
    let expiry = sum_samples(&metrics, "trellis_identity_cert_expiry_seconds", &[]);
    assert!(
        (80_000.0..=86_400.0).contains(&expiry),
        "a 24 h certificate: {expiry} s left"
    );
    // A client sidecar whose token is refused gets no certificate and
    // never reports ready.
    let mut rogue = ConnectedProxy::spawn_with(
        "rogue",
        &mesh.cp,
        &["--bootstrap-token".into(), "not-the-token-at-all".into()],
    )?;
    assert!(!wait_until(Duration::from_secs(2), || rogue.is_ready()));
    assert!(rogue.process.log_text().contains("PermissionDenied"));
    rogue.process.kill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_inbound_refuses_every_bad_peer_before_the_app() -> Result<()> {
    let mesh = Mesh::start(
        &format!("{}{AUTHORIZATION}", peer_authentication("STRICT")),
        &[],
    )?;
    mesh.wait_enforced().await?;
    let before = mesh.app_requests()?;

    // Plaintext: the connection is dropped without a response.
    let plain = client::blocking_get(mesh.inbound, "/");
    assert!(plain.is_err(), "plaintext got {plain:?}");

    let other_ca = TestCa::new("another root")?;
    let refused = [
        ("another CA", other_ca.leaf(&Leaf::id(WEB))?),
        (
            "expired",
            mesh.ca.leaf(&Leaf {
                expired: true,
                ..Leaf::id(WEB)
            })?,
        ),
        (
            "CA=true leaf",
            mesh.ca.leaf(&Leaf {
                ca: true,
                ..Leaf::id(WEB)
            })?,
        ),
        (
            "two URI SANs",
            mesh.ca.leaf(&Leaf {
                uris: vec![
                    WEB.into(),
                    "spiffe://cluster.local/ns/default/sa/other".into(),
                ],
                ..Leaf::default()
            })?,
        ),
        (
            "other trust domain",
            mesh.ca
                .leaf(&Leaf::id("spiffe://evil.example/ns/default/sa/web"))?,
        ),
    ];
    for (what, credential) in &refused {
        let outcome = tls::request(mesh.inbound, credential, "/").await?;
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{what}: expected a refused handshake, got {outcome:?}"
        );
    }
    // A valid identity the AuthorizationPolicy does not allow: 403.
    let intruder = mesh
        .forged(
            &Leaf::id("spiffe://cluster.local/ns/default/sa/intruder"),
            "/",
        )
        .await?;
    let Outcome::Response(403, body) = intruder else {
        bail!("intruder: {intruder:?}");
    };
    assert!(body.contains("rbac-denied"), "{body}");
    assert_eq!(mesh.app_requests()?, before, "nothing reached the app");

    let metrics = mesh.server.metrics()?;
    for reason in [
        "plaintext",
        "unknown-ca",
        "expired",
        "ca-as-leaf",
        "uri-san-count",
        "foreign-trust-domain",
    ] {
        let n = sum_samples(
            &metrics,
            "trellis_tls_handshake_failures_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert!(
            n >= 1.0,
            "handshake failure {reason} counted: {n}\n{metrics}"
        );
    }

    // The allowed identity is accepted.
    let allowed = mesh.forged(&Leaf::id(WEB), "/ok").await?;
    assert!(matches!(allowed, Outcome::Response(200, _)), "{allowed:?}");
    assert_eq!(mesh.app_requests()?, before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_mtls_on_one_port() -> Result<()> {
    let mesh = Mesh::start(&peer_authentication("PERMISSIVE"), &[])?;
    let (status, body) = client::blocking_get(mesh.inbound, "/plain")?;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert!(json["headers"]["x-forwarded-client-cert"].is_null());
    let r = get(
        &client::http1(),
        mesh.client.outbound,
        "reviews",
        "/mtls",
        &[],
    )
    .await?;
    assert_eq!(r.status, 200);
    let xfcc = r.json()?["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xfcc.ends_with(&format!("URI={WEB}")), "{xfcc}");
    let metrics = mesh.server.metrics()?;
    for policy in ["none", "mutual_tls"] {
        let n = sum_samples(
            &metrics,
            "trellis_requests_total",
            &[
                "direction=\"inbound\"",
                &format!("connection_security_policy=\"{policy}\""),
            ],
        );
        assert_eq!(n, 1.0, "{policy}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_do_not_slip_past_a_deny() -> Result<()> {
    let mesh = Mesh::start(
        &format!("{}{AUTHORIZATION}", peer_authentication("STRICT")),
        &[],
    )?;
    mesh.wait_enforced().await?;
    let corpus = [
        "/admin",
        "/admin/",
        "/admin/users",
        "//admin",
        "///admin//users",
        "/./admin",
        "/a/../admin",
        "/a/b/../../admin/x",
        "/admin/../admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/admin%2Fusers",
        "/%61dmin",
        "/%41dmin/../admin",
        "/%2e/admin",
        "/a/%2e%2e/admin",
        "/a/%2E%2E/admin",
        "/%5Cadmin",
        "/%5cadmin",
        "/.%2e/admin",
        "/a/.%2E/admin/x",
        "/admin/.",
        "/x/..//admin",
    ];
    let mut bypasses = Vec::new();
    for path in corpus {
        match mesh.forged(&Leaf::id(WEB), path).await? {
            Outcome::Response(200, body) => {
                let json: serde_json::Value = serde_json::from_str(&body)?;
                let seen = json["path"].as_str().unwrap_or_default().to_string();
                if seen == "/admin" || seen.starts_with("/admin/") {
                    bypasses.push(format!("{path} reached the app as {seen}"));
                }
            }
            Outcome::Response(403 | 400, _) => {}
            other => bail!("{path}: unexpected {other:?}"),
        }
    }
    assert!(bypasses.is_empty(), "bypasses: {bypasses:#?}");
    // The DENY does not over-reach: other paths pass, normalized.
    match mesh.forged(&Leaf::id(WEB), "//public/./a/../b").await? {
        Outcome::Response(200, body) => {
            let json: serde_json::Value = serde_json::from_str(&body)?;
            assert_eq!(
                json["path"], "/public/b",
                "the app gets the authorized path"
            );
        }
        other => bail!("public: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_second_certificates_rotate_under_load_without_a_failure() -> Result<()> {
    // New connections keep being made (each carries 50 requests), so
    // renewed certificates are used while old connections finish.
    let policies = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {{http: {{maxRequestsPerConnection: 50}}}}
",
        peer_authentication("STRICT")
    );
    let mesh = Mesh::start(&policies, &["--cert-ttl", "60s"])?;
    let client = client::http1();
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    while started.elapsed() < Duration::from_secs(180) {
        let tick = Instant::now();
        match get(&client, mesh.client.outbound, "reviews", "/steady", &[]).await {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!(
                "{:?}: {} {:?}",
                started.elapsed(),
                r.status,
                r.body
            )),
            Err(e) => failed.push(format!("{:?}: {e}", started.elapsed())),
        }
        tokio::time::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed())).await;
    }
    assert!(failed.is_empty(), "{} ok, failed: {failed:#?}", ok);
    for proxy in [&mesh.server, &mesh.client] {
        let metrics = proxy.metrics()?;
        let renewals = sum_samples(
            &metrics,
            "trellis_identity_cert_renewals_total",
            &["result=\"success\""],
        );
        // One at start, then every 30 s: 7 in 3 minutes.
        assert!(renewals >= 6.0, "{}: {renewals} certificates", proxy.id);
        let left = sum_samples(&metrics, "trellis_identity_cert_expiry_seconds", &[]);
        assert!(left > 0.0 && left <= 61.0, "{}: {left} s left", proxy.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_python_clients_with_a_mesh_certificate_get_through() -> Result<()> {
    let mesh = Mesh::start(
        &format!("{}{AUTHORIZATION}", peer_authentication("STRICT")),
        &[],
    )?;
    mesh.wait_enforced().await?;
    let dir = TempDir::new("openssl")?;
    let (ca, _) = mesh.ca.write(dir.path())?;
    let (cert, key) = mesh.ca.leaf_files(&Leaf::id(WEB), dir.path(), "web")?;
    let request = "GET /items HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n";

    let mut openssl = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &mesh.inbound.to_string(), "-quiet"])
        .args(["-verify_return_error", "-CAfile"])
        .arg(&ca)
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = openssl.stdin.take().expect("stdin");
        stdin.write_all(request.as_bytes())?;
        // With -quiet, s_client ignores the end of its input and ends when
        // the server closes the connection.
    }
    let out = openssl.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "openssl s_client: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let python = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile="{ca}")
ctx.check_hostname = False  # sidecars are named by SPIFFE id, not DNS
ctx.load_cert_chain("{cert}", "{key}")
with ctx.wrap_socket(socket.create_connection(("{ip}", {port}))) as s:
    s.sendall(b"{request}")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
print(data.decode().splitlines()[0])
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
        ip = mesh.inbound.ip(),
        port = mesh.inbound.port(),
        request = request.replace('\r', "\\r").replace('\n', "\\n"),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &python])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "python ssl: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
