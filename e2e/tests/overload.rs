//! End-to-end: ten times a destination's capacity against a proxy held to
//! 256 MiB by a memory cgroup. The destination takes 100 requests at once
//! (`connectionPool`: 100 in flight, 100 waiting) and answers each after
//! 100 ms, so it serves about 1,000 requests/s; 1,000 clients send 64 KiB
//! POSTs without pause. The excess is answered 503 `overflow` at once, the
//! proxy is not OOM-killed, and within 5 s of the flood ending every
//! request is served again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use trellis_e2e::cgroup::MemoryLimit;
use trellis_e2e::client;
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

const CLIENTS: usize = 1000;
const FLOOD: Duration = Duration::from_secs(8);
const LIMIT: u64 = 256 << 20;

#[derive(Default)]
struct Outcomes {
    served: usize,
    overflow: Vec<Duration>,
    other: Vec<String>,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_capacity_gets_fast_503s_no_oom_and_recovers() -> Result<()> {
    let backend = Echo::start("reviews", "v1")?;
    let policy = "    connectionPool:\n      tcp: {maxConnections: 100}\n      http: {http2MaxRequests: 100, http1MaxPendingRequests: 100}\n";
    let yaml = rules::service_with_policy("reviews", &[("v1", &backend)], policy, "");
    let proxy = Proxy::start(&yaml)?;
    let limit = MemoryLimit::new(&format!("trellis-overload-{}", std::process::id()), LIMIT)?;
    limit.add(proxy.process.pid())?;

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let body = Bytes::from(vec![b'x'; 64 << 10]);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (outcomes, stop, body) = (outcomes.clone(), stop.clone(), body.clone());
        let addr = proxy.outbound;
        clients.push(tokio::spawn(async move {
            let http = client::http1();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = client::send(
                    &http,
                    addr,
                    "POST",
                    "reviews",
                    "/?delay=100ms",
                    &[],
                    body.clone(),
                )
                .await;
                let took = started.elapsed();
                let mut o = outcomes.lock().expect("outcomes");
                match reply {
                    Ok(r) if r.status == 200 => o.served += 1,
                    Ok(r)
                        if r.status == 503 && r.header("x-trellis-reason") == Some("overflow") =>
                    {
                        o.overflow.push(took)
                    }
                    Ok(r) => {
                        o.other
                            .push(format!("{} {:?}", r.status, r.header("x-trellis-reason")))
                    }
                    Err(e) => o.other.push(format!("{e:#}")),
                }
            }
        }));
    }
    tokio::time::sleep(FLOOD).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let ended = Instant::now();
    let o = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    let ooms = limit.oom_kills()?;
    let peak = limit.peak_bytes().unwrap_or(0) >> 20;

    // Recovery: the first moment 20 requests in a row are served.
    let http = client::http1();
    let mut in_a_row = 0;
    let recovered = loop {
        let ok = client::get(&http, proxy.outbound, "reviews", "/", &[])
            .await
            .is_ok_and(|r| r.status == 200);
        in_a_row = if ok { in_a_row + 1 } else { 0 };
        if in_a_row == 20 {
            break ended.elapsed();
        }
        if ended.elapsed() > Duration::from_secs(30) {
            break ended.elapsed();
        }
    };
    let (p50, p99) = (
        percentile(o.overflow.clone(), 0.5),
        percentile(o.overflow.clone(), 0.99),
    );
    eprintln!(
        "cgroup v{}: {} served ({:.0}/s), {} overflow 503s (p50 {p50:?}, p99 {p99:?}), {} other, \
         OOM kills {ooms}, peak {peak} MiB of {} MiB, recovered in {recovered:?}",
        limit.version(),
        o.served,
        o.served as f64 / FLOOD.as_secs_f64(),
        o.overflow.len(),
        o.other.len(),
        LIMIT >> 20
    );
    assert_eq!(ooms, 0, "the proxy was OOM-killed");
    assert!(
        !proxy.process.log_text().contains("panicked"),
        "the proxy panicked"
    );
    // Every request gets an answer. (With the kernel's accept queue at
    // tokio's 1024, the clients' reconnections overflowed it and 0.07% to
    // 0.3% of requests met a reset; the listeners now ask for 4096.) One in
    // 10,000 is left for a stray reset on a busy machine.
    let answered = o.served + o.overflow.len() + o.other.len();
    assert!(
        o.other.len() * 10_000 <= answered,
        "{} of {answered} requests got no answer: {:?}",
        o.other.len(),
        &o.other[..o.other.len().min(5)]
    );
    assert!(
        o.overflow.len() > o.served,
        "the flood was not over capacity"
    );
    assert!(
        o.served > 1000,
        "capacity was not used: {} served",
        o.served
    );
    // Were the excess queued for capacity instead (1,000 clients behind
    // 100 slots of 100 ms), it would wait about a second: the bounds leave
    // room for two busy cores, not for queueing.
    assert!(
        p50 < Duration::from_millis(500) && p99 < Duration::from_secs(2),
        "overflow answers are slow: p50 {p50:?}, p99 {p99:?}"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "recovered after {recovered:?}"
    );
    Ok(())
}
