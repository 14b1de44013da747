//! `trellisctl`: the Trellis command line. `validate`, `inject` and `pki`
//! work offline; the other commands talk to any control-plane replica
//! (`--server`) over TLS, with an operator token.

/// `println!` that ends the process quietly when stdout is gone
/// (`trellisctl get | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod apply;
mod demo;
mod inject;
mod pki;
mod remote;
mod validate;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "trellisctl", version, about = "Operate a Trellis mesh")]
struct Cli {
    #[command(flatten)]
    server: remote::Server,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load and validate rule files; print every error as file:line:col: field: message.
    Validate(validate::Args),
    /// Write the rules of files to the mesh; returns once committed.
    Apply(apply::ApplyArgs),
    /// Remove rules (those of -f files, or one: KIND NAME).
    Delete(apply::DeleteArgs),
    /// List the rules the mesh holds.
    Get(remote::GetArgs),
    /// Form and change the control plane's Raft group.
    Cluster {
        #[command(subcommand)]
        command: remote::ClusterCommand,
    },
    /// Every proxy: the replica it streams from, its version, ACK or NACK.
    ProxyStatus(remote::ProxyStatusArgs),
    /// Wait until the rules of files run on every proxy they affect (--for=applied; --timeout).
    Wait(wait::WaitArgs),
    /// Print the mesh's root certificate (PEM), as the replica at --server has it.
    TrustBundle,
    /// Add the sidecar to the pods of YAML files, as the webhook does; print the result.
    Inject(inject::InjectArgs),
    /// Create the secrets a control plane starts from: root CA, operator tokens.
    Pki(pki::PkiArgs),
    /// A whole mesh on this machine: 3 replicas, sidecars, backends, live traffic.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Validate(args) => return validate::run(args),
        Command::Pki(args) => return pki::run(args),
        Command::Inject(args) => return inject::run(args),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = &cli.server;
    runtime.block_on(async {
        match &cli.command {
            Command::Validate(_) | Command::Pki(_) | Command::Inject(_) => {
                unreachable!("handled above")
            }
            Command::Apply(args) => apply::apply(server, args).await,
            Command::Delete(args) => apply::delete(server, args).await,
            Command::Get(args) => remote::get(server, args).await,
            Command::Cluster { command } => remote::cluster(server, command).await,
            Command::ProxyStatus(args) => remote::proxy_status(server, args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Wait(args) => wait::run(server, args).await,
            Command::TrustBundle => remote::trust_bundle(server).await,
        }
    })
}
