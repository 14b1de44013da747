//! `trellis-demo`: the local canary demo. Starts echo backends `reviews` v1
//! and v2 on the ports `examples/canary.yaml` names, a `trellis-proxy` with
//! that file, sends traffic and prints the split as it goes. Everything it
//! started stops when it exits (or on Ctrl-C).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use trellis_e2e::client::{self, get};
use trellis_e2e::harness::{Echo, Proxy};

#[derive(Parser, Debug)]
#[command(name = "trellis-demo", about = "Run a local Trellis canary demo")]
struct Args {
    /// Rules to serve.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/canary.yaml"))]
    rules: PathBuf,
    /// Requests to send.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let rules = std::fs::read_to_string(&args.rules)
        .with_context(|| format!("reading {}", args.rules.display()))?;
    let v1_addr: SocketAddr = "127.0.0.1:19081".parse()?;
    let v2_addr: SocketAddr = "127.0.0.1:19082".parse()?;
    println!("Trellis local demo");
    println!("  backends  reviews v1 on {v1_addr}, reviews v2 on {v2_addr}");
    let _v1 = Echo::start_at(v1_addr, "reviews", "v1")
        .context("starting reviews v1 (is port 19081 free?)")?;
    let _v2 = Echo::start_at(v2_addr, "reviews", "v2")
        .context("starting reviews v2 (is port 19082 free?)")?;
    let proxy = Proxy::start(&rules)?;
    println!(
        "  proxy     outbound {}  admin http://{}/config_dump",
        proxy.outbound, proxy.admin
    );
    println!("  rules     {}", args.rules.display());
    println!();
    println!(
        "  {:>8}  {:>16}  {:>16}  {:>6}",
        "requests", "v1", "v2", "errors"
    );

    let client = client::http1();
    let (mut v1, mut v2, mut errors) = (0usize, 0usize, 0usize);
    let tick = (args.requests / 10).max(1);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    for n in 1..=args.requests {
        let reply = tokio::select! {
            r = get(&client, proxy.outbound, "reviews", "/", &[]) => r,
            _ = &mut stop => break,
        };
        match reply {
            Ok(r) if r.status.is_success() => match r.header("x-echo-version") {
                Some("v1") => v1 += 1,
                Some("v2") => v2 += 1,
                _ => errors += 1,
            },
            _ => errors += 1,
        }
        if n % tick == 0 || n == args.requests {
            let pct = |k: usize| 100.0 * k as f64 / n as f64;
            println!(
                "  {n:>8}  {v1:>7} ({:>5.1}%)  {v2:>7} ({:>5.1}%)  {errors:>6}",
                pct(v1),
                pct(v2)
            );
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let jason = get(
        &client,
        proxy.outbound,
        "reviews",
        "/",
        &[("end-user", "jason")],
    )
    .await?;
    println!();
    println!(
        "  a request with `end-user: jason` went to {} (the header-matched route)",
        jason.header("x-echo-version").unwrap_or("?")
    );
    println!("  done; stopping the proxy and backends");
    Ok(())
}
