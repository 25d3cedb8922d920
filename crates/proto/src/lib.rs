//! The generated types of the `leads.v1` protobuf package: messages, gRPC clients and servers.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("leads.v1");
}

/// Encoded `FileDescriptorSet` of `leads.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/leads_descriptor.bin"));
