pub mod backup;
pub mod cluster;
pub mod image;
pub mod kv;
pub mod node;
pub mod vm;
