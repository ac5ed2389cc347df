//! Compiles `proto/` into Rust with tonic-prost-build and writes a descriptor
//! set that the server hands to tonic-reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // A protoc shipped inside a crate, so that a fresh machine needs nothing
    // installed; an explicit PROTOC in the environment still wins.
    if env::var_os("PROTOC").is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = ["proto/tollgate/v1/authorizer.proto", "proto/tollgate/v1/admin.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
