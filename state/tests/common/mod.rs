//! What the store tests share.

pub mod killed_writer;
#[allow(dead_code)]
pub mod leases;
