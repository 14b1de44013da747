//! Which proxies a resource affects, and how many of them run it: the
//! `applied N/M` of a resource's status and `trellisctl wait --for=applied`.

use trellis_api as api;
use trellis_crds::types::MESH_ROOT_NAMESPACES;

/// Whether a resource of `kind` in `namespace` changes what the proxy of
/// `record` does: routing rules apply to every client proxy; security
/// rules to the proxies of their namespace, or all from a root namespace.
pub fn affects(kind: &str, namespace: &str, record: &api::ProxyRecord) -> bool {
    match kind {
        "PeerAuthentication" | "AuthorizationPolicy" => {
            MESH_ROOT_NAMESPACES.contains(&namespace) || record.namespace == namespace
        }
        _ => true,
    }
}

/// `N/M` for a resource stored at `version`.
pub fn applied(kind: &str, namespace: &str, version: u64, proxies: &[api::ProxyRecord]) -> String {
    let affected: Vec<&api::ProxyRecord> = proxies
        .iter()
        .filter(|p| affects(kind, namespace, p))
        .collect();
    let done = affected
        .iter()
        .filter(|p| p.acked_version >= version)
        .count();
    format!("{done}/{}", affected.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(namespace: &str, acked: u64) -> api::ProxyRecord {
        api::ProxyRecord {
            namespace: namespace.into(),
            acked_version: acked,
            ..api::ProxyRecord::default()
        }
    }

    #[test]
    fn applied_counts_the_affected_proxies_that_run_the_version() {
        let proxies = [proxy("shop", 7), proxy("shop", 5), proxy("web", 9)];
        assert_eq!(applied("VirtualService", "shop", 6, &proxies), "2/3");
        assert_eq!(applied("AuthorizationPolicy", "shop", 6, &proxies), "1/2");
        assert_eq!(
            applied("PeerAuthentication", "istio-system", 6, &proxies),
            "2/3"
        );
    }
}
