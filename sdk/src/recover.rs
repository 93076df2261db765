//! Settling operations a crash interrupted.
//!
//! A step's begin record without an end means the process died during the provider
//! call: the cloud may or may not have done it. Each is settled by asking the cloud:
//! an interrupted create is looked up by its cairn tags and adopted if it exists
//! (dropped if not), an update is read back, a delete is checked for. Nothing is ever
//! created twice.

use cairn_state::{PendingKind, PendingOperation, ResourceState, StackState, Urn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::provider::Providers;

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
            Recovery::Adopted { urn, id } => write!(f, "{urn}: an interrupted create had reached the cloud; adopted {id}"),
            Recovery::Dropped { urn } => write!(f, "{urn}: an interrupted create never reached the cloud; it will be planned again"),
            Recovery::Refreshed { urn, exists: true } => write!(f, "{urn}: an interrupted operation was settled by reading it back"),
            Recovery::Refreshed { urn, exists: false } => write!(f, "{urn}: an interrupted operation was settled: it is gone"),
        }
    }
}

/// Settles every pending operation of `state` through the providers; the result has
/// none left and a new serial.
pub async fn resolve_pending(state: &StackState, providers: &Providers) -> Result<(StackState, Vec<Recovery>)> {
    let mut next = state.clone();
    next.pending.clear();
    let mut recoveries = Vec::with_capacity(state.pending.len());
    for op in &state.pending {
        let provider = providers.for_token(op.urn.ty()).ok_or_else(|| Error::NoProvider {
            package: op.urn.ty().split(':').next().unwrap_or_default().to_owned(),
            urn: op.urn.clone(),
        })?;
        let failed = |e: crate::ProviderError| Error::Recovery {
            urn: op.urn.clone(),
            operation: match op.kind {
                PendingKind::Create => "create",
                PendingKind::CreateReplacement => "create of a replacement",
                PendingKind::Update => "update",
                PendingKind::DeleteReplaced => "delete of a replaced copy",
                PendingKind::Delete => "delete",
            },
            cause: e.to_string(),
        };
        match op.kind {
            PendingKind::Create | PendingKind::CreateReplacement => {
                let known: Vec<&str> = next.resources.iter().filter(|r| r.urn == op.urn).map(|r| r.id.as_str()).collect();
                let found = provider.lookup(&op.urn).await.map_err(failed)?;
                match found.into_iter().find(|o| !known.contains(&o.id.as_str())) {
                    Some(obs) => {
                        adopt(&mut next, op, ResourceState {
                            urn: op.urn.clone(),
                            ty: op.urn.ty().to_owned(),
                            id: obs.id.clone(),
                            inputs: obs.inputs,
                            outputs: obs.outputs,
                            dependencies: op.dependencies.clone(),
                            options: op.options.clone(),
                            pending_delete: false,
                        });
                        recoveries.push(Recovery::Adopted { urn: op.urn.clone(), id: obs.id });
                    }
                    None => recoveries.push(Recovery::Dropped { urn: op.urn.clone() }),
                }
            }
            PendingKind::Update | PendingKind::Delete | PendingKind::DeleteReplaced => {
                let Some(id) = &op.id else { continue };
                let Some(entry) = next.resources.iter().position(|r| r.urn == op.urn && &r.id == id) else {
                    continue;
                };
                let r = &next.resources[entry];
                let read = provider.read(&op.urn, id, &r.inputs, &r.outputs).await.map_err(failed)?;
                let exists = read.is_some();
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
    Ok((next, recoveries))
}

/// Puts an adopted resource in state: a replacement's old copy becomes one to delete.
fn adopt(state: &mut StackState, op: &PendingOperation, resource: ResourceState) {
    if op.kind == PendingKind::CreateReplacement {
        if let Some(old) = state.resources.iter_mut().find(|r| r.urn == op.urn && !r.pending_delete) {
            old.pending_delete = true;
        }
        state.resources.push(resource);
    } else {
        state.resources.retain(|r| r.urn != op.urn || r.pending_delete);
        state.resources.push(resource);
    }
}
