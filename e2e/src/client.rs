//! HTTP clients for tests: async HTTP/1.1 and h2c clients that address a
//! proxy listener while naming a service in `Host`, and a tiny blocking GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A test client. HTTP/1.1 requests go to the proxy's address with the
/// service in `Host`; HTTP/2 requests ride one connection to the proxy with
/// the service in `:authority` (what an application's connection looks like
/// once redirected to its sidecar).
#[derive(Clone, Debug)]
pub enum HttpClient {
    Http1(Box<Client<HttpConnector, Full<Bytes>>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

/// A pooled HTTP/1.1 client.
pub fn http1() -> HttpClient {
    HttpClient::Http1(Box::new(Client::builder(TokioExecutor::new()).build_http()))
}

/// An HTTP/2 (prior knowledge) connection to `proxy`.
pub async fn http2(proxy: SocketAddr) -> Result<HttpClient> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    Ok(HttpClient::Http2(sender))
}

/// Sends `method path` to `proxy`, addressed to `host` (the Host header or
/// `:authority`), with extra `headers` and `body`.
pub async fn send(
    client: &HttpClient,
    proxy: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply> {
    let mut req = Request::builder().method(method);
    req = match client {
        HttpClient::Http1(_) => req
            .uri(format!("http://{proxy}{path}"))
            .header(http::header::HOST, host),
        HttpClient::Http2(_) => req.uri(format!("http://{host}{path}")),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body))?;
    let resp = match client {
        HttpClient::Http1(c) => c.request(req).await?,
        HttpClient::Http2(sender) => {
            let mut sender = sender.clone();
            sender.ready().await?;
            sender.send_request(req).await?
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET host path` through `proxy`.
pub async fn get(
    client: &HttpClient,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    send(client, proxy, "GET", host, path, headers, Bytes::new()).await
}

/// A blocking `GET path` (HTTP/1.0-style, one connection): (status, body).
pub fn blocking_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(stream, addr, path)
}

/// [`blocking_get`] over TLS with `tls` (a control-plane admin port).
pub fn blocking_get_tls(
    addr: SocketAddr,
    path: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, String)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let conn = rustls::ClientConnection::new(tls, name)?;
    exchange(rustls::StreamOwned::new(conn, tcp), addr, path)
}

fn exchange(mut stream: impl Read + Write, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify, after the response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&bytes);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers");
    };
    Ok((status, body.to_string()))
}
