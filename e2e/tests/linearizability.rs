//! End-to-end: the control plane is linearizable. Three replicas, each in
//! a network namespace of its own; four clients `apply` and `get` rules
//! (`trellisctl`, all replicas in `--server`) while the leader is
//! SIGKILLed and restarted, then SIGSTOPped and resumed, then cut off by a
//! partition and healed. The recorded history (a register per rule: each
//! write a unique value, each read what it saw) is checked by
//! `trellis_e2e::linearizability`; a final read of every key after the
//! faults is part of it, so an acknowledged write that was lost is a
//! violation too.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use trellis_e2e::linearizability::{check, Action, Operation};
use trellis_e2e::mesh::{ctl_as, ControlPlane};
use trellis_e2e::netns::Network;

const KEYS: usize = 3;
const CLIENTS: usize = 4;

/// A rule holding `value`: a ServiceEntry whose port number is the value.
fn document(key: usize, value: u64) -> String {
    format!(
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {{name: key-{key}, namespace: lin}}
spec:
  hosts: [key-{key}.example]
  ports: [{{number: {value}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.9.9.9}}]
"
    )
}

/// The value `get se key-K -o json` shows, `None` when absent.
fn value_of(json: &str) -> Result<Option<u64>> {
    let reply: serde_json::Value = serde_json::from_str(json).context("get output")?;
    let items = reply["items"].as_array().context("no items")?;
    match items.first() {
        None => Ok(None),
        Some(d) => d["spec"]["ports"][0]["number"]
            .as_u64()
            .map(Some)
            .context("no port number"),
    }
}

struct Recorder {
    started: Instant,
    history: Mutex<Vec<Operation>>,
}

impl Recorder {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn record(&self, key: usize, action: Action, call: f64, ret: Option<f64>) {
        self.history.lock().expect("history").push(Operation {
            key: format!("key-{key}"),
            action,
            call,
            ret,
        });
    }
}

/// How a client reaches the replicas.
struct Client<'a> {
    servers: &'a str,
    bundle: &'a Path,
    token: &'a Path,
    dir: &'a Path,
}

impl Client<'_> {
    fn ctl(&self, args: &[&str]) -> Option<String> {
        match ctl_as(self.bundle, Some(self.token), self.servers, args) {
            Ok((true, out, _)) => Some(out),
            _ => None,
        }
    }

    /// One operation on `key`: a write of `value`, or a read.
    fn operate(&self, rec: &Recorder, key: usize, write: Option<u64>) {
        let call = rec.now();
        match write {
            Some(value) => {
                let file = self.dir.join(format!("w-{value}.yaml"));
                if std::fs::write(&file, document(key, value)).is_err() {
                    return;
                }
                let path = file.display().to_string();
                let ok = self
                    .ctl(&["--timeout", "4s", "apply", "-f", &path])
                    .is_some();
                // A failed write may still have been committed: outcome unknown.
                let ret = ok.then(|| rec.now());
                rec.record(key, Action::Write(value), call, ret);
            }
            None => {
                let name = format!("key-{key}");
                let args = [
                    "--timeout",
                    "4s",
                    "get",
                    "se",
                    &name,
                    "-n",
                    "lin",
                    "-o",
                    "json",
                ];
                if let Some(seen) = self.ctl(&args).and_then(|out| value_of(&out).ok()) {
                    rec.record(key, Action::Read(seen), call, Some(rec.now()));
                }
            }
        }
    }
}

/// Waits for a leader other than `not`, then `pause`.
fn next_leader(cp: &ControlPlane, not: Option<u64>) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = cp.leader().filter(|l| Some(*l) != not) {
            return Ok(l);
        }
        anyhow::ensure!(Instant::now() < deadline, "no new leader:\n{}", cp.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The faults, in turn, with clients running: (what, when) of each.
fn inject_faults(cp: &mut ControlPlane, rec: &Recorder) -> Result<Vec<String>> {
    let mut log = Vec::new();
    let pause = |s: u64| std::thread::sleep(Duration::from_secs(s));
    pause(3);
    let leader = next_leader(cp, None)?;
    log.push(format!("{:.1}s SIGKILL leader {leader}", rec.now()));
    cp.kill(leader);
    pause(3);
    cp.spawn(leader)?;
    log.push(format!("{:.1}s restarted {leader}", rec.now()));
    pause(3);
    let leader = next_leader(cp, None)?;
    log.push(format!("{:.1}s SIGSTOP leader {leader}", rec.now()));
    cp.freeze(leader, true)?;
    pause(4);
    cp.freeze(leader, false)?;
    log.push(format!("{:.1}s SIGCONT {leader}", rec.now()));
    pause(3);
    let leader = next_leader(cp, None)?;
    log.push(format!(
        "{:.1}s partition cuts off leader {leader}",
        rec.now()
    ));
    cp.partition(leader, true)?;
    pause(4);
    cp.partition(leader, false)?;
    log.push(format!("{:.1}s partition healed", rec.now()));
    pause(3);
    Ok(log)
}

#[test]
fn apply_and_get_stay_linearizable_through_kills_freezes_and_partitions() -> Result<()> {
    let mut net = Network::new()?;
    let mut cp = ControlPlane::start_in_pods(&mut net, 3, &[])?;
    let dir = net.dir.path().join("writes");
    std::fs::create_dir_all(&dir)?;
    let rec = Recorder {
        started: Instant::now(),
        history: Mutex::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    let next_value = AtomicU64::new(1000);
    let (servers, bundle, token) = (
        cp.servers(),
        cp.trust_bundle.clone(),
        cp.admin_token.clone(),
    );
    let client = Client {
        servers: &servers,
        bundle: &bundle,
        token: &token,
        dir: &dir,
    };
    let faults = std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let key = fastrand::usize(..KEYS);
                    let write =
                        fastrand::bool().then(|| next_value.fetch_add(1, Ordering::Relaxed));
                    client.operate(&rec, key, write);
                }
            });
        }
        let faults = inject_faults(&mut cp, &rec);
        stop.store(true, Ordering::Relaxed);
        faults
    })?;
    // After the faults, every key read once more (retried until answered):
    // an acknowledged write that was lost shows here.
    for key in 0..KEYS {
        let before = rec.history.lock().expect("history").len();
        let answered = trellis_e2e::harness::wait_until(Duration::from_secs(30), || {
            client.operate(&rec, key, None);
            rec.history.lock().expect("history").len() > before
        });
        assert!(
            answered,
            "key-{key} could not be read after the faults:\n{}",
            cp.logs()
        );
    }
    let history = rec.history.into_inner().expect("history");
    let count = |f: &dyn Fn(&Operation) -> bool| history.iter().filter(|o| f(o)).count();
    let writes = count(&|o| matches!(o.action, Action::Write(_)) && o.ret.is_some());
    let unknown = count(&|o| o.ret.is_none());
    let reads = count(&|o| matches!(o.action, Action::Read(_)));
    let started = Instant::now();
    let verdict = check(&history);
    eprintln!(
        "faults: {faults:?}\nhistory: {writes} acknowledged writes, {unknown} of unknown outcome, \
         {reads} reads; checked in {:?}",
        started.elapsed()
    );
    if let Err(v) = verdict {
        let show = |o: &Operation| format!("{:?} [{:.3}, {:?}]", o.action, o.call, o.ret);
        let stuck: Vec<String> = v.stuck.iter().take(12).map(show).collect();
        panic!(
            "not linearizable on {} ({} operations): with the value at {:?}, none of these can come next:\n{}\n{}",
            v.key,
            v.operations.len(),
            v.value,
            stuck.join("\n"),
            cp.logs()
        );
    }
    assert!(
        writes >= 30 && reads >= 30,
        "too few operations to say much"
    );
    Ok(())
}
