//! Compiles `proto/cluster.proto` into the crate (tonic and prost code, with a vendored protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_prost_build::configure().compile_protos(&["proto/cluster.proto"], &["proto"])?;
    Ok(())
}
