#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The guide in docs/ is not part of the crate's documentation, but its Rust examples are
// compiled and run as doctests, as the README's are: one module per page with examples.
#[cfg(doctest)]
#[doc = include_str!("../docs/model.md")]
mod guide_model {}

#[cfg(doctest)]
#[doc = include_str!("../docs/testing.md")]
mod guide_testing {}

#[cfg(doctest)]
#[doc = include_str!("../docs/events.md")]
mod guide_events {}

#[cfg(doctest)]
#[doc = include_str!("../docs/state.md")]
mod guide_state {}

pub use cairn_sdk::*;

pub mod cli;
pub mod config;

pub use cli::{run_cli, Cli, CliError, VerbContext};

pub mod serve;

mod watch;

/// Stack state: the model, stores and journal (the `cairn-state` crate).
pub mod state {
    pub use cairn_state::*;
}
