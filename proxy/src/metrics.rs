//! Prometheus metric families of the proxy (prometheus-client), served on
//! the admin port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `trellis_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub source_workload: String,
    pub destination_service: String,
    pub destination_subset: String,
    pub route: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
    /// The peer's SPIFFE id (inbound mTLS), else empty.
    pub source_principal: String,
    pub response_code: u16,
    pub reason: &'static str,
}

/// Labels of `trellis_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: &'static str,
    pub source_workload: String,
    pub destination_service: String,
    pub destination_subset: String,
    pub route: String,
    pub connection_security_policy: &'static str,
    pub source_principal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub reason: &'static str,
}

/// Labels naming a destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination_service: String,
    pub destination_subset: String,
}

/// Labels of `trellis_endpoints`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub destination_service: String,
    pub destination_subset: String,
    pub state: &'static str,
}

/// Labels of `trellis_tls_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// Opaque TCP connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// This workload (outbound); empty inbound, as for HTTP.
    pub source_workload: String,
    /// The service, or `PassthroughCluster` for a destination outside the mesh.
    pub destination_service: String,
    pub destination_subset: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
    /// The client's SPIFFE id (inbound over mTLS).
    pub source_principal: String,
}

/// Captured traffic to destinations the mesh does not know.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassthroughLabels {
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// `allowed` (ALLOW_ANY) or `refused` (REGISTRY_ONLY).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub destination_service: String,
    /// `sent` (answered), `failed`, `too-large`, `incomplete`, `overflow`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_version: Gauge,
    pub retries: Family<RetryLabels, Counter>,
    pub outlier_ejections: Family<DestinationLabels, Counter>,
    pub outlier_panic: Family<DestinationLabels, Counter>,
    pub circuit_overflow: Family<DestinationLabels, Counter>,
    pub endpoints: Family<EndpointLabels, Gauge>,
    /// Set only with mTLS: absent from `/metrics` without a certificate.
    pub cert_expiry: Family<Vec<(String, String)>, Gauge>,
    pub cert_renewals: Family<ReloadLabels, Counter>,
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub passthrough: Family<PassthroughLabels, Counter>,
    pub tcp_rbac_denied: Family<TcpLabels, Counter>,
    registry: Registry,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<DurationLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let config_version = Gauge::default();
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Retries by what made them necessary",
            retries.clone(),
        );
        let outlier_ejections = Family::<DestinationLabels, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            outlier_ejections.clone(),
        );
        let outlier_panic = Family::<DestinationLabels, Counter>::default();
        registry.register(
            "outlier_panic",
            "Requests sent while every endpoint of the destination was ejected",
            outlier_panic.clone(),
        );
        let circuit_overflow = Family::<DestinationLabels, Counter>::default();
        registry.register(
            "circuit_overflow",
            "Requests, retries and opaque TCP connections refused by connection-pool limits",
            circuit_overflow.clone(),
        );
        let endpoints = Family::<EndpointLabels, Gauge>::default();
        registry.register("endpoints", "Endpoints by outlier state", endpoints.clone());
        registry.register(
            "requests",
            "Requests handled by the proxy",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request to response headers",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration loads by result",
            config_reloads.clone(),
        );
        registry.register(
            "config_version",
            "Version of the configuration in use",
            config_version.clone(),
        );
        let cert_expiry = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register_with_unit(
            "identity_cert_expiry",
            "Time until the workload certificate expires",
            prometheus_client::registry::Unit::Seconds,
            cert_expiry.clone(),
        );
        let cert_renewals = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "identity_cert_renewals",
            "Attempts to obtain a workload certificate, by result",
            cert_renewals.clone(),
        );
        let handshake_failures = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "mTLS handshakes that failed, by side and reason",
            handshake_failures.clone(),
        );
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Copies of requests for mirrors, by what became of them",
            mirror_requests.clone(),
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            tcp_opened.clone(),
        );
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            tcp_closed.clone(),
        );
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_sent",
            "Bytes sent to the destination on opaque TCP connections",
            prometheus_client::registry::Unit::Bytes,
            tcp_sent.clone(),
        );
        let tcp_received = Family::<TcpLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_received",
            "Bytes received from the destination on opaque TCP connections",
            prometheus_client::registry::Unit::Bytes,
            tcp_received.clone(),
        );
        let passthrough = Family::<PassthroughLabels, Counter>::default();
        registry.register(
            "outbound_passthrough",
            "Captured connections (tcp) and requests (http) to destinations outside the mesh",
            passthrough.clone(),
        );
        let tcp_rbac_denied = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tcp_connections_denied",
            "Opaque inbound connections refused by AuthorizationPolicies",
            tcp_rbac_denied.clone(),
        );
        Self {
            tcp_rbac_denied,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            passthrough,
            mirror_requests,
            cert_expiry,
            cert_renewals,
            handshake_failures,
            requests,
            request_duration,
            config_reloads,
            config_version,
            retries,
            outlier_ejections,
            outlier_panic,
            circuit_overflow,
            endpoints,
            registry,
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn mirror(&self, service: &str, result: &'static str) {
        self.mirror_requests
            .get_or_create(&MirrorLabels {
                destination_service: service.to_string(),
                result,
            })
            .inc();
    }

    /// An opaque connection of `labels` opened.
    pub fn tcp_open(&self, labels: TcpLabels) -> TcpLabels {
        self.tcp_opened.get_or_create(&labels).inc();
        labels
    }

    /// The opaque connection of `labels` closed after `sent`/`received` bytes.
    pub fn tcp_close(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// An opaque inbound connection the AuthorizationPolicies refused.
    pub fn tcp_denied(&self, labels: &TcpLabels) {
        self.tcp_rbac_denied.get_or_create(labels).inc();
    }

    pub fn passthrough(&self, protocol: &'static str, result: &'static str) {
        self.passthrough
            .get_or_create(&PassthroughLabels { protocol, result })
            .inc();
    }

    pub fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&RetryLabels { reason }).inc();
    }

    /// The `trellis_outlier_ejections_total` counter of a destination.
    pub fn ejections_of(&self, service: &str, subset: &str) -> Counter {
        self.outlier_ejections
            .get_or_create(&destination(service, subset))
            .clone()
    }

    pub fn overflow(&self, service: &str, subset: &str) {
        self.circuit_overflow
            .get_or_create(&destination(service, subset))
            .inc();
    }

    /// The `trellis_outlier_panic_total` counter of a destination.
    /// Drops the series of a destination the config no longer has, so a
    /// replaced config leaves no metrics (and no memory) behind.
    pub fn forget_destination(&self, service: &str, subset: &str) {
        let labels = destination(service, subset);
        self.outlier_ejections.remove(&labels);
        self.outlier_panic.remove(&labels);
        self.circuit_overflow.remove(&labels);
    }

    pub fn panics_of(&self, service: &str, subset: &str) -> Counter {
        self.outlier_panic
            .get_or_create(&destination(service, subset))
            .clone()
    }

    /// Sets `trellis_endpoints` from the destinations in use (called per
    /// scrape): `(service, subset, (healthy, ejected, probing))` each.
    pub fn set_endpoints<'a>(
        &self,
        destinations: impl Iterator<Item = (&'a str, &'a str, (usize, usize, usize))>,
    ) {
        self.endpoints.clear();
        for (service, subset, (healthy, ejected, probing)) in destinations {
            for (state, n) in [
                ("healthy", healthy),
                ("ejected", ejected),
                ("probing", probing),
            ] {
                let labels = EndpointLabels {
                    destination_service: service.to_string(),
                    destination_subset: subset.to_string(),
                    state,
                };
                self.endpoints
                    .get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn renewal(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.cert_renewals
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    pub fn handshake_failure(&self, direction: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { direction, reason })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

/// The series of one (route, destination), resolved once and cached on the
/// compiled destination so the request path does not hash label strings.
#[derive(Debug)]
pub struct RouteSeries {
    labels: DurationLabels,
    duration: Histogram,
    ok: Counter,
}

impl RouteSeries {
    pub fn new(metrics: &Metrics, labels: DurationLabels) -> Self {
        let duration = metrics.request_duration.get_or_create(&labels).clone();
        let ok = metrics
            .requests
            .get_or_create(&labels.with_response(200, ""))
            .clone();
        Self {
            labels,
            duration,
            ok,
        }
    }

    /// Counts one request and its duration.
    pub fn record(&self, metrics: &Metrics, status: u16, reason: &'static str, seconds: f64) {
        self.duration.observe(seconds);
        if status == 200 && reason.is_empty() {
            self.ok.inc();
        } else {
            metrics
                .requests
                .get_or_create(&self.labels.with_response(status, reason))
                .inc();
        }
    }
}

impl DurationLabels {
    /// The `trellis_requests_total` labels for a response.
    pub fn with_response(&self, response_code: u16, reason: &'static str) -> RequestLabels {
        RequestLabels {
            direction: self.direction,
            source_workload: self.source_workload.clone(),
            destination_service: self.destination_service.clone(),
            destination_subset: self.destination_subset.clone(),
            route: self.route.clone(),
            connection_security_policy: self.connection_security_policy,
            source_principal: self.source_principal.clone(),
            response_code,
            reason,
        }
    }
}

fn destination(service: &str, subset: &str) -> DestinationLabels {
    DestinationLabels {
        destination_service: service.to_string(),
        destination_subset: subset.to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
