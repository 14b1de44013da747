//! Limits on what clients may send and how long they may take: the
//! request head (method, target, header section), the request body's pace,
//! and connection timeouts; their flags and defaults (those of the best
//! proxies: nginx, Envoy).

use std::time::Duration;

use super::parse_duration;

/// The limit flags, part of the proxy's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Largest request header section, in KiB (431 beyond).
    #[arg(long, env = "TRELLIS_MAX_REQUEST_HEADERS_KB", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_request_headers_kb: u32,
    /// Longest request target, in KiB (414 beyond).
    #[arg(long, env = "TRELLIS_MAX_REQUEST_URI_KB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_request_uri_kb: u32,
    /// Longest request method, in bytes (400 beyond).
    #[arg(long, env = "TRELLIS_MAX_METHOD_BYTES", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_method_bytes: u32,
    /// A request head must arrive within this; an HTTP/1 connection
    /// waiting for its next request is closed after it too.
    #[arg(long, env = "TRELLIS_REQUEST_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,
    /// Longest wait for the next bytes of a request body (then 408).
    #[arg(long, env = "TRELLIS_REQUEST_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_body_timeout: Duration,
    /// Bytes per second a request body must average once its first
    /// --request-body-timeout has passed (then 408); 0: no minimum.
    #[arg(long, env = "TRELLIS_REQUEST_BODY_MIN_RATE", default_value_t = 1024)]
    pub request_body_min_rate: u64,
    /// A client connection with no request in flight for this long is
    /// closed (HTTP/2 with GOAWAY).
    #[arg(long, env = "TRELLIS_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl LimitArgs {
    pub fn request(&self) -> RequestLimits {
        RequestLimits {
            head: HeadLimits {
                method: self.max_method_bytes as usize,
                uri: (self.max_request_uri_kb as usize) << 10,
                headers: (self.max_request_headers_kb as usize) << 10,
            },
            body: BodyPace {
                timeout: self.request_body_timeout,
                min_rate: self.request_body_min_rate,
            },
        }
    }

    pub fn conn(&self) -> ConnLimits {
        let head = self.request().head;
        ConnLimits {
            header_timeout: self.request_header_timeout,
            idle_timeout: self.idle_timeout,
            // the request line and header section, with room for CRLFs
            max_head_bytes: head.method + head.uri + head.headers + 1024,
        }
    }
}

/// What every request must keep to, on both listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestLimits {
    pub head: HeadLimits,
    pub body: BodyPace,
}

/// Size limits of a request head (the best proxies' defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of the method token.
    pub method: usize,
    /// Bytes of the request target.
    pub uri: usize,
    /// Bytes of the header section (names, values, `: ` and CRLF).
    pub headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            method: 32,
            uri: 16 << 10,
            headers: 60 << 10,
        }
    }
}

/// How fast a request body must arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the next bytes (nginx's `client_body_timeout`).
    pub timeout: Duration,
    /// Bytes per second the body must average after the first `timeout`;
    /// 0: no minimum.
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            min_rate: 1024,
        }
    }
}

/// How long connections may take and keep: the request head's deadline,
/// the idle timeout, and the largest head read before answering 431.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request head must arrive within this (slowloris); an HTTP/1
    /// connection waiting for its next request is closed after it too.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// gracefully (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    /// Bytes of an HTTP/1 request head buffered before it is refused.
    pub max_head_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_head_bytes: 80 << 10,
        }
    }
}
