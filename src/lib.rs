#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use cairn_sdk::*;

pub mod cli;

pub use cli::{run_cli, Cli};

pub mod serve;

/// Stack state: the model, stores and journal (the `cairn-state` crate).
pub mod state {
    pub use cairn_state::*;
}
