//! What the store tests share.

pub mod killed_writer;
