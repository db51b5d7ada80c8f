//! EnGarde agent platform: the gRPC contracts both services speak, and (behind the `kit`
//! feature) the plumbing they share.

/// The generated protobuf messages, gRPC clients and servers, one module per package.
#[allow(clippy::all)] // generated code
pub mod proto {
    pub mod workflow {
        pub mod v1 {
            tonic::include_proto!("engarde.workflow.v1");
            include!(concat!(env!("OUT_DIR"), "/engarde.workflow.v1.text.rs"));
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("engarde.agent.v1");
            include!(concat!(env!("OUT_DIR"), "/engarde.agent.v1.text.rs"));
        }
    }
    /// The encoded file descriptor set of every contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("engarde_descriptor");
    /// The same set without its comments (source info), for what keeps descriptors in memory
    /// and shows no comments: the HTTP/JSON transcoder.
    #[cfg(feature = "kit")]
    pub const FILE_DESCRIPTOR_SET_LEAN: &[u8] = tonic::include_file_descriptor_set!("engarde_descriptor_lean");
}

pub mod codec;
pub mod text;

#[cfg(feature = "flow-export")]
pub mod flow_export;

#[cfg(feature = "kit")]
pub mod kit;

#[cfg(feature = "schedule")]
pub mod schedule;
