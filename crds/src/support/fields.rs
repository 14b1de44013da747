//! The tables: every field of each kind (Istio's `networking/v1` and
//! `security/v1` field names) and what Trellis does with it.

use super::Field;
use super::Support::{self, Enforced, Fixed, Map, Name, Object, Refused, Values};

const fn f(path: &'static str, support: Support) -> Field {
    Field { path, support }
}

const OPAQUE_TCP: &str =
    "TLS and HTTPS ports are not proxied: declare the port TCP to carry it as opaque bytes";
const L4_MATCH: &str =
    "tcp routes match on the destination port and the source (labels, namespace) only";
const ONE_MESH: &str = "Trellis configures sidecars only (the \"mesh\" gateway)";
const EXPORT: &str =
    "rules are visible to the whole mesh; per-namespace visibility is not implemented";
const LOCALITY: &str = "Trellis has no locality-aware load balancing";

/// The table of `name`: a kind, or an object shared by several kinds.
pub fn table(name: &str) -> Option<&'static [Field]> {
    Some(match name {
        "VirtualService" => VIRTUAL_SERVICE,
        "DestinationRule" => DESTINATION_RULE,
        "ServiceEntry" => SERVICE_ENTRY,
        "PeerAuthentication" => PEER_AUTHENTICATION,
        "AuthorizationPolicy" => AUTHORIZATION_POLICY,
        "TrafficPolicy" => TRAFFIC_POLICY,
        "StringMatch" => STRING_MATCH,
        "Destination" => DESTINATION,
        "Headers" => HEADERS,
        "Percent" => PERCENT,
        "WorkloadSelector" => WORKLOAD_SELECTOR,
        "RateLimit" => RATE_LIMIT,
        _ => return None,
    })
}

const STRING_MATCH: &[Field] = &[
    f("exact", Enforced),
    f("prefix", Enforced),
    f("regex", Enforced),
];

const PERCENT: &[Field] = &[f("value", Enforced)];

const DESTINATION: &[Field] = &[
    f("host", Enforced),
    f("subset", Enforced),
    f("port", Enforced),
    f("port.number", Enforced),
];

const HEADERS: &[Field] = &[
    f("request", Enforced),
    f("request.set", Map(None)),
    f("request.add", Map(None)),
    f("request.remove", Enforced),
    f("response", Enforced),
    f("response.set", Map(None)),
    f("response.add", Map(None)),
    f("response.remove", Enforced),
];

const WORKLOAD_SELECTOR: &[Field] = &[f("matchLabels", Map(None))];

const VIRTUAL_SERVICE: &[Field] = &[
    f("hosts", Enforced),
    f("gateways", Fixed(&["mesh"], ONE_MESH)),
    f("exportTo", Refused(EXPORT)),
    f(
        "tls",
        Refused("TLS routes (SNI) are not supported; Trellis routes HTTP"),
    ),
    f("tcp", Enforced),
    f("tcp[].match", Enforced),
    f("tcp[].match[].port", Enforced),
    f("tcp[].match[].destinationSubnets", Refused(L4_MATCH)),
    f("tcp[].match[].sourceLabels", Map(None)),
    f("tcp[].match[].sourceNamespace", Enforced),
    f("tcp[].route", Enforced),
    f("tcp[].route[].destination", Object("Destination")),
    f("tcp[].route[].weight", Enforced),
    f("http", Enforced),
    f("http[].name", Name),
    f("http[].match", Enforced),
    f("http[].match[].name", Name),
    f("http[].match[].uri", Object("StringMatch")),
    f(
        "http[].match[].scheme",
        Refused("the sidecar sees plaintext HTTP only; scheme matching is not supported"),
    ),
    f("http[].match[].method", Object("StringMatch")),
    f("http[].match[].authority", Object("StringMatch")),
    f("http[].match[].headers", Map(Some("StringMatch"))),
    f("http[].match[].withoutHeaders", Map(Some("StringMatch"))),
    f("http[].match[].queryParams", Map(Some("StringMatch"))),
    f("http[].match[].port", Enforced),
    f("http[].match[].sourceLabels", Map(None)),
    f("http[].match[].sourceNamespace", Enforced),
    f("http[].match[].gateways", Fixed(&["mesh"], ONE_MESH)),
    f("http[].match[].ignoreUriCase", Enforced),
    f(
        "http[].match[].statPrefix",
        Refused("per-match statistics are not kept"),
    ),
    f("http[].route", Enforced),
    f("http[].route[].destination", Object("Destination")),
    f("http[].route[].weight", Enforced),
    f("http[].route[].headers", Object("Headers")),
    f("http[].redirect", Enforced),
    f("http[].redirect.uri", Enforced),
    f("http[].redirect.authority", Enforced),
    f("http[].redirect.port", Enforced),
    f("http[].redirect.derivePort", Enforced),
    f("http[].redirect.scheme", Enforced),
    f("http[].redirect.redirectCode", Enforced),
    f(
        "http[].directResponse",
        Refused("direct responses are not supported"),
    ),
    f(
        "http[].delegate",
        Refused("delegated VirtualServices are not supported"),
    ),
    f("http[].rewrite", Enforced),
    f("http[].rewrite.uri", Enforced),
    f("http[].rewrite.authority", Enforced),
    f(
        "http[].rewrite.uriRegexRewrite",
        Refused("regex rewrites are not supported; use rewrite.uri"),
    ),
    f("http[].timeout", Enforced),
    f("http[].retries", Enforced),
    f("http[].retries.attempts", Enforced),
    f("http[].retries.perTryTimeout", Enforced),
    f("http[].retries.retryOn", Enforced),
    f("http[].retries.retryNonIdempotent", Enforced),
    f(
        "http[].retries.retryRemoteLocalities",
        Fixed(&["false"], LOCALITY),
    ),
    f(
        "http[].retries.retryIgnorePreviousHosts",
        Fixed(
            &["true"],
            "a retry always goes to an endpoint not yet tried",
        ),
    ),
    f(
        "http[].retries.backoff",
        Refused("the retry backoff is fixed: exponential from 25 ms, capped at 250 ms, jittered"),
    ),
    f("http[].fault", Enforced),
    f("http[].fault.delay", Enforced),
    f("http[].fault.delay.fixedDelay", Enforced),
    f(
        "http[].fault.delay.exponentialDelay",
        Refused("only fixedDelay is supported"),
    ),
    f("http[].fault.delay.percentage", Object("Percent")),
    f("http[].fault.delay.percent", Enforced),
    f("http[].fault.abort", Enforced),
    f("http[].fault.abort.httpStatus", Enforced),
    f(
        "http[].fault.abort.grpcStatus",
        Refused("only httpStatus aborts are supported"),
    ),
    f(
        "http[].fault.abort.http2Error",
        Refused("only httpStatus aborts are supported"),
    ),
    f("http[].fault.abort.percentage", Object("Percent")),
    f("http[].fault.abort.percent", Enforced),
    f("http[].mirror", Object("Destination")),
    f("http[].mirrorPercentage", Object("Percent")),
    f("http[].mirrorPercent", Enforced),
    f("http[].mirrors", Enforced),
    f("http[].mirrors[].destination", Object("Destination")),
    f("http[].mirrors[].percentage", Object("Percent")),
    f(
        "http[].corsPolicy",
        Refused("CORS is not handled by the proxy"),
    ),
    f("http[].headers", Object("Headers")),
    f("http[].rateLimit", Object("RateLimit")),
];

const RATE_LIMIT: &[Field] = &[f("requestsPerSecond", Enforced), f("burst", Enforced)];

const DESTINATION_RULE: &[Field] = &[
    f("host", Enforced),
    f("trafficPolicy", Object("TrafficPolicy")),
    f("subsets", Enforced),
    f("subsets[].name", Enforced),
    f("subsets[].labels", Map(None)),
    f("subsets[].trafficPolicy", Object("TrafficPolicy")),
    f("exportTo", Refused(EXPORT)),
    f(
        "workloadSelector",
        Refused("a DestinationRule applies to every client of its host"),
    ),
];

const TRAFFIC_POLICY: &[Field] = &[
    f("loadBalancer", Enforced),
    f(
        "loadBalancer.simple",
        Values(
            &["UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM"],
            "PASSTHROUGH needs the original destination, which Trellis does not capture yet",
        ),
    ),
    f("loadBalancer.consistentHash", Enforced),
    f("loadBalancer.consistentHash.httpHeaderName", Enforced),
    f("loadBalancer.consistentHash.httpCookie", Enforced),
    f("loadBalancer.consistentHash.httpCookie.name", Enforced),
    f("loadBalancer.consistentHash.httpCookie.path", Refused("Trellis hashes on a cookie the client sends; it does not set one")),
    f("loadBalancer.consistentHash.httpCookie.ttl", Refused("Trellis hashes on a cookie the client sends; it does not set one")),
    f("loadBalancer.consistentHash.useSourceIp", Enforced),
    f("loadBalancer.consistentHash.httpQueryParameterName", Enforced),
    f("loadBalancer.consistentHash.minimumRingSize", Refused("the ring size is fixed")),
    f("loadBalancer.consistentHash.ringHash", Refused("the ring size is fixed")),
    f("loadBalancer.consistentHash.maglev", Refused("Maglev hashing is not implemented; consistentHash uses a ring")),
    f("loadBalancer.localityLbSetting", Refused(LOCALITY)),
    f("loadBalancer.warmupDurationSecs", Refused("slow start is not implemented")),
    f("connectionPool", Enforced),
    f("connectionPool.tcp", Enforced),
    f("connectionPool.tcp.maxConnections", Enforced),
    f("connectionPool.tcp.connectTimeout", Enforced),
    f("connectionPool.tcp.tcpKeepalive", Refused("TCP keepalive settings are not implemented")),
    f("connectionPool.tcp.maxConnectionDuration", Refused("connections are not aged out")),
    f("connectionPool.tcp.idleTimeout", Refused("idle connection timeouts are not implemented")),
    f("connectionPool.http", Enforced),
    f("connectionPool.http.http1MaxPendingRequests", Enforced),
    f("connectionPool.http.http2MaxRequests", Enforced),
    f("connectionPool.http.maxRequestsPerConnection", Enforced),
    f("connectionPool.http.maxRetries", Enforced),
    f("connectionPool.http.idleTimeout", Refused("idle connection timeouts are not implemented")),
    f("connectionPool.http.h2UpgradePolicy", Refused("the protocol to an endpoint follows its service port")),
    f("connectionPool.http.useClientProtocol", Refused("the protocol to an endpoint follows its service port")),
    f("connectionPool.http.maxConcurrentStreams", Refused("HTTP/2 stream limits are not configurable")),
    f("outlierDetection", Enforced),
    f("outlierDetection.consecutive5xxErrors", Enforced),
    f("outlierDetection.consecutiveGatewayErrors", Enforced),
    f("outlierDetection.consecutiveErrors", Enforced),
    f("outlierDetection.interval", Enforced),
    f("outlierDetection.baseEjectionTime", Enforced),
    f("outlierDetection.maxEjectionPercent", Enforced),
    f("outlierDetection.minHealthPercent", Refused("outlier detection stays on however few endpoints are healthy (panic mode starts when none is)")),
    f("outlierDetection.splitExternalLocalOriginErrors", Refused("local-origin errors are not counted apart")),
    f("outlierDetection.consecutiveLocalOriginFailures", Refused("local-origin errors are not counted apart")),
    f("tls", Enforced),
    f(
        "tls.mode",
        Values(
            &["DISABLE", "ISTIO_MUTUAL"],
            "TLS to services outside the mesh (SIMPLE, MUTUAL) is not originated yet",
        ),
    ),
    f("tls.clientCertificate", Refused("only mesh certificates (ISTIO_MUTUAL) are used")),
    f("tls.privateKey", Refused("only mesh certificates (ISTIO_MUTUAL) are used")),
    f("tls.caCertificates", Refused("only the mesh trust bundle is used")),
    f("tls.caCrl", Refused("certificate revocation lists are not checked")),
    f("tls.credentialName", Refused("only mesh certificates (ISTIO_MUTUAL) are used")),
    f("tls.subjectAltNames", Refused("the identities of a service come from its endpoints' service accounts or its ServiceEntry's subjectAltNames")),
    f("tls.sni", Refused("SNI is not set on mesh connections")),
    f("tls.insecureSkipVerify", Refused("the server's identity is always verified")),
    f("portLevelSettings", Refused("policies apply to every port of the host")),
    f("tunnel", Refused("tunnelling is not implemented")),
    f("proxyProtocol", Refused("the PROXY protocol is not implemented")),
    f("rateLimit", Object("RateLimit")),
    f("retryBudget", Enforced),
    f("retryBudget.percent", Enforced),
    f("retryBudget.minRetriesPerSecond", Enforced),
];

const SERVICE_ENTRY: &[Field] = &[
    f("hosts", Enforced),
    f("addresses", Enforced),
    f("ports", Enforced),
    f("ports[].number", Enforced),
    f("ports[].name", Enforced),
    f("ports[].targetPort", Enforced),
    f(
        "ports[].protocol",
        Values(
            &[
                "HTTP", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "MONGO", "MYSQL", "REDIS",
            ],
            OPAQUE_TCP,
        ),
    ),
    f("location", Enforced),
    f(
        "resolution",
        Values(
            &["STATIC", "DNS", "DNS_ROUND_ROBIN"],
            "NONE forwards to the original destination, which Trellis does not capture yet",
        ),
    ),
    f("endpoints", Enforced),
    f("endpoints[].address", Enforced),
    f("endpoints[].ports", Map(None)),
    f("endpoints[].labels", Map(None)),
    f("endpoints[].serviceAccount", Enforced),
    f(
        "endpoints[].weight",
        Refused("endpoints are balanced without weights"),
    ),
    f("endpoints[].network", Refused("Trellis has one network")),
    f("endpoints[].locality", Refused(LOCALITY)),
    f(
        "workloadSelector",
        Refused("WorkloadEntries are not supported; list the endpoints"),
    ),
    f("exportTo", Refused(EXPORT)),
    f("subjectAltNames", Enforced),
];

const PEER_AUTHENTICATION: &[Field] = &[
    f("selector", Object("WorkloadSelector")),
    f("mtls", Enforced),
    f("mtls.mode", Enforced),
    f(
        "portLevelMtls",
        Refused("the mTLS mode applies to every port"),
    ),
];

const NOT_IN_TLS: &str = "request principals (JWT) are not implemented";
const IP_BLOCKS: &str = "address-based rules are not implemented";

const AUTHORIZATION_POLICY: &[Field] = &[
    f("selector", Object("WorkloadSelector")),
    f(
        "targetRef",
        Refused("policies attach to workloads by selector"),
    ),
    f(
        "targetRefs",
        Refused("policies attach to workloads by selector"),
    ),
    f(
        "action",
        Values(
            &["ALLOW", "DENY"],
            "AUDIT and CUSTOM actions are not implemented",
        ),
    ),
    f(
        "provider",
        Refused("external authorization is not implemented"),
    ),
    f("rules", Enforced),
    f("rules[].from", Enforced),
    f("rules[].from[].source", Enforced),
    f("rules[].from[].source.principals", Enforced),
    f("rules[].from[].source.notPrincipals", Enforced),
    f("rules[].from[].source.namespaces", Enforced),
    f("rules[].from[].source.notNamespaces", Enforced),
    f(
        "rules[].from[].source.requestPrincipals",
        Refused(NOT_IN_TLS),
    ),
    f(
        "rules[].from[].source.notRequestPrincipals",
        Refused(NOT_IN_TLS),
    ),
    f("rules[].from[].source.ipBlocks", Refused(IP_BLOCKS)),
    f("rules[].from[].source.notIpBlocks", Refused(IP_BLOCKS)),
    f("rules[].from[].source.remoteIpBlocks", Refused(IP_BLOCKS)),
    f(
        "rules[].from[].source.notRemoteIpBlocks",
        Refused(IP_BLOCKS),
    ),
    f("rules[].to", Enforced),
    f("rules[].to[].operation", Enforced),
    f("rules[].to[].operation.methods", Enforced),
    f("rules[].to[].operation.notMethods", Enforced),
    f("rules[].to[].operation.paths", Enforced),
    f("rules[].to[].operation.notPaths", Enforced),
    f(
        "rules[].to[].operation.hosts",
        Refused("host conditions are not implemented"),
    ),
    f(
        "rules[].to[].operation.notHosts",
        Refused("host conditions are not implemented"),
    ),
    f(
        "rules[].to[].operation.ports",
        Refused("port conditions are not implemented"),
    ),
    f(
        "rules[].to[].operation.notPorts",
        Refused("port conditions are not implemented"),
    ),
    f(
        "rules[].when",
        Refused("conditions (when) are not implemented"),
    ),
];
