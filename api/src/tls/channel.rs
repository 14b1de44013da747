//! TLS on the control plane's ports (Raft and the operator API, the proxy
//! stream and CA, the admin port). A replica presents a certificate for
//! `spiffe://<td>/trellis/control-plane/<node-id>` signed by the mesh root;
//! clients verify that identity against the trust bundle they were given
//! ([`client_config`], [`Connector`] for tonic), and members present theirs
//! as client certificates. The server side ([`incoming`]) completes each
//! handshake in the connection's own task and hands tonic (or hyper) the
//! connection with the caller's verified identity ([`Peer`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

pub use super::spiffe::{control_plane_id, control_plane_node};
use super::spiffe::{spiffe_id_of, SpiffeId};
use super::verify::PeerVerifier;

/// An error and its causes, `a: b: c` (a failed connection to a replica
/// says why: refused, or which certificate check failed), repeats dropped.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        source = e.source();
    }
    text
}

/// How long a TLS handshake on a control-plane port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a PEM trust bundle (one or more certificates).
pub fn read_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("trust bundle: {e}"))?;
    if certs.is_empty() {
        return Err("trust bundle: no PEM certificate".into());
    }
    Ok(certs)
}

/// Reads a PEM trust bundle file (`--trust-bundle`).
pub fn load_bundle(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    read_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// A certificate chain and its key, as a TLS end presents them.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A client of a control-plane port: the server must be a replica whose
/// certificate chains to `bundle`; presents `identity` when given (replicas
/// to each other). ALPN `h2` (gRPC).
pub fn client_config(
    bundle: &[CertificateDer<'static>],
    identity: Option<Identity>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_alpn(bundle, identity, &[b"h2"])
}

/// As [`client_config`] with other ALPN protocols (HTTP/1.1 for the admin port).
pub fn client_config_alpn(
    bundle: &[CertificateDer<'static>],
    identity: Option<Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let verifier = Arc::new(PeerVerifier::control_plane(bundle)?);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .dangerous()
    .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server config for a control-plane port: presents `identity`; a client
/// certificate is optional and, when presented, must chain to `roots` with
/// an id of `trust_domain`.
pub fn server_config(
    roots: &[CertificateDer<'static>],
    trust_domain: &str,
    identity: Identity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let verifier = Arc::new(PeerVerifier::new(roots, trust_domain)?.optional());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_client_cert_verifier(verifier)
    .with_single_cert(identity.chain, identity.key)
    .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Connects tonic channels over TLS: TCP (no delay), then the handshake
/// with a replica. The server name is not checked (replicas are named by
/// SPIFFE id); the verifier checks the id.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Who is on the other end of a control-plane connection: tonic puts it in
/// each request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The SPIFFE id of the client certificate, when one was presented
    /// (verified during the handshake).
    pub id: Option<SpiffeId>,
}

impl Peer {
    /// The replica this peer is, when it presented a replica's certificate.
    pub fn replica(&self) -> Option<u64> {
        self.id.as_ref().and_then(control_plane_node)
    }
}

/// A server-side TLS connection with its peer.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl TlsConn {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The TLS connections accepted on `listener`, each handshake in its own
/// task (a slow or plaintext client holds up no one; a failed handshake
/// closes that connection and is logged at debug level). Ends when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    name: &'static str,
) -> impl futures_util::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = name, %addr, "TLS handshake timed out");
                        return;
                    }
                };
                let id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| spiffe_id_of(leaf).ok());
                let conn = TlsConn {
                    stream,
                    peer: Peer { addr, id },
                };
                let _ = tx.send(conn).await;
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}
