use std::collections::BTreeMap;

use trellis_api as api;

use super::*;

fn node(ns: &str, labels: &[(&str, &str)]) -> NodeConfig {
    NodeConfig {
        id: "n".into(),
        namespace: ns.into(),
        service: "web".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn scope(ns: &str, selector: &[(&str, &str)], mesh_wide: bool) -> Option<api::WorkloadScope> {
    Some(api::WorkloadScope {
        namespace: ns.into(),
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        mesh_wide,
    })
}

fn pa(
    name: &str,
    scope: Option<api::WorkloadScope>,
    mode: api::MtlsMode,
) -> api::PeerAuthentication {
    api::PeerAuthentication {
        name: name.into(),
        scope,
        mode: mode as i32,
    }
}

#[test]
fn the_most_specific_peer_authentication_decides() {
    let config = api::ProxyConfig {
        peer_authentications: vec![
            pa(
                "mesh",
                scope("trellis-system", &[], true),
                api::MtlsMode::MtlsStrict,
            ),
            pa(
                "ns",
                scope("shop", &[], false),
                api::MtlsMode::MtlsPermissive,
            ),
            pa(
                "unset",
                scope("shop", &[("app", "web")], false),
                api::MtlsMode::MtlsUnset,
            ),
            pa(
                "db",
                scope("shop", &[("app", "db")], false),
                api::MtlsMode::MtlsDisable,
            ),
        ],
        ..Default::default()
    };
    let web = InboundPolicy::build(&config, &node("shop", &[("app", "web")]));
    assert_eq!(
        (web.mtls, web.mtls_from.as_str()),
        (MtlsMode::Permissive, "ns")
    );
    let db = InboundPolicy::build(&config, &node("shop", &[("app", "db")]));
    assert_eq!(db.mtls, MtlsMode::Disable);
    let other = InboundPolicy::build(&config, &node("bank", &[("app", "db")]));
    assert_eq!(other.mtls, MtlsMode::Strict);
    let none = InboundPolicy::build(&api::ProxyConfig::default(), &node("x", &[]));
    assert_eq!(none.mtls, MtlsMode::Permissive);
}

fn ap(
    name: &str,
    action: api::AuthorizationAction,
    rules: Vec<api::AuthorizationRule>,
) -> api::AuthorizationPolicy {
    api::AuthorizationPolicy {
        name: name.into(),
        scope: scope("shop", &[], false),
        action: action as i32,
        rules,
    }
}

fn from_principals(p: &[&str]) -> api::AuthorizationSource {
    api::AuthorizationSource {
        principals: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn to_paths(p: &[&str]) -> api::AuthorizationOperation {
    api::AuthorizationOperation {
        paths: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn deny_comes_before_allow_and_allow_limits() {
    let web_id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").expect("id");
    let evil_id = SpiffeId::parse("spiffe://cluster.local/ns/evil/sa/x").expect("id");
    let config = api::ProxyConfig {
        authorization_policies: vec![
            ap(
                "deny-admin",
                api::AuthorizationAction::AuthorizationDeny,
                vec![api::AuthorizationRule {
                    from: vec![],
                    to: vec![to_paths(&["/admin", "/admin/*"])],
                }],
            ),
            ap(
                "allow-web",
                api::AuthorizationAction::AuthorizationAllow,
                vec![api::AuthorizationRule {
                    from: vec![from_principals(&["cluster.local/ns/shop/sa/*"])],
                    to: vec![],
                }],
            ),
        ],
        ..Default::default()
    };
    let policy = InboundPolicy::build(&config, &node("shop", &[]));
    let facts = |principal, path| RequestFacts {
        principal,
        method: "GET",
        path,
    };
    assert_eq!(policy.authorize(&facts(Some(&web_id), "/items")), Ok(()));
    assert_eq!(
        policy.authorize(&facts(Some(&web_id), "/admin/x")),
        Err(Denied::ByDeny("deny-admin".into()))
    );
    assert_eq!(
        policy.authorize(&facts(Some(&evil_id), "/items")),
        Err(Denied::NotAllowed)
    );
    assert_eq!(
        policy.authorize(&facts(None, "/items")),
        Err(Denied::NotAllowed),
        "a principal rule never matches plaintext"
    );
}

#[test]
fn an_allow_policy_without_rules_allows_nothing() {
    let config = api::ProxyConfig {
        authorization_policies: vec![ap(
            "allow-nothing",
            api::AuthorizationAction::AuthorizationAllow,
            vec![],
        )],
        ..Default::default()
    };
    let policy = InboundPolicy::build(&config, &node("shop", &[]));
    let facts = RequestFacts {
        principal: None,
        method: "GET",
        path: "/",
    };
    assert_eq!(policy.authorize(&facts), Err(Denied::NotAllowed));
    let other_ns = InboundPolicy::build(&config, &node("bank", &[]));
    assert_eq!(other_ns.authorize(&facts), Ok(()), "it selects shop only");
}

#[test]
fn not_fields_match_plaintext_peers() {
    assert!(field(&["cluster.local/ns/a/sa/b".into()], None, true));
    assert!(!field(&["*".into()], None, false));
    assert!(pattern_matches("/api/*", "/api/v1"));
    assert!(pattern_matches("*.json", "/a.json"));
    assert!(!pattern_matches("/api/*", "/apix"));
}

#[test]
fn tcp_connections_are_judged_by_source_and_http_rules_deny() {
    let web_id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").expect("id");
    let evil_id = SpiffeId::parse("spiffe://cluster.local/ns/evil/sa/x").expect("id");
    let allow_web = ap(
        "allow-web",
        api::AuthorizationAction::AuthorizationAllow,
        vec![api::AuthorizationRule {
            from: vec![from_principals(&["cluster.local/ns/shop/sa/*"])],
            to: vec![],
        }],
    );
    let policy = |policies: Vec<api::AuthorizationPolicy>| {
        let config = api::ProxyConfig {
            authorization_policies: policies,
            ..Default::default()
        };
        InboundPolicy::build(&config, &node("shop", &[]))
    };
    let p = policy(vec![allow_web.clone()]);
    assert_eq!(p.authorize_tcp(Some(&web_id)), Ok(()));
    assert_eq!(p.authorize_tcp(Some(&evil_id)), Err(Denied::NotAllowed));
    assert_eq!(p.authorize_tcp(None), Err(Denied::NotAllowed));
    // A DENY on paths denies every TCP connection; an ALLOW on paths allows none.
    let deny_paths = ap(
        "deny-admin",
        api::AuthorizationAction::AuthorizationDeny,
        vec![api::AuthorizationRule {
            from: vec![],
            to: vec![to_paths(&["/admin"])],
        }],
    );
    let p = policy(vec![deny_paths, allow_web]);
    assert_eq!(
        p.authorize_tcp(Some(&web_id)),
        Err(Denied::ByDeny("deny-admin".into()))
    );
    let allow_paths = ap(
        "allow-items",
        api::AuthorizationAction::AuthorizationAllow,
        vec![api::AuthorizationRule {
            from: vec![],
            to: vec![to_paths(&["/items"])],
        }],
    );
    assert_eq!(
        policy(vec![allow_paths]).authorize_tcp(Some(&web_id)),
        Err(Denied::NotAllowed)
    );
}
