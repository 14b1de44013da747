//! Runs real Trellis processes on free loopback ports: `Echo` backends and
//! `Proxy` sidecars, each killed (and its temp dir removed) on drop.
//! Logs go to a file in the temp dir and are printed when a test panics.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A port on 127.0.0.1 free at the time of the call, and never handed out
/// twice in one test process. It lies below the kernel's ephemeral range,
/// so between this call and the server's bind no outgoing connection (a
/// proxy dialling, a test client) can be given it as its local port: with
/// the OS's own pick (`bind :0`) that happened when tests ran in parallel.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    let end = ephemeral_start().max(FIRST + 1000);
    let span = end - FIRST;
    // Start where another test process (started at another time) is unlikely to be.
    let next = NEXT
        .get_or_init(|| AtomicUsize::new((std::process::id().wrapping_mul(7919) % span) as usize));
    for _ in 0..span {
        let port = FIRST + (next.fetch_add(1, Ordering::Relaxed) as u32 % span);
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{end}");
}

/// The first port of the kernel's ephemeral range (32768 unless changed).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(65_535)
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Path of a workspace binary. The first call in a process runs `cargo
/// build` for the binaries (a no-op when up to date), so tests never run a
/// stale proxy: `cargo test` alone does not build other packages' binaries.
pub fn bin(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>  ->  target/<profile>/<name>
    let mut dir = exe.parent().context("an executable lives in a directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps lives in target/<profile>")?;
    }
    let release = dir.ends_with("release");
    let built = BUILT.get_or_init(|| {
        if std::env::var_os("TRELLIS_E2E_NO_BUILD").is_some() {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "trellis-proxy",
            "-p",
            "trellis-control-plane",
            "-p",
            "trellis-e2e",
        ]);
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("cargo build --bins failed: {other:?}")),
        }
    });
    if let Err(e) = built {
        bail!("cannot build {name}: {e}");
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} does not exist after building", path.display());
    }
    Ok(path)
}

/// An outside tool the tests use (`promtool`, ...): from `PATH`, else
/// where `e2e/tools/install.sh` puts it (`~/.cache/trellis/bin`).
pub fn tool(name: &str) -> Result<PathBuf> {
    let cache = std::env::var_os("TRELLIS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trellis")));
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(cache.map(|c| c.join("bin")))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed: run `bash e2e/tools/install.sh` first"))
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trellis-e2e-{}-{label}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed on drop; its log is printed if the test fails.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .env(
                "TRELLIS_LOG",
                std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS")
    }

    /// Its anonymous resident memory (heap and stacks, not code), in KiB.
    pub fn anon_rss_kib(&self) -> Result<u64> {
        self.status_kib("RssAnon")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log_text());
        }
        Ok(())
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.name);
        }
        Ok(())
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process (its log stays).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    })
}

/// A `trellis-echo` backend.
#[derive(Debug)]
pub struct Echo {
    pub addr: SocketAddr,
    pub process: Process,
    _dir: TempDir,
}

impl Echo {
    /// Starts an echo on a free port.
    pub fn start(name: &str, version: &str) -> Result<Self> {
        Self::start_at(free_addr(), name, version)
    }

    /// Starts an echo on `addr`.
    pub fn start_at(addr: SocketAddr, name: &str, version: &str) -> Result<Self> {
        let dir = TempDir::new("echo")?;
        let args = [
            "--listen".to_string(),
            addr.to_string(),
            "--name".into(),
            name.into(),
            "--version".into(),
            version.into(),
        ];
        let mut process = Process::spawn(
            &format!("echo {name}"),
            &bin("trellis-echo")?,
            &args,
            dir.path().join("log"),
        )?;
        if !wait_for_port(addr, Duration::from_secs(10)) {
            process.check_running()?;
            bail!("echo {name} did not listen on {addr}");
        }
        Ok(Self {
            addr,
            process,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The backend's `/_echo/stats` (requests, connections, cancellations).
    pub fn stats(&self) -> Result<serde_json::Value> {
        let (_, body) = crate::client::blocking_get(self.addr, "/_echo/stats")?;
        Ok(serde_json::from_str(&body)?)
    }
}

/// A `trellis-proxy` in static mode, its config file in a temp dir.
#[derive(Debug)]
pub struct Proxy {
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub process: Process,
    _dir: TempDir,
}

impl Proxy {
    /// Starts a proxy serving `rules` and waits until it is ready.
    pub fn start(rules: &str) -> Result<Self> {
        Self::start_with(rules, &[])
    }

    pub fn start_with(rules: &str, extra: &[&str]) -> Result<Self> {
        let dir = TempDir::new("proxy")?;
        let config = dir.path().join("rules.yaml");
        std::fs::write(&config, rules)?;
        let (outbound, admin) = (free_addr(), free_addr());
        let mut args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "--outbound-addr".into(),
            outbound.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = Process::spawn(
            "trellis-proxy",
            &bin("trellis-proxy")?,
            &args,
            dir.path().join("log"),
        )?;
        let ready = wait_until(Duration::from_secs(15), || {
            crate::client::blocking_get(admin, "/ready").is_ok_and(|(status, _)| status == 200)
        });
        if !ready {
            process.check_running()?;
            bail!("proxy not ready within 15 s:\n{}", process.log_text());
        }
        Ok(Self {
            outbound,
            admin,
            config,
            process,
            _dir: dir,
        })
    }

    /// Replaces the config file atomically (write + rename), as editors and
    /// Kubernetes ConfigMap updates do.
    pub fn write_config(&self, rules: &str) -> Result<()> {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, rules)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (_, body) = crate::client::blocking_get(self.admin, "/metrics")?;
        Ok(body)
    }

    /// Sum of the samples of `metric` whose labels contain every `label`.
    pub fn metric_sum(&self, metric: &str, labels: &[&str]) -> Result<f64> {
        Ok(sum_samples(&self.metrics()?, metric, labels))
    }
}

/// Sum of the samples of `metric` in a Prometheus text exposition whose
/// label set contains every one of `labels` (`name="value"`).
pub fn sum_samples(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
