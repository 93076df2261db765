//! EventBridge: rules and their targets.
//!
//! A [`Rule`] matches events on an event bus (by an event pattern) or fires on a schedule;
//! a [`Target`] is where a rule sends what it matches, such as an SQS queue (whose
//! [`QueuePolicy`](crate::sqs::QueuePolicy) must let `events.amazonaws.com` send to it).
//!
//! ```
//! use cairn_aws::eventbridge::{Rule, Target};
//! use cairn_aws::sqs::{Queue, QueuePolicy};
//! use serde_json::json;
//!
//! let stack = cairn_sdk::Stack::<()>::new("alarms").program(|cx, _| {
//!     let queue = cx.add(Queue::new("alarms"));
//!     let rule = cx.add(Rule::new("alarm-changes").event_pattern(json!({
//!         "source": ["aws.cloudwatch"],
//!         "detail-type": ["CloudWatch Alarm State Change"],
//!     })));
//!     cx.add(Target::new("to-queue").rule(rule.name()).arn(queue.arn()));
//!     cx.add(QueuePolicy::new("alarms").queue_url(queue.url()).allow_service(queue.arn(), "events.amazonaws.com", rule.arn()));
//!     Ok(())
//! });
//! # let _ = stack;
//! ```

pub mod rule;
pub mod target;

pub use rule::{Rule, RuleRef, RULE};
pub use target::{Target, TargetRef, TARGET};

use cairn_sdk::{CheckFailure, Decl};
use serde_json::Value;

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(RULE.token, &rule::RuleKind);
    kinds.insert(TARGET.token, &target::TargetKind);
}

/// The event bus every account has, where AWS services send their events.
pub(crate) const DEFAULT_BUS: &str = "default";

/// What EventBridge answers when a rule (or its event bus) does not exist.
pub(crate) const MISSING: &[&str] = &["ResourceNotFoundException"];

/// Whether `s` is a valid rule name or target id: 1 to 64 letters, digits, `.`, `-` or `_`.
pub(crate) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Checks a rule name or target id in `key`; when it is unset and `default` is what it
/// becomes (the logical name, perhaps with a suffix), checks that instead.
pub(crate) fn check_name(decl: &Decl, key: &str, default: Option<String>, out: &mut Vec<CheckFailure>) {
    const ALLOWED: &str = "be 1 to 64 letters, digits, '.', '-' or '_'";
    match (decl.value(key), default) {
        (Some(v), _) if !v.as_str().is_some_and(is_name) => out.push(CheckFailure::new(key, Some(v), ALLOWED)),
        (Some(_), _) => {}
        (None, Some(default)) if decl.get(key).is_none() && !is_name(&default) => out.push(CheckFailure::new(
            key,
            None,
            format!("be set, as the default {default:?} made from the logical name does not fit: it must {ALLOWED}"),
        )),
        _ => {}
    }
}

/// Checks an event bus name (or ARN) in `event_bus_name`.
pub(crate) fn check_bus(decl: &Decl, out: &mut Vec<CheckFailure>) {
    let Some(v) = decl.value("event_bus_name") else { return };
    let ok = v.as_str().is_some_and(|s| {
        (1..=1600).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':'))
    });
    if !ok {
        out.push(CheckFailure::new(
            "event_bus_name",
            Some(v),
            "be an event bus name (letters, digits, '.', '-', '_', '/') or ARN, such as \"default\"",
        ));
    }
}

/// The parts of an id made of `n` parts joined by `|`.
pub(crate) fn split_id<'a, const N: usize>(id: &'a str, what: &str) -> Result<[&'a str; N], cairn_sdk::ProviderError> {
    let parts: Vec<&str> = id.split('|').collect();
    parts.try_into().map_err(|_| {
        cairn_sdk::ProviderError::failed(format!(
            "{id:?} is not the id of an EventBridge {what} (expected {N} parts joined by '|'); was the state edited by hand?"
        ))
    })
}

/// A JSON text as a value, or the text itself when it is not JSON.
pub(crate) fn json_or_text(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::from(s))
}
