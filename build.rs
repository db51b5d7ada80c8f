//! Compiles the protobuf contracts with protox (pure Rust: no `protoc` needed) and writes the
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &["engarde/workflow/v1/workflow_service.proto", "engarde/agent/v1/agent_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protos: Vec<&str> = PROTOS.iter().copied().filter(|p| std::path::Path::new("proto").join(p).exists()).collect();
    let fds = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself: reflection needs it, so write it here.
    std::fs::write(out.join("engarde_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Maps as BTreeMap: encoding is then deterministic, so the fingerprint of a request (the hash
    // of its encoding, for idempotency keys) is the same every time the same request is sent.
    // Our codec (src/codec.rs): a request that does not decode is INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure().btree_map(".").codec_path("crate::codec::ProstCodec").compile_fds(fds)?;
    Ok(())
}
