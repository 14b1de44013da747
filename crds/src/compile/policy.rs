//! Field-by-field translation of route and traffic policies into the wire model.

use trellis_api as api;

use crate::duration::parse_duration;
use crate::types::{
    HeaderOperations, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry,
    RedirectPortSelection, SimpleLb, StringMatch, TlsMode, TrafficPolicy,
};

pub(super) fn duration(text: Option<&String>) -> Option<api::prost_types::Duration> {
    let d = parse_duration(text?).ok()?;
    Some(api::prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

pub(super) fn protocol(name: &str) -> api::Protocol {
    match name {
        "HTTP2" | "GRPC" | "GRPC-WEB" => api::Protocol::Http2,
        "TCP" | "TLS" | "HTTPS" | "MONGO" | "REDIS" | "MYSQL" => api::Protocol::Tcp,
        _ => api::Protocol::Http1,
    }
}

fn string_match(m: &StringMatch) -> api::StringMatch {
    use api::string_match::Kind;
    let kind = if let Some(v) = &m.exact {
        Some(Kind::Exact(v.clone()))
    } else if let Some(v) = &m.prefix {
        Some(Kind::Prefix(v.clone()))
    } else {
        m.regex.clone().map(Kind::Regex)
    };
    api::StringMatch { kind }
}

fn header_matches(map: &std::collections::BTreeMap<String, StringMatch>) -> Vec<api::HeaderMatch> {
    map.iter()
        .map(|(name, m)| api::HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: Some(string_match(m)).filter(|v| v.kind.is_some()),
        })
        .collect()
}

pub(super) fn route_match(m: &HttpMatchRequest) -> api::RouteMatch {
    api::RouteMatch {
        uri: m.uri.as_ref().map(string_match),
        headers: header_matches(&m.headers),
        method: m.method.as_ref().map(string_match),
        query_params: m
            .query_params
            .iter()
            .map(|(name, v)| api::HeaderMatch {
                name: name.clone(),
                value: Some(string_match(v)).filter(|v| v.kind.is_some()),
            })
            .collect(),
        without_headers: header_matches(&m.without_headers),
        authority: m.authority.as_ref().map(string_match),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        port: m.port.unwrap_or(0),
        source_labels: m.source_labels.clone().into_iter().collect(),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    }
}

pub(super) fn header_ops(h: &HeaderOperations) -> api::HeaderOperations {
    api::HeaderOperations {
        set: h.set.clone().into_iter().collect(),
        add: h.add.clone().into_iter().collect(),
        remove: h.remove.clone(),
    }
}

pub(super) fn rate_limit(r: &crate::types::RateLimit) -> api::RateLimit {
    // Validated positive and finite; the default burst is one second's worth.
    let default_burst = r.requests_per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
    api::RateLimit {
        requests_per_second: r.requests_per_second,
        burst: r.burst.unwrap_or(default_burst).max(1),
    }
}

pub(super) fn redirect(r: &HttpRedirect) -> api::Redirect {
    use api::redirect::DerivePort;
    api::Redirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        redirect_code: r.redirect_code.unwrap_or(301),
        port: r.port.unwrap_or(0),
        derive_port: match r.derive_port {
            None => DerivePort::Unset,
            Some(RedirectPortSelection::FROM_PROTOCOL_DEFAULT) => DerivePort::FromProtocolDefault,
            Some(RedirectPortSelection::FROM_REQUEST_PORT) => DerivePort::FromRequestPort,
        } as i32,
        scheme: r.scheme.clone().unwrap_or_default(),
    }
}

pub(super) fn retries(r: &HttpRetry) -> api::RetryPolicy {
    api::RetryPolicy {
        attempts: r.attempts.unwrap_or(0).max(0).unsigned_abs(),
        per_try_timeout: duration(r.per_try_timeout.as_ref()),
        retry_on: r
            .retry_on
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
    }
}

/// Istio's translation: `percentage` when set, else the deprecated whole
/// `percent` (0 when neither is given).
fn fraction(percentage: Option<&crate::types::Percent>, percent: Option<i32>) -> f64 {
    percentage.map_or_else(|| f64::from(percent.unwrap_or(0)), |p| p.value)
}

pub(super) fn fault(f: &HttpFaultInjection) -> api::FaultPolicy {
    api::FaultPolicy {
        delay: f.delay.as_ref().map(|d| api::FaultDelay {
            percentage: fraction(d.percentage.as_ref(), d.percent),
            fixed_delay: duration(d.fixed_delay.as_ref()),
        }),
        abort: f.abort.as_ref().map(|a| api::FaultAbort {
            percentage: fraction(a.percentage.as_ref(), a.percent),
            http_status: a.http_status.unwrap_or(0).max(0).unsigned_abs(),
        }),
    }
}

fn count(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0).unsigned_abs()
}

/// The rule's policy with the subset's fields laid over it.
pub(super) fn traffic_policy(
    rule: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
) -> Option<api::TrafficPolicy> {
    if rule.is_none() && subset.is_none() {
        return None;
    }
    let pick = |f: fn(&TrafficPolicy) -> bool| subset.filter(|s| f(s)).or(rule);
    let lb = pick(|p| p.load_balancer.is_some()).and_then(|p| p.load_balancer.as_ref());
    let pool = pick(|p| p.connection_pool.is_some()).and_then(|p| p.connection_pool.as_ref());
    let outlier =
        pick(|p| p.outlier_detection.is_some()).and_then(|p| p.outlier_detection.as_ref());
    let tls = pick(|p| p.tls.is_some()).and_then(|p| p.tls.as_ref());
    let limit = pick(|p| p.rate_limit.is_some()).and_then(|p| p.rate_limit.as_ref());
    let budget = pick(|p| p.retry_budget.is_some()).and_then(|p| p.retry_budget.as_ref());
    Some(api::TrafficPolicy {
        load_balancer: lb.map(|lb| {
            use api::consistent_hash::Key;
            use api::load_balancer::Simple;
            api::LoadBalancer {
                simple: match lb.simple {
                    Some(SimpleLb::ROUND_ROBIN) => Simple::RoundRobin,
                    Some(SimpleLb::LEAST_REQUEST | SimpleLb::LEAST_CONN) => Simple::LeastRequest,
                    Some(SimpleLb::RANDOM) => Simple::Random,
                    Some(SimpleLb::PASSTHROUGH) => Simple::Passthrough,
                    Some(SimpleLb::UNSPECIFIED) | None => Simple::Unspecified,
                } as i32,
                consistent_hash: lb.consistent_hash.as_ref().map(|h| api::ConsistentHash {
                    key: if let Some(name) = &h.http_header_name {
                        Some(Key::HttpHeaderName(name.to_ascii_lowercase()))
                    } else if let Some(cookie) = &h.http_cookie {
                        Some(Key::HttpCookie(cookie.name.clone()))
                    } else if let Some(q) = &h.http_query_parameter_name {
                        Some(Key::HttpQueryParameterName(q.clone()))
                    } else {
                        h.use_source_ip.map(Key::UseSourceIp)
                    },
                }),
            }
        }),
        connection_pool: pool.map(|p| {
            let tcp = p.tcp.as_ref();
            let http = p.http.as_ref();
            api::ConnectionPool {
                max_connections: count(tcp.and_then(|t| t.max_connections)),
                connect_timeout: duration(tcp.and_then(|t| t.connect_timeout.as_ref())),
                http1_max_pending_requests: count(http.and_then(|h| h.http1_max_pending_requests)),
                http2_max_requests: count(http.and_then(|h| h.http2_max_requests)),
                max_requests_per_connection: count(
                    http.and_then(|h| h.max_requests_per_connection),
                ),
                max_retries: count(http.and_then(|h| h.max_retries)),
                idle_timeout: duration(http.and_then(|h| h.idle_timeout.as_ref())),
            }
        }),
        outlier_detection: outlier.map(|o| api::OutlierDetection {
            consecutive_5xx_errors: o.consecutive_5xx_errors.unwrap_or(0),
            consecutive_gateway_errors: o
                .consecutive_gateway_errors
                .or(o.consecutive_errors.map(|e| e.max(0).unsigned_abs()))
                .unwrap_or(0),
            interval: duration(o.interval.as_ref()),
            base_ejection_time: duration(o.base_ejection_time.as_ref()),
            max_ejection_percent: count(o.max_ejection_percent),
        }),
        tls_mode: match tls.and_then(|t| t.mode) {
            Some(TlsMode::ISTIO_MUTUAL) => api::TlsMode::TlsIstioMutual,
            Some(TlsMode::SIMPLE) => api::TlsMode::TlsSimple,
            Some(TlsMode::MUTUAL) => api::TlsMode::TlsMutual,
            Some(TlsMode::DISABLE) | None => api::TlsMode::TlsDisable,
        } as i32,
        rate_limit: limit.map(rate_limit),
        retry_budget: budget.map(|b| api::RetryBudget {
            percent: b.percent.unwrap_or(20.0),
            min_retries_per_second: b.min_retries_per_second.unwrap_or(10),
        }),
    })
}
