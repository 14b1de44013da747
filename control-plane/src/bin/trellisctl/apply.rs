//! `trellisctl apply` and `delete`: rules from files (or one named
//! resource) written to the mesh as one transaction. `apply` validates the
//! files together with what the mesh already holds, so a VirtualService
//! may use the subsets of a DestinationRule applied earlier (Istio's order
//! of operations), and a change that breaks a rule already applied is
//! refused with that rule named.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use trellis_api as api;
use trellis_control_plane::state::resources::{documents, rule_set};
use trellis_control_plane::state::ResourceKey;
use trellis_crds::RuleSet;

use crate::remote::{fail, kind_name, Server};
use crate::validate::expand;

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Rule files (multi-document YAML); a directory means its *.yaml / *.yml files.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

/// `apply -f`: checked against the mesh here (errors name file, line,
/// column and field), written as one entry, returned once committed.
pub async fn apply(server: &Server, args: &ApplyArgs) -> ExitCode {
    let rules = match load(&args.files) {
        Ok(rules) => rules,
        Err(code) => return code,
    };
    let changes = match changes(&rules, true) {
        Ok(changes) => changes,
        Err(code) => return code,
    };
    if let Err(code) = check_against_mesh(server, &rules).await {
        return code;
    }
    let count = changes.len();
    match server.write(changes).await {
        Ok(reply) if reply.changed => {
            out!(
                "{count} resource(s) applied; config version {}",
                reply.index
            );
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            out!(
                "{count} resource(s) unchanged; config version {}",
                reply.index
            );
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Delete the rules these files declare.
    #[arg(short = 'f', long = "filename", num_args = 1..)]
    files: Vec<PathBuf>,
    /// Or one resource: KIND NAME or KIND/NAME (kind as in `get`: vs, dr, ...).
    #[arg(num_args = 0..=2)]
    resource: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

pub async fn delete(server: &Server, args: &DeleteArgs) -> ExitCode {
    let changes = match (args.resource.as_slice(), args.files.is_empty()) {
        ([one], true) => match one.split_once('/') {
            Some((kind, name)) => one_resource(kind, name, &args.namespace),
            None => Err(format!("{one:?} is not KIND/NAME (or give KIND NAME)")),
        },
        ([kind, name], true) => one_resource(kind, name, &args.namespace),
        ([], false) => match load(&args.files).and_then(|rules| changes(&rules, false)) {
            Ok(c) => Ok(c),
            Err(code) => return code,
        },
        _ => Err("give either -f FILE... or KIND NAME".to_string()),
    };
    let changes = match changes {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match server.write(changes).await {
        Ok(reply) if reply.changed => {
            out!("deleted; config version {}", reply.index);
            ExitCode::SUCCESS
        }
        Ok(_) => {
            out!("nothing to delete");
            ExitCode::SUCCESS
        }
        Err(s) => fail(&s),
    }
}

fn one_resource(kind: &str, name: &str, namespace: &str) -> Result<Vec<api::Change>, String> {
    Ok(vec![api::Change {
        resource: Some(api::ResourceRef {
            kind: kind_name(kind)?.into(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        document_json: String::new(),
    }])
}

/// The rules of `files`, parsed (refused fields and syntax errors are
/// printed with their positions); exit 2 when a file cannot be read.
pub fn load(files: &[PathBuf]) -> Result<RuleSet, ExitCode> {
    let files = expand(files).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    trellis_crds::load_files(&files).map_err(|errors| {
        for e in errors.iter() {
            out!("{e}");
        }
        eprintln!("{} error(s); nothing written", errors.len());
        ExitCode::FAILURE
    })
}

/// The changes that write (or, `!apply`, delete) `rules`.
pub fn changes(rules: &RuleSet, apply: bool) -> Result<Vec<api::Change>, ExitCode> {
    let docs = documents(rules).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    if docs.is_empty() {
        eprintln!("error: no mesh rules in the given files");
        return Err(ExitCode::from(2));
    }
    Ok(docs
        .into_iter()
        .map(|(key, document)| api::Change {
            resource: Some(api::ResourceRef {
                kind: key.kind,
                namespace: key.namespace,
                name: key.name,
            }),
            document_json: if apply {
                document.to_string()
            } else {
                String::new()
            },
        })
        .collect())
}

/// Validates the mesh as it would be with `files` applied, and prints the
/// errors that applying them would add: in the files (with positions), or
/// in rules already applied (named by kind, namespace and name). The
/// leader checks the same again when it writes.
async fn check_against_mesh(server: &Server, files: &RuleSet) -> Result<(), ExitCode> {
    let reply = server
        .call(|mut c| async move { c.get(api::GetRequest::default()).await })
        .await
        .map_err(|s| fail(&s))?;
    let mesh: Vec<(ResourceKey, serde_json::Value)> = reply
        .resources
        .iter()
        .filter_map(|r| {
            let key = r.resource.as_ref()?;
            let key = ResourceKey {
                kind: key.kind.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            Some((key, serde_json::from_str(&r.document_json).ok()?))
        })
        .collect();
    let replaced: BTreeSet<ResourceKey> = documents(files)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let (before, _) = rule_set(mesh.iter().map(|(k, v)| (k, v)));
    let (mut after, _) = rule_set(
        mesh.iter()
            .filter(|(k, _)| !replaced.contains(k))
            .map(|(k, v)| (k, v)),
    );
    after.extend(files.clone());
    let known: BTreeSet<String> = trellis_crds::validate(&before)
        .to_lines()
        .into_iter()
        .collect();
    let new: Vec<String> = trellis_crds::validate(&after)
        .to_lines()
        .into_iter()
        .filter(|e| !known.contains(e))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    for e in &new {
        out!("{e}");
    }
    eprintln!("{} error(s); nothing applied", new.len());
    Err(ExitCode::FAILURE)
}
