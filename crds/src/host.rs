//! Host names: qualifying short names with a namespace, and the aliases a
//! client may use for a cluster-local service.

/// The cluster DNS suffix of in-mesh services.
pub const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// Qualifies a rule's host: a name without dots is a service in the rule's
/// namespace (`reviews` in `default` -> `reviews.default.svc.cluster.local`);
/// anything else is taken as written, lower-cased.
pub fn qualify(host: &str, namespace: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if !host.contains('.') && host != "*" {
        format!("{host}.{namespace}.{CLUSTER_SUFFIX}")
    } else {
        host
    }
}

/// For `svc.ns.svc.cluster.local`, returns `(svc, ns)`.
pub fn split_cluster_local(fqdn: &str) -> Option<(&str, &str)> {
    let stem = fqdn.strip_suffix(CLUSTER_SUFFIX)?.strip_suffix('.')?;
    let (service, namespace) = stem.split_once('.')?;
    (!service.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((service, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_short_names_only() {
        assert_eq!(qualify("reviews", "ns1"), "reviews.ns1.svc.cluster.local");
        assert_eq!(
            qualify("Reviews.ns1.svc.cluster.local", "x"),
            "reviews.ns1.svc.cluster.local"
        );
        assert_eq!(qualify("api.example.com", "x"), "api.example.com");
    }

    #[test]
    fn splits_cluster_local_names() {
        assert_eq!(
            split_cluster_local("reviews.ns1.svc.cluster.local"),
            Some(("reviews", "ns1"))
        );
        assert_eq!(split_cluster_local("api.example.com"), None);
        assert_eq!(split_cluster_local("a.b.c.svc.cluster.local"), None);
    }
}
