//! End-to-end: hostile config files written into a static proxy's watched
//! file while requests flow. 100,000 nested brackets, a 30 MiB file and an
//! empty file are each rejected (the last good config keeps serving) with
//! no failed request and no gap in served traffic, because loading runs
//! off the serving thread and the bounds refuse them early. Replacing a
//! large valid config gives back at least 80% of the memory it took and
//! leaves no metric series of its destinations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_e2e::client::blocking_get;
use trellis_e2e::harness::{wait_until, Echo, Proxy};
use trellis_e2e::rules;

/// Requests at 20 per second until stopped: when each succeeded, and the
/// failures.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Instant>, Vec<String>)>,
}

impl Load {
    fn start(proxy: &Proxy) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, flag) = (proxy.outbound, stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut served, mut failed) = (Vec::new(), Vec::new());
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                match get(addr) {
                    Ok(200) => served.push(Instant::now()),
                    Ok(status) => failed.push(format!("status {status}")),
                    Err(e) => failed.push(e.to_string()),
                }
                next += Duration::from_millis(50);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (served, failed)
        });
        Self { stop, thread }
    }

    /// Stops; (requests served, failures, longest time between two served).
    fn finish(self) -> (usize, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (served, failed) = self.thread.join().unwrap_or_default();
        let gap = served
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (served.len(), failed, gap)
    }
}

/// One GET to the reviews service through the proxy: the status.
fn get(addr: std::net::SocketAddr) -> Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("0");
    Ok(status.parse()?)
}

fn rejected(proxy: &Proxy) -> f64 {
    proxy
        .metric_sum("trellis_config_reloads_total", &["result=\"failure\""])
        .unwrap_or(-1.0)
}

#[test]
fn hostile_config_files_are_rejected_without_stalling_traffic() -> Result<()> {
    let reviews = Echo::start("reviews", "v1")?;
    let good = rules::service("reviews", &[("v1", &reviews)], "");
    let proxy = Proxy::start(&good)?;
    let load = Load::start(&proxy);
    let log = Mutex::new(Vec::new());

    let deep = format!(
        "{good}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\nspec:\n  hosts: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge = format!("{good}---\n# {}\n", "x".repeat(30 << 20));
    for (name, text) in [("deep", deep), ("30 MiB", huge), ("empty", String::new())] {
        let before = rejected(&proxy);
        let started = Instant::now();
        proxy.write_config(&text)?;
        let seen = wait_until(Duration::from_secs(30), || rejected(&proxy) > before);
        log.lock()
            .expect("log")
            .push(format!("{name}: rejected after {:?}", started.elapsed()));
        assert!(seen, "{name} file never rejected");
        // the admin port answers meanwhile, and the last good config serves
        let (status, _) = blocking_get(proxy.admin, "/ready")?;
        assert_eq!(status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed, gap) = load.finish();
    let log = log.into_inner().expect("log");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{log:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(served >= 20, "{served} served");
    assert!(
        gap < Duration::from_secs(1),
        "a gap of {gap:?} in served traffic\n{log:?}"
    );
    eprintln!("{log:?}; {served} served, longest gap {gap:?}");
    let text = proxy.process.log_text();
    assert!(
        text.contains("nested deeper than 64"),
        "depth named in the log"
    );
    assert!(text.contains("limited to 8 MiB"), "size named in the log");
    assert!(
        text.contains("no YAML document"),
        "emptiness named in the log"
    );
    Ok(())
}

/// `n` services, each with a VirtualService splitting it over two subsets.
fn many_services(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: 1}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: 2}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}}}
spec:
  host: svc-{i}.example
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}.example]
  http:
  - route:
    - {{destination: {{host: svc-{i}.example, subset: v1}}, weight: 90}}
    - {{destination: {{host: svc-{i}.example, subset: v2}}, weight: 10}}
---
"
        ));
    }
    text
}

#[test]
fn replacing_a_large_config_gives_its_memory_back() -> Result<()> {
    let reviews = Echo::start("reviews", "v1")?;
    let good = rules::service("reviews", &[("v1", &reviews)], "");
    let proxy = Proxy::start(&good)?;
    let reloads = || {
        proxy
            .metric_sum("trellis_config_reloads_total", &["result=\"success\""])
            .unwrap_or(0.0)
    };
    let apply = |text: &str| -> Result<u64> {
        let before = reloads();
        proxy.write_config(text)?;
        let applied = wait_until(Duration::from_secs(60), || reloads() > before);
        assert!(
            applied,
            "a config of {} KiB was not applied",
            text.len() >> 10
        );
        proxy.process.anon_rss_kib()
    };
    // The baseline: the proxy after the same reloads, small configs only.
    let small = format!("{good}---\n{}", many_services(1));
    let mut baseline = 0;
    for text in [&small, &good, &small, &good] {
        baseline = baseline.max(apply(text)?);
    }
    let large = format!("{good}---\n{}", many_services(3000));
    let mut peak = 0;
    for _ in 0..3 {
        peak = peak.max(apply(&large)?);
        apply(&good)?;
    }
    // Replaced, the large config's memory goes back to the system (the
    // replaced table is dropped and trimmed on the config thread, just
    // after the reload is counted): at least 80% of what it took.
    let near = baseline + (peak - baseline) / 5;
    let mut after = 0;
    let returned = wait_until(Duration::from_secs(10), || {
        after = proxy.process.anon_rss_kib().unwrap_or(u64::MAX);
        after <= near
    });
    eprintln!(
        "config of {} KiB: anonymous RSS {baseline} KiB after small reloads, \
         {peak} KiB with it, {after} KiB after it",
        large.len() >> 10
    );
    assert!(
        returned,
        "memory stays at {after} KiB after the large config (baseline {baseline} KiB, peak {peak} KiB)"
    );
    let metrics = proxy.metrics()?;
    let left = metrics.lines().filter(|l| l.contains("svc-")).count();
    assert_eq!(left, 0, "series of removed destinations remain");
    let (status, _) = blocking_get(proxy.admin, "/ready")?;
    assert_eq!(status, 200);
    Ok(())
}
