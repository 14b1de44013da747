//! `trellis-xds-bench`: N simulated proxies stream from the control plane
//! (spread over the replicas, one connection each) and ACK every push; each
//! round writes one rule through the operator API, as `trellisctl apply`
//! does, and times how long until each stream has the new version and has
//! ACKed it. Prints one line of figures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::sync::mpsc;
use trellis_api as api;
use trellis_api::mesh_discovery_client::MeshDiscoveryClient;
use trellis_api::tls::channel::{client_config, load_bundle, Connector};
use trellis_control_plane::operator::{client, Bearer, OperatorClient};
use trellis_control_plane::raft::network::channel;

#[derive(Parser, Debug)]
#[command(name = "trellis-xds-bench")]
struct Args {
    /// Replicas' --raft-addr (writes go here), comma-separated.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Replicas' --xds-addr (streams spread over them), comma-separated.
    #[arg(long, value_delimiter = ',')]
    xds: Vec<String>,
    #[arg(long, default_value_t = 100)]
    streams: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The mesh root the replicas' certificates chain to.
    #[arg(long)]
    trust_bundle: std::path::PathBuf,
    /// An operator token that may write.
    #[arg(long)]
    token_file: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let roots = load_bundle(&args.trust_bundle).map_err(anyhow::Error::msg)?;
    let tls = client_config(&roots, None).map_err(anyhow::Error::msg)?;
    // (version, when a stream had ACKed it), every push of every stream.
    let samples: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    for i in 0..args.streams {
        let xds = args.xds[i % args.xds.len()].clone();
        let (samples, connected, tls) = (samples.clone(), connected.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = stream(i, &xds, tls, samples, connected).await {
                eprintln!("stream {i}: {e:#}");
            }
        });
    }
    // Every stream connected and holding the current config.
    let permits = u32::try_from(args.streams)?;
    tokio::time::timeout(Duration::from_secs(60), connected.acquire_many(permits))
        .await
        .context("streams did not all connect within 60 s")??
        .forget();

    let token = std::fs::read_to_string(&args.token_file)?;
    let bearer = Bearer::new(Some(&token)).map_err(anyhow::Error::msg)?;
    let mut control = client(channel(&args.servers[0], tls)?, bearer);
    let mut to_last_ack = Vec::new();
    let mut all = Vec::new();
    for round in 0..args.rounds {
        let sent = Instant::now();
        let version = write(&mut control, round).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = samples
                .lock()
                .map(|s| s.iter().filter(|(v, _)| *v == version).count())
                .unwrap_or(0);
            if done == args.streams {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "round {round}: {done} of {} streams ACKed within 10 s",
                    args.streams
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let acks: Vec<Duration> = samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(v, _)| *v == version)
                    .map(|(_, at)| at.duration_since(sent))
                    .collect()
            })
            .unwrap_or_default();
        to_last_ack.push(acks.iter().max().copied().unwrap_or_default());
        all.extend(acks);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all.sort();
    to_last_ack.sort();
    let pct = |v: &[Duration], p: f64| {
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    println!(
        "streams={} rounds={} ack_p50_ms={:.1} ack_p99_ms={:.1} ack_max_ms={:.1} last_ack_p50_ms={:.1} last_ack_p99_ms={:.1}",
        args.streams,
        args.rounds,
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        pct(&to_last_ack, 0.5),
        pct(&to_last_ack, 0.99),
    );
    Ok(())
}

/// One write (a ServiceEntry whose port changes each round); its version.
async fn write(control: &mut OperatorClient, round: usize) -> Result<u64> {
    let document = serde_json::json!({
        "apiVersion": "networking.trellis.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {
            "hosts": ["bench.example"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": 20000 + round}}],
        },
    });
    let request = api::WriteRequest {
        changes: vec![api::Change {
            resource: Some(api::ResourceRef {
                kind: "ServiceEntry".into(),
                namespace: "bench".into(),
                name: "bench".into(),
            }),
            document_json: document.to_string(),
        }],
        source: "cli".into(),
    };
    let reply = control
        .write(request)
        .await
        .map_err(|s| anyhow::anyhow!("write: {}", s.message()))?;
    Ok(reply.into_inner().index)
}

/// One simulated proxy: ACKs every push; records when it got each round's version.
async fn stream(
    i: usize,
    xds: &str,
    tls: Arc<rustls::ClientConfig>,
    samples: Arc<Mutex<Vec<(u64, Instant)>>>,
    connected: Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect_with_connector(Connector::new(tls))
        .await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(api::DiscoveryRequest {
        node: Some(api::Node {
            id: format!("bench-{i}"),
            namespace: "bench".into(),
            service: "bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = MeshDiscoveryClient::new(channel)
        .stream_config(outbound)
        .await?
        .into_inner();
    let mut first = true;
    while let Some(push) = inbound.message().await? {
        tx.send(api::DiscoveryRequest {
            version: push.version,
            response_nonce: push.nonce,
            config_hash: format!("{:x}", push.version),
            ..Default::default()
        })
        .await?;
        if let Ok(mut s) = samples.lock() {
            s.push((push.version, Instant::now()));
        }
        if first {
            connected.add_permits(1);
            first = false;
        }
    }
    Ok(())
}
