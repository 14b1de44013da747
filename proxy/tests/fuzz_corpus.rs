//! Every input in the fuzz targets' corpora (`fuzz/corpus/<target>/`),
//! run through the same checks the fuzzers run: the inputs that once
//! found a bug, and the seeds, stay regression tests on the stable
//! toolchain.

use std::path::Path;

use trellis_proxy::fuzzing::TARGETS;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, check) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no corpus");
        for input in inputs {
            let data = std::fs::read(&input).expect("readable");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", input.display());
        }
    }
}
