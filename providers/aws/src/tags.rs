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
    /// From the tags `old` to the user's tags `new`. Cairn's own tags in `old` are what
    /// [`observed`] found on a resource that lacks them: they are set again.
    pub(crate) fn new(urn: &Urn, old: Option<&Tags>, new: Option<&Tags>) -> Self {
        let mut before = wanted(urn, old);
        before.extend(old.into_iter().flatten().filter(|(k, _)| is_cairns(k)).map(|(k, v)| (k.clone(), v.clone())));
        let after = wanted(urn, new);
        Retag {
            remove: before.keys().filter(|k| !after.contains_key(*k)).cloned().collect(),
            set: after.into_iter().filter(|(k, v)| before.get(k) != Some(v)).collect(),
        }
    }
}

/// The user's tags among `found`, as the `tags` input holds them: without Cairn's own,
/// and without a `Name` that is just the logical name. `None` when there are none.
///
/// A resource whose create stopped between the create call and its tagging call lacks
/// Cairn's own tags: they show with the value found (empty when absent), so the diff
/// against the declaration changes `tags` and the update puts them back.
pub(crate) fn observed<K: AsRef<str>, V: AsRef<str>>(urn: &Urn, found: impl IntoIterator<Item = (K, V)>) -> Option<Tags> {
    let mut mine = Tags::default();
    let (mut stack, mut own_urn) = (None, None);
    for (k, v) in found {
        let (k, v) = (k.as_ref(), v.as_ref());
        match k {
            STACK => stack = Some(v.to_owned()),
            URN => own_urn = Some(v.to_owned()),
            _ if is_cairns(k) || (k == "Name" && v == urn.name()) => {}
            _ => {
                mine.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    for (key, found, want) in [(STACK, stack, urn.stack()), (URN, own_urn, urn.as_str())] {
        if found.as_deref() != Some(want) {
            mine.insert(key.to_owned(), found.unwrap_or_default());
        }
    }
    (!mine.is_empty()).then_some(mine)
}

fn is_cairns(key: &str) -> bool {
    key.starts_with("cairn:")
}

/// Whether `found` says the resource is `urn`.
pub(crate) fn is_tagged<K: AsRef<str>, V: AsRef<str>>(urn: &Urn, found: impl IntoIterator<Item = (K, V)>) -> bool {
    found.into_iter().any(|(k, v)| k.as_ref() == URN && v.as_ref() == urn.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_missing_cairns_tags_shows_them_and_an_update_sets_them() {
        let urn = Urn::new("dev", "aws:route53:Zone", "shop");
        let declared: Tags = [("team".to_owned(), "web".to_owned())].into();
        let tagged = wanted(&urn, Some(&declared));
        assert_eq!(observed(&urn, &tagged), Some(declared.clone()));

        let untagged = [("team", "web")];
        let found = observed(&urn, untagged).unwrap();
        assert_eq!(found.get(STACK).map(String::as_str), Some(""));
        assert_eq!(found.get(URN).map(String::as_str), Some(""));
        let change = Retag::new(&urn, Some(&found), Some(&declared));
        assert!(change.remove.is_empty(), "{:?}", change.remove);
        let set: Tags = change.set.into_iter().collect();
        assert_eq!(set.get(STACK).map(String::as_str), Some("dev"));
        assert_eq!(set.get(URN).map(String::as_str), Some(urn.as_str()));

        let unchanged = Retag::new(&urn, Some(&declared), Some(&declared));
        assert!(unchanged.remove.is_empty() && unchanged.set.is_empty());
    }
}
