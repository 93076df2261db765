//! Settling operations a crash interrupted.
//!
//! A step's begin record without an end means the process died during the provider
//! call: the cloud may or may not have done it. Each is settled by asking the cloud:
//! an interrupted create is looked up by its cairn tags and adopted if it exists
//! (dropped if not), an update is read back, a delete is checked for. Nothing is ever
//! created twice by Cairn; if the cloud made two copies of one create (a request sent
//! twice), one is adopted and the others are recorded as old copies, which the next
//! apply deletes, and the recovery names them all.
//!
//! A call the dead process sent may still take effect after it died. Where the cloud
//! does not show an interrupted call done, settling waits the provider's landing window
//! ([`crate::Provider::landing_window`], 5 s for AWS) and looks again, so a create that
//! lands late is adopted rather than made a second time.

use cairn_state::{StepOp, PendingOperation, ResourceState, StackState, Urn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::provider::{Observed, ProviderOp, Providers};

/// How one interrupted operation was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Recovery {
    /// The interrupted create had reached the cloud; the resource is now in state.
    Adopted {
        /// The resource.
        urn: Urn,
        /// Its cloud id.
        id: String,
        /// Other live copies tagged with the same URN (a create sent twice). They are
        /// recorded as old copies, so the next apply deletes them, and named here so the
        /// user knows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        duplicates: Vec<String>,
    },
    /// The interrupted create never reached the cloud; it will be planned again.
    Dropped {
        /// The resource.
        urn: Urn,
    },
    /// An interrupted update or delete: the resource was read back (or found gone).
    Refreshed {
        /// The resource.
        urn: Urn,
        /// Whether it still exists.
        exists: bool,
    },
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Adopted { urn, id, duplicates } if duplicates.is_empty() => {
                write!(f, "{urn}: an interrupted create had reached the cloud; adopted {id}")
            }
            Recovery::Adopted { urn, id, duplicates } => write!(
                f,
                "{urn}: an interrupted create had reached the cloud {} times: {id}, {}; adopted {id}, and the others are \
                 recorded as old copies that the next apply deletes (`preview` shows them; to keep one instead, delete \
                 the others yourself and run `refresh`)",
                duplicates.len() + 1,
                duplicates.join(", ")
            ),
            Recovery::Dropped { urn } => write!(f, "{urn}: an interrupted create never reached the cloud; it will be planned again"),
            Recovery::Refreshed { urn, exists: true } => write!(f, "{urn}: an interrupted operation was settled by reading it back"),
            Recovery::Refreshed { urn, exists: false } => write!(f, "{urn}: an interrupted operation was settled: it is gone"),
        }
    }
}

/// Settles every pending operation of `state` through the providers, once, at once;
/// the result has none left and a new serial. For previews: a call still on its way
/// may take effect after this looked (see [`resolve_interrupted`]).
pub async fn resolve_pending(state: &StackState, providers: &Providers) -> Result<(StackState, Vec<Recovery>)> {
    providers.ready(state.pending.iter().map(|op| op.urn.ty())).await?;
    settle_each(state, providers, Look::Preview).await.map(|(settled, recoveries, _)| (settled, recoveries))
}

/// Settles the pending operations of a process that died (or lost its lock, or had
/// its operation cut off) during them, whose calls may still be on their way: as
/// [`resolve_pending`], and where the cloud does not show a call done yet (a create
/// not found, a delete's resource still there), it waits the providers'
/// [`landing_window`] and looks at those again, so that a late call is seen. The wait
/// counts from now: the process's last call was sent before it lost the stack, however
/// long it had retried. Call it holding the stack's lock: creates are looked for with
/// [`lookup_created`], which may make calls of its own.
///
/// [`landing_window`]: crate::Provider::landing_window
/// [`lookup_created`]: crate::Provider::lookup_created
pub async fn resolve_interrupted(state: &StackState, providers: &Providers) -> Result<(StackState, Vec<Recovery>)> {
    settle_late(state, providers, None).await
}

/// [`resolve_interrupted`], for calls this process saw end uncertainly at `ended` (an
/// answer lost, a connection reset, its own timeout): the wait is what is left of the
/// landing window after then. `None`: the whole window, from now.
pub(crate) async fn settle_late(state: &StackState, providers: &Providers, ended: Option<tokio::time::Instant>) -> Result<(StackState, Vec<Recovery>)> {
    providers.ready(state.pending.iter().map(|op| op.urn.ty())).await?;
    let (settled, recoveries, undone) = settle_each(state, providers, Look::Locked).await?;
    let window = providers.landing_window(undone.iter().map(|u| state.pending[u.op].urn.ty()));
    let wait = ended.map_or(window, |ended| window.saturating_sub(ended.elapsed()));
    if wait.is_zero() {
        return Ok((settled, recoveries));
    }
    tokio::time::sleep(wait).await;
    // Only what the first look did not find done is looked at again: what it settled
    // stays settled (a look-up by tag may miss for a while what it found once).
    let mut again = settled;
    again.serial -= 1;
    again.pending = undone.iter().map(|u| state.pending[u.op].clone()).collect();
    let (settled, later, _) = settle_each(&again, providers, Look::Locked).await?;
    // Each op looked at again gives one recovery, in the same order (the first look
    // found each with what it needs: a create's inputs, a resource's id and entry):
    // each replaces the first look's, in its place.
    debug_assert_eq!(later.len(), undone.len());
    let mut recoveries = recoveries;
    for (u, r) in undone.iter().zip(later) {
        recoveries[u.recovery] = r;
    }
    Ok((settled, recoveries))
}

/// A pending operation the cloud did not show done: its position in `pending`, and
/// that of the recovery that said so.
struct Undone {
    op: usize,
    recovery: usize,
}

/// How settling may look for what an interrupted create made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Reads alone ([`crate::Provider::lookup`]): a preview holds no lock.
    Preview,
    /// Under the stack's lock: [`crate::Provider::lookup_created`].
    Locked,
}

/// Settles each pending operation of `state` once; also answers those whose call the
/// cloud does not show done (a late call may still change them).
async fn settle_each(state: &StackState, providers: &Providers, look: Look) -> Result<(StackState, Vec<Recovery>, Vec<Undone>)> {
    let mut next = state.clone();
    next.pending.clear();
    let mut recoveries = Vec::with_capacity(state.pending.len());
    let mut undone = Vec::new();
    for (position, op) in state.pending.iter().enumerate() {
        let provider = providers.for_token(op.urn.ty()).ok_or_else(|| Error::NoProvider {
            package: op.urn.ty().split(':').next().unwrap_or_default().to_owned(),
            urn: op.urn.clone(),
        })?;
        let failed = |e: crate::ProviderError| Error::Recovery {
            urn: op.urn.clone(),
            operation: match op.kind {
                StepOp::Create => "create",
                StepOp::CreateReplacement => "create of a replacement",
                StepOp::Update => "update",
                StepOp::DeleteReplaced => "delete of a replaced copy",
                StepOp::Delete => "delete",
            },
            source: e,
        };
        match op.kind {
            StepOp::Create | StepOp::CreateReplacement => {
                let known: Vec<&str> = next.resources.iter().filter(|r| r.urn == op.urn).map(|r| r.id.as_str()).collect();
                let found = match look {
                    Look::Preview => provider.lookup(&op.urn, &op.inputs).await,
                    Look::Locked => provider.lookup_created(&op.urn, &op.inputs).await,
                };
                let mut found: Vec<Observed> =
                    found.map_err(|e| failed(e.at(&op.urn, ProviderOp::Lookup)))?.into_iter().filter(|o| !known.contains(&o.id.as_str())).collect();
                // More than one copy means the create was sent more than once. Which one
                // is adopted must not depend on the order the cloud lists them in.
                found.sort_by(|a, b| a.id.cmp(&b.id));
                let mut found = found.into_iter();
                let entry = |obs: Observed, pending_delete| ResourceState {
                    urn: op.urn.clone(),
                    ty: op.urn.ty().to_owned(),
                    id: obs.id,
                    inputs: obs.inputs,
                    outputs: obs.outputs,
                    dependencies: op.dependencies.clone(),
                    // A copy is deleted, whatever the resource's own options say.
                    options: if pending_delete { Default::default() } else { op.options.clone() },
                    pending_delete,
                };
                match found.next() {
                    Some(mut obs) => {
                        // Read back with the inputs it was created with, which keeps those the
                        // cloud does not report (a look-up knows none).
                        if !op.inputs.is_empty() {
                            if let Some(read) = provider.read(&op.urn, &obs.id, &op.inputs, &obs.outputs).await.map_err(|e| failed(e.at(&op.urn, ProviderOp::Read)))? {
                                obs = read;
                            }
                        }
                        let id = obs.id.clone();
                        adopt(&mut next, op, entry(obs, false));
                        let mut duplicates = Vec::new();
                        for extra in found {
                            duplicates.push(extra.id.clone());
                            next.resources.push(entry(extra, true));
                        }
                        recoveries.push(Recovery::Adopted { urn: op.urn.clone(), id, duplicates });
                    }
                    None => {
                        undone.push(Undone { op: position, recovery: recoveries.len() });
                        recoveries.push(Recovery::Dropped { urn: op.urn.clone() });
                    }
                }
            }
            StepOp::Update | StepOp::Delete | StepOp::DeleteReplaced => {
                let Some(id) = &op.id else { continue };
                let Some(entry) = next.resources.iter().position(|r| r.urn == op.urn && &r.id == id) else {
                    continue;
                };
                let r = &next.resources[entry];
                let mut read = provider.read(&op.urn, id, &r.inputs, &r.outputs).await.map_err(|e| failed(e.at(&op.urn, ProviderOp::Read)))?;
                if read.is_none() {
                    // Not found by its id may be a cloud that does not list a resource
                    // made a moment ago yet: the look-up by tag has the last word.
                    read = provider.lookup(&op.urn, &r.inputs).await.map_err(|e| failed(e.at(&op.urn, ProviderOp::Lookup)))?.into_iter().find(|o| &o.id == id);
                }
                let exists = read.is_some();
                // A delete's resource may be about to go. (An update that lands after
                // its read-back is made again by the next plan, whose inputs it has not
                // caught up with; not waited for, since AWS updates refused part-way are
                // uncertain too, and each would hold a reconciler for the window.)
                if exists && op.kind != StepOp::Update {
                    undone.push(Undone { op: position, recovery: recoveries.len() });
                }
                match read {
                    Some(obs) => {
                        let r = &mut next.resources[entry];
                        r.inputs = obs.inputs;
                        r.outputs = obs.outputs;
                    }
                    None => {
                        next.resources.remove(entry);
                    }
                }
                recoveries.push(Recovery::Refreshed { urn: op.urn.clone(), exists });
            }
        }
    }
    next.serial += 1;
    next.sort_resources();
    Ok((next, recoveries, undone))
}

/// Puts an adopted resource in state: a replacement's old copy becomes one to delete.
fn adopt(state: &mut StackState, op: &PendingOperation, resource: ResourceState) {
    if op.kind == StepOp::CreateReplacement {
        if let Some(old) = state.resources.iter_mut().find(|r| r.urn == op.urn && !r.pending_delete) {
            old.pending_delete = true;
        }
        state.resources.push(resource);
    } else {
        state.resources.retain(|r| r.urn != op.urn || r.pending_delete);
        state.resources.push(resource);
    }
}
