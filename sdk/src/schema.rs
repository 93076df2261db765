//! What a resource type declares about itself: its properties and their rules.
//!
//! Every resource kind has one `static` [`ResourceType`]. The engine reads it to fill in
//! defaults and auto-names, validate inputs before any provider call, derive the default
//! diff, decide which changes force a replacement, and hide secrets in plans.

use std::fmt;

use serde_json::Value;

use crate::resource::Decl;

/// The description of one resource kind.
pub struct ResourceType {
    /// The type token, `<package>:<module>:<Name>`, e.g. `aws:ec2:Vpc`. The package part
    /// picks the provider that manages it.
    pub token: &'static str,
    /// Every property: inputs the program sets and outputs the cloud computes.
    pub properties: &'static [Property],
    /// Checks across properties that the per-property schema cannot express (a CIDR's
    /// shape, `min <= desired <= max`), run after defaults are filled in. Read values
    /// with [`Decl::value`]: it gives only those known before apply.
    pub validate: fn(&Decl, &mut Vec<CheckFailure>),
}

impl ResourceType {
    /// A type with no extra checks.
    pub const fn new(token: &'static str, properties: &'static [Property]) -> Self {
        ResourceType { token, properties, validate: no_checks }
    }

    /// The same type with a validation function.
    pub const fn with_validation(mut self, validate: fn(&Decl, &mut Vec<CheckFailure>)) -> Self {
        self.validate = validate;
        self
    }

    /// The package part of the token: `aws` in `aws:ec2:Vpc`.
    pub fn package(&self) -> &'static str {
        self.token.split(':').next().unwrap_or(self.token)
    }

    /// The schema of property `name`.
    pub fn property(&self, name: &str) -> Option<&'static Property> {
        // Names of a length are often alike in length only ("name", "size", "tags"): a
        // first byte that differs settles it without a call to compare the rest.
        let first = name.as_bytes().first();
        self.properties.iter().find(|p| p.name.len() == name.len() && p.name.as_bytes().first() == first && p.name == name)
    }

    /// The properties a program may set.
    pub fn inputs(&self) -> impl Iterator<Item = &'static Property> {
        self.properties.iter().filter(|p| p.kind != PropertyKind::Output)
    }
}

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceType").field("token", &self.token).finish_non_exhaustive()
    }
}

fn no_checks(_: &Decl, _: &mut Vec<CheckFailure>) {}

/// Who sets a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyKind {
    /// Set by the program.
    Input,
    /// Set by the program, or computed by the cloud when left unset (an availability
    /// zone, say). When unset, a diff ignores it.
    OptionalComputed,
    /// Computed by the cloud and known only after apply (an id, an ARN).
    Output,
}

/// A default for an input the program leaves unset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(&'static str),
}

impl Default {
    /// The default as a JSON value.
    pub fn to_value(self) -> Value {
        match self {
            Default::Bool(b) => Value::Bool(b),
            Default::Int(i) => Value::from(i),
            Default::Str(s) => Value::from(s),
        }
    }
}

/// The schema of one property. Built with `const` methods, so a type's schema is a
/// `static` table:
///
/// ```
/// use cairn_sdk::schema::{Default, Property};
/// const PROPS: &[Property] = &[
///     Property::input("cidr_block").required().forces_replacement(),
///     Property::input("enable_dns").default(Default::Bool(true)),
///     Property::input("name").auto_name().forces_replacement(),
///     Property::output("arn"),
/// ];
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Property {
    /// The property's name, as used in inputs, outputs, plans and state.
    pub name: &'static str,
    /// Who sets it.
    pub kind: PropertyKind,
    /// A change to it cannot be made in place: the resource is replaced.
    pub forces_replacement: bool,
    /// The program must set it.
    pub required: bool,
    /// Plans and logs show `[secret]` instead of its value.
    pub secret: bool,
    /// The value used when the program leaves it unset.
    pub default: Option<Default>,
    /// A physical name: when unset, the engine names the resource `<logical>-<suffix>`,
    /// with a new suffix on each replacement, so a create-before-delete replacement
    /// never collides with the copy it replaces. Given by the program, it says which
    /// cloud object the resource is, as an [`identity`](Property#structfield.identity)
    /// property does: a declaration renamed with its name kept is created after the
    /// old one's delete.
    pub auto_name: bool,
    /// For an output: its value may change when the resource is updated in place, so
    /// dependents see it as "known after apply" during such an update.
    pub changes_on_update: bool,
    /// With the type's other identity properties, it says which cloud object the
    /// resource is, where the cloud has one object per value: a queue's one policy, a
    /// load balancer's listener on a port, a DNS name's record of a type. A resource
    /// created, updated or replaced onto the identity of one of its type the apply
    /// deletes (a declaration renamed, a listener moved to a freed port) waits for that
    /// delete: see [`Change::after_delete`](crate::plan::Change::after_delete).
    /// Only when every identity property is known at plan time and set on both (or left
    /// to its default), as the type's diff compares them, and the old one is not
    /// retained.
    pub identity: bool,
}

impl Property {
    const fn base(name: &'static str, kind: PropertyKind) -> Self {
        Property {
            name,
            kind,
            forces_replacement: false,
            required: false,
            secret: false,
            default: None,
            auto_name: false,
            changes_on_update: false,
            identity: false,
        }
    }

    /// An input set by the program.
    pub const fn input(name: &'static str) -> Self {
        Self::base(name, PropertyKind::Input)
    }

    /// An input the cloud computes when the program leaves it unset.
    pub const fn optional_computed(name: &'static str) -> Self {
        Self::base(name, PropertyKind::OptionalComputed)
    }

    /// Makes an input one the cloud computes when the program leaves it unset, as
    /// [`Property::optional_computed`] does: for the builder chain of [`resource!`](macro@crate::resource).
    pub const fn computed(mut self) -> Self {
        self.kind = PropertyKind::OptionalComputed;
        self
    }

    /// An output computed by the cloud.
    pub const fn output(name: &'static str) -> Self {
        Self::base(name, PropertyKind::Output)
    }

    /// A change forces replacement.
    pub const fn forces_replacement(mut self) -> Self {
        self.forces_replacement = true;
        self
    }

    /// The program must set it.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Hide its value in plans.
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// The value when unset.
    pub const fn default(mut self, value: Default) -> Self {
        self.default = Some(value);
        self
    }

    /// A physical name the engine generates when unset.
    pub const fn auto_name(mut self) -> Self {
        self.auto_name = true;
        self
    }

    /// An output that may change on an in-place update.
    pub const fn changes_on_update(mut self) -> Self {
        self.changes_on_update = true;
        self
    }

    /// Part of the resource's identity in the cloud (see [`Property::identity`](Property#structfield.identity)).
    pub const fn identity(mut self) -> Self {
        self.identity = true;
        self
    }

    /// Says which cloud object the resource is: an identity property, or a physical
    /// name (one name, one object).
    pub(crate) const fn names_object(&self) -> bool {
        self.identity || self.auto_name
    }
}

/// One failed input check: which property, the bad value, and what is allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckFailure {
    /// The property at fault.
    pub property: String,
    /// The value given, if any.
    pub value: Option<Value>,
    /// What is allowed instead, phrased to complete "must ...": "be a CIDR block such as
    /// 10.0.0.0/16".
    pub expected: String,
}

impl CheckFailure {
    /// A failure of `property`, whose value `value` should instead `expected`.
    pub fn new(property: impl Into<String>, value: Option<&Value>, expected: impl Into<String>) -> Self {
        CheckFailure { property: property.into(), value: value.cloned(), expected: expected.into() }
    }
}
