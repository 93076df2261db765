//! Cairn's stack state: what the engine knows about the resources it manages.
//!
//! This crate is the lowest layer of Cairn. It holds the state model
//! ([`StackState`], [`ResourceState`]), the compact property map ([`Props`]) and
//! the [`Urn`] that names every resource. It depends on no cloud SDK, so the engine
//! and its tests build in seconds.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod model;
mod props;
mod urn;

pub use model::{ResourceState, StackState, StoredOptions, FORMAT_VERSION};
pub use props::Props;
pub use urn::{Urn, UrnError};
