//! Compiles `leads.v1` with protox, a pure-Rust protobuf compiler, so that no system
//! `protoc` is needed, and writes the encoded descriptor set for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

/// The `.proto` sources live at the top of the workspace, apart from this generated crate.
const PROTO_ROOT: &str = "../../proto";

const PROTOS: &[&str] = &[
    "leads/v1/common.proto",
    "leads/v1/ingest.proto",
    "leads/v1/lead.proto",
    "leads/v1/qualification.proto",
    "leads/v1/assignment.proto",
    "leads/v1/followup.proto",
    "leads/v1/broadcast.proto",
    "leads/v1/people.proto",
    "leads/v1/notifications.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{proto}");
    }
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("leads_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
