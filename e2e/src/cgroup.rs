//! A memory limit for a process under test: a cgroup the test creates and
//! removes. cgroup v2 when the host's unified hierarchy has the memory
//! controller (`memory.max`, `memory.swap.max`, `memory.events`), else a
//! child of the test's own v1 memory cgroup (`memory.limit_in_bytes`,
//! `memory.memsw.limit_in_bytes`, `memory.oom_control`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug)]
pub struct MemoryLimit {
    dir: PathBuf,
    v2: bool,
}

impl MemoryLimit {
    /// A new cgroup named `name` limited to `bytes`, swap included.
    pub fn new(name: &str, bytes: u64) -> Result<Self> {
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let v2 = std::fs::read_to_string(unified)
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let dir = if v2 {
            let own = own_cgroup("")?;
            // A v2 cgroup with processes cannot delegate: the limit is a
            // sibling of the test's own cgroup.
            let parent = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
            parent
                .parent()
                .unwrap_or(Path::new("/sys/fs/cgroup"))
                .join(name)
        } else {
            let own = own_cgroup("memory")?;
            Path::new("/sys/fs/cgroup/memory")
                .join(own.trim_start_matches('/'))
                .join(name)
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let limit = Self { dir, v2 };
        if v2 {
            limit.write("memory.max", &bytes.to_string())?;
            let _ = limit.write("memory.swap.max", "0");
        } else {
            limit.write("memory.limit_in_bytes", &bytes.to_string())?;
            let _ = limit.write("memory.memsw.limit_in_bytes", &bytes.to_string());
        }
        Ok(limit)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value} to {}", self.dir.join(file).display()))
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Processes the kernel's OOM killer killed in the cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.dir.join(file))?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .context("no oom_kill count")
    }

    /// The most memory the cgroup used, when the kernel says.
    pub fn peak_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    pub fn version(&self) -> u8 {
        if self.v2 {
            2
        } else {
            1
        }
    }
}

impl Drop for MemoryLimit {
    /// Moves what still runs in the cgroup back to its parent, then
    /// removes the cgroup.
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        if let Some(parent) = self.dir.parent() {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("cgroup {} left behind", self.dir.display());
    }
}

/// The test's own cgroup path in `controller`'s hierarchy ("" for v2).
fn own_cgroup(controller: &str) -> Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        if let (Some(controllers), Some(path)) = (controllers, path) {
            if controllers.split(',').any(|c| c == controller) {
                return Ok(path.to_string());
            }
        }
    }
    bail!("no {controller:?} cgroup in /proc/self/cgroup")
}
