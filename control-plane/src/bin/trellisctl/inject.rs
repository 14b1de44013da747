//! `trellisctl inject -f FILE`: the sidecar added offline, by the function
//! the webhook runs ([`trellis_control_plane::inject::patch`]), to every
//! Pod and pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! Job, CronJob, and the items of a List) of multi-document YAML files
//! (`-` is stdin); other documents pass through. The result goes to stdout.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::Value;
use trellis_control_plane::inject::{apply, patch, InjectSettings, Injection, SidecarForm};

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Files to read (`-`: stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The cluster's Kubernetes version (MAJOR.MINOR): from 1.29 the
    /// sidecar is a native one, as the webhook decides by the apiserver's.
    #[arg(long, default_value = "1.29", value_parser = parse_version)]
    kubernetes_version: (u32, u32),
    #[command(flatten)]
    settings: InjectSettings,
}

fn parse_version(s: &str) -> Result<(u32, u32), String> {
    let (major, minor) = s
        .trim_start_matches('v')
        .split_once('.')
        .ok_or_else(|| format!("{s:?} is not MAJOR.MINOR"))?;
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("{s:?} is not MAJOR.MINOR"))
    };
    Ok((
        number(major)?,
        number(minor.split('.').next().unwrap_or(""))?,
    ))
}

pub fn run(args: &InjectArgs) -> ExitCode {
    let form = SidecarForm::for_version(args.kubernetes_version.0, args.kubernetes_version.1);
    let mut out = Vec::new();
    for file in &args.files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("error: stdin: {e}");
                return ExitCode::FAILURE;
            }
            text
        } else {
            match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            }
        };
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value = match Value::deserialize(document) {
                Ok(Value::Null) => continue,
                Ok(value) => value,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = inject_object(&mut value, &args.settings, form) {
                eprintln!("error: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            out.push(value);
        }
    }
    for (i, value) in out.iter().enumerate() {
        match serde_yaml::to_string(value) {
            Ok(yaml) => {
                if i > 0 {
                    out!("---");
                }
                out!("{}", yaml.trim_end());
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Injects into `object`'s pods (itself, its template, or a List's items).
fn inject_object(
    object: &mut Value,
    settings: &InjectSettings,
    form: SidecarForm,
) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let pointer = match kind.as_str() {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        "List" => {
            if let Some(items) = object["items"].as_array_mut() {
                for item in items {
                    inject_object(item, settings, form)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let Some(pod) = object.pointer_mut(pointer) else {
        return Err(format!("{kind}/{name}: no {pointer}"));
    };
    match patch(pod, settings, form).map_err(|e| format!("{kind}/{name}: {e}"))? {
        Injection::Patch(ops) => apply(pod, &ops).map_err(|e| format!("{kind}/{name}: {e}")),
        Injection::Skipped(_) => Ok(()),
    }
}
