//! Compiles `proto/` with protox (no system protoc needed) and generates the
//! prost messages and tonic clients/servers, plus the descriptor set that the
//! services serve through reflection.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "colend/common/v1/common.proto",
        "colend/acquisition/v1/acquisition_service.proto",
        "colend/kyc/v1/kyc_service.proto",
        "colend/credit/v1/credit_service.proto",
        "colend/funding/v1/funding_service.proto",
        "colend/reconciliation/v1/reconciliation_service.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("colend_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
