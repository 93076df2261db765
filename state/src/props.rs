use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A resource's properties: a small map from property name to JSON value, kept
/// sorted by name.
///
/// Resources have a handful of top-level properties, and a stack may hold 100,000
/// resources, so this is a sorted array rather than a tree or hash map: a third of
/// the memory, and iteration in a stable order for free. Serialized as a JSON object.
///
/// Cheap to clone: the entries are shared, and copied only when a shared map is
/// changed. An apply carries every unchanged resource's inputs and outputs into the new
/// state, and the session and a memory store keep copies of that state; sharing makes
/// those copies cost a reference count per map instead of a deep copy of every value.
/// The slice sits right after its counts in one allocation, so reading a value costs
/// the same pointer hops as a `Vec` would.
///
/// The names are shared too: a stack's resources use the same few dozen property
/// names, so each name is allocated once (per thread that reads or builds maps) rather
/// than once per resource and map. At 100,000 resources that is about a million
/// allocations fewer.
#[derive(Clone, Default)]
pub struct Props(Option<Arc<[(Key, Value)]>>);

/// A property name, shared between the maps that use it (see [`Props`]).
#[derive(Clone, PartialOrd, Ord)]
struct Key(Arc<str>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        // Names a thread shares are one allocation: equal names are usually one pointer.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Key {}

/// How many distinct names a thread shares before it allocates each new one alone:
/// property names come from resource schemas, so a real stack stays far below it, and
/// a program that makes up names as it goes cannot grow the table without bound.
const SHARED_KEYS_MAX: usize = 4096;

impl Key {
    fn new(name: &str) -> Key {
        thread_local! {
            static SHARED: RefCell<FxHashSet<Arc<str>>> = RefCell::default();
        }
        SHARED.with_borrow_mut(|shared| {
            if let Some(k) = shared.get(name) {
                return Key(k.clone());
            }
            let k: Arc<str> = Arc::from(name);
            if shared.len() < SHARED_KEYS_MAX {
                shared.insert(k.clone());
            }
            Key(k)
        })
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// Reads a name straight into a [`Key`], without an owned `String` in between.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key::new(v))
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.entries() == other.entries(),
        }
    }
}

impl Props {
    /// An empty map.
    pub fn new() -> Self {
        Props(None)
    }

    fn entries(&self) -> &[(Key, Value)] {
        self.0.as_deref().unwrap_or_default()
    }

    /// Changes the entries with `f`, in a vector: moved out if this map alone holds
    /// them, copied if another shares them.
    fn edit<T>(&mut self, f: impl FnOnce(&mut Vec<(Key, Value)>) -> T) -> T {
        let mut entries: Vec<(Key, Value)> = match self.0.take() {
            None => Vec::new(),
            Some(mut shared) => match Arc::get_mut(&mut shared) {
                Some(own) => own.iter_mut().map(|(k, v)| (k.clone(), std::mem::take(v))).collect(),
                None => shared.to_vec(),
            },
        };
        let out = f(&mut entries);
        self.0 = (!entries.is_empty()).then(|| Arc::from(entries));
        out
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        // Most maps hold a handful of keys: a scan that compares lengths first beats a
        // binary search, whose every probe is a full string comparison.
        let entries = self.entries();
        if entries.len() <= 12 {
            return entries.iter().find(|(k, _)| k.0.len() == key.len() && k.as_str() == key).map(|(_, v)| v);
        }
        self.find(key).ok().map(|i| &entries[i].1)
    }

    /// Sets `key`, returning the previous value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: Value) -> Option<Value> {
        let key = key.as_ref();
        match self.find(key) {
            Ok(i) => match self.0.as_mut().and_then(Arc::get_mut) {
                Some(own) => Some(std::mem::replace(&mut own[i].1, value)),
                None => self.edit(|entries| Some(std::mem::replace(&mut entries[i].1, value))),
            },
            Err(i) => {
                // Straight into a new shared slice of the new length: one allocation,
                // and the entries moved (or, if shared, copied) once.
                let mut old = self.0.take();
                let new = (Key::new(key), value);
                self.0 = Some(match old.as_mut().and_then(Arc::get_mut) {
                    Some(own) => {
                        let (before, after) = own.split_at_mut(i);
                        let take = |(k, v): &mut (Key, Value)| (k.clone(), std::mem::take(v));
                        before.iter_mut().map(take).chain(std::iter::once(new)).chain(after.iter_mut().map(take)).collect()
                    }
                    None => {
                        let shared = old.as_deref().unwrap_or_default();
                        let (before, after) = shared.split_at(i);
                        before.iter().cloned().chain(std::iter::once(new)).chain(after.iter().cloned()).collect()
                    }
                });
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.find(key).ok()?;
        Some(self.edit(|entries| entries.remove(i).1))
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// The properties in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries().iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The property names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().iter().map(|(k, _)| k.as_str())
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The properties as a JSON object.
    pub fn to_value(&self) -> Value {
        Value::Object(self.entries().iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
    }

    /// Builds a map from a JSON object; any other value gives `None`.
    pub fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Object(map) => Some(map.into_iter().collect()),
            _ => None,
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries().binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl FromIterator<(String, Value)> for Props {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Props::from_entries(iter.into_iter().map(|(k, v)| (Key::new(&k), v)).collect())
    }
}

/// From borrowed names: no `String` is made for a name that is already shared.
impl<'a> FromIterator<(&'a str, Value)> for Props {
    fn from_iter<I: IntoIterator<Item = (&'a str, Value)>>(iter: I) -> Self {
        Props::from_entries(iter.into_iter().map(|(k, v)| (Key::new(k), v)).collect())
    }
}

impl Props {
    /// The map of `v`'s entries, in any order.
    fn from_entries(mut v: Vec<(Key, Value)>) -> Self {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        // Last write wins, as with a map.
        v.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Props((!v.is_empty()).then(|| Arc::from(v)))
    }
}

impl<'a> IntoIterator for &'a Props {
    type Item = (&'a str, &'a Value);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl fmt::Debug for Props {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Props {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (k, v) in entries {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Props {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor;
        impl<'de> Visitor<'de> for PropsVisitor {
            type Value = Props;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of properties")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Props, A::Error> {
                let mut v = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some(k) = access.next_key_seed(KeySeed)? {
                    v.push((k, access.next_value::<Value>()?));
                }
                Ok(Props::from_entries(v))
            }
        }
        deserializer.deserialize_map(PropsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_keys_sorted_and_last_write_wins() {
        let p: Props = vec![
            ("b".to_owned(), json!(1)),
            ("a".to_owned(), json!(2)),
            ("b".to_owned(), json!(3)),
        ]
        .into_iter()
        .collect();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p.get("b"), Some(&json!(3)));
    }

    #[test]
    fn a_changed_clone_leaves_the_original_alone() {
        let mut a = Props::new();
        a.insert("size", json!(1));
        a.insert("name", json!("web"));
        let mut b = a.clone();
        b.insert("size", json!(2));
        b.remove("name");
        assert_eq!(a.get("size"), Some(&json!(1)));
        assert_eq!(a.get("name"), Some(&json!("web")));
        assert_eq!(b.keys().collect::<Vec<_>>(), ["size"]);
        assert_ne!(a, b);
        let mut c = a.clone();
        assert_eq!(c, a);
        c.remove("size");
        c.remove("name");
        assert_eq!(c, Props::new(), "emptied by removes equals empty");
    }

    #[test]
    fn serializes_as_a_json_object() {
        let mut p = Props::new();
        p.insert("z", json!("x"));
        p.insert("a", json!([1]));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"a":[1],"z":"x"}"#);
        assert_eq!(serde_json::from_str::<Props>(&text).unwrap(), p);
    }
}
