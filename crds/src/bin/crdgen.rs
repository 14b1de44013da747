//! Writes the CRD manifests to `crds/manifests/` and the Helm chart's
//! `charts/trellis/crds/`. Run: `cargo run -p trellis-crds --features kube --bin crdgen`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets = [root.join("manifests"), root.join("../charts/trellis/crds")];
    for (file, yaml) in trellis_crds::crd::manifests() {
        for dir in &targets {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(&file), &yaml)?;
            println!("wrote {}", dir.join(&file).display());
        }
    }
    Ok(())
}
