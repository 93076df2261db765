//! Auto Scaling: groups of instances launched from a launch template.

pub mod group;

pub use group::{Group, GroupRef, GROUP};

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    kinds.insert(GROUP.token, &group::GroupKind);
}
