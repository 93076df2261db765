//! Refresh: reading live resources back and reporting drift.

use std::borrow::Cow;
use std::collections::HashMap;

use cairn_state::{Props, StackState, Urn};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use crate::panic::CatchUnwind;
use crate::provider::{DiffRequest, Observed, Planned, PropertyDiff, Provider, ProviderError, ProviderOp, Providers};
use crate::schema::{PropertyKind, ResourceType};

/// How a resource differs from what state recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Drift {
    /// It no longer exists; refresh forgets it, and the next `up` creates it again.
    Gone {
        /// The resource.
        urn: Urn,
    },
    /// Its inputs were changed outside Cairn; the next `up` changes them back.
    Changed {
        /// The resource.
        urn: Urn,
        /// What differs: `old` as recorded, `new` as found.
        diffs: Vec<PropertyDiff>,
    },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Gone { urn } => write!(f, "{urn} no longer exists; the next `up` creates it again"),
            Drift::Changed { urn, diffs } => {
                write!(f, "{urn} was changed outside Cairn:")?;
                for d in diffs {
                    let show = |v: &Option<serde_json::Value>| v.as_ref().map_or_else(|| "(unset)".to_owned(), |v| v.to_string());
                    write!(f, " {}: {} -> {};", d.name, show(&d.old), show(&d.new))?;
                }
                Ok(())
            }
        }
    }
}

/// The result of a refresh.
#[derive(Clone, Debug)]
pub struct RefreshReport {
    /// Every resource found different from state.
    pub drift: Vec<Drift>,
    /// Why each resource that could not be read was not (its [`ProviderError::urn`]
    /// says which); state keeps what it had for them.
    pub errors: Vec<ProviderError>,
    /// The state with what was read.
    pub state: StackState,
}

/// Reads every resource in `state` through its provider, up to `parallelism` at once.
///
/// `schema(urn)` is the type of each resource the program declares: drift is then the
/// provider's own diff (so a set read back in another order is no drift, and a property
/// left to the cloud is not either), and secrets are hidden as in plans. A resource
/// without a schema (no longer declared) is compared value by value, all hidden.
pub async fn refresh(
    state: &StackState,
    providers: &Providers,
    parallelism: usize,
    schema: &dyn Fn(&Urn) -> Option<&'static ResourceType>,
) -> RefreshReport {
    let mut results: HashMap<usize, Result<Option<Observed>, ProviderError>> = HashMap::new();
    // The reads are polled on this task, like an apply's calls: each borrows its
    // resource from state.
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    let limit = parallelism.max(1);
    loop {
        while running.len() < limit && next < state.resources.len() {
            let i = next;
            next += 1;
            let r = &state.resources[i];
            let Some(provider) = providers.for_token(&r.ty) else {
                let error = ProviderError::failed(format!("no provider is registered for type {}", r.ty));
                results.insert(i, Err(error.at(&r.urn, ProviderOp::Read)));
                continue;
            };
            running.push(async move { (i, CatchUnwind(provider.read(&r.urn, &r.id, &r.inputs, &r.outputs)).await) });
        }
        let Some((i, read)) = running.next().await else { break };
        let read = read.unwrap_or_else(|panic| Err(ProviderError::panicked(&panic)));
        results.insert(i, read.map_err(|e| e.at(&state.resources[i].urn, ProviderOp::Read)));
    }

    let mut drift = Vec::new();
    let mut errors = Vec::new();
    let mut resources = Vec::with_capacity(state.resources.len());
    for (i, r) in state.resources.iter().enumerate() {
        match results.remove(&i) {
            Some(Ok(None)) => drift.push(Drift::Gone { urn: r.urn.clone() }),
            Some(Ok(Some(obs))) => {
                let ty = schema(&r.urn);
                let mut diffs = match (ty, providers.for_token(&r.ty)) {
                    (Some(ty), Some(provider)) => provider_drift(provider.as_ref(), &r.urn, ty, &r.inputs, &obs.inputs),
                    _ => input_drift(&r.inputs, &obs.inputs),
                };
                match ty {
                    Some(ty) => crate::plan::redact_secrets(&mut diffs, Some(ty)),
                    None => crate::plan::redact_all(&mut diffs),
                }
                if !diffs.is_empty() {
                    drift.push(Drift::Changed { urn: r.urn.clone(), diffs });
                }
                let mut refreshed = r.clone();
                refreshed.id = obs.id;
                refreshed.inputs = obs.inputs;
                refreshed.outputs = obs.outputs;
                resources.push(refreshed);
            }
            Some(Err(e)) => {
                errors.push(e);
                resources.push(r.clone());
            }
            None => resources.push(r.clone()),
        }
    }
    let mut new_state = state.clone_without_resources();
    new_state.serial += 1;
    new_state.resources = resources;
    RefreshReport { drift, errors, state: new_state }
}

/// Drift as the provider diffs it, less properties the program leaves to the cloud.
fn provider_drift(provider: &dyn Provider, urn: &Urn, ty: &'static ResourceType, recorded: &Props, found: &Props) -> Vec<PropertyDiff> {
    let new: Vec<(&str, Planned<'_>)> = found.iter().map(|(k, v)| (k, Planned::Known(Cow::Borrowed(v)))).collect();
    let result = provider.diff(&DiffRequest { urn, ty, old: recorded, new: &new });
    result
        .changes
        .into_iter()
        .filter(|d| !(d.old.is_none() && ty.property(&d.name).is_some_and(|p| p.kind == PropertyKind::OptionalComputed)))
        .collect()
}

fn input_drift(recorded: &cairn_state::Props, found: &cairn_state::Props) -> Vec<PropertyDiff> {
    let mut diffs = Vec::new();
    for (k, old) in recorded.iter() {
        if found.get(k) != Some(old) {
            diffs.push(PropertyDiff::new(k, Some(old.clone()), found.get(k).cloned(), true, false));
        }
    }
    for (k, new) in found.iter() {
        if !recorded.contains_key(k) {
            diffs.push(PropertyDiff::new(k, None, Some(new.clone()), true, false));
        }
    }
    diffs.sort_by(|a, b| a.name.cmp(&b.name));
    diffs
}
