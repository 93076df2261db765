//! The tags Cairn puts on everything it creates, the same for every kind: the user's
//! `tags`, `Name` (the logical name, unless the user set one) and Cairn's own two. Each
//! service only differs in the calls that write them.

use cairn_sdk::{Tags, Urn};

/// The stack a resource belongs to.
pub(crate) const STACK: &str = "cairn:stack";
/// The resource's URN: how an interrupted create is found again.
pub(crate) const URN: &str = "cairn:urn";

/// Every tag the resource should carry.
pub(crate) fn wanted(urn: &Urn, user: Option<&Tags>) -> Tags {
    let mut all = user.cloned().unwrap_or_default();
    all.entry("Name".to_owned()).or_insert_with(|| urn.name().to_owned());
    all.insert(STACK.to_owned(), urn.stack().to_owned());
    all.insert(URN.to_owned(), urn.as_str().to_owned());
    all
}

/// What an update changes in the tags: keys to remove, pairs to add or overwrite.
pub(crate) struct Retag {
    pub(crate) remove: Vec<String>,
    pub(crate) set: Vec<(String, String)>,
}

impl Retag {
    /// From the user's tags `old` to `new`.
    pub(crate) fn new(urn: &Urn, old: Option<&Tags>, new: Option<&Tags>) -> Self {
        let (before, after) = (wanted(urn, old), wanted(urn, new));
        Retag {
            remove: before.keys().filter(|k| !after.contains_key(*k)).cloned().collect(),
            set: after.into_iter().filter(|(k, v)| before.get(k) != Some(v)).collect(),
        }
    }
}

/// The user's tags among `found`, as the `tags` input holds them: without Cairn's own,
/// and without a `Name` that is just the logical name. `None` when there are none.
pub(crate) fn observed<K: AsRef<str>, V: AsRef<str>>(urn: &Urn, found: impl IntoIterator<Item = (K, V)>) -> Option<Tags> {
    let mine: Tags = found
        .into_iter()
        .filter(|(k, v)| {
            let (k, v) = (k.as_ref(), v.as_ref());
            let cairns = k.starts_with("cairn:");
            let default_name = k == "Name" && v == urn.name();
            !(cairns || default_name)
        })
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .collect();
    (!mine.is_empty()).then_some(mine)
}

/// Whether `found` says the resource is `urn`.
pub(crate) fn is_tagged<K: AsRef<str>, V: AsRef<str>>(urn: &Urn, found: impl IntoIterator<Item = (K, V)>) -> bool {
    found.into_iter().any(|(k, v)| k.as_ref() == URN && v.as_ref() == urn.as_str())
}
