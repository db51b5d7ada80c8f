//! EnGarde agent platform: the gRPC contracts both services speak, and (behind the `kit`
//! feature) the plumbing they share.

/// The generated protobuf messages, gRPC clients and servers, one module per package.
#[allow(clippy::all)] // generated code
pub mod proto {
    pub mod workflow {
        pub mod v1 {
            tonic::include_proto!("engarde.workflow.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("engarde.agent.v1");
        }
    }
    /// The encoded file descriptor set of every contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("engarde_descriptor");
}

pub mod codec;

#[cfg(feature = "kit")]
pub mod kit;

#[cfg(feature = "schedule")]
pub mod schedule;
