//! Generates the `blixard.v1` code three times over: for the simulator (madsim's generator
//! writes `OUT_DIR/sim`, and as a side effect the real code too), then the real messages and
//! clients with tonic's codec, then the real servers alone (`OUT_DIR/servers`, referring to
//! those messages) with [`RequestCodec`](src/codec.rs), which answers a request that does not
//! decode `InvalidArgument`. tonic-build has one codec for clients and servers alike; the
//! clients keep tonic's.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protos = ["proto/blixard/v1/api.proto", "proto/blixard/v1/raft.proto"];
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_protos(&protos, &["proto"])?;
    let servers = PathBuf::from(std::env::var("OUT_DIR")?).join("servers");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .extern_path(".blixard.v1", "crate::v1")
        .out_dir(&servers)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
