//! Protocol detection on a captured connection: the client's first bytes
//! say HTTP/1.x (a method token and a space) or HTTP/2 (the prior-knowledge
//! preface); anything else, or nothing within the detection timeout (a
//! server-first protocol such as MySQL), is opaque TCP.

use std::time::Duration;

use tokio::net::TcpStream;

/// What the connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token taken for HTTP (`PROPPATCH` is 9; extension methods more).
const MAX_METHOD: usize = 24;

/// Decides from `bytes` (the start of the stream), or `None` when more
/// bytes are needed.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    if H2_PREFACE.starts_with(&bytes[..bytes.len().min(H2_PREFACE.len())]) {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Protocol::Http);
    }
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => continue,
            b' ' if i > 0 => return Some(Protocol::Http),
            _ => return Some(Protocol::Opaque),
        }
    }
    None // a method token so far
}

/// Peeks at `stream` (nothing is consumed) until [`classify`] decides, the
/// client stops sending, or `timeout` passes (opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
    let mut buf = [0u8; 32];
    let decided = async {
        let mut last = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Protocol::Opaque,
                Ok(n) => n,
            };
            if let Some(p) = classify(&buf[..n]) {
                return p;
            }
            if n == last {
                // Data is there but incomplete: wait a little for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            last = n;
        }
    };
    tokio::time::timeout(timeout, decided)
        .await
        .unwrap_or(Protocol::Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_a_method_and_a_space_or_the_h2_preface() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "the preface so far");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"*1\r\n$4\r\nPING\r\n"),
            Some(Protocol::Opaque),
            "redis"
        );
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Opaque), "TLS");
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
        assert_eq!(classify(&[b'A'; 30]), Some(Protocol::Opaque));
    }
}
