//! `trellis-echo --listen ADDR --name N --version V`: the test backend.
//! See `trellis_e2e::echo` for what it answers and how to make it misbehave.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "trellis-echo",
    about = "HTTP/1.1 + h2c echo backend for Trellis tests"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, default_value = "echo")]
    name: String,
    #[arg(long, default_value = "v1")]
    version: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr = trellis_e2e::echo::spawn(args.listen, &args.name, &args.version).await?;
    eprintln!(
        "trellis-echo {} {} listening on {addr}",
        args.name, args.version
    );
    tokio::signal::ctrl_c().await
}
