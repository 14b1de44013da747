//! `trellis-proxy init-iptables`: the pod's init step. Programs Istio-style
//! `nat` chains so the application's outbound TCP goes to the outbound
//! listener (:15001) and TCP to the pod goes to the inbound listener
//! (:15006), leaving alone the proxy's own connections (its uid and gid),
//! the application's localhost calls, and the excluded ports and CIDRs.
//! IPv4 through `iptables-restore`, IPv6 through `ip6tables-restore`, each
//! in one transaction computed from what `iptables-save` shows, so running
//! it again changes nothing and `--cleanup` removes exactly what it added.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use clap::Parser;

/// `trellis-proxy init-iptables` flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "trellis-proxy init-iptables",
    about = "Redirect the pod's TCP to the sidecar"
)]
pub struct CaptureArgs {
    /// The proxy's uid: its own connections are never redirected.
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's gid (default: the uid).
    #[arg(long, env = "TRELLIS_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// The outbound listener's port.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The inbound listener's port.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Outbound destinations captured: CIDRs, or `*` for all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub include_outbound_cidrs: Vec<String>,
    /// Outbound destinations never captured.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Outbound destination ports never captured.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports captured: port numbers, or `*` for all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub include_inbound_ports: Vec<String>,
    /// Inbound ports never captured (the proxy's own are always excluded).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// The proxy's own ports (admin, listeners), never captured inbound.
    #[arg(long, value_delimiter = ',', default_value = "15000,15001,15006,15020")]
    pub proxy_ports: Vec<u16>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules a previous run installed.
    #[arg(long)]
    pub cleanup: bool,
    /// Program IPv4 only (else IPv6 too, when ip6tables is installed).
    #[arg(long)]
    pub ipv4_only: bool,
}

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn localhost(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }
}

/// Why the rules were not installed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Flag(String),
    #[error("{command}: {source}")]
    Spawn {
        command: &'static str,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed {
        command: &'static str,
        stderr: String,
    },
}

/// Chains this program owns.
const CHAINS: [&str; 4] = [
    "TRELLIS_INBOUND",
    "TRELLIS_IN_REDIRECT",
    "TRELLIS_OUTPUT",
    "TRELLIS_REDIRECT",
];
/// The jumps into them from the built-in chains.
const JUMPS: [&str; 2] = [
    "-A PREROUTING -p tcp -j TRELLIS_INBOUND",
    "-A OUTPUT -p tcp -j TRELLIS_OUTPUT",
];

/// The rules of one family, as `iptables-restore --noflush` input, given
/// what `iptables-save -t nat` shows now. Declaring a chain empties it, so
/// the chains' content is always replaced; the jumps into them are added
/// only when missing.
pub fn install_rules(
    args: &CaptureArgs,
    family: Family,
    current: &str,
) -> Result<String, CaptureError> {
    let uid = args.proxy_uid;
    let gid = args.proxy_gid.unwrap_or(uid);
    let cidrs = |list: &[String]| -> Result<Vec<String>, CaptureError> {
        let mut out = Vec::new();
        for c in list.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            if c == "*" {
                out.push("*".to_string());
                continue;
            }
            let (ip, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| CaptureError::Flag(format!("{c:?} is not a CIDR")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = if len.is_empty() {
                max
            } else {
                len.parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| CaptureError::Flag(format!("{c:?} is not a CIDR")))?
            };
            if ip.is_ipv4() == (family == Family::V4) {
                out.push(format!("{ip}/{len}"));
            }
        }
        Ok(out)
    };
    let include_out = cidrs(&args.include_outbound_cidrs)?;
    let exclude_out = cidrs(&args.exclude_outbound_cidrs)?;
    let mut inbound_ports = Vec::new();
    for p in args
        .include_inbound_ports
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
    {
        if p == "*" {
            inbound_ports.push(None);
        } else {
            let port: u16 = p.parse().map_err(|_| {
                CaptureError::Flag(format!("--include-inbound-ports: {p:?} is not a port"))
            })?;
            inbound_ports.push(Some(port));
        }
    }
    let mut r = vec!["*nat".to_string()];
    for chain in CHAINS {
        r.push(format!(":{chain} - [0:0]"));
    }
    for jump in JUMPS {
        if !current.lines().any(|l| l.trim() == jump) {
            r.push(jump.to_string());
        }
    }
    // Inbound: the proxy's own ports and the excluded ones pass; the
    // included ones go to the inbound listener.
    for port in args.proxy_ports.iter().chain(&args.exclude_inbound_ports) {
        r.push(format!(
            "-A TRELLIS_INBOUND -p tcp --dport {port} -j RETURN"
        ));
    }
    if inbound_ports.contains(&None) {
        r.push("-A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT".into());
    } else {
        for port in inbound_ports.iter().flatten() {
            r.push(format!(
                "-A TRELLIS_INBOUND -p tcp --dport {port} -j TRELLIS_IN_REDIRECT"
            ));
        }
    }
    r.push(format!(
        "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    r.push(format!(
        "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    // Outbound, in order: the proxy calling its own pod over lo is inbound
    // traffic; the app's other loopback calls and everything the proxy
    // sends pass; then localhost, excluded CIDRs and ports pass; what is
    // left and included goes to the outbound listener.
    let lo = family.localhost();
    for (match_, id) in [("--uid-owner", uid), ("--gid-owner", gid)] {
        r.push(format!(
            "-A TRELLIS_OUTPUT ! -d {lo} -o lo -m owner {match_} {id} -j TRELLIS_IN_REDIRECT"
        ));
        r.push(format!(
            "-A TRELLIS_OUTPUT -o lo -m owner ! {match_} {id} -j RETURN"
        ));
        r.push(format!(
            "-A TRELLIS_OUTPUT -m owner {match_} {id} -j RETURN"
        ));
    }
    r.push(format!("-A TRELLIS_OUTPUT -d {lo} -j RETURN"));
    for cidr in &exclude_out {
        r.push(format!("-A TRELLIS_OUTPUT -d {cidr} -j RETURN"));
    }
    for port in &args.exclude_outbound_ports {
        r.push(format!("-A TRELLIS_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    if include_out.iter().any(|c| c == "*") {
        r.push("-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT".into());
    } else {
        for cidr in &include_out {
            r.push(format!("-A TRELLIS_OUTPUT -d {cidr} -j TRELLIS_REDIRECT"));
        }
    }
    r.push("COMMIT".into());
    Ok(r.join("\n") + "\n")
}

/// What removes this program's rules, given `iptables-save -t nat` now;
/// `None` when there is nothing to remove.
pub fn cleanup_rules(current: &str) -> Option<String> {
    let mut r = vec!["*nat".to_string()];
    for jump in JUMPS {
        let count = current.lines().filter(|l| l.trim() == jump).count();
        for _ in 0..count {
            r.push(jump.replacen("-A ", "-D ", 1));
        }
    }
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| current.lines().any(|l| l.starts_with(&format!(":{c} "))))
        .collect();
    for chain in &present {
        r.push(format!("-F {chain}"));
    }
    for chain in &present {
        r.push(format!("-X {chain}"));
    }
    if r.len() == 1 {
        return None;
    }
    r.push("COMMIT".into());
    Some(r.join("\n") + "\n")
}

fn run(command: &'static str, args: &[&str], input: Option<&str>) -> Result<String, CaptureError> {
    let mut child = Command::new(command)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { command, source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| CaptureError::Spawn { command, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn { command, source })?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn available(command: &str) -> bool {
    Command::new(command)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs (or with `--cleanup` removes) the rules; with `--dry-run`
/// prints what it would give `iptables-restore`. Returns what it did.
pub fn run_capture(args: &CaptureArgs) -> Result<String, CaptureError> {
    let mut families = vec![Family::V4];
    if !args.ipv4_only && available(Family::V6.restore()) {
        families.push(Family::V6);
    }
    let mut report = String::new();
    for family in families {
        let current = run(family.save(), &["-t", "nat"], None)?;
        let rules = if args.cleanup {
            cleanup_rules(&current)
        } else {
            Some(install_rules(args, family, &current)?)
        };
        let Some(rules) = rules else {
            report.push_str(&format!("# {}: nothing to remove\n", family.restore()));
            continue;
        };
        report.push_str(&format!("# {} --noflush\n{rules}", family.restore()));
        if !args.dry_run {
            run(family.restore(), &["--noflush"], Some(&rules))?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> CaptureArgs {
        let mut argv = vec!["init-iptables"];
        argv.extend_from_slice(extra);
        CaptureArgs::parse_from(argv)
    }

    #[test]
    fn installs_istio_style_chains_once() {
        let rules = install_rules(&args(&[]), Family::V4, "").expect("rules");
        assert!(rules.contains("-A OUTPUT -p tcp -j TRELLIS_OUTPUT"));
        assert!(rules.contains("-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(rules.contains("-A TRELLIS_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"));
        assert!(rules.contains("-A TRELLIS_INBOUND -p tcp --dport 15000 -j RETURN"));
        assert!(rules.contains("-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(rules.contains("-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(rules.ends_with("COMMIT\n"));
        // Run again over what the first run left: the jumps are not repeated.
        let again = install_rules(&args(&[]), Family::V4, &rules).expect("rules");
        assert!(!again.contains("-A OUTPUT -p tcp -j TRELLIS_OUTPUT"));
        assert!(!again.contains("-A PREROUTING"));
    }

    #[test]
    fn cidrs_and_ports_go_to_their_family() {
        let a = args(&[
            "--include-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--exclude-outbound-cidrs",
            "10.96.0.1",
            "--exclude-outbound-ports",
            "5432",
            "--include-inbound-ports",
            "9080",
        ]);
        let v4 = install_rules(&a, Family::V4, "").expect("v4");
        assert!(v4.contains("-A TRELLIS_OUTPUT -d 10.96.0.0/12 -j TRELLIS_REDIRECT"));
        assert!(v4.contains("-A TRELLIS_OUTPUT -d 10.96.0.1/32 -j RETURN"));
        assert!(v4.contains("--dport 5432 -j RETURN"));
        assert!(v4.contains("-A TRELLIS_INBOUND -p tcp --dport 9080 -j TRELLIS_IN_REDIRECT"));
        assert!(!v4.contains("fd00"));
        assert!(
            !v4.contains("-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT"),
            "not everything"
        );
        let v6 = install_rules(&a, Family::V6, "").expect("v6");
        assert!(v6.contains("-A TRELLIS_OUTPUT -d fd00::/8 -j TRELLIS_REDIRECT"));
        assert!(v6.contains("! -d ::1/128 -o lo"));
        let bad = install_rules(
            &args(&["--exclude-outbound-cidrs", "10.0.0.0/40"]),
            Family::V4,
            "",
        );
        assert!(matches!(bad, Err(CaptureError::Flag(_))));
    }

    #[test]
    fn cleanup_removes_exactly_what_was_added() {
        assert_eq!(cleanup_rules("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), None);
        let saved = "*nat\n:TRELLIS_OUTPUT - [0:0]\n:TRELLIS_REDIRECT - [0:0]\n-A OUTPUT -p tcp -j TRELLIS_OUTPUT\nCOMMIT\n";
        let rules = cleanup_rules(saved).expect("something to remove");
        assert!(rules.contains("-D OUTPUT -p tcp -j TRELLIS_OUTPUT"));
        assert!(rules.contains("-X TRELLIS_OUTPUT") && rules.contains("-X TRELLIS_REDIRECT"));
        assert!(!rules.contains("TRELLIS_INBOUND"));
    }
}
