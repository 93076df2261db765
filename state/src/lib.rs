//! Cairn's stack state: what the engine knows about the resources it manages, and
//! where that knowledge is kept so nothing is ever lost or done twice.
//!
//! - The model: [`StackState`], [`ResourceState`], the compact [`Props`] map and the
//!   [`Urn`] that names every resource.
//! - The journal: [`JournalRecord`]s appended as each apply step begins and ends, so a
//!   crash leaves [`PendingOperation`]s to resolve instead of lost knowledge.
//! - Stores: [`FileStore`] (the default, `.cairn/<stack>/`), [`MemoryStore`], and with
//!   the `s3` feature `S3Store`; [`open`] picks one from a location string.
//!
//! This crate depends on no cloud SDK by default, so the engine builds in seconds.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod error;
mod file;
mod journal;
mod lease;
mod location;
mod memory;
mod model;
mod props;
#[cfg(feature = "s3")]
mod s3;
mod store;
mod urn;

pub use error::{LockedError, StateError};
pub use file::FileStore;
pub use journal::{already_durable, apply_effect, replay, Durable, Journal, JournalRecord, NoJournal, StepOp, PendingOperation, StepEffect};
pub use lease::{lease_from_env, Lease, Lock, DEFAULT_LEASE, LEASE_ENV};
pub use location::{location, open, DEFAULT_LOCATION, STATE_ENV};
pub use memory::MemoryStore;
pub use model::{ResourceState, StackState, StoredOptions, FORMAT_VERSION, PROCESSED_EVENTS_KEPT};
pub use props::Props;
#[cfg(feature = "s3")]
pub use s3::S3Store;
pub use store::{check_stack_name, format_utc, unlock_stale, LockInfo, Store};
pub use urn::{Urn, UrnError};
