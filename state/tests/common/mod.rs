//! What the store tests share.

#[allow(dead_code)]
pub mod killed_writer;
#[allow(dead_code)]
pub mod leases;
