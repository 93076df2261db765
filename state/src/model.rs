use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{PendingOperation, Props, Urn};

/// The state format this build writes. A state with a higher version was written by a
/// newer Cairn and is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// Everything Cairn knows about one stack: its resources and the user's state `S`.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    #[serde(deserialize_with = "read_resources")]
    pub resources: Vec<ResourceState>,
    /// Steps that began but never recorded their end (the process died). The next
    /// operation resolves them before planning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingOperation>,
    /// Ids of the most recent events processed, oldest first, at most
    /// [`PROCESSED_EVENTS_KEPT`]: a redelivered event is recognised and skipped.
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub processed_events: std::collections::VecDeque<String>,
    /// The stack's outputs, by name: the values the program exports
    /// (`cx.export("queue_url", queue.url())`) as of the last apply, for `outputs` and
    /// for other stacks' references.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: std::collections::BTreeMap<String, Value>,
    /// Set when loading replayed an apply's journal records onto the snapshot (the
    /// apply's commit was lost): the store's snapshot is behind this state, and opening
    /// the stack for changes writes it anew, with a new serial, before anything else.
    /// Event records alone leave it unset: they carry serials of their own. Never stored, and not part of
    /// equality: it says where the state was read from, not what it is.
    #[serde(skip)]
    pub replayed: bool,
}

impl PartialEq for StackState {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so a new field cannot be forgotten here.
        let StackState { version, stack, lineage, serial, user_state, resources, pending, processed_events, outputs, replayed: _ } = self;
        *version == other.version
            && *stack == other.stack
            && *lineage == other.lineage
            && *serial == other.serial
            && *user_state == other.user_state
            && *resources == other.resources
            && *pending == other.pending
            && *processed_events == other.processed_events
            && *outputs == other.outputs
    }
}

/// Reads the resources with the URNs they repeat shared, and no spare capacity: a
/// stack's resources are most of its memory.
fn read_resources<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ResourceState>, D::Error> {
    let mut resources: Vec<ResourceState> = crate::urn::sharing_urns(|| Vec::deserialize(d))?;
    resources.shrink_to_fit();
    Ok(resources)
}

/// How many processed event ids a stack remembers.
pub const PROCESSED_EVENTS_KEPT: usize = 10_000;

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
    /// The resource's custom delete timeout, in milliseconds: a delete after the program
    /// stopped declaring it (or `destroy`) is bounded by it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_timeout_ms: Option<u64>,
    /// The component the resource belongs to, so a plan that deletes it shows it in
    /// its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Urn>,
}

impl StoredOptions {
    /// Whether no option is set.
    pub fn is_default(&self) -> bool {
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
            pending: Vec::new(),
            processed_events: Default::default(),
            outputs: Default::default(),
            replayed: false,
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
            pending: self.pending.clone(),
            processed_events: self.processed_events.clone(),
            outputs: self.outputs.clone(),
            replayed: false,
        }
    }

    /// Whether event `id` was processed recently.
    pub fn was_processed(&self, id: &str) -> bool {
        self.processed_events.iter().any(|e| e == id)
    }

    /// Remembers event `id` as processed, forgetting the oldest beyond the bound.
    pub fn remember_event(&mut self, id: impl Into<String>) {
        self.processed_events.push_back(id.into());
        while self.processed_events.len() > PROCESSED_EVENTS_KEPT {
            self.processed_events.pop_front();
        }
    }

    /// Orders the resources so each follows the ones it depends on, otherwise keeping
    /// their order. A resource and its old copies stay together.
    pub fn sort_resources(&mut self) {
        self.resources = sort_by_dependencies(std::mem::take(&mut self.resources));
    }

    /// The live (not pending-delete) resource with this URN.
    pub fn resource(&self, urn: &Urn) -> Option<&ResourceState> {
        self.resources.iter().find(|r| &r.urn == urn && !r.pending_delete)
    }
}

/// Entries ordered so each comes after the entries it depends on, otherwise in the
/// order given. Entries sharing a URN (a resource and its old copies) stay together.
fn sort_by_dependencies(entries: Vec<ResourceState>) -> Vec<ResourceState> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use rustc_hash::FxHashMap as HashMap;

    let n = entries.len();
    // Each entry's group: the position of the first entry with its URN.
    let mut first_of: HashMap<&Urn, usize> = HashMap::with_capacity_and_hasher(n, Default::default());
    let group: Vec<usize> = entries.iter().enumerate().map(|(i, e)| *first_of.entry(&e.urn).or_insert(i)).collect();
    // The usual case: an apply writes the entries in its plan's order, which already is
    // one. Then each group is contiguous and each dependency's group comes first.
    let in_order = entries.iter().enumerate().all(|(i, e)| {
        let g = group[i];
        (g == i || group[i - 1] == g) && e.dependencies.iter().all(|d| first_of.get(d).is_none_or(|&dg| dg <= g))
    });
    if in_order {
        return entries;
    }
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (e, &g) in entries.iter().zip(&group) {
        for d in &e.dependencies {
            if let Some(&dg) = first_of.get(d) {
                if dg != g {
                    dependents[dg].push(g);
                    indegree[g] += 1;
                }
            }
        }
    }
    let is_head = |i: usize| group[i] == i;
    let mut heap: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| is_head(i) && indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(Reverse(g)) = heap.pop() {
        placed[g] = true;
        order.push(g);
        for &d in &dependents[g] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                heap.push(Reverse(d));
            }
        }
    }
    // A loop in recorded dependencies should not happen; keep the rest as they were.
    order.extend((0..n).filter(|&i| is_head(i) && !placed[i]));
    let mut members: Vec<Vec<ResourceState>> = (0..n).map(|_| Vec::new()).collect();
    for (e, g) in entries.into_iter().zip(group) {
        members[g].push(e);
    }
    order.into_iter().flat_map(|g| std::mem::take(&mut members[g])).collect()
}

/// A lineage id: unique enough to tell two stacks apart, with no random-number crate.
pub(crate) fn new_lineage() -> String {
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

    fn entry(name: &str, deps: &[&str], pending_delete: bool) -> ResourceState {
        ResourceState {
            urn: Urn::new("dev", "test:Thing", name),
            ty: "test:Thing".into(),
            id: format!("{name}-{}", u8::from(pending_delete)),
            inputs: Props::new(),
            outputs: Props::new(),
            dependencies: deps.iter().map(|d| Urn::new("dev", "test:Thing", d)).collect(),
            options: StoredOptions::default(),
            pending_delete,
        }
    }

    fn order(s: &StackState) -> Vec<String> {
        s.resources.iter().map(|r| r.id.clone()).collect()
    }

    #[test]
    fn resources_already_in_dependency_order_keep_it() {
        let mut s = StackState::new("dev");
        s.resources = vec![entry("b", &[], false), entry("a", &["b"], false), entry("a", &["b"], true), entry("c", &[], false)];
        s.sort_resources();
        assert_eq!(order(&s), ["b-0", "a-0", "a-1", "c-0"]);
    }

    #[test]
    fn dependents_move_after_their_dependencies_with_their_old_copies() {
        let mut s = StackState::new("dev");
        // `a` depends on `b` but comes first, and its old copy is apart from it.
        s.resources = vec![entry("a", &["b"], false), entry("c", &[], false), entry("a", &["b"], true), entry("b", &[], false)];
        s.sort_resources();
        assert_eq!(order(&s), ["c-0", "b-0", "a-0", "a-1"]);
    }

    #[test]
    fn a_read_state_shares_each_resources_urn_with_its_dependents() {
        let mut s = StackState::new("dev");
        s.resources = vec![entry("b", &[], false), entry("a", &["b"], false)];
        let read: StackState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(read, s);
        assert_eq!(read.resources[0].urn.as_str().as_ptr(), read.resources[1].dependencies[0].as_str().as_ptr());
        assert_eq!(read.resources.capacity(), 2, "no spare capacity");
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
