//! Plans: what an apply will do, decided before it does anything.
//!
//! [`plan`] diffs a validated [`Graph`] against a [`StackState`]. The result is a value:
//! rendered as text for people ([`Plan::render`]), as JSON for machines (the `Plan`'s
//! serde form, described in docs/plans.md), asserted by snapshot tests, and saved to
//! be applied exactly later.

mod render;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use cairn_state::{Props, ResourceState, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ProtectViolation, ProtectViolations, Result, ValidationError, ValidationErrors};
use crate::graph::Graph;
use crate::input::{OutputRef, Prop};
use crate::provider::{schema_diff, DiffRequest, Planned, PropertyDiff, ProviderOf, Providers};
use crate::resource::ResourceOptions;
use crate::schema::{Property, PropertyKind};

pub use render::RenderOptions;

/// The plan format this build writes and applies.
pub const PLAN_FORMAT: &str = "cairn.plan/v1";

/// What happens to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Created.
    Create,
    /// Changed in place.
    Update,
    /// Replaced: a new one is created and the old one deleted (in that order unless
    /// delete-before-replace).
    Replace,
    /// Deleted.
    Delete,
    /// Left as it is.
    Same,
}

impl Action {
    /// The action's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::Same => "same",
        }
    }
}

/// The state a plan was made against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanBase {
    /// The state's lineage.
    pub lineage: String,
    /// The state's serial.
    pub serial: u64,
}

/// How many resources get each action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// To create.
    pub create: usize,
    /// To update in place.
    pub update: usize,
    /// To replace.
    pub replace: usize,
    /// To delete.
    pub delete: usize,
    /// Unchanged.
    pub same: usize,
}

impl Summary {
    /// Counts one more change with `action`.
    pub fn add(&mut self, action: Action) {
        *match action {
            Action::Create => &mut self.create,
            Action::Update => &mut self.update,
            Action::Replace => &mut self.replace,
            Action::Delete => &mut self.delete,
            Action::Same => &mut self.same,
        } += 1;
    }

    /// How many resources change.
    pub fn changes(&self) -> usize {
        self.create + self.update + self.replace + self.delete
    }
}

/// What happens to one resource, and everything apply needs to do it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The resource.
    pub urn: Urn,
    /// Its type token.
    #[serde(rename = "type")]
    pub ty: Cow<'static, str>,
    /// What happens to it.
    pub action: Action,
    /// For a replace: the properties whose change forces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_reasons: Vec<String>,
    /// For a replace: true when it depends on values known only after apply, so it may
    /// turn out to be an update (or nothing) once they are known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_replace: bool,
    /// The changed properties, by name; for a create, every input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<PropertyDiff>,
    /// The cloud id of the existing resource (update, replace, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The inputs to create or update with; references resolve at apply time. Secret
    /// values are here in clear, as apply needs them: guard saved plans like state.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "prop_map")]
    pub inputs: Vec<(String, Prop)>,
    /// The resources it depends on (from the program; for a delete, from state).
    /// Absent for an unchanged resource whose dependencies did not change either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<Urn>>,
    /// The resource's options (shared with its declaration: a plan of 100,000
    /// unchanged resources would otherwise hold 100,000 copies, mostly of the defaults).
    #[serde(default, skip_serializing_if = "is_default_options")]
    pub options: Arc<ResourceOptions>,
    /// For a replace: delete the old resource first (asked for, implied by a physical
    /// name that cannot exist twice, or by a dependency replaced that way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_before_replace: bool,
    /// For a delete: the old copy left by an earlier create-before-delete replacement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_delete: bool,
    /// For a replace: the physical names the planner generated for the new copy. If
    /// the replacement turns out unnecessary at apply time, the old names are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated_names: Vec<String>,
    /// For a create, an update or a replacement: the resource the apply deletes first,
    /// because the new inputs make the same cloud object, no identity property
    /// ([`Property::identity`](crate::schema::Property#structfield.identity)) nor physical
    /// name differing as the type's diff compares them: a declaration renamed, or moved
    /// onto what the plan frees (a resource it deletes, or the old copy a replacement
    /// leaves, whose delete step this then waits for). Made alongside, the new one would be undone by that
    /// delete (a queue's policy cleared, a queue of the same name adopted, then deleted)
    /// or refused by the cloud (a listener on a port that has one). As for a
    /// delete-before-replace, neither exists in between, and if the create fails, until
    /// an apply makes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_delete: Option<Urn>,
}

fn is_default_options(o: &Arc<ResourceOptions>) -> bool {
    **o == ResourceOptions::default()
}

/// A plan: every resource's change, in deterministic order (the program's resources
/// in topological order, then deletes in reverse dependency order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: String,
    /// The stack.
    pub stack: String,
    /// The state the plan was made against; apply refuses any other.
    pub base: PlanBase,
    /// The user state `S` the plan renders, persisted by apply.
    pub user_state: Value,
    /// Every resource's change, unchanged ones included.
    pub changes: Vec<Change>,
    /// Counts per action.
    pub summary: Summary,
    /// The stack outputs the program exports, as declared: apply records their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<(String, Prop)>,
    /// How the stack's outputs change, by name (`new` absent and `known` false when
    /// known only after apply). Changed outputs alone make a plan worth applying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_diffs: Vec<PropertyDiff>,
    /// The components the program declares; a change's `options.parent` names the one
    /// it belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<crate::cx::Component>,
}

impl Plan {
    /// Whether applying it would change anything.
    pub fn has_changes(&self) -> bool {
        self.summary.changes() > 0 || !self.output_diffs.is_empty()
    }

    /// The changes that do something.
    pub fn changed(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action != Action::Same)
    }

    /// Narrows the plan to `targets` and what they depend on (`up --target`), as
    /// Terraform's `-target` does: other creates are dropped, other updates, replaces
    /// and deletes are left undone. Fails naming a target the plan does not know.
    pub fn target(&mut self, targets: &[Urn]) -> crate::Result<()> {
        let index: HashMap<&Urn, usize> = self.changes.iter().enumerate().map(|(i, c)| (&c.urn, i)).collect();
        let mut keep = vec![false; self.changes.len()];
        let mut todo = Vec::new();
        for t in targets {
            match index.get(t) {
                Some(&i) => todo.push(i),
                None => return Err(crate::Error::UnknownTarget { urn: t.clone() }),
            }
        }
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut keep[i], true) {
                continue;
            }
            // And the delete a create, update or replacement waits for (a declaration
            // renamed; or a replacement, whose old copy gives up what this takes):
            // without it, the two would be the same cloud object at once.
            for d in self.changes[i].dependencies.iter().flatten().chain(&self.changes[i].after_delete) {
                if let Some(&j) = index.get(d) {
                    todo.push(j);
                }
            }
        }
        let mut kept = Vec::with_capacity(self.changes.len());
        let mut summary = Summary::default();
        for (mut c, keep) in std::mem::take(&mut self.changes).into_iter().zip(keep) {
            if !keep {
                match c.action {
                    Action::Create => continue,
                    Action::Same => {}
                    _ => {
                        c.action = Action::Same;
                        c.diffs.clear();
                        c.replace_reasons.clear();
                        c.may_replace = false;
                        c.dependencies = None;
                    }
                }
            }
            summary.add(c.action);
            kept.push(c);
        }
        self.changes = kept;
        self.summary = summary;
        Ok(())
    }

    /// Moves the plan onto `state`, which follows the plan's base by a record of events
    /// only (a new user state and processed ids, the user state being the plan's own):
    /// the resources are the base's, so the plan holds for it. The reconciler plans an
    /// event's new `S` before recording it, and applies that plan after. Refuses (as a
    /// stale plan) a state of another lineage or with other user state.
    pub(crate) fn rebase(&mut self, state: &StackState) -> Result<()> {
        if state.lineage != self.base.lineage || state.serial < self.base.serial || state.user_state != self.user_state {
            return Err(Error::StalePlan {
                planned: self.base.serial,
                planned_lineage: self.base.lineage.clone(),
                current: state.serial,
                current_lineage: state.lineage.clone(),
            });
        }
        self.base.serial = state.serial;
        Ok(())
    }

    /// Whether the plan can be applied to `state`: made by this version, for this stack,
    /// against this very state (its lineage and serial). A saved plan is refused once
    /// state moved, also when it changes nothing.
    pub fn check_base(&self, state: &StackState) -> Result<()> {
        if self.format != PLAN_FORMAT {
            return Err(Error::BadPlan(format!("its format is '{}', this Cairn applies '{PLAN_FORMAT}'; make the plan again with this version", self.format)));
        }
        if self.base.lineage != state.lineage || self.base.serial != state.serial {
            return Err(Error::StalePlan {
                planned: self.base.serial,
                planned_lineage: self.base.lineage.clone(),
                current: state.serial,
                current_lineage: state.lineage.clone(),
            });
        }
        if self.stack != state.stack {
            return Err(Error::WrongStack { expected: self.stack.clone(), found: state.stack.clone() });
        }
        Ok(())
    }

    /// The plan as pretty JSON, the documented machine-readable form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serializes to JSON")
    }

    /// Reads a plan saved with [`Plan::to_json`].
    pub fn from_json(text: &str) -> std::result::Result<Plan, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// What the planner knows of a node it has planned, for its dependents.
struct NodeStatus<'a> {
    action: Action,
    delete_before_replace: bool,
    /// The planned inputs, in name order; `None` when unchanged, since the inputs in
    /// state are then the planned ones.
    planned: Option<Vec<(&'a str, Planned<'a>)>>,
    /// The resource in state, if it exists.
    old: Option<&'a ResourceState>,
    /// The resource it waits for the delete of ([`Change::after_delete`]).
    after_delete: Option<&'a Urn>,
}

/// Diffs `graph` against `state`.
///
/// `providers` supply custom diffs; a resource whose package has no provider gets the
/// schema's diff, so a preview (and a snapshot test) needs no provider at all.
pub fn plan(graph: &Graph, state: &StackState, providers: &Providers, user_state: Value) -> Result<Plan> {
    if !state.pending.is_empty() {
        return Err(Error::pending(state));
    }
    // One pass over state: each live resource found in the graph is that node's old
    // self; the rest (and old copies) are deletes.
    let mut old_of: Vec<Option<&ResourceState>> = vec![None; graph.nodes.len()];
    let mut deletes: Vec<&ResourceState> = Vec::new();
    // State is stored in the order of the plan that wrote it, which is the graph's order
    // while the program declares the same resources, with the same URNs (a render
    // reuses them): the node after the last one found is tried first, and matches by
    // address, before the URN is hashed.
    let mut rank = vec![0; graph.nodes.len()];
    for (position, &i) in graph.order.iter().enumerate() {
        rank[i] = position;
    }
    let mut next = 0;
    for r in &state.resources {
        let guess = graph.order.get(next).copied().filter(|&i| graph.nodes[i].urn == r.urn);
        match guess.or_else(|| graph.find(&r.urn)) {
            Some(i) if !r.pending_delete => {
                old_of[i] = Some(r);
                next = rank[i] + 1;
            }
            _ => deletes.push(r),
        }
    }
    let mut statuses: Vec<Option<NodeStatus<'_>>> = (0..graph.nodes.len()).map(|_| None).collect();
    let mut changes = Vec::with_capacity(graph.nodes.len() + 8);
    let mut violations = Vec::new();
    let mut summary = Summary::default();
    let mut provider_of = ProviderOf::new(providers);
    // Reused for each resource; kept only for those that change.
    let mut scratch: Vec<(&str, Planned<'_>)> = Vec::new();
    // The resources created or moved onto new identity values, which two declarations
    // could then share.
    let mut identity_set: Vec<usize> = Vec::new();
    // What a create or a move could be the same cloud object as, by type.
    let mut deleted_of_type: HashMap<&str, Vec<&ResourceState>> = HashMap::new();
    for old in deletes.iter().filter(|o| !o.pending_delete && !o.options.retain_on_delete) {
        deleted_of_type.entry(old.ty.as_str()).or_default().push(old);
    }

    for &i in &graph.order {
        let node = &graph.nodes[i];
        let decl = &node.decl;
        let ty = decl.ty;
        let old = old_of[i];
        let options = decl.options();

        // The planned value of every input, borrowed where it can be: a literal from the
        // declaration, a reference to an unchanged resource from state.
        let mut planned = std::mem::take(&mut scratch);
        planned.extend(decl.props.iter().map(|(k, prop)| {
            let v = match prop {
                // Most inputs are literals: built directly, not through an `Option`, whose
                // conversion the compiler does as a slow shuffle of bytes on the stack.
                Prop::Value(v) => return (k.as_ref(), Planned::Known(Cow::Borrowed(v))),
                Prop::Output(r) => resolve_ref(r, graph, &statuses),
                nested => {
                    // A list or object holding references: when it equals what state
                    // has, borrow that rather than building a copy to compare.
                    let stored = old.and_then(|o| o.inputs.get(k));
                    match stored {
                        Some(s) if nested_equals(nested, s, graph, &statuses) => Some(Cow::Borrowed(s)),
                        _ => resolve_planned(nested, graph, &statuses).map(Cow::Owned),
                    }
                }
            };
            (k.as_ref(), v.map_or(Planned::Unknown, Planned::Known))
        }));
        // Values the engine sets in place of the declared ones: `None` removes.
        let mut overrides: Vec<(&str, Option<Cow<'_, Value>>)> = Vec::new();
        // An auto-named property left unset keeps the name it was given.
        for p in ty.inputs().filter(|p| p.auto_name && decl.get(p.name).is_none()) {
            let name = match old.and_then(|o| o.inputs.get(p.name)) {
                Some(v) => Cow::Borrowed(v),
                None => Cow::Owned(Value::from(auto_name(&node.urn, state.serial, 0))),
            };
            set_planned(&mut planned, p.name, Planned::Known(name.clone()));
            overrides.push((p.name, Some(name)));
        }
        // Ignored changes keep the value in state.
        if let Some(old) = old {
            for name in &options.ignore_changes {
                match old.inputs.get(name) {
                    Some(v) => {
                        set_planned(&mut planned, name, Planned::Known(Cow::Borrowed(v)));
                        overrides.push((name, Some(Cow::Borrowed(v))));
                    }
                    None => {
                        planned.retain(|(k, _)| k != name);
                        overrides.push((name, None));
                    }
                }
            }
        }

        let mut change = Change {
            urn: node.urn.clone(),
            ty: Cow::Borrowed(ty.token),
            action: Action::Same,
            replace_reasons: Vec::new(),
            may_replace: false,
            diffs: Vec::new(),
            id: None,
            inputs: Vec::new(),
            dependencies: None,
            options: decl.shared_options(),
            delete_before_replace: false,
            pending_delete: false,
            generated_names: Vec::new(),
            after_delete: None,
        };

        let mut after_delete = None;
        match old {
            None => {
                change.action = Action::Create;
                change.diffs = planned
                    .iter()
                    .map(|(k, p)| PropertyDiff::new(*k, None, p.value().cloned(), p.is_known(), false))
                    .collect();
                if ty.properties.iter().any(Property::names_object) {
                    identity_set.push(i);
                    after_delete = same_object_deleted(&node.urn, decl, &planned, &deleted_of_type, &mut provider_of);
                    change.after_delete = after_delete.map(|o| o.urn.clone());
                }
            }
            Some(old) => {
                let req = DiffRequest { urn: &node.urn, ty, old: &old.inputs, new: &planned };
                let diff = match provider_of.get(ty) {
                    Some(p) => p.diff(&req),
                    None => schema_diff(&req),
                };
                change.action = if diff.changes.iter().any(|d| d.replaces) {
                    // The reasons are the changes certain to force it; failing those, the
                    // ones that may, once unknown values are known.
                    let reasons = |known: bool| -> Vec<String> {
                        diff.changes.iter().filter(|d| d.replaces && d.known == known).map(|d| d.name.clone()).collect()
                    };
                    change.replace_reasons = reasons(true);
                    if change.replace_reasons.is_empty() {
                        change.may_replace = true;
                        change.replace_reasons = reasons(false);
                    }
                    Action::Replace
                } else if !diff.changes.is_empty() {
                    Action::Update
                } else {
                    Action::Same
                };
                change.diffs = diff.changes;
                if change.action != Action::Same {
                    change.id = Some(old.id.clone());
                }
                if change.action == Action::Replace && (old.options.protect || options.protect) {
                    violations.push(ProtectViolation {
                        urn: node.urn.clone(),
                        action: "replace",
                        reasons: change.replace_reasons.clone(),
                    });
                }
            }
        }

        // Whether this resource's old copy stands on `urn`, as state recorded it.
        let stands_on = |urn: &Urn| old.is_some_and(|o| o.dependencies.contains(urn));
        if change.action == Action::Replace {
            // A dependency created only once what this resource's old copy stands on is
            // gone (a renamed declaration): the old copy goes first, or each would wait
            // for the other.
            let dep_replaced_first = graph.deps.of(i).any(|d| {
                statuses[d].as_ref().is_some_and(|s| {
                    s.action == Action::Replace && s.delete_before_replace || s.after_delete.is_some_and(stands_on)
                })
            });
            let explicit_name = ty.inputs().any(|p| {
                p.auto_name && decl.get(p.name).is_some() && !change.diffs.iter().any(|d| d.name == p.name)
            });
            change.delete_before_replace = options.delete_before_replace || dep_replaced_first || explicit_name;
            if !change.delete_before_replace {
                // A fresh physical name, so old and new can exist side by side.
                for p in ty.inputs().filter(|p| p.auto_name && decl.get(p.name).is_none()) {
                    let old_name = old.and_then(|o| o.inputs.get(p.name)).cloned();
                    let mut salt = 1;
                    let mut name = Value::from(auto_name(&node.urn, state.serial, salt));
                    while Some(&name) == old_name.as_ref() {
                        salt += 1;
                        name = Value::from(auto_name(&node.urn, state.serial, salt));
                    }
                    set_planned(&mut planned, p.name, Planned::Known(Cow::Owned(name.clone())));
                    overrides.push((p.name, Some(Cow::Owned(name.clone()))));
                    change.diffs.retain(|d| d.name != p.name);
                    change.diffs.push(PropertyDiff::new(p.name, old_name, Some(name), true, false));
                    change.generated_names.push(p.name.to_owned());
                    change.diffs.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
        }
        // An update or a replacement that moves the resource onto what the plan frees (a
        // listener to the port of one deleted, a record renamed to a deleted one's name)
        // waits for that delete too.
        let moves = || change.diffs.iter().any(|d| ty.property(&d.name).is_some_and(Property::names_object));
        if matches!(change.action, Action::Update | Action::Replace) && moves() {
            identity_set.push(i);
            after_delete = same_object_deleted(&node.urn, decl, &planned, &deleted_of_type, &mut provider_of);
            change.after_delete = after_delete.map(|o| o.urn.clone());
            // An old copy that stood on it goes first, as that delete waits for it.
            if change.action == Action::Replace && after_delete.is_some_and(|a| stands_on(&a.urn)) {
                change.delete_before_replace = true;
            }
        }
        redact_secrets(&mut change.diffs, Some(ty));
        if change.action != Action::Same {
            change.inputs = decl.props.iter().map(|(k, p)| (k.to_string(), p.clone())).collect();
            for (name, value) in overrides {
                match value {
                    Some(v) => set_input(&mut change.inputs, name, Prop::Value(v.into_owned())),
                    None => change.inputs.retain(|(k, _)| k != name),
                }
            }
        }
        // An unchanged resource's dependencies are carried only if they changed.
        let deps_changed = || {
            old.is_none_or(|o| {
                o.dependencies.len() != graph.deps.of(i).len()
                    || graph.deps.of(i).any(|d| !o.dependencies.contains(&graph.nodes[d].urn))
            })
        };
        if change.action != Action::Same || deps_changed() {
            change.dependencies = Some(graph.deps.of(i).map(|d| graph.nodes[d].urn.clone()).collect());
        }
        summary.add(change.action);
        let planned = if change.action == Action::Same {
            planned.clear();
            scratch = planned;
            None
        } else {
            Some(planned)
        };
        statuses[i] = Some(NodeStatus {
            action: change.action,
            delete_before_replace: change.delete_before_replace,
            planned,
            old,
            after_delete: after_delete.map(|o| &o.urn),
        });
        changes.push(change);
    }

    if !identity_set.is_empty() {
        let problems = one_object_each(graph, &statuses, &identity_set);
        if !problems.is_empty() {
            return Err(Error::Invalid(ValidationErrors(problems)));
        }
    }
    // The changes given a wait for a replacement's old copy below.
    let freed = if identity_set.is_empty() {
        Vec::new()
    } else {
        wait_for_replaced(graph, &statuses, &identity_set, &mut provider_of, &mut changes, &rank)
    };

    // Deletes: what state has and the program no longer declares, plus old copies left
    // by replacements, dependents before their dependencies (state is stored in
    // dependency order, so reverse order is safe).
    for old in deletes.into_iter().rev() {
        if old.options.protect && !old.pending_delete {
            violations.push(ProtectViolation { urn: old.urn.clone(), action: "delete", reasons: Vec::new() });
        }
        summary.add(Action::Delete);
        changes.push(Change {
            urn: old.urn.clone(),
            ty: Cow::Owned(old.ty.clone()),
            action: Action::Delete,
            replace_reasons: Vec::new(),
            may_replace: false,
            diffs: Vec::new(),
            id: Some(old.id.clone()),
            inputs: Vec::new(),
            dependencies: Some(old.dependencies.clone()),
            options: Arc::new(ResourceOptions {
                protect: old.options.protect,
                retain_on_delete: old.options.retain_on_delete,
                timeouts: crate::resource::Timeouts {
                    delete: old.options.delete_timeout_ms.map(std::time::Duration::from_millis),
                    ..Default::default()
                },
                parent: old.options.parent.clone(),
                ..ResourceOptions::default()
            }),
            delete_before_replace: false,
            pending_delete: old.pending_delete,
            generated_names: Vec::new(),
            after_delete: None,
        });
    }

    if !violations.is_empty() {
        return Err(Error::Protected(ProtectViolations(violations)));
    }
    let mut output_diffs = output_diffs(graph, state, &statuses, summary.changes() > 0);
    redact_secrets(&mut output_diffs, None);
    let mut plan = Plan {
        format: PLAN_FORMAT.to_owned(),
        stack: state.stack.clone(),
        base: PlanBase { lineage: state.lineage.clone(), serial: state.serial },
        user_state,
        changes,
        summary,
        outputs: graph.exports.clone(),
        output_diffs,
        components: graph.components.clone(),
    };
    // Such a wait can close a loop with the replacement itself (the new copy stands on
    // the resource that waits, or that resource on the replaced one): the steps would
    // wait for each other. Then those two are left to run side by side, as before.
    if !freed.is_empty() && crate::apply::steps_loop(&plan, state) {
        // Taken out, then given back one at a time where it closes no loop.
        let waits: Vec<Option<Urn>> = freed.iter().map(|&position| plan.changes[position].after_delete.take()).collect();
        for (&position, wait) in freed.iter().zip(waits) {
            plan.changes[position].after_delete = wait;
            if crate::apply::steps_loop(&plan, state) {
                plan.changes[position].after_delete = None;
            }
        }
    }
    Ok(plan)
}

/// Gives each create, update or replacement in `moved` that takes over what another
/// replacement's old copy gives up (a queue given the name another queue is renamed away
/// from) a wait for that copy's delete ([`Change::after_delete`]): made first, it would
/// be answered with the old copy, or refused. A replacement's wait holds its new copy's
/// create. Looked for once every node is planned, since the replaced
/// resource may come after it in the order. `changes` are the nodes' changes, node `i`'s
/// at `rank[i]`; answers the positions of those given one.
fn wait_for_replaced(
    graph: &Graph,
    statuses: &[Option<NodeStatus<'_>>],
    moved: &[usize],
    provider_of: &mut ProviderOf<'_>,
    changes: &mut [Change],
    rank: &[usize],
) -> Vec<usize> {
    // The old copies the plan deletes (not those it forgets), by type.
    let mut replaced_of_type: HashMap<&str, Vec<&ResourceState>> = HashMap::new();
    for (i, status) in statuses.iter().enumerate() {
        let Some(NodeStatus { action: Action::Replace, old: Some(old), .. }) = status else { continue };
        if !old.options.retain_on_delete && !graph.nodes[i].decl.options().retain_on_delete {
            replaced_of_type.entry(old.ty.as_str()).or_default().push(old);
        }
    }
    let mut given = Vec::new();
    if replaced_of_type.is_empty() {
        return given;
    }
    for &i in moved {
        let Some(NodeStatus { action: Action::Create | Action::Update | Action::Replace, planned: Some(planned), after_delete: None, .. }) = &statuses[i] else {
            continue;
        };
        let node = &graph.nodes[i];
        if let Some(old) = same_object_deleted(&node.urn, &node.decl, planned, &replaced_of_type, provider_of) {
            changes[rank[i]].after_delete = Some(old.urn.clone());
            given.push(rank[i]);
        }
    }
    given
}

/// The resource among `deletes_of_type` (by type: what the plan deletes and does not
/// keep with `retain_on_delete`, or the old copies its replacements delete) which is the
/// very cloud object that `urn` with `planned` inputs is: every identity property and
/// physical name is known, set on both (or left to its default), and not a difference
/// as the type's diff compares them (a DNS name's trailing dot is none). Only those
/// properties are diffed. A generated name is made from the URN, so only a name the
/// program gives matches.
fn same_object_deleted<'a>(
    urn: &Urn,
    decl: &crate::resource::Decl,
    planned: &[(&str, Planned<'_>)],
    deletes_of_type: &HashMap<&str, Vec<&'a ResourceState>>,
    provider_of: &mut ProviderOf<'_>,
) -> Option<&'a ResourceState> {
    let ty = decl.ty;
    let deletes = deletes_of_type.get(ty.token)?;
    // A name Cairn generates is made from the URN: no other resource has it.
    if ty.inputs().any(|p| p.auto_name && decl.get(p.name).is_none()) {
        return None;
    }
    let mine = identity_values(ty, |name| planned.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))?;
    // Not its own old copy: a replacement that moves it off its identity gives that up.
    deletes.iter().copied().filter(|old| old.urn != *urn).find(|old| {
        // Both sides hold the identity properties alone: any difference is one of them.
        let Some(theirs) = identity_values(ty, |name| old.inputs.get(name).map(|v| Planned::Known(Cow::Borrowed(v)))) else {
            return false;
        };
        let theirs: Props = theirs.into_iter().filter_map(|(k, v)| Some((k, v.value()?.clone()))).collect();
        let req = DiffRequest { urn, ty, old: &theirs, new: &mine };
        let diff = match provider_of.get(ty) {
            Some(p) => p.diff(&req),
            None => schema_diff(&req),
        };
        diff.changes.is_empty()
    })
}

/// The values of `ty`'s identity properties and physical names, in name order, `get`
/// giving each (`None`: unset); one left unset is its default. `None` if the type has
/// none, or if one is unset with no default or not known at plan time: then nothing
/// says which cloud object the resource is.
fn identity_values<'v>(
    ty: &'static crate::ResourceType,
    get: impl Fn(&str) -> Option<Planned<'v>>,
) -> Option<Vec<(&'static str, Planned<'v>)>> {
    let mut values = Vec::new();
    for p in ty.properties.iter().filter(|p| p.names_object()) {
        let value = get(p.name).or_else(|| p.default.map(|d| Planned::Known(Cow::Owned(d.to_value()))))?;
        if !value.is_known() {
            return None;
        }
        values.push((p.name, value));
    }
    // In name order, as a diff takes planned values.
    values.sort_unstable_by_key(|(name, _)| *name);
    (!values.is_empty()).then_some(values)
}

/// Declarations of one type that would be one cloud object, one of them created or
/// `moved` onto its identity by this plan: every identity property and physical name
/// known (or left to its default) and equal, such as a queue name given twice. Compared
/// as planned, value for value: two values the type's diff calls the same (a DNS name
/// in capitals and without its dot) are not found here, and are left to the cloud to
/// refuse.
fn one_object_each(graph: &Graph, statuses: &[Option<NodeStatus<'_>>], moved: &[usize]) -> Vec<ValidationError> {
    let mut moved = moved.to_vec();
    moved.sort_unstable();
    let mut types: Vec<&str> = moved.iter().map(|&i| graph.nodes[i].decl.ty.token).collect();
    types.sort_unstable();
    types.dedup();
    let mut seen: HashMap<(&str, String), usize> = HashMap::new();
    let mut problems = Vec::new();
    // In the order of declaration, so the earlier one is named first.
    for (i, node) in graph.nodes.iter().enumerate() {
        let ty = node.decl.ty;
        if types.binary_search(&ty.token).is_err() {
            continue;
        }
        let Some(status) = &statuses[i] else { continue };
        // As planned; a resource left the same has its values in state.
        let values = identity_values(ty, |name| match &status.planned {
            Some(planned) => planned.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()),
            None => status.old.and_then(|o| o.inputs.get(name)).map(|v| Planned::Known(Cow::Borrowed(v))),
        });
        let Some(values) = values else { continue };
        let values: Vec<(&'static str, Value)> = values.into_iter().filter_map(|(k, v)| Some((k, v.value()?.clone()))).collect();
        let key = serde_json::to_string(&values).expect("JSON values serialize");
        match seen.entry((ty.token, key)) {
            // Two the plan leaves where they were are not this plan's to refuse.
            std::collections::hash_map::Entry::Occupied(e) if [i, *e.get()].iter().any(|j| moved.binary_search(j).is_ok()) => {
                let other = graph.nodes[*e.get()].urn.clone();
                problems.push(ValidationError::SameObject { urn: node.urn.clone(), other, values })
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    problems
}

/// How the stack outputs change from what `state` records to what the graph exports.
/// One not known yet changes only if something is applied (`applying`): otherwise
/// nothing would make it known.
fn output_diffs<'a>(graph: &'a Graph, state: &StackState, statuses: &[Option<NodeStatus<'a>>], applying: bool) -> Vec<PropertyDiff> {
    let mut diffs = Vec::new();
    for (name, prop) in &graph.exports {
        let old = state.outputs.get(name);
        match resolve_planned(prop, graph, statuses) {
            Some(new) if old != Some(&new) => diffs.push(PropertyDiff::new(name, old.cloned(), Some(new), true, false)),
            None if applying => diffs.push(PropertyDiff::new(name, old.cloned(), None, false, false)),
            _ => {}
        }
    }
    for (name, old) in &state.outputs {
        if !graph.exports.iter().any(|(n, _)| n == name) {
            diffs.push(PropertyDiff::new(name, Some(old.clone()), None, true, false));
        }
    }
    diffs.sort_by(|a, b| a.name.cmp(&b.name));
    diffs
}

/// Every value of `diffs` shown as `[secret]`: for a type whose schema is not known,
/// nothing is known not to be secret.
pub(crate) fn redact_all(diffs: &mut [PropertyDiff]) {
    for d in diffs.iter_mut() {
        d.secret = true;
        d.old = d.old.as_ref().map(|_| Value::from(crate::secret::REDACTED));
        d.new = d.new.as_ref().map(|_| Value::from(crate::secret::REDACTED));
    }
}

/// Plans are shown and logged: secret values never appear in their diffs. A property
/// the schema marks secret is `[secret]` whole; a sealed value anywhere is `[secret]`.
pub(crate) fn redact_secrets(diffs: &mut [PropertyDiff], ty: Option<&crate::schema::ResourceType>) {
    use crate::secret::{contains_sealed, is_sealed, redact, REDACTED};
    for d in diffs.iter_mut() {
        if ty.is_some_and(|ty| ty.property(&d.name).is_some_and(|p| p.secret)) {
            d.secret = true;
            d.old = d.old.as_ref().map(|_| Value::from(REDACTED));
            d.new = d.new.as_ref().map(|_| Value::from(REDACTED));
        } else if d.old.iter().chain(&d.new).any(contains_sealed) {
            d.secret = d.old.iter().chain(&d.new).all(is_sealed);
            d.old = d.old.as_ref().map(redact);
            d.new = d.new.as_ref().map(redact);
        }
    }
}

/// `Vec<(String, Prop)>` as a JSON object.
mod prop_map {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::ser::{SerializeMap, Serializer};

    use crate::input::Prop;

    pub(super) fn serialize<S: Serializer>(v: &[(String, Prop)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, p) in v {
            m.serialize_entry(k, p)?;
        }
        m.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Prop)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, Prop)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of inputs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut v: Vec<(String, Prop)> = Vec::new();
                while let Some(e) = a.next_entry()? {
                    v.push(e);
                }
                v.sort_by(|x, y| x.0.cmp(&y.0));
                Ok(v)
            }
        }
        d.deserialize_map(V)
    }
}

fn set_input(inputs: &mut Vec<(String, Prop)>, name: &str, prop: Prop) {
    match inputs.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
        Ok(i) => inputs[i].1 = prop,
        Err(i) => inputs.insert(i, (name.to_owned(), prop)),
    }
}

fn set_planned<'a>(planned: &mut Vec<(&'a str, Planned<'a>)>, name: &'a str, value: Planned<'a>) {
    match planned.binary_search_by(|(k, _)| (*k).cmp(name)) {
        Ok(i) => planned[i].1 = value,
        Err(i) => planned.insert(i, (name, value)),
    }
}

/// Whether `prop`, its references resolved, equals `stored`: false when a reference is
/// unknown.
fn nested_equals<'a>(prop: &Prop, stored: &Value, graph: &'a Graph, statuses: &[Option<NodeStatus<'a>>]) -> bool {
    match (prop, stored) {
        (Prop::Value(v), s) => v == s,
        (Prop::Output(r), s) => resolve_ref(r, graph, statuses).is_some_and(|v| v.as_ref() == s),
        (Prop::List(items), Value::Array(s)) => {
            items.len() == s.len() && items.iter().zip(s).all(|(p, v)| nested_equals(p, v, graph, statuses))
        }
        (Prop::Object(fields), Value::Object(s)) => {
            fields.len() == s.len()
                && fields.iter().all(|(k, p)| s.get(k).is_some_and(|v| nested_equals(p, v, graph, statuses)))
        }
        (Prop::Apply(_), s) => resolve_planned(prop, graph, statuses).is_some_and(|v| &v == s),
        _ => false,
    }
}

/// The value of `prop` at plan time, if every reference in it is known (and every
/// function of the program in it succeeds).
fn resolve_planned<'a>(prop: &Prop, graph: &'a Graph, statuses: &[Option<NodeStatus<'a>>]) -> Option<Value> {
    prop.resolve(&mut |r| resolve_ref(r, graph, statuses).map(Cow::into_owned))
}

/// The value of a reference at plan time, if known, borrowed from the declarations or
/// state where possible.
fn resolve_ref<'a>(r: &OutputRef, graph: &'a Graph, statuses: &[Option<NodeStatus<'a>>]) -> Option<Cow<'a, Value>> {
    let t = graph.find(&r.urn)?;
    let status = statuses[t].as_ref()?;
    // Unchanged targets (most of them) need no schema: state has the value.
    let schema = || graph.nodes[t].decl.ty.property(&r.property);
    // An input of the target: its planned value, known or not.
    if status.planned.is_some() && schema().is_none_or(|p| p.kind != PropertyKind::Output) {
        if let Some(planned) = &status.planned {
            if let Ok(i) = planned.binary_search_by(|(k, _)| (*k).cmp(r.property.as_ref())) {
                return match &planned[i].1 {
                    Planned::Known(Cow::Borrowed(v)) => Some(Cow::Borrowed(*v)),
                    Planned::Known(Cow::Owned(v)) => Some(Cow::Owned(v.clone())),
                    Planned::Unknown => None,
                };
            }
        }
    }
    match status.action {
        Action::Create | Action::Replace => None,
        Action::Update if schema().is_some_and(|p| p.changes_on_update) => None,
        Action::Same | Action::Update | Action::Delete => {
            let old = status.old?;
            old.outputs.get(&r.property).or_else(|| old.inputs.get(&r.property)).map(Cow::Borrowed)
        }
    }
}

/// `<name>-<7 hex digits>`, derived from the URN, the state serial and a salt, so the
/// same plan made twice names things the same (snapshot tests rely on that).
pub(crate) fn auto_name(urn: &Urn, serial: u64, salt: u32) -> String {
    // FNV-1a: tiny, stable across Rust versions (unlike std's hasher), good enough.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in urn.as_str().bytes().chain(serial.to_le_bytes()).chain(salt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}-{:07x}", urn.name(), h & 0x0fff_ffff)
}
