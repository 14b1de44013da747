//! `trellisctl validate -f FILE...`: exit 0 when every file is valid, 1 when
//! not (every error printed), 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rule files (multi-document YAML); a directory means its *.yaml / *.yml files.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

pub fn run(args: &Args) -> ExitCode {
    let files = match expand(&args.files) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match trellis_crds::load_and_validate(&files) {
        Ok(rules) => {
            out!(
                "{} valid: {} VirtualService, {} DestinationRule, {} ServiceEntry",
                files.len(),
                rules.virtual_services.len(),
                rules.destination_rules.len(),
                rules.service_entries.len()
            );
            for skipped in &rules.skipped {
                out!("skipped (not a mesh rule): {skipped}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors.iter() {
                out!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Files as given; directories expanded to their YAML files, sorted.
pub fn expand(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            // Unreadable is a usage error (exit 2), not an invalid rule.
            std::fs::File::open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            files.push(path.clone());
        }
    }
    Ok(files)
}
