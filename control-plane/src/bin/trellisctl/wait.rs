//! `trellisctl wait --for=applied -f FILE`: returns when every resource of
//! the files is in the mesh with the same spec and every connected proxy it
//! affects has acknowledged a config version that contains it; exits 1 on
//! `--timeout` (the global flag: how long to keep trying), naming what is
//! still missing. Works whoever wrote the
//! resources (`apply`, the file source or Kubernetes).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use trellis_api as api;
use trellis_control_plane::push::applied::affects;
use trellis_control_plane::state::resources::documents;
use trellis_control_plane::state::ResourceKey;

use crate::apply::load;
use crate::remote::{fail, Server};

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// The condition: `applied`.
    #[arg(long = "for", value_parser = ["applied"])]
    condition: String,
    /// Rule files (multi-document YAML); a directory means its *.yaml / *.yml files.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

/// How often the mesh is asked again.
const POLL: Duration = Duration::from_millis(100);

pub async fn run(server: &Server, args: &WaitArgs) -> ExitCode {
    let rules = match load(&args.files) {
        Ok(rules) => rules,
        Err(code) => return code,
    };
    let wanted = match documents(&rules) {
        Ok(docs) => docs,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if wanted.is_empty() {
        eprintln!("error: no mesh rules in the given files");
        return ExitCode::from(2);
    }
    let deadline = Instant::now() + server.timeout();
    loop {
        let missing = match missing(server, &wanted).await {
            Ok(missing) => missing,
            Err(s) => return fail(&s),
        };
        if missing.is_empty() {
            out!(
                "{} resource(s) applied on every proxy they affect",
                wanted.len()
            );
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "error: timed out after {:?}; not applied yet:",
                server.timeout()
            );
            for m in &missing {
                eprintln!("  {m}");
            }
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What keeps each wanted resource from being applied; empty when none.
async fn missing(
    server: &Server,
    wanted: &[(ResourceKey, serde_json::Value)],
) -> Result<Vec<String>, tonic::Status> {
    let stored = server
        .call(|mut c| async move { c.get(api::GetRequest::default()).await })
        .await?;
    let proxies = server
        .call(|mut c| async move {
            c.proxy_status(api::ProxyStatusRequest { local_only: false })
                .await
        })
        .await?;
    let versions: BTreeMap<ResourceKey, (serde_json::Value, u64)> = stored
        .resources
        .iter()
        .filter_map(|r| {
            let k = r.resource.clone()?;
            let document: serde_json::Value = serde_json::from_str(&r.document_json).ok()?;
            let key = ResourceKey {
                kind: k.kind,
                namespace: k.namespace,
                name: k.name,
            };
            Some((key, (document, r.version)))
        })
        .collect();
    let mut missing = Vec::new();
    for (key, document) in wanted {
        let label = format!("{} {}/{}", key.kind, key.namespace, key.name);
        let version = match versions.get(key) {
            None => {
                missing.push(format!("{label}: not in the mesh"));
                continue;
            }
            Some((stored, _)) if stored.get("spec") != document.get("spec") => {
                missing.push(format!("{label}: the mesh holds a different spec"));
                continue;
            }
            Some((_, version)) => *version,
        };
        let behind: Vec<String> = proxies
            .proxies
            .iter()
            .filter(|p| affects(&key.kind, &key.namespace, p) && p.acked_version < version)
            .map(|p| {
                if p.status == "NACK" {
                    format!("{} (NACK: {})", p.proxy, p.last_error)
                } else {
                    format!("{} (runs version {})", p.proxy, p.acked_version)
                }
            })
            .collect();
        if !behind.is_empty() {
            missing.push(format!(
                "{label} (version {version}): {}",
                behind.join(", ")
            ));
        }
    }
    for u in &proxies.unreachable {
        missing.push(format!("replica unreachable, its proxies unknown: {u}"));
    }
    Ok(missing)
}
