use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A resource's properties: a small map from property name to JSON value, kept
/// sorted by name.
///
/// Resources have a handful of top-level properties, and a stack may hold 100,000
/// resources, so this is a sorted vector rather than a tree or hash map: a third of
/// the memory, and iteration in a stable order for free. Serialized as a JSON object.
#[derive(Clone, Default, PartialEq)]
pub struct Props(Vec<(String, Value)>);

impl Props {
    /// An empty map.
    pub fn new() -> Self {
        Props(Vec::new())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        // Most maps hold a handful of keys: a scan that compares lengths first beats a
        // binary search, whose every probe is a full string comparison.
        if self.0.len() <= 12 {
            return self.0.iter().find(|(k, _)| k.len() == key.len() && k == key).map(|(_, v)| v);
        }
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                // Maps stay small: grow by one rather than double.
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// The properties in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The property names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The properties as a JSON object.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.iter().cloned().collect())
    }

    /// Builds a map from a JSON object; any other value gives `None`.
    pub fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Object(map) => Some(map.into_iter().collect()),
            _ => None,
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl FromIterator<(String, Value)> for Props {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut v: Vec<(String, Value)> = iter.into_iter().collect();
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
        v.shrink_to_fit();
        Props(v)
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
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
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
                while let Some((k, val)) = access.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(v.into_iter().collect())
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
    fn serializes_as_a_json_object() {
        let mut p = Props::new();
        p.insert("z", json!("x"));
        p.insert("a", json!([1]));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"a":[1],"z":"x"}"#);
        assert_eq!(serde_json::from_str::<Props>(&text).unwrap(), p);
    }
}
