//! `trellisctl pki init --dir DIR`: the secrets a secured control plane
//! starts from. A new root CA (`ca.pem`, `ca-key.pem`) that every replica is
//! given (`--ca-cert`, `--ca-key`) and every client trusts
//! (`--trust-bundle`), and operator tokens (`operator-tokens` for the
//! replicas' `--operator-tokens`; `admin.token` may write, `reader.token`
//! may only read). Secret files are created mode 0600; existing files are
//! never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ring::rand::SecureRandom;
use trellis_control_plane::ca::generate_root;

#[derive(clap::Args, Debug)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PkiCommand {
    /// Write a new root CA and operator tokens into --dir.
    Init {
        /// Where to write (created when missing).
        #[arg(long)]
        dir: PathBuf,
        /// The mesh's SPIFFE trust domain (named in the root's subject).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Secrets {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub operator_tokens: PathBuf,
    pub admin_token: PathBuf,
    pub reader_token: PathBuf,
}

pub fn run(args: &PkiArgs) -> ExitCode {
    let PkiCommand::Init { dir, trust_domain } = &args.command;
    match init(dir, trust_domain) {
        Ok(s) => {
            out!(
                "wrote {} and {} (mode 0600)",
                s.ca_cert.display(),
                s.ca_key.display()
            );
            out!(
                "wrote {} (for --operator-tokens), {} (write) and {} (read)",
                s.operator_tokens.display(),
                s.admin_token.display(),
                s.reader_token.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a new root and operator tokens into `dir`.
pub fn init(dir: &Path, trust_domain: &str) -> Result<Secrets, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s = Secrets {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        operator_tokens: dir.join("operator-tokens"),
        admin_token: dir.join("admin.token"),
        reader_token: dir.join("reader.token"),
    };
    for path in [
        &s.ca_cert,
        &s.ca_key,
        &s.operator_tokens,
        &s.admin_token,
        &s.reader_token,
    ] {
        if path.exists() {
            return Err(format!("{} exists; not overwriting it", path.display()));
        }
    }
    let root = generate_root(trust_domain).map_err(|e| format!("root CA: {e}"))?;
    let (admin, reader) = (token()?, token()?);
    write(&s.ca_cert, &root.cert_pem, 0o644)?;
    write(&s.ca_key, &root.key_pem, 0o600)?;
    write(
        &s.operator_tokens,
        &format!("# token role\n{admin} write\n{reader} read\n"),
        0o600,
    )?;
    write(&s.admin_token, &format!("{admin}\n"), 0o600)?;
    write(&s.reader_token, &format!("{reader}\n"), 0o600)?;
    Ok(s)
}

/// 32 random hex digits.
fn token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}
