//! Pods as Linux network namespaces: a bridge in the root namespace and,
//! per pod, a netns with its own IPv4 and IPv6 address (dual stack) on a
//! veth to the bridge, default routes, and `/etc/netns/NAME/hosts` standing in for cluster DNS. Commands
//! run inside with `ip netns exec` (as another uid through `setpriv`).
//! Everything is removed on drop.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::harness::{tool, Process, TempDir};

/// The pods' network: one bridge, a /24 and a /64 of its own.
#[derive(Debug)]
pub struct Network {
    /// Short and unique per test process: names must fit 15 characters.
    tag: String,
    bridge: String,
    /// `10.<subnet>.0.0/24` and `fd00:<subnet>::/64`.
    subnet: u8,
    pods: Vec<String>,
    pub dir: TempDir,
}

/// One pod: a netns and its address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: String,
    pub ip: String,
    pub ip6: String,
}

fn ip(args: &[&str]) -> Result<String> {
    run(&tool("ip")?.display().to_string(), args)
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Network {
    /// A bridge with the gateway address `10.<subnet>.0.1`.
    pub fn new() -> Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 10_000;
        let tag = format!("t{pid}{n}");
        let subnet = 100 + ((pid as usize * 7 + n) % 150) as u8;
        let bridge = format!("{tag}br");
        let net = Self {
            tag,
            bridge: bridge.clone(),
            subnet,
            pods: Vec::new(),
            dir: TempDir::new("netns")?,
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.{subnet}.0.1/24"),
            "dev",
            &bridge,
        ])?;
        // nodad: usable at once, not after duplicate address detection
        ip(&[
            "addr",
            "add",
            &format!("fd00:{subnet}::1/64"),
            "dev",
            &bridge,
            "nodad",
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// Adds pod `n` (2..=254) named `name`, with `hosts` lines for its
    /// `/etc/hosts`.
    pub fn pod(&mut self, name: &str, n: u8, hosts: &str) -> Result<Pod> {
        let netns = format!("{}-{name}", self.tag);
        let (outside, inside) = (format!("{}v{n}", self.tag), format!("{}p{n}", self.tag));
        let address = format!("10.{}.0.{n}", self.subnet);
        ip(&["netns", "add", &netns])?;
        self.pods.push(netns.clone());
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &netns])?;
        ip(&["link", "set", &outside, "master", &self.bridge])?;
        ip(&["link", "set", &outside, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        exec(&["link", "set", "lo", "up"])?;
        exec(&["link", "set", &inside, "name", "eth0"])?;
        exec(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        let address6 = self.address6(n);
        exec(&[
            "addr",
            "add",
            &format!("{address6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        exec(&["link", "set", "eth0", "up"])?;
        exec(&[
            "route",
            "add",
            "default",
            "via",
            &format!("10.{}.0.1", self.subnet),
        ])?;
        exec(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:{}::1", self.subnet),
        ])?;
        let etc = PathBuf::from("/etc/netns").join(&netns);
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{hosts}\n"))?;
        Ok(Pod {
            netns,
            ip: address,
            ip6: address6,
        })
    }

    /// Removes pod `netns` (its veth goes with it).
    pub fn remove(&mut self, netns: &str) {
        let _ = ip(&["netns", "del", netns]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(netns));
        self.pods.retain(|p| p != netns);
    }

    /// `10.<subnet>.0.<n>`.
    pub fn address(&self, n: u8) -> String {
        format!("10.{}.0.{n}", self.subnet)
    }

    /// `fd00:<subnet>::<n>` (n in hex, as IPv6 writes it).
    pub fn address6(&self, n: u8) -> String {
        format!("fd00:{}::{n:x}", self.subnet)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in &self.pods {
            let _ = ip(&["netns", "del", netns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(netns));
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Pod {
    /// Runs `program args` in the pod as root; its stdout, failing unless it succeeds.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.netns.as_str(), program];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// As [`exec`](Self::exec): (success, stdout, stderr).
    pub fn try_exec(&self, program: &str, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(tool("ip")?)
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts `program args` in the pod as `uid` (and gid), logging to `log`.
    pub fn spawn_as(
        &self,
        name: &str,
        uid: Option<u32>,
        program: &str,
        args: &[String],
        log: PathBuf,
    ) -> Result<Process> {
        let mut all = vec!["netns".to_string(), "exec".into(), self.netns.clone()];
        if let Some(uid) = uid {
            all.extend([
                "setpriv".to_string(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ]);
        }
        all.push(program.to_string());
        all.extend_from_slice(args);
        Process::spawn(name, &tool("ip")?, &all, log)
    }
}
