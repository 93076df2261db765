//! Plans rendered for people, in the spirit of `pulumi preview --diff`.

use std::fmt::Write as _;

use serde_json::Value;

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
        for change in self.changed() {
            render_change(&mut out, change, options);
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

fn render_change(out: &mut String, change: &Change, options: RenderOptions) {
    let mut head = format!("  {} {} {}", mark(change), change.ty, change.urn.name());
    let notes = notes(change);
    if !notes.is_empty() {
        let _ = write!(head, "  ({})", notes.join("; "));
    }
    paint(out, options, change.action, &head);
    out.push('\n');
    if !options.diff {
        return;
    }
    render_diffs(out, &change.diffs, change.action, "      ");
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
    if change.options.retain_on_delete && matches!(change.action, Action::Delete | Action::Replace) {
        notes.push("retained: the old one is forgotten, not deleted".to_owned());
    }
    notes
}
