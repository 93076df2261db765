//! Plans rendered for people, in the spirit of `pulumi preview --diff`.

use std::fmt::Write as _;

use serde_json::Value;

use cairn_state::Urn;

use super::{Action, Change, Plan};
use crate::provider::PropertyDiff;

/// How to render a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Show each changed property, not only each changed resource.
    pub diff: bool,
    /// ANSI colours (for a terminal only).
    pub color: bool,
}

impl RenderOptions {
    /// Property-level diffs, no colour: what snapshot tests use.
    pub fn diff() -> Self {
        RenderOptions { diff: true, color: false }
    }
}

const RESET: &str = "\x1b[0m";

fn colour(action: Action) -> &'static str {
    match action {
        Action::Create => "\x1b[32m",
        Action::Update => "\x1b[33m",
        Action::Replace => "\x1b[35m",
        Action::Delete => "\x1b[31m",
        Action::Same => "",
    }
}

fn mark(change: &Change) -> &'static str {
    match change.action {
        Action::Create => "+  ",
        Action::Update => "~  ",
        Action::Replace if change.delete_before_replace => "-/+",
        Action::Replace => "+/-",
        Action::Delete => "-  ",
        Action::Same => "   ",
    }
}

impl Plan {
    /// The plan as text: one line per changed resource (with `diff`, its properties
    /// too), then a summary. Unchanged resources are only counted.
    pub fn render(&self, options: RenderOptions) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Plan for stack '{}':", self.stack);
        if !self.has_changes() {
            let _ = writeln!(out, "\n  No changes. {} unchanged.", self.summary.same);
            return out;
        }
        out.push('\n');
        for item in grouped(self) {
            match item {
                (depth, Item::Change(change)) => render_change(&mut out, change, options, depth),
                (depth, Item::Component(urn)) => {
                    // Where a change's mark would be, none: the component itself has no action.
                    let _ = writeln!(out, "{}      {} {}", "  ".repeat(depth), urn.ty(), urn.name());
                }
            }
        }
        if !self.output_diffs.is_empty() {
            if self.summary.changes() > 0 {
                out.push('\n');
            }
            out.push_str("Outputs:\n");
            render_diffs(&mut out, &self.output_diffs, Action::Update, "    ");
        }
        let s = &self.summary;
        out.push_str("\nResources:\n");
        for (n, action, label) in [
            (s.create, Action::Create, "to create"),
            (s.update, Action::Update, "to update"),
            (s.replace, Action::Replace, "to replace"),
            (s.delete, Action::Delete, "to delete"),
        ] {
            if n > 0 {
                let sym = match action {
                    Action::Create => "+",
                    Action::Update => "~",
                    Action::Replace => "+/-",
                    _ => "-",
                };
                paint(&mut out, options, action, &format!("    {sym} {n} {label}"));
                out.push('\n');
            }
        }
        let _ = writeln!(out, "    {} changes. {} unchanged", s.changes(), s.same);
        out
    }
}

fn paint(out: &mut String, options: RenderOptions, action: Action, text: &str) {
    if options.color && action != Action::Same {
        out.push_str(colour(action));
        out.push_str(text);
        out.push_str(RESET);
    } else {
        out.push_str(text);
    }
}

/// A line of the plan: a changed resource, or the header of the component a group of
/// them belongs to.
enum Item<'a> {
    Change(&'a Change),
    Component(&'a Urn),
}

/// The changes in plan order, each component's shown together under its header where
/// its first change is, components inside components indented further; with their
/// depths.
fn grouped(plan: &Plan) -> Vec<(usize, Item<'_>)> {
    let parent_of = |urn: &Urn| plan.components.iter().find(|c| &c.urn == urn).and_then(|c| c.parent.as_ref());
    // The members of each group (`None`: the top), in order of first appearance.
    let mut members: Vec<(Option<&Urn>, Vec<Item<'_>>)> = vec![(None, Vec::new())];
    fn place<'a>(members: &mut Vec<(Option<&'a Urn>, Vec<Item<'a>>)>, parent: Option<&'a Urn>, item: Item<'a>, parent_of: &dyn Fn(&Urn) -> Option<&'a Urn>) {
        if let Some(p) = parent {
            if !members.iter().any(|(g, _)| *g == Some(p)) {
                members.push((Some(p), Vec::new()));
                // Guard against a component that names itself as its parent.
                let up = parent_of(p).filter(|&q| q != p);
                place(members, up, Item::Component(p), parent_of);
            }
        }
        let group = members.iter_mut().find(|(g, _)| *g == parent).expect("the group was made above");
        group.1.push(item);
    }
    for change in plan.changed() {
        place(&mut members, change.options.parent.as_ref(), Item::Change(change), &parent_of);
    }
    let mut out = Vec::new();
    fn walk<'a>(members: &mut Vec<(Option<&'a Urn>, Vec<Item<'a>>)>, group: Option<&'a Urn>, depth: usize, out: &mut Vec<(usize, Item<'a>)>) {
        let Some(i) = members.iter().position(|(g, _)| *g == group) else { return };
        let items = std::mem::take(&mut members[i].1);
        for item in items {
            match item {
                Item::Component(urn) => {
                    out.push((depth, Item::Component(urn)));
                    walk(members, Some(urn), depth + 1, out);
                }
                change => out.push((depth, change)),
            }
        }
    }
    walk(&mut members, None, 0, &mut out);
    // Groups the top does not reach (components that are each other's parents, as only
    // a hand-edited plan can say) are shown at the top, so no change is hidden.
    while let Some(i) = members.iter().position(|(g, items)| g.is_some() && !items.is_empty()) {
        let group = members[i].0;
        out.push((0, Item::Component(group.expect("not the top"))));
        walk(&mut members, group, 1, &mut out);
    }
    out
}

fn render_change(out: &mut String, change: &Change, options: RenderOptions, depth: usize) {
    let indent = "  ".repeat(depth);
    let mut head = format!("{indent}  {} {} {}", mark(change), change.ty, change.urn.name());
    let notes = notes(change);
    if !notes.is_empty() {
        let _ = write!(head, "  ({})", notes.join("; "));
    }
    paint(out, options, change.action, &head);
    out.push('\n');
    if !options.diff {
        return;
    }
    render_diffs(out, &change.diffs, change.action, &format!("{indent}      "));
}

/// One line per property: `name: value` for a create, else `~ name: old => new`.
fn render_diffs(out: &mut String, diffs: &[PropertyDiff], action: Action, indent: &str) {
    let width = diffs.iter().map(|d| d.name.len()).max().unwrap_or(0);
    for d in diffs {
        let show = |v: &Option<Value>| match v {
            Some(Value::String(s)) if d.secret => s.clone(),
            Some(v) => v.to_string(),
            None => "(none)".to_owned(),
        };
        let new = if d.known { show(&d.new) } else { "(known after apply)".to_owned() };
        let line = if action == Action::Create {
            format!("{indent}  {:width$}: {new}", d.name)
        } else {
            let sym = prop_symbol(d);
            let value = match (&d.old, d.known, &d.new) {
                (None, _, _) => new,
                (Some(_), true, None) => show(&d.old),
                _ => format!("{} => {new}", show(&d.old)),
            };
            let tail = match (d.replaces, d.known) {
                (true, true) => "  (forces replacement)",
                (true, false) => "  (may force replacement)",
                _ => "",
            };
            format!("{indent}{sym} {:width$}: {value}{tail}", d.name)
        };
        out.push_str(&line);
        out.push('\n');
    }
}

fn prop_symbol(d: &PropertyDiff) -> char {
    match (&d.old, d.known, &d.new) {
        (None, _, _) => '+',
        (Some(_), true, None) => '-',
        _ => '~',
    }
}

fn notes(change: &Change) -> Vec<String> {
    let mut notes = Vec::new();
    match change.action {
        Action::Replace => {
            let verb = if change.may_replace { "may replace" } else { "replace" };
            notes.push(format!("{verb}: {}", change.replace_reasons.join(", ")));
            if change.delete_before_replace {
                notes.push("delete before create".to_owned());
            }
        }
        Action::Delete if change.pending_delete => notes.push("old copy left by a replacement".to_owned()),
        _ => {}
    }
    if let Some(old) = &change.after_delete {
        notes.push(format!("after deleting {} {}: the same cloud object", old.ty(), old.name()));
    }
    if change.options.retain_on_delete && matches!(change.action, Action::Delete | Action::Replace) {
        notes.push("retained: the old one is forgotten, not deleted".to_owned());
    }
    notes
}
