//! The wire: gRPC services that turn requests into domain calls and answers
//! back into each protocol's shape.
//!
//! - [`authorizer`]: `tollgate.v1.Authorizer` (native).
//! - [`status`]: the one mapping of errors to gRPC statuses.

pub mod authorizer;
pub mod status;

/// Code generated from `proto/tollgate/v1/*.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tollgate.v1");

    /// The descriptor set for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}
