//! `trellis-proxy wait-ready`: returns once the sidecar's admin port says
//! `/ready` (config, and a certificate when mTLS is on), or fails after
//! `--timeout`. The injected sidecar's `postStart` hook: the kubelet starts
//! the application's containers only after it returns.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Flags of `trellis-proxy wait-ready`.
#[derive(clap::Parser, Debug)]
#[command(name = "trellis-proxy wait-ready")]
pub struct WaitArgs {
    /// The sidecar's --admin-addr.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin_addr: SocketAddr,
    /// How long to wait.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_crds::duration::parse_duration(s)
}

/// Polls `/ready` every 100 ms until it answers 200; the last answer on failure.
pub fn wait_ready(args: &WaitArgs) -> Result<(), String> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match ready(args.admin_addr) {
            Ok(true) => return Ok(()),
            Ok(false) => "not ready".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not ready within {:?}: {last}",
                args.admin_addr, args.timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}
