//! Inputs and outputs: how one resource's property feeds another's.
//!
//! An [`Output<T>`] is a reference to a property of another resource, known once that
//! resource exists. Every input of a builder takes an [`Input<T>`], which is either a
//! literal or an output; the engine draws the graph's edges from these references.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use cairn_state::Urn;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A reference to property `property` of resource `urn`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputRef {
    /// The resource that produces the value.
    pub urn: Urn,
    /// The property of that resource (an output, or an input it echoes).
    pub property: Cow<'static, str>,
}

/// A declared property value: a literal, a reference, or a list or object that holds
/// references somewhere inside. A fully literal subtree is always a single `Value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prop {
    /// A literal.
    Value(Value),
    /// The value of another resource's property.
    Output(OutputRef),
    /// A list with at least one reference in it.
    List(Vec<Prop>),
    /// An object with at least one reference in it, keys sorted.
    Object(Vec<(String, Prop)>),
}

impl Prop {
    /// Calls `f` on every reference inside.
    pub fn for_each_ref<'a>(&'a self, f: &mut impl FnMut(&'a OutputRef)) {
        match self {
            Prop::Value(_) => {}
            Prop::Output(r) => f(r),
            Prop::List(items) => items.iter().for_each(|p| p.for_each_ref(f)),
            Prop::Object(fields) => fields.iter().for_each(|(_, p)| p.for_each_ref(f)),
        }
    }

    /// The value with every reference replaced by `lookup(reference)`; `None` when any
    /// reference is not known yet.
    pub fn resolve(&self, lookup: &mut impl FnMut(&OutputRef) -> Option<Value>) -> Option<Value> {
        match self {
            Prop::Value(v) => Some(v.clone()),
            Prop::Output(r) => lookup(r),
            Prop::List(items) => items.iter().map(|p| p.resolve(lookup)).collect::<Option<Vec<_>>>().map(Value::Array),
            Prop::Object(fields) => fields
                .iter()
                .map(|(k, p)| p.resolve(lookup).map(|v| (k.clone(), v)))
                .collect::<Option<serde_json::Map<_, _>>>()
                .map(Value::Object),
        }
    }

    /// Collapses a list of props into one, staying a literal when every item is.
    pub fn list(items: Vec<Prop>) -> Prop {
        if items.iter().all(|p| matches!(p, Prop::Value(_))) {
            Prop::Value(Value::Array(
                items.into_iter().map(|p| if let Prop::Value(v) = p { v } else { unreachable!() }).collect(),
            ))
        } else {
            Prop::List(items)
        }
    }

    /// The value if it is a literal.
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Prop::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Collapses an object of props into one, staying a literal when every field is.
    pub fn object(mut fields: Vec<(String, Prop)>) -> Prop {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        if fields.iter().all(|(_, p)| matches!(p, Prop::Value(_))) {
            Prop::Value(Value::Object(
                fields.into_iter().map(|(k, p)| if let Prop::Value(v) = p { (k, v) } else { unreachable!() }).collect(),
            ))
        } else {
            Prop::Object(fields)
        }
    }
}

/// A typed reference to another resource's property, known after that resource is
/// created. Get one from a resource's handle (`vpc.id()`), pass it to any input.
pub struct Output<T> {
    reference: OutputRef,
    _type: PhantomData<fn() -> T>,
}

impl<T> Output<T> {
    /// A reference to `property` of the resource named by `urn`.
    pub fn new(urn: Urn, property: impl Into<Cow<'static, str>>) -> Self {
        Output { reference: OutputRef { urn, property: property.into() }, _type: PhantomData }
    }

    /// What it refers to.
    pub fn reference(&self) -> &OutputRef {
        &self.reference
    }
}

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Output { reference: self.reference.clone(), _type: PhantomData }
    }
}

impl<T> fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Output({}.{})", self.reference.urn, self.reference.property)
    }
}

/// A value for an input: a literal `T` or an [`Output<T>`] of another resource.
///
/// Builders take `impl Into<Input<T>>`, so both `"10.0.0.0/16"` and `vpc.cidr_block()`
/// are accepted where a string is expected.
pub struct Input<T> {
    prop: Prop,
    _type: PhantomData<fn() -> T>,
}

impl<T> Input<T> {
    fn from_prop(prop: Prop) -> Self {
        Input { prop, _type: PhantomData }
    }

    /// The type-erased value the engine works with.
    pub fn into_prop(self) -> Prop {
        self.prop
    }
}

impl<T: Serialize> Input<T> {
    /// A literal value.
    pub fn value(value: T) -> Self {
        // Serializing plain data into a Value cannot fail; a type whose Serialize impl
        // errors on purpose is a bug in that type.
        Self::from_prop(Prop::Value(serde_json::to_value(value).expect("input values serialize to JSON")))
    }
}

impl<T> Input<Vec<T>> {
    /// A list whose items may each be a literal or an output.
    pub fn list<I, X>(items: I) -> Self
    where
        I: IntoIterator<Item = X>,
        X: Into<Input<T>>,
    {
        Self::from_prop(Prop::list(items.into_iter().map(|x| x.into().prop).collect()))
    }
}

impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Self::from_prop(self.prop.clone())
    }
}

impl<T> fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.prop, f)
    }
}

impl<T> From<Output<T>> for Input<T> {
    fn from(o: Output<T>) -> Self {
        Self::from_prop(Prop::Output(o.reference))
    }
}

impl<T> From<&Output<T>> for Input<T> {
    fn from(o: &Output<T>) -> Self {
        Self::from_prop(Prop::Output(o.reference.clone()))
    }
}

impl From<&str> for Input<String> {
    fn from(s: &str) -> Self {
        Self::from_prop(Prop::Value(Value::from(s)))
    }
}

impl From<&String> for Input<String> {
    fn from(s: &String) -> Self {
        Self::from_prop(Prop::Value(Value::from(s.as_str())))
    }
}

macro_rules! literal_inputs {
    ($($t:ty),*) => {$(
        impl From<$t> for Input<$t> {
            fn from(v: $t) -> Self {
                Self::from_prop(Prop::Value(Value::from(v)))
            }
        }
    )*};
}
literal_inputs!(String, bool, u8, u16, u32, u64, i32, i64, f64);

impl From<Value> for Input<Value> {
    fn from(v: Value) -> Self {
        Self::from_prop(Prop::Value(v))
    }
}

impl<T> From<Vec<T>> for Input<Vec<T>>
where
    T: Into<Input<T>>,
{
    fn from(items: Vec<T>) -> Self {
        Input::list(items)
    }
}

impl<T> From<Vec<Output<T>>> for Input<Vec<T>> {
    fn from(items: Vec<Output<T>>) -> Self {
        Input::list(items)
    }
}

impl<T, const N: usize> From<[Output<T>; N]> for Input<Vec<T>> {
    fn from(items: [Output<T>; N]) -> Self {
        Input::list(items)
    }
}

impl<const N: usize> From<[&str; N]> for Input<Vec<String>> {
    fn from(items: [&str; N]) -> Self {
        Input::list(items)
    }
}

/// A resource's own tags, key to value: what a `tags` input holds.
///
/// A `tags` setter takes any of `[("team", "shop")]`, a `Vec` of pairs or a map.
pub type Tags = std::collections::BTreeMap<String, String>;

fn tags_input<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Input<Tags> {
    Input::from_prop(Prop::Value(Value::Object(pairs.into_iter().map(|(k, v)| (k.into(), Value::String(v.into()))).collect())))
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Input<Tags> {
    fn from(pairs: [(K, V); N]) -> Self {
        tags_input(pairs)
    }
}

impl<K: Into<String>, V: Into<String>> From<Vec<(K, V)>> for Input<Tags> {
    fn from(pairs: Vec<(K, V)>) -> Self {
        tags_input(pairs)
    }
}

impl<K: Into<String>, V: Into<String>> From<std::collections::BTreeMap<K, V>> for Input<Tags> {
    fn from(map: std::collections::BTreeMap<K, V>) -> Self {
        tags_input(map)
    }
}

impl<K: Into<String>, V: Into<String>, S> From<std::collections::HashMap<K, V, S>> for Input<Tags> {
    fn from(map: std::collections::HashMap<K, V, S>) -> Self {
        tags_input(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn urn(name: &str) -> Urn {
        Urn::new("dev", "test:Thing", name)
    }

    #[test]
    fn literal_lists_collapse_to_one_value() {
        let i: Input<Vec<String>> = ["a", "b"].into();
        assert_eq!(i.into_prop(), Prop::Value(json!(["a", "b"])));
    }

    #[test]
    fn a_list_with_an_output_keeps_the_reference_and_resolves_later() {
        let out: Output<String> = Output::new(urn("vpc"), "id");
        let i = Input::<Vec<String>>::list([Input::from("literal"), Input::from(&out)]);
        let prop = i.into_prop();
        let mut refs = vec![];
        prop.for_each_ref(&mut |r| refs.push(r.property.clone()));
        assert_eq!(refs, ["id"]);
        assert_eq!(prop.resolve(&mut |_| None), None, "unknown while the reference is");
        assert_eq!(prop.resolve(&mut |_| Some(json!("vpc-1"))), Some(json!(["literal", "vpc-1"])));
    }
}
