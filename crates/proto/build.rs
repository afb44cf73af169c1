fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure()
        .compile_protos(&["proto/blixard/v1/api.proto", "proto/blixard/v1/raft.proto"], &["proto"])?;
    Ok(())
}
