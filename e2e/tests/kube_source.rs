//! `trellis-control-plane --kubernetes` against the real apiserver and
//! controller-manager: rules applied with `kubectl` (Trellis's CRDs, and
//! Istio's bookinfo samples unchanged under Istio's group), Services and
//! Pods whose Ready status the test sets as a kubelet would, EndpointSlices
//! from the real controller; 3 replicas running as the least-privilege
//! service account of `crds/manifests/rbac.yaml`; proxies routing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_e2e::harness::wait_until;
use trellis_e2e::kube_mesh::*;

#[test]
fn kubernetes_services_pods_and_rules_route_the_mesh() -> Result<()> {
    let cluster = Cluster::start(true, None)?;
    let kube = &cluster.kube;
    let cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;

    // The Service and its Ready pods, through EndpointSlices: all four.
    let all: Vec<String> = PODS.iter().map(|(_, ip, _)| ip.to_string()).collect();
    for p in &proxies {
        let found = wait_until(Duration::from_secs(20), || endpoints(p) == all);
        assert!(
            found,
            "{}: endpoints {:?}\n{}",
            p.id,
            endpoints(p),
            cp.logs()
        );
    }

    // The mesh root, published in every namespace (a new one included) for
    // sidecars to trust the replicas by, as the control plane's RBAC allows.
    kube.kubectl_ok(&["create", "namespace", "later"])?;
    let root = std::fs::read_to_string(&cp.trust_bundle)?;
    for ns in ["default", "later"] {
        let published = wait_until(Duration::from_secs(10), || {
            kube.kubectl(&[
                "get",
                "configmap",
                "trellis-ca-root-cert",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
            ])
            .is_ok_and(|(ok, out, _)| ok && out.trim() == root.trim())
        });
        assert!(
            published,
            "no root certificate ConfigMap in {ns}:\n{}",
            cp.logs()
        );
    }

    // A 90/10 split applied with kubectl routes within a second.
    let file = kube.dir().join("rules.yaml");
    std::fs::write(&file, RULES_90_10)?;
    kube.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    let applied_at = Instant::now();
    wait_weights(&cp, &proxies, (90, 10));
    let took = applied_at.elapsed();
    eprintln!("kubectl apply -> both proxies route: {took:?}");
    assert!(took < Duration::from_secs(1), "routed after {took:?}");
    for p in &proxies {
        assert_90_10(p);
    }

    // Status: Accepted, and applied on both proxies.
    let shown = wait_until(Duration::from_secs(10), || {
        status_of(kube, "vs/reviews") == ("True".into(), String::new(), "2/2".into())
    });
    assert!(shown, "status: {:?}", status_of(kube, "vs/reviews"));
    let table = kube.kubectl_ok(&["get", "vs", "reviews"])?;
    assert!(
        table.contains("APPLIED") && table.contains("2/2") && table.contains("True"),
        "{table}"
    );

    // `trellisctl wait --for=applied` returns once both proxies ACK.
    let next = kube.dir().join("next.yaml");
    std::fs::write(&next, vs((80, 20)))?;
    kube.kubectl_ok(&["apply", "-f", &next.display().to_string()])?;
    let started = Instant::now();
    let waiter = std::thread::spawn({
        let servers = cp.servers();
        let (bundle, token) = (cp.trust_bundle.clone(), cp.admin_token.clone());
        let next = next.clone();
        move || {
            let out = trellis_e2e::mesh::ctl_as(
                &bundle,
                Some(&token),
                &servers,
                &[
                    "wait",
                    "--for=applied",
                    "-f",
                    &next.display().to_string(),
                    "--timeout",
                    "20s",
                ],
            );
            (out, started.elapsed())
        }
    });
    let want: BTreeMap<String, u64> = [("v1".to_string(), 80), ("v2".to_string(), 20)].into();
    let mut acked = Duration::ZERO;
    let both = wait_until(Duration::from_secs(10), || {
        acked = started.elapsed();
        proxies.iter().all(|p| weights(p) == want)
    });
    assert!(
        both,
        "not routed: {:?}",
        proxies.iter().map(weights).collect::<Vec<_>>()
    );
    let (out, returned) = waiter.join().expect("the waiter");
    let (ok, stdout, stderr) = out?;
    assert!(ok, "wait failed: {stdout}{stderr}");
    eprintln!("both proxies routed by {acked:?}; trellisctl wait returned at {returned:?}");
    assert!(
        returned < acked + Duration::from_secs(1),
        "returned {returned:?}, acknowledged by {acked:?}"
    );

    // An invalid VirtualService: Accepted False with the field path; the
    // last good rules keep routing.
    let bad = kube.dir().join("bad.yaml");
    std::fs::write(&bad, vs((90, 20)))?;
    kube.kubectl_ok(&["apply", "-f", &bad.display().to_string()])?;
    let refused = wait_until(Duration::from_secs(10), || {
        let (accepted, message, _) = status_of(kube, "vs/reviews");
        eprintln!("{accepted} {message}");
        accepted == "False" && message.contains("spec.http[0].route")
    });
    assert!(
        refused,
        "status: {:?}\n{}",
        status_of(kube, "vs/reviews"),
        cp.logs()
    );
    let table = kube.kubectl_ok(&["get", "vs", "reviews"])?;
    assert!(table.contains("False"), "{table}");
    for p in &proxies {
        assert_eq!(weights(p), want, "the last good rules stay");
    }
    std::fs::write(&file, RULES_90_10)?;
    kube.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;

    // A rule the proxies refuse (an endpoint no proxy can dial): wait times out.
    let odd = kube.dir().join("odd.yaml");
    std::fs::write(
        &odd,
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: odd}
spec:
  hosts: [odd.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: bad host}]
",
    )?;
    kube.kubectl_ok(&["apply", "-f", &odd.display().to_string()])?;
    let (ok, stdout, stderr) = cp.ctl(&[
        "wait",
        "--for=applied",
        "-f",
        &odd.display().to_string(),
        "--timeout",
        "3s",
    ])?;
    assert!(!ok, "wait succeeded on a NACKed rule: {stdout}");
    assert!(stderr.contains("NACK"), "{stderr}");
    kube.kubectl_ok(&["delete", "-f", &odd.display().to_string()])?;

    // A pod set not Ready, then one deleted, leave within a second; the
    // backends stop once withdrawn, and no request fails at 50 rps.
    for p in &proxies {
        assert!(wait_until(Duration::from_secs(10), || weights(p).get("v1")
            == Some(&90)));
    }
    let load = Load::start(proxies[0].outbound);
    std::thread::sleep(Duration::from_millis(300));
    kube.set_pod_status("default", "reviews-v1-a", "127.0.0.21", false)?;
    let t = Instant::now();
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(10), || {
            endpoints(p) == ["127.0.0.22", "127.0.0.23", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let took = t.elapsed();
    eprintln!("not Ready -> withdrawn from both proxies: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "not Ready withdrawn after {took:?}"
    );
    let mut backends = cluster.backends;
    if let Some(mut b) = backends.remove("reviews-v1-a") {
        b.process.kill();
    }
    kube.kubectl_ok(&[
        "delete",
        "pod",
        "reviews-v2-a",
        "--grace-period=0",
        "--force",
    ])?;
    let t = Instant::now();
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(10), || {
            endpoints(p) == ["127.0.0.22", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let took = t.elapsed();
    eprintln!("deleted -> withdrawn from both proxies: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "deleted pod withdrawn after {took:?}"
    );
    if let Some(mut b) = backends.remove("reviews-v2-a") {
        b.process.kill();
    }
    std::thread::sleep(Duration::from_secs(1));
    let (sent, failures) = load.finish();
    assert!(sent >= 50, "only {sent} requests");
    eprintln!("{sent} requests at 50 rps, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        failures
    );
    let _ = cluster.port;
    Ok(())
}
