//! The Kubernetes source loses and repeats nothing: 200 `kubectl apply`s
//! across a leader SIGKILL, then changes across an apiserver restart whose
//! resumed watch gets 410 Gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::wait_until;
use trellis_e2e::kube_mesh::*;
use trellis_e2e::mesh::{ConnectedProxy, ControlPlane};

fn numbered_vs(i: usize) -> String {
    format!(
        "apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {{name: r{i}}}
spec:
  hosts: [r{i}]
  http:
  - route:
    - destination: {{host: reviews}}
"
    )
}

/// The hosts `r<N>.default.svc.cluster.local` the proxy routes.
fn numbered_hosts(proxy: &ConnectedProxy) -> Vec<usize> {
    let dump = config_dump(proxy);
    let mut out: Vec<usize> = dump["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["domains"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            d.as_str()?
                .strip_suffix(".default.svc.cluster.local")?
                .strip_prefix('r')?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every proxy routes exactly the hosts `r<N>` of `range`, and the mesh
/// stores each of those VirtualServices once.
fn assert_routed_once(
    cp: &ControlPlane,
    proxies: &[ConnectedProxy],
    range: std::ops::Range<usize>,
) -> Result<()> {
    let want: Vec<usize> = range.collect();
    for p in proxies {
        let routed = wait_until(Duration::from_secs(30), || numbered_hosts(p) == want);
        let got = numbered_hosts(p);
        assert!(
            routed,
            "{}: {} of {} routed\n{}",
            p.id,
            got.len(),
            want.len(),
            cp.logs()
        );
    }
    let (_, out, _) = cp.ctl(&["get", "vs"])?;
    let stored = out
        .lines()
        .filter(|l| l.starts_with("VirtualService"))
        .count();
    assert_eq!(stored, want.len(), "each change stored once: {out}");
    Ok(())
}

#[test]
fn no_change_is_lost_or_repeated_across_a_leader_kill_and_an_apiserver_restart() -> Result<()> {
    // No watch cache and frequent compaction: a watch resumed after the
    // apiserver restart gets a real 410 Gone.
    let cluster = Cluster::start(false, Some("2s"))?;
    let kube = &cluster.kube;
    let mut cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;
    let dir = kube.dir().join("numbered");
    std::fs::create_dir_all(&dir)?;
    for i in 0..200 {
        std::fs::write(dir.join(format!("r{i}.yaml")), numbered_vs(i))?;
    }

    // 200 `kubectl apply`s from 4 clients; the leader is SIGKILLed after 60.
    let done = Arc::new(Mutex::new(0usize));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (done, failed) = (done.clone(), failed.clone());
            let kubeconfig = kube.kubeconfig.clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in (w..200).step_by(4) {
                    let out = std::process::Command::new(
                        trellis_e2e::harness::tool("kubectl").expect("kubectl"),
                    )
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["apply", "-f"])
                    .arg(dir.join(format!("r{i}.yaml")))
                    .output();
                    match out {
                        Ok(o) if o.status.success() => *done.lock().expect("lock") += 1,
                        Ok(o) => failed
                            .lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&o.stderr).into_owned()),
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(120), || *done
        .lock()
        .expect("lock")
        >= 60));
    let leader = cp.leader().expect("a leader");
    cp.kill(leader);
    eprintln!(
        "killed leader {leader} after {} applies",
        *done.lock().expect("lock")
    );
    for w in workers {
        let _ = w.join();
    }
    assert!(
        failed.lock().expect("lock").is_empty(),
        "{:?}",
        failed.lock().expect("lock")
    );
    assert_routed_once(&cp, &proxies, 0..200)?;

    // The apiserver restarts; changes made after it are all routed, and a
    // watch resumed from before it got 410 Gone and relisted.
    kube.restart_apiserver()?;
    let names: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    let mut args = vec!["delete", "vs"];
    args.extend(names.iter().map(String::as_str));
    kube.kubectl_ok(&args)?;
    kube.kubectl_ok(&[
        "delete",
        "pod",
        "reviews-v1-b",
        "--grace-period=0",
        "--force",
    ])?;
    assert_routed_once(&cp, &proxies, 100..200)?;
    for p in &proxies {
        let gone = wait_until(Duration::from_secs(30), || {
            endpoints(p) == ["127.0.0.21", "127.0.0.23", "127.0.0.24"]
        });
        assert!(gone, "{}: {:?}", p.id, endpoints(p));
    }
    let relisted = wait_until(Duration::from_secs(30), || {
        (1..=3).any(|id| cp.log_of(id).contains("watch expired (410 Gone)"))
    });
    assert!(relisted, "no watch saw 410 Gone:\n{}", cp.logs());
    Ok(())
}
