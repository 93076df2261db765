//! The tags Cairn puts on everything it creates.

use std::collections::HashMap;

use cairn_sdk::{Props, Urn};
use serde_json::Value;

/// The stack a resource belongs to.
pub(crate) const STACK: &str = "cairn:stack";
/// The resource's URN: how an interrupted create is found again.
pub(crate) const URN: &str = "cairn:urn";

/// The user's `tags` input plus Cairn's own.
pub(crate) fn with_cairn_tags(urn: &Urn, inputs: &Props) -> HashMap<String, String> {
    let mut tags = user_tags(inputs);
    tags.insert(STACK.to_owned(), urn.stack().to_owned());
    tags.insert(URN.to_owned(), urn.as_str().to_owned());
    tags
}

/// The `tags` input as a map.
pub(crate) fn user_tags(inputs: &Props) -> HashMap<String, String> {
    match inputs.get("tags") {
        Some(Value::Object(map)) => {
            map.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
        }
        _ => HashMap::new(),
    }
}

/// Tags as seen in the cloud, without Cairn's own, as the `tags` input would hold them;
/// `None` when there are none (the input was not set).
pub(crate) fn observed_user_tags<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> Option<Value> {
    let map: serde_json::Map<String, Value> = tags
        .into_iter()
        .filter(|(k, _)| !k.starts_with("cairn:"))
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    (!map.is_empty()).then_some(Value::Object(map))
}

/// Whether a resource's tags say it is `urn`.
pub(crate) fn is_tagged<'a>(urn: &Urn, mut tags: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    tags.any(|(k, v)| k == URN && v == urn.as_str())
}

/// Tag pairs as the `tags` input's JSON object.
pub(crate) fn to_value<K: Into<String>, V: Into<String>>(tags: impl IntoIterator<Item = (K, V)>) -> Value {
    Value::Object(tags.into_iter().map(|(k, v)| (k.into(), Value::String(v.into()))).collect())
}
