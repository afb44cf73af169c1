pub mod cluster;
pub mod kv;
pub mod node;
pub mod vm;
