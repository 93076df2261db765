use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Props, ResourceState, StateError, StoredOptions, Urn};

/// What one step of an apply does to a resource: in the apply's report, and in the
/// journal while the step is pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    /// Creates it.
    Create,
    /// Creates the replacement of an existing resource.
    CreateReplacement,
    /// Updates it in place.
    Update,
    /// Deletes the old copy of a replaced resource.
    DeleteReplaced,
    /// Deletes it.
    Delete,
}

/// A step that began and never recorded its end: the process died during it, and the
/// cloud may or may not have done it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingOperation {
    /// What the step was doing.
    pub kind: StepOp,
    /// The resource (its type is part of the URN).
    pub urn: Urn,
    /// Its cloud id, for steps on an existing resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For a create: what it depends on, so an adopted resource is deleted in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Urn>,
    /// For a create: its options, so an adopted resource stays protected or retained.
    #[serde(default, skip_serializing_if = "StoredOptions::is_default")]
    pub options: StoredOptions,
    /// For a create: the inputs it was sent with. An adopted resource is read back with
    /// them, so that inputs the cloud does not report are kept, not taken for drift.
    #[serde(default, skip_serializing_if = "Props::is_empty")]
    pub inputs: Props,
}

/// How a step ended, as far as state is concerned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum StepEffect {
    /// The resource now exists as given (created or updated).
    Upsert {
        /// The resource.
        resource: ResourceState,
    },
    /// A replacement exists as given; the previous copy becomes an old copy to delete.
    Replaced {
        /// The new resource.
        resource: ResourceState,
    },
    /// A create finished: the resource is what its begin record says (URN,
    /// dependencies, options, the inputs it was sent) with this id and these outputs.
    /// Written in place of `Upsert` or `Replaced` after a create, so the journal does not
    /// repeat the begin record.
    Created {
        /// Its id.
        id: String,
        /// Its outputs.
        outputs: Props,
        /// It replaces the previous copy, which becomes an old copy to delete.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replaced: bool,
    },
    /// The resource with this id is gone (deleted or forgotten).
    Removed {
        /// The resource.
        urn: Urn,
        /// Its id.
        id: String,
    },
    /// The step failed or changed nothing.
    Nothing,
}

/// One line of a stack's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "record")]
pub enum JournalRecord {
    /// The user state `S` an operation is converging to; written before its first step.
    UserState {
        /// The snapshot serial the record applies to.
        base: u64,
        /// The value.
        value: serde_json::Value,
    },
    /// Events were handled: the user state they produced and their ids, recorded before
    /// any of them is acknowledged. Unlike the other records it is a version of its own:
    /// replaying it moves the state to serial `base + 1`, so a saved plan made before it
    /// is refused, and the records after it carry the new serial.
    Events {
        /// The snapshot serial the record applies to.
        base: u64,
        /// The user state after the events.
        user_state: serde_json::Value,
        /// Their ids, remembered so a redelivery is skipped.
        ids: Vec<String>,
    },
    /// A step is about to call the provider.
    Begin {
        /// The snapshot serial the record applies to.
        base: u64,
        /// Identifies the step within the journal: operation and step number.
        step: (u64, u32),
        /// What is pending until the matching end.
        op: PendingOperation,
    },
    /// A step finished.
    End {
        /// The snapshot serial the record applies to.
        base: u64,
        /// The step, as in its begin record.
        step: (u64, u32),
        /// What changed.
        effect: StepEffect,
    },
}

impl StepEffect {
    /// The effect as a journal records it after `begun`: a create's resource as
    /// [`StepEffect::Created`] when the begin record holds the rest of it. Only what the
    /// record holds is copied.
    pub fn after(&self, begun: &PendingOperation) -> StepEffect {
        let creates = matches!(begun.kind, StepOp::Create | StepOp::CreateReplacement);
        match self {
            StepEffect::Upsert { resource } | StepEffect::Replaced { resource } if creates && begun.describes(resource) => {
                let replaced = begun.kind == StepOp::CreateReplacement;
                StepEffect::Created { id: resource.id.clone(), outputs: resource.outputs.clone(), replaced }
            }
            other => other.clone(),
        }
    }
}

impl PendingOperation {
    /// Whether `resource` is this operation's resource, all but its id and outputs.
    fn describes(&self, r: &ResourceState) -> bool {
        r.urn == self.urn
            && r.ty == self.urn.ty()
            && r.inputs == self.inputs
            && r.dependencies == self.dependencies
            && r.options == self.options
            && !r.pending_delete
    }

    /// The resource a finished create of this operation made.
    fn created(&self, id: String, outputs: Props) -> ResourceState {
        ResourceState {
            urn: self.urn.clone(),
            ty: self.urn.ty().to_owned(),
            id,
            inputs: self.inputs.clone(),
            outputs,
            dependencies: self.dependencies.clone(),
            options: self.options.clone(),
            pending_delete: false,
        }
    }
}

impl JournalRecord {
    /// The snapshot serial the record applies to.
    pub fn base(&self) -> u64 {
        match self {
            JournalRecord::UserState { base, .. }
            | JournalRecord::Events { base, .. }
            | JournalRecord::Begin { base, .. }
            | JournalRecord::End { base, .. } => *base,
        }
    }
}

/// When a staged record is durable: resolves once it is (written with a later record,
/// or by [`Journal::flush`]), or with why it never will be.
pub type Durable = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send>>;

/// A [`Durable`] for a record that already is.
pub fn already_durable() -> Durable {
    Box::pin(std::future::ready(Ok(())))
}

/// Where an apply records its steps. A record is durable when `record` returns.
#[async_trait]
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Appends a record durably.
    async fn record(&self, record: JournalRecord) -> Result<(), StateError>;

    /// Appends a record that becomes durable together with the next one written (one
    /// sync for both), or at [`Journal::flush`]. Nothing that relies on it may be
    /// acknowledged before the returned [`Durable`] resolves; records written after it
    /// are durable only with it, so a journal whose staged record fails takes no more.
    /// The default writes it at once.
    async fn stage(&self, record: JournalRecord) -> Result<Durable, StateError> {
        self.record(record).await?;
        Ok(already_durable())
    }

    /// Makes every staged record durable; returns at once when none waits.
    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// A journal that keeps nothing: for in-memory stacks and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJournal;

#[async_trait]
impl Journal for NoJournal {
    async fn record(&self, _record: JournalRecord) -> Result<(), StateError> {
        Ok(())
    }
}

/// Applies journal records, in order, to the snapshot they were written against.
/// Records for another serial (left by a compaction that crashed before truncating the
/// journal) are skipped. An [`JournalRecord::Events`] record advances the serial.
/// Begins without an end become pending operations. A step's begin or end found twice
/// counts once. Applying a record of an apply (user state, begin, end) sets
/// [`StackState::replayed`](crate::StackState::replayed): that apply's commit was lost,
/// and its records sit at the serial it started from. Event records alone do not: each
/// moved the serial on as it was written, so the state they give is the one the writing
/// session had.
pub fn replay(state: &mut crate::StackState, records: impl IntoIterator<Item = JournalRecord>) {
    let mut open: Vec<((u64, u32), PendingOperation)> = Vec::new();
    // A record written twice (a write the SDK sent again, taken by the store as a second
    // record) counts once: a step begins once and ends once.
    let mut ended: rustc_hash::FxHashSet<(u64, u32)> = rustc_hash::FxHashSet::default();
    for record in records {
        if record.base() != state.serial {
            continue;
        }
        state.replayed |= !matches!(record, JournalRecord::Events { .. });
        match record {
            JournalRecord::UserState { value, .. } => state.user_state = value,
            JournalRecord::Events { user_state, ids, .. } => {
                state.user_state = user_state;
                for id in ids {
                    state.remember_event(id);
                }
                state.serial += 1;
            }
            JournalRecord::Begin { step, op, .. } => {
                if !ended.contains(&step) && !open.iter().any(|(s, _)| *s == step) {
                    open.push((step, op));
                }
            }
            JournalRecord::End { step, effect, .. } => {
                if !ended.insert(step) {
                    continue;
                }
                let begun = open.iter().position(|(s, _)| *s == step).map(|i| open.remove(i).1);
                let effect = match (effect, begun) {
                    (StepEffect::Created { id, outputs, replaced }, Some(op)) => {
                        let resource = op.created(id, outputs);
                        if replaced {
                            StepEffect::Replaced { resource }
                        } else {
                            StepEffect::Upsert { resource }
                        }
                    }
                    // Its begin record is lost: nothing to rebuild it from. The next
                    // look-up of the stack's resources finds it (its cloud tags).
                    (StepEffect::Created { .. }, None) => StepEffect::Nothing,
                    (effect, _) => effect,
                };
                apply_effect(state, effect);
            }
        }
    }
    state.pending.extend(open.into_iter().map(|(_, op)| op));
}

/// Changes `state` as a finished step did.
pub fn apply_effect(state: &mut crate::StackState, effect: StepEffect) {
    match effect {
        StepEffect::Upsert { resource } => {
            match state.resources.iter_mut().find(|r| r.urn == resource.urn && !r.pending_delete) {
                Some(r) => *r = resource,
                None => state.resources.push(resource),
            }
        }
        StepEffect::Replaced { resource } => {
            if let Some(r) = state.resources.iter_mut().find(|r| r.urn == resource.urn && !r.pending_delete) {
                r.pending_delete = true;
            }
            state.resources.push(resource);
        }
        StepEffect::Removed { urn, id } => state.resources.retain(|r| !(r.urn == urn && r.id == id)),
        // Rebuilt from its begin record by `replay`, which has it.
        StepEffect::Created { .. } | StepEffect::Nothing => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::StackState;

    fn events(base: u64, capacity: u32, ids: &[&str]) -> JournalRecord {
        JournalRecord::Events { base, user_state: json!({ "capacity": capacity }), ids: ids.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn an_events_record_is_a_version_and_later_records_follow_it() {
        let mut state = StackState { serial: 4, ..StackState::new("dev") };
        replay(
            &mut state,
            [
                // Left by a compaction that crashed: an older serial, skipped.
                events(3, 1, &["old"]),
                events(4, 5, &["a", "b"]),
                events(5, 6, &["c"]),
                JournalRecord::UserState { base: 6, value: json!({ "capacity": 7 }) },
                // The version it was written against is gone: skipped.
                events(5, 9, &["late"]),
            ],
        );
        assert_eq!(state.serial, 6);
        assert_eq!(state.user_state, json!({ "capacity": 7 }));
        assert!(state.processed_events.iter().eq(["a", "b", "c"]));
    }

    #[test]
    fn a_creates_end_record_names_only_what_its_begin_does_not_and_replays_whole() {
        let urn = Urn::new("dev", "test:q:Queue", "orders");
        let inputs: Props = [("name".to_owned(), json!("orders-1"))].into_iter().collect();
        let outputs: Props = [("arn".to_owned(), json!("arn:orders"))].into_iter().collect();
        let begun = PendingOperation {
            kind: StepOp::CreateReplacement,
            urn: urn.clone(),
            id: None,
            dependencies: vec![Urn::new("dev", "test:q:Queue", "dlq")],
            options: crate::StoredOptions { protect: true, ..Default::default() },
            inputs: inputs.clone(),
        };
        let made = begun.created("q-2".into(), outputs.clone());
        let effect = StepEffect::Replaced { resource: made.clone() }.after(&begun);
        assert_eq!(effect, StepEffect::Created { id: "q-2".into(), outputs, replaced: true });
        // Read back with other inputs than it was sent: recorded whole.
        let read: Props = [("name".to_owned(), json!("other"))].into_iter().collect();
        let other = StepEffect::Upsert { resource: ResourceState { inputs: read, ..made.clone() } };
        assert_eq!(other.after(&begun), other);

        let old = ResourceState { id: "q-1".into(), ..made.clone() };
        let mut state = StackState { resources: vec![old.clone()], ..StackState::new("dev") };
        let begin = JournalRecord::Begin { base: 0, step: (1, 0), op: begun };
        let end = JournalRecord::End { base: 0, step: (1, 0), effect };
        replay(&mut state, [begin.clone(), end.clone()]);
        assert_eq!(state.resources, [ResourceState { pending_delete: true, ..old.clone() }, made.clone()]);
        assert!(state.pending.is_empty());

        // Each record written twice: replayed once. Else the second end would take the
        // new copy for the old one.
        let mut twice = StackState { resources: vec![old.clone()], ..StackState::new("dev") };
        replay(&mut twice, [begin.clone(), begin.clone(), end.clone(), begin, end]);
        assert_eq!(twice.resources, [ResourceState { pending_delete: true, ..old }, made]);
        assert!(twice.pending.is_empty(), "{:?}", twice.pending);
    }
}
