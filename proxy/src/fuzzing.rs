//! What the fuzz targets (`fuzz/`, run with `cargo fuzz`) check, one
//! function per target, so their corpora also run as ordinary regression
//! tests on the stable toolchain (`proxy/tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes and panics only when a property a user relies on fails:
//! never a crash, a hang, or an answer that is not HTTP.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use trellis_api as api;

use crate::body::{self, ProxyBody};
use crate::config::{NodeConfig, RequestLimits};
use crate::discovery::{Env, RouteTable};
use crate::outbound::head::admit;
use crate::transport::framing::{Framing, StrictFraming};

/// A check of one fuzz target: panics on a broken property.
pub type Check = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("http1_request", http1_request),
    ("rule_file", rule_file),
    ("pushed_config", pushed_config),
    ("certificate", certificate),
    ("path", path),
];

/// Bytes a client sends on one HTTP/1 connection, served by hyper with the
/// proxy's framing check, head checks and paced request body: the connection ends
/// within a bound, and whatever is answered starts with a status line; and
/// the framing check judges the bytes alike however reads split them.
pub fn http1_request(data: &[u8]) {
    framing_ignores_read_boundaries(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let limits = RequestLimits::default();
        let service = hyper::service::service_fn(move |req| async move {
            Ok::<_, std::convert::Infallible>(answer(req, &limits).await)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(80 << 10);
        let conn = builder.serve_connection(
            hyper_util::rt::TokioIo::new(StrictFraming::new(server)),
            service,
        );
        let served = tokio::spawn(conn);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        // The client has said all it will: the proxy must finish at once.
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out));
        assert!(read.await.is_ok(), "the connection did not end");
        served.abort();
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(64)])
        );
    });
}

/// The framing check's verdict on a stream does not depend on how reads
/// split it (here at the first byte's value).
fn framing_ignores_read_boundaries(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    assert_eq!(
        Framing::judge(data, None),
        Framing::judge(data, Some(split)),
        "split at {split}"
    );
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    limits: &RequestLimits,
) -> Response<ProxyBody> {
    let status = match admit(req, limits) {
        Ok(req) => match req.into_body().collect().await {
            Ok(_) => StatusCode::OK,
            Err(e) => crate::outbound::local_reply::Reason::of(&e.into()).status(),
        },
        Err(reason) => reason.status(),
    };
    let mut resp = Response::new(body::full(""));
    *resp.status_mut() = status;
    resp
}

fn node() -> NodeConfig {
    NodeConfig {
        id: "fuzz".into(),
        namespace: "default".into(),
        service: "fuzz".into(),
        labels: [("app".to_string(), "fuzz".to_string())].into(),
    }
}

/// A rule file: loaded, validated and, when valid, compiled and built into
/// the proxy's tables, as the static proxy does.
pub fn rule_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = trellis_crds::load_str("fuzz.yaml", text) else {
        return;
    };
    if !trellis_crds::validate(&rules).is_empty() {
        return;
    }
    let config = trellis_crds::compile(
        &rules,
        &trellis_crds::Endpoints::from_service_entries(&rules),
    );
    let _ = RouteTable::build(&config, &node(), None, &Env::default());
}

/// A config pushed by a control plane: decoded and built, or refused.
pub fn pushed_config(data: &[u8]) {
    use prost::Message;
    let Ok(config) = api::ProxyConfig::decode(data) else {
        return;
    };
    let _ = RouteTable::build(&config, &node(), None, &Env::default());
}

/// A peer's DER certificate: its SPIFFE id, if any, is one that parses
/// back to itself.
pub fn certificate(data: &[u8]) {
    use trellis_api::tls::spiffe::{identity_of, spiffe_id_of, SpiffeId};
    if let Ok(id) = spiffe_id_of(data) {
        let again = SpiffeId::parse(id.as_str()).expect("an id parsed from a certificate parses");
        assert_eq!(again.as_str(), id.as_str());
        let _ = identity_of(data, id.trust_domain()).expect("its own trust domain");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SpiffeId::parse(text);
    }
}

/// A request path: the normalized form is absolute, has no empty, `.` or
/// `..` segment, and normalizes to itself.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = crate::inbound::path::normalize(text) else {
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?}");
    let inner = normal.trim_end_matches('/');
    assert!(
        inner
            .split('/')
            .skip(1)
            .all(|s| !s.is_empty() && s != "." && s != ".."),
        "{text:?} -> {normal:?}"
    );
    assert_eq!(
        crate::inbound::path::normalize(&normal).as_deref(),
        Ok(normal.as_str()),
        "{text:?} -> {normal:?} is not stable"
    );
}
