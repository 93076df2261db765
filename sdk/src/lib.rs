//! Cairn's engine: resource model, typed outputs, graph, diff, plans and parallel apply.
//!
//! A program declares resources into a [`Cx`] from the user's state `S`; the engine
//! validates the [`Graph`], diffs it against the stored state into a [`Plan`], and
//! applies the plan through [`Provider`]s, each step as soon as its dependencies are
//! done. See the `cairn` crate for the guide.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod apply;
pub mod cx;
pub mod declare;
pub mod error;
pub mod events;
pub mod graph;
pub mod input;
mod panic;
pub mod plan;
pub mod provider;
pub mod recover;
pub mod reference;
pub mod refresh;
pub mod resource;
pub mod schema;
pub mod secret;
pub mod session;
pub mod stack;
pub mod testing;

pub use apply::{ApplyOptions, ApplyReport, Progress, StepReport, StepStatus};
pub use cairn_state::{Props, ResourceState, StackState, StepOp, Urn};
pub use cx::Cx;
pub use error::{Error, Result, ValidationError, ValidationErrors};
pub use graph::Graph;
pub use input::{all, Apply, Input, Output, OutputRef, Part, Prop, Tags};
pub use plan::{Action, Change, Plan, RenderOptions, Summary};
pub use provider::{ErrorKind, Observed, Planned, PropertyDiff, Provider, ProviderError, ProviderOp, Providers};
pub use recover::Recovery;
pub use reference::StackReference;
pub use refresh::{Drift, RefreshReport};
pub use session::Session;
pub use resource::{Decl, DynamicResource, Handle, Resource, ResourceExt, ResourceOptions, Timeouts};
pub use schema::{CheckFailure, Property, PropertyKind, ResourceType};
pub use secret::{Keyring, Secret};
pub use stack::{BoxError, ProgramResult, Stack, Standby, STANDBY_STORE_ERRORS_FOR};

/// The attribute for implementing the crate's async traits ([`Provider`],
/// [`events::Source`]): `#[cairn_sdk::async_trait]`, so a user needs no `async-trait`
/// dependency of their own.
pub use async_trait::async_trait;
