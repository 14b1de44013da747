//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/trellis/v1/config.proto",
        "proto/trellis/v1/discovery.proto",
        "proto/trellis/v1/control.proto",
        "proto/trellis/v1/identity.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps encode in key order, so equal configs encode to equal bytes
        // (proxies hash what they run).
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
