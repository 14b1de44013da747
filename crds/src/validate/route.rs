//! Validation of `VirtualService` routes.

use std::collections::BTreeMap;

use super::{At, SubsetIndex};
use crate::diagnostic::FieldPath;
use crate::host::qualify;
use crate::resource::Resource;
use crate::types::{
    HttpRoute, HttpRouteDestination, RouteDestination, StringMatch, VirtualServiceSpec,
};

/// `retryOn` conditions understood by the proxy (besides bare status codes).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    // gRPC status names (Istio's), read from `grpc-status`
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(super) fn check_virtual_service(
    vs: &Resource<VirtualServiceSpec>,
    subsets: &SubsetIndex,
    routed_hosts: &mut BTreeMap<String, String>,
    at: &mut At<'_>,
) {
    let spec = FieldPath::root().key("spec");
    let ns = vs.namespace();
    if vs.spec.hosts.is_empty() {
        at.error(&spec.key("hosts"), "at least one host is required");
    }
    for (i, host) in vs.spec.hosts.iter().enumerate() {
        let path = spec.key("hosts").index(i);
        at.host(&path, host);
        let fqdn = qualify(host, ns);
        let owner = format!("{ns}/{}", vs.name());
        match routed_hosts.get(&fqdn) {
            Some(other) if *other != owner => at.error(
                &path,
                format!("host {fqdn} is already routed by VirtualService {other}"),
            ),
            _ => {
                routed_hosts.insert(fqdn, owner);
            }
        }
    }
    if vs.spec.http.is_empty() && vs.spec.tcp.is_empty() {
        at.error(&spec, "at least one http or tcp route is required");
    }
    for (i, route) in vs.spec.http.iter().enumerate() {
        check_http_route(route, &spec.key("http").index(i), ns, subsets, at);
    }
    for (i, route) in vs.spec.tcp.iter().enumerate() {
        let path = spec.key("tcp").index(i).key("route");
        if route.route.is_empty() {
            at.error(&path, "at least one destination is required");
        }
        let weights: Vec<_> = route
            .route
            .iter()
            .map(|d: &RouteDestination| d.weight)
            .collect();
        check_weights(&path, &weights, at);
        for (k, d) in route.route.iter().enumerate() {
            let dpath = path.index(k).key("destination");
            check_destination(&dpath, &d.destination, ns, subsets, at);
        }
    }
}

fn check_http_route(
    route: &HttpRoute,
    path: &FieldPath,
    ns: &str,
    subsets: &SubsetIndex,
    at: &mut At<'_>,
) {
    match (route.route.is_empty(), route.redirect.is_some()) {
        (true, false) => at.error(
            &path.key("route"),
            "a route needs a destination or a redirect",
        ),
        (false, true) => at.error(
            &path.key("redirect"),
            "a route cannot have both a destination and a redirect",
        ),
        _ => {}
    }
    for (j, m) in route.matches.iter().enumerate() {
        let mpath = path.key("match").index(j);
        for (name, value) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(value) = value {
                check_string_match(&mpath.key(name), value, true, at);
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, value) in map {
                let hpath = mpath.key(field).key(name.clone());
                if name.is_empty() {
                    at.error(&hpath, "name must not be empty");
                }
                check_string_match(&hpath, value, false, at);
            }
        }
    }
    let weights: Vec<_> = route
        .route
        .iter()
        .map(|d: &HttpRouteDestination| d.weight)
        .collect();
    check_weights(&path.key("route"), &weights, at);
    for (k, d) in route.route.iter().enumerate() {
        let dpath = path.key("route").index(k).key("destination");
        check_destination(&dpath, &d.destination, ns, subsets, at);
    }
    at.duration(&path.key("timeout"), route.timeout.as_ref());
    if let Some(limit) = &route.rate_limit {
        check_rate_limit(&path.key("rateLimit"), limit, at);
    }
    if let Some(retries) = &route.retries {
        let rpath = path.key("retries");
        if retries.attempts.is_some_and(|a| a < 0) {
            at.error(&rpath.key("attempts"), "must not be negative");
        }
        at.duration(
            &rpath.key("perTryTimeout"),
            retries.per_try_timeout.as_ref(),
        );
        for token in retries
            .retry_on
            .iter()
            .flat_map(|r| r.split(','))
            .map(str::trim)
        {
            let is_code = token.parse::<u16>().is_ok_and(|c| (100..600).contains(&c));
            if !is_code && !RETRY_ON.contains(&token) {
                at.error(
                    &rpath.key("retryOn"),
                    format!(
                        "unknown retry condition {token:?} (use {} or a status code)",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(fault) = &route.fault {
        let fpath = path.key("fault");
        if let Some(delay) = &fault.delay {
            let dpath = fpath.key("delay");
            match &delay.fixed_delay {
                None => at.error(&dpath, "fixedDelay is required"),
                some => at.duration(&dpath.key("fixedDelay"), some.as_ref()),
            }
            if let Some(p) = &delay.percentage {
                at.percent(&dpath.key("percentage").key("value"), p.value);
            }
            if let Some(p) = delay.percent {
                at.percent(&dpath.key("percent"), p.into());
            }
        }
        if let Some(abort) = &fault.abort {
            let apath = fpath.key("abort");
            match abort.http_status {
                None => at.error(&apath, "httpStatus is required"),
                Some(s) if !(200..600).contains(&s) => at.error(
                    &apath.key("httpStatus"),
                    format!("must be an HTTP status 200-599, got {s}"),
                ),
                Some(_) => {}
            }
            if let Some(p) = &abort.percentage {
                at.percent(&apath.key("percentage").key("value"), p.value);
            }
            if let Some(p) = abort.percent {
                at.percent(&apath.key("percent"), p.into());
            }
        }
    }
    if let Some(mirror) = &route.mirror {
        check_destination(&path.key("mirror"), mirror, ns, subsets, at);
        if !route.mirrors.is_empty() {
            at.error(
                &path.key("mirrors"),
                "set either mirror or mirrors, not both",
            );
        }
    }
    if let Some(p) = &route.mirror_percentage {
        at.percent(&path.key("mirrorPercentage").key("value"), p.value);
    }
    if let Some(p) = route.mirror_percent {
        at.percent(&path.key("mirrorPercent"), p.into());
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let mpath = path.key("mirrors").index(i);
        check_destination(&mpath.key("destination"), &m.destination, ns, subsets, at);
        if let Some(p) = &m.percentage {
            at.percent(&mpath.key("percentage").key("value"), p.value);
        }
    }
    if let Some(redirect) = &route.redirect {
        let rpath = path.key("redirect");
        if let Some(code) = redirect.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                at.error(
                    &rpath.key("redirectCode"),
                    format!("must be 301, 302, 303, 307 or 308, got {code}"),
                );
            }
        }
        if let Some(port) = redirect.port.filter(|p| !(1..=65535).contains(p)) {
            at.error(&rpath.key("port"), format!("port {port} is out of range"));
        }
        if let Some(scheme) = redirect.scheme.as_deref() {
            if !matches!(scheme, "http" | "https") {
                at.error(
                    &rpath.key("scheme"),
                    format!("must be http or https, got {scheme:?}"),
                );
            }
        }
        if let Some(uri) = redirect.uri.as_deref().filter(|u| !u.starts_with('/')) {
            at.error(&rpath.key("uri"), format!("must start with /, got {uri:?}"));
        }
    }
}

fn check_string_match(path: &FieldPath, m: &StringMatch, required: bool, at: &mut At<'_>) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 || (required && set == 0) {
        at.error(path, "exactly one of exact, prefix or regex must be set");
    }
    if let Some(re) = &m.regex {
        at.regex(&path.key("regex"), re);
    }
}

fn check_destination(
    path: &FieldPath,
    d: &crate::types::Destination,
    ns: &str,
    subsets: &SubsetIndex,
    at: &mut At<'_>,
) {
    at.host(&path.key("host"), &d.host);
    if let Some(subset) = &d.subset {
        let host = qualify(&d.host, ns);
        if !subsets.defines(&host, subset) {
            at.error(
                &path.key("subset"),
                format!("subset {subset:?} is not defined by any DestinationRule for host {host}"),
            );
        }
    }
    if let Some(port) = &d.port {
        if !(1..=65535).contains(&port.number) {
            at.error(
                &path.key("port").key("number"),
                format!("port {} is out of range", port.number),
            );
        }
    }
}

/// Weights: each 0-100; required with several destinations; sum 100.
fn check_weights(path: &FieldPath, weights: &[Option<i32>], at: &mut At<'_>) {
    for (k, w) in weights.iter().enumerate() {
        if let Some(w) = w {
            if !(0..=100).contains(w) {
                at.error(
                    &path.index(k).key("weight"),
                    format!("must be between 0 and 100, got {w}"),
                );
            }
        }
    }
    if weights.is_empty() || (weights.len() == 1 && weights[0].is_none()) {
        return; // a redirect-only route, or one destination taking all
    }
    if weights.len() > 1 {
        for (k, w) in weights.iter().enumerate() {
            if w.is_none() {
                at.error(
                    &path.index(k),
                    "weight is required when a route has more than one destination",
                );
            }
        }
    }
    let sum: i64 = weights.iter().flatten().map(|w| i64::from(*w)).sum();
    if weights.iter().all(Option::is_some) && sum != 100 {
        at.error(path, format!("weights sum to {sum}, expected 100"));
    }
}

pub(super) fn check_rate_limit(path: &FieldPath, limit: &crate::types::RateLimit, at: &mut At<'_>) {
    let rps = limit.requests_per_second;
    if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
        at.error(
            &path.key("requestsPerSecond"),
            format!("must be a positive number of requests per second, got {rps}"),
        );
    }
    if limit.burst == Some(0) {
        at.error(&path.key("burst"), "must be at least 1");
    }
}
