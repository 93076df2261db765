//! Inputs and outputs: how one resource's property feeds another's.
//!
//! An [`Output<T>`] is a value known once other resources exist: a property of one
//! resource, or a value computed from such properties with [`Output::map`],
//! [`Output::zip`], [`all`] or [`interpolate!`](crate::interpolate). Every input of a
//! builder takes an [`Input<T>`], which is either a literal or an output; the engine
//! draws the graph's edges from the references inside.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cairn_state::Urn;
use serde::de::DeserializeOwned;
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
    /// A value the program computes from others once they are known. Boxed: it is the
    /// rare kind and the largest, and a graph holds hundreds of thousands of props.
    Apply(Box<Apply>),
}

/// What a program's function computes an [`Output`] from: its arguments, resolved,
/// are passed to the function in order.
///
/// A saved plan keeps the arguments and the label but not the function: applying it
/// renders the program again (from the plan's user state) to find the function at the
/// same place, so a saved plan is applied by the program that made it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Apply {
    /// What the function does, for plans and errors: `map`, `interpolate "…"`.
    pub label: Cow<'static, str>,
    /// Its arguments.
    pub args: Vec<Prop>,
    #[serde(skip)]
    function: Option<Function>,
}

type Function = Arc<dyn Fn(&[Value]) -> Result<Value, String> + Send + Sync>;

impl Apply {
    /// `function` of `args`, described by `label`.
    pub fn new(
        label: impl Into<Cow<'static, str>>,
        args: Vec<Prop>,
        function: impl Fn(&[Value]) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Apply { label: label.into(), args, function: Some(Arc::new(function)) }
    }

    /// Whether it has its function (one read from a saved plan has not, until
    /// [`Prop::restore_functions`]).
    pub fn has_function(&self) -> bool {
        self.function.is_some()
    }

    fn call(&self, args: &[Value]) -> Result<Value, String> {
        let function = self.function.as_ref().ok_or_else(|| {
            format!("the function of `{}` is not known: a saved plan is applied by the program that saved it", self.label)
        })?;
        // A function of secrets sees their plaintext, and what it computes is as secret
        // as they are: sealed with the key of the first.
        let mut sealed_by = None;
        let mut opened = Vec::new();
        if args.iter().any(crate::secret::contains_sealed) {
            for arg in args {
                let (value, by) = crate::secret::open_all(arg).map_err(|e| format!("`{}` needs a secret: {e}", self.label))?;
                sealed_by = sealed_by.or(by);
                opened.push(value);
            }
        }
        let args = if sealed_by.is_some() { &opened[..] } else { args };
        // Its message may quote a secret it was given: then it is not shown.
        let hidden = |message: String| if sealed_by.is_some() { "(not shown: the function was given a secret)".to_owned() } else { message };
        let run = || function(args);
        let caught = if sealed_by.is_some() { crate::panic::catch_quietly(run) } else { crate::panic::catch(run) };
        let result = match caught {
            Ok(result) => result.map_err(|e| format!("`{}` failed: {}", self.label, hidden(e)))?,
            Err(panic) => return Err(format!("`{}` panicked: {}", self.label, hidden(panic))),
        };
        Ok(match sealed_by {
            Some(keyring) => keyring.seal(&result),
            None => result,
        })
    }
}

impl PartialEq for Apply {
    /// The same label on the same arguments: two renders of one program compare equal.
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.args == other.args
    }
}

impl fmt::Debug for Apply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Apply").field("label", &self.label).field("args", &self.args).finish_non_exhaustive()
    }
}

impl Prop {
    /// Calls `f` on every reference inside.
    pub fn for_each_ref<'a>(&'a self, f: &mut impl FnMut(&'a OutputRef)) {
        match self {
            Prop::Value(_) => {}
            Prop::Output(r) => f(r),
            Prop::List(items) => items.iter().for_each(|p| p.for_each_ref(f)),
            Prop::Object(fields) => fields.iter().for_each(|(_, p)| p.for_each_ref(f)),
            Prop::Apply(a) => a.args.iter().for_each(|p| p.for_each_ref(f)),
        }
    }

    /// The value with every reference replaced by `lookup(reference)`; `None` when any
    /// reference is not known yet, or a function of the program fails on its values
    /// ([`Prop::try_resolve`] says why).
    pub fn resolve(&self, lookup: &mut impl FnMut(&OutputRef) -> Option<Value>) -> Option<Value> {
        self.try_resolve(lookup).ok().flatten()
    }

    /// The value with every reference replaced by `lookup(reference)`: `Ok(None)` when
    /// any reference is not known yet, an error when a function of the program fails.
    pub fn try_resolve(&self, lookup: &mut impl FnMut(&OutputRef) -> Option<Value>) -> Result<Option<Value>, String> {
        Ok(match self {
            Prop::Value(v) => Some(v.clone()),
            Prop::Output(r) => lookup(r),
            Prop::List(items) => {
                let mut values = Vec::with_capacity(items.len());
                for p in items {
                    let Some(v) = p.try_resolve(lookup)? else { return Ok(None) };
                    values.push(v);
                }
                Some(Value::Array(values))
            }
            Prop::Object(fields) => {
                let mut values = serde_json::Map::new();
                for (k, p) in fields {
                    let Some(v) = p.try_resolve(lookup)? else { return Ok(None) };
                    values.insert(k.clone(), v);
                }
                Some(Value::Object(values))
            }
            Prop::Apply(a) => {
                let mut args = Vec::with_capacity(a.args.len());
                for p in &a.args {
                    let Some(v) = p.try_resolve(lookup)? else { return Ok(None) };
                    args.push(v);
                }
                Some(a.call(&args)?)
            }
        })
    }

    /// Whether a function inside lacks its body (the prop was read from a saved plan).
    pub fn lacks_functions(&self) -> bool {
        match self {
            Prop::Value(_) | Prop::Output(_) => false,
            Prop::List(items) => items.iter().any(Prop::lacks_functions),
            Prop::Object(fields) => fields.iter().any(|(_, p)| p.lacks_functions()),
            Prop::Apply(a) => !a.has_function() || a.args.iter().any(Prop::lacks_functions),
        }
    }

    /// Gives every function inside the body of the one at the same place in `from`, the
    /// same prop as a new render of the program declares it. Fails naming the first
    /// place where the two differ.
    pub fn restore_functions(&mut self, from: &Prop) -> Result<(), String> {
        match (self, from) {
            (Prop::Value(_), _) | (Prop::Output(_), _) => Ok(()),
            (Prop::List(items), Prop::List(from)) if items.len() == from.len() => {
                items.iter_mut().zip(from).try_for_each(|(p, f)| p.restore_functions(f))
            }
            (Prop::Object(fields), Prop::Object(from)) if fields.len() == from.len() => {
                fields.iter_mut().zip(from).try_for_each(|((_, p), (_, f))| p.restore_functions(f))
            }
            (Prop::Apply(a), Prop::Apply(f)) if a.label == f.label && a.args.len() == f.args.len() => {
                a.function.clone_from(&f.function);
                a.args.iter_mut().zip(&f.args).try_for_each(|(p, f)| p.restore_functions(f))
            }
            (Prop::Apply(a), _) => Err(format!("the program no longer computes `{}` here", a.label)),
            _ => Err("the program declares it differently now".to_owned()),
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

/// A value known once other resources exist: a property of one (get one from a
/// resource's handle, `vpc.id()`), or a value computed from such properties with
/// [`map`](Output::map), [`zip`](Output::zip), [`all`] or
/// [`interpolate!`](crate::interpolate). Pass it to any input of the type `T`.
///
/// A plan shows an input that depends on an output not known yet as `(known after
/// apply)`; one whose resources are all unchanged shows its value.
pub struct Output<T> {
    prop: Prop,
    _type: PhantomData<fn() -> T>,
}

impl<T> Output<T> {
    /// A reference to `property` of the resource named by `urn`.
    pub fn new(urn: Urn, property: impl Into<Cow<'static, str>>) -> Self {
        Output::from_prop(Prop::Output(OutputRef { urn, property: property.into() }))
    }

    pub(crate) fn from_prop(prop: Prop) -> Self {
        Output { prop, _type: PhantomData }
    }

    /// An output whose value is already known (another stack's output).
    pub(crate) fn known(value: Value) -> Self {
        Output::from_prop(Prop::Value(value))
    }

    /// What it refers to, if it is one resource's property as it is (not a computed
    /// value).
    pub fn reference(&self) -> Option<&OutputRef> {
        match &self.prop {
            Prop::Output(r) => Some(r),
            _ => None,
        }
    }

    /// The type-erased value the engine works with.
    pub fn into_prop(self) -> Prop {
        self.prop
    }
}

impl<T: DeserializeOwned> Output<T> {
    /// The value `f` computes from this one once it is known, like Pulumi's `apply`:
    /// `bucket.arn().map(|arn| format!("{arn}/*"))`. `f` must be a pure function: it runs
    /// when a plan is made and again when it is applied.
    pub fn map<U: Serialize>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Output<U> {
        Output::from_prop(Prop::Apply(Box::new(Apply::new("map", vec![self.prop], move |args| {
            let value = serde_json::from_value(args[0].clone()).map_err(|e| format!("its value {} is not the output's type: {e}", args[0]))?;
            serde_json::to_value(f(value)).map_err(|e| e.to_string())
        }))))
    }

    /// This value and `other`'s together, known when both are: `a.zip(b).map(|(a, b)| ..)`.
    pub fn zip<U>(self, other: impl Into<Input<U>>) -> Output<(T, U)> {
        Output::from_prop(Prop::list(vec![self.prop, other.into().prop]))
    }
}

/// Every item's value, in order, known when all of them are: `all([a.id(), b.id()])`.
pub fn all<T, I: Into<Input<T>>>(items: impl IntoIterator<Item = I>) -> Output<Vec<T>> {
    Output::from_prop(Input::<Vec<T>>::list(items).prop)
}

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Output::from_prop(self.prop.clone())
    }
}

impl<T> fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prop {
            Prop::Output(r) => write!(f, "Output({}.{})", r.urn, r.property),
            other => write!(f, "Output({other:?})"),
        }
    }
}

/// What [`interpolate!`](crate::interpolate) takes as an argument: an output, an input,
/// or a literal.
pub trait Part {
    /// The argument as a prop.
    fn into_part(self) -> Prop;
}

impl<T> Part for Output<T> {
    fn into_part(self) -> Prop {
        self.prop
    }
}

impl<T> Part for &Output<T> {
    fn into_part(self) -> Prop {
        self.prop.clone()
    }
}

impl<T> Part for Input<T> {
    fn into_part(self) -> Prop {
        self.prop
    }
}

macro_rules! literal_parts {
    ($($t:ty),*) => {$(
        impl Part for $t {
            fn into_part(self) -> Prop {
                Prop::Value(Value::from(self))
            }
        }
    )*};
}
literal_parts!(&str, String, bool, u8, u16, u32, u64, i32, i64, f64);

impl Part for &String {
    fn into_part(self) -> Prop {
        Prop::Value(Value::from(self.as_str()))
    }
}

/// The string `template` makes of `parts`, each `{}` replaced by the next part's value:
/// a string as it is, anything else as JSON. `{{` and `}}` stand for braces. What
/// [`interpolate!`](crate::interpolate) expands to.
///
/// # Panics
/// When `template` has a placeholder other than `{}`, or not one per part: a bug in
/// the program, which `interpolate!` catches at compile time.
pub fn interpolate(template: &'static str, parts: Vec<Prop>) -> Output<String> {
    let pieces = split_template(template);
    assert_eq!(pieces.len(), parts.len() + 1, "interpolate!(\"{template}\"): one `{{}}` per argument");
    Output::from_prop(Prop::Apply(Box::new(Apply::new(format!("interpolate {template:?}"), parts, move |values| {
        let mut out = String::new();
        for (piece, value) in pieces.iter().zip(values.iter().map(Some).chain([None])) {
            out.push_str(piece);
            match value {
                Some(Value::String(s)) => out.push_str(s),
                Some(other) => out.push_str(&other.to_string()),
                None => {}
            }
        }
        Ok(Value::String(out))
    }))))
}

/// The literal pieces between `template`'s placeholders.
fn split_template(template: &str) -> Vec<String> {
    let (mut pieces, mut piece) = (Vec::new(), String::new());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                chars.next();
                piece.push(c);
            }
            ('{', Some('}')) => {
                chars.next();
                pieces.push(std::mem::take(&mut piece));
            }
            ('{' | '}', _) => panic!("interpolate!(\"{template}\"): only `{{}}` placeholders are supported"),
            _ => piece.push(c),
        }
    }
    pieces.push(piece);
    pieces
}

/// A string of outputs and literals, known once every output is, like `format!`:
/// `interpolate!("arn:aws:s3:::{}/*", bucket.name())` is an `Output<String>`. Only `{}`
/// placeholders; a string part goes in as it is, any other value as JSON.
///
/// ```
/// # use cairn_sdk::{interpolate, Output, Urn};
/// let queue: Output<String> = Output::new(Urn::new("dev", "aws:sqs:Queue", "orders"), "arn");
/// let port = 443;
/// let note: Output<String> = interpolate!("{} on port {}", &queue, port);
/// ```
#[macro_export]
macro_rules! interpolate {
    ($template:literal $(, $part:expr)* $(,)?) => {{
        // Never called: makes the compiler check that placeholders and parts match.
        let _ = || ::std::format!($template $(, { let _ = &$part; "" })*);
        $crate::input::interpolate($template, ::std::vec![$($crate::input::Part::into_part($part)),*])
    }};
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
    pub(crate) fn from_prop(prop: Prop) -> Self {
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
        Self::from_prop(o.prop)
    }
}

impl<T> From<&Output<T>> for Input<T> {
    fn from(o: &Output<T>) -> Self {
        Self::from_prop(o.prop.clone())
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
