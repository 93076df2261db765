use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Props, Urn};

/// The state format this build writes. A state with a higher version was written by a
/// newer Cairn and is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// Everything Cairn knows about one stack: its resources and the user's state `S`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackState {
    /// The state format version ([`FORMAT_VERSION`] when written by this build).
    pub version: u32,
    /// The stack's name.
    pub stack: String,
    /// A random identifier given when the stack is first written. It never changes, so a
    /// plan or a backup can be checked to belong to this very stack.
    pub lineage: String,
    /// Incremented on every write; a saved plan records it and is refused once it moved.
    pub serial: u64,
    /// The user's state `S`, as JSON. `null` before the first `up`.
    pub user_state: Value,
    /// The managed resources, dependencies before dependents.
    pub resources: Vec<ResourceState>,
}

/// One managed resource as last seen by the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// The resource's identity.
    pub urn: Urn,
    /// The type token, e.g. `aws:ec2:Vpc`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The identifier the cloud gave it (`vpc-0abc...`, a queue URL, ...).
    pub id: String,
    /// The inputs it was created or last updated with, all values known.
    pub inputs: Props,
    /// What the provider returned: computed values such as ids and ARNs.
    pub outputs: Props,
    /// The resources it depended on when last applied. Deletes use these, in reverse,
    /// because a removed resource is no longer in the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Urn>,
    /// The options that matter once the resource is gone from the program.
    #[serde(default, skip_serializing_if = "StoredOptions::is_default")]
    pub options: StoredOptions,
    /// An old copy left behind by a create-before-delete replacement whose delete has
    /// not happened yet. The next apply deletes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_delete: bool,
}

/// Resource options recorded in state because they still apply after the resource has
/// left the program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// Refuse to delete or replace the resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect: bool,
    /// On delete, forget the resource instead of deleting it in the cloud.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
}

impl StoredOptions {
    fn is_default(&self) -> bool {
        *self == StoredOptions::default()
    }
}

impl StackState {
    /// The state of a stack that has never been deployed.
    pub fn new(stack: impl Into<String>) -> Self {
        StackState {
            version: FORMAT_VERSION,
            stack: stack.into(),
            lineage: new_lineage(),
            serial: 0,
            user_state: Value::Null,
            resources: Vec::new(),
        }
    }

    /// A copy of the stack's identity and user state, with no resources: the start of
    /// the next state.
    pub fn clone_without_resources(&self) -> Self {
        StackState {
            version: self.version,
            stack: self.stack.clone(),
            lineage: self.lineage.clone(),
            serial: self.serial,
            user_state: self.user_state.clone(),
            resources: Vec::new(),
        }
    }

    /// The live (not pending-delete) resource with this URN.
    pub fn resource(&self, urn: &Urn) -> Option<&ResourceState> {
        self.resources.iter().find(|r| &r.urn == urn && !r.pending_delete)
    }
}

/// A lineage id: unique enough to tell two stacks apart, with no random-number crate.
fn new_lineage() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // RandomState is seeded from the OS's randomness once per process.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{:016x}{:016x}", a, h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineages_differ_between_stacks() {
        assert_ne!(StackState::new("a").lineage, StackState::new("a").lineage);
    }

    #[test]
    fn round_trips_through_json_without_default_noise() {
        let mut s = StackState::new("dev");
        s.resources.push(ResourceState {
            urn: Urn::new("dev", "test:Thing", "a"),
            ty: "test:Thing".into(),
            id: "a-1".into(),
            inputs: Props::new(),
            outputs: Props::new(),
            dependencies: vec![],
            options: StoredOptions::default(),
            pending_delete: false,
        });
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("pending_delete") && !text.contains("options"));
        assert_eq!(serde_json::from_str::<StackState>(&text).unwrap(), s);
    }
}
