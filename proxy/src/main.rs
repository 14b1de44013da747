//! `trellis-proxy`: flags -> Config -> App::spawn -> wait for a signal -> drain;
//! `trellis-proxy init-iptables ...`: the pod's capture rules, then exit;
//! `trellis-proxy wait-ready ...`: until the sidecar is ready (postStart).

use std::process::ExitCode;

use clap::Parser;
use trellis_proxy::capture::{run_capture, CaptureArgs};
use trellis_proxy::config::{Args, Config};
use trellis_proxy::wait_ready::{wait_ready, WaitArgs};
use trellis_proxy::App;

fn main() -> ExitCode {
    trellis_proxy::memory::return_memory_promptly();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == "init-iptables") {
        let args = CaptureArgs::parse_from(std::env::args_os().skip(1));
        return match run_capture(&args) {
            Ok(report) => {
                if args.dry_run {
                    print!("{report}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trellis-proxy init-iptables: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "wait-ready")
    {
        let args = WaitArgs::parse_from(std::env::args_os().skip(1));
        return match wait_ready(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis-proxy wait-ready: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::build(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match App::build(config).await.and_then(App::spawn) {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
