//! Declaring resources: the type-erased declaration, options, handles and the
//! [`Resource`] trait that typed builders implement.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_state::Urn;
use serde::{Deserialize, Serialize};

use serde_json::Value;

use crate::input::{Input, Output, Prop};
use crate::schema::{Property, ResourceType};

/// Options any resource accepts, set through [`ResourceExt`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceOptions {
    /// Extra dependencies beyond those implied by outputs used as inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Urn>,
    /// Refuse to delete or replace this resource; the plan fails instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect: bool,
    /// Properties whose changes in the program are ignored after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_changes: Vec<String>,
    /// When deleted (or replaced), leave the cloud resource and only forget it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// Replace by deleting first, then creating: for resources whose physical name or
    /// other unique property cannot exist twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_before_replace: bool,
    /// Limits on how long each provider operation may take.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The component it belongs to ([`Cx::component`](crate::Cx::component) sets it):
    /// plans and the graph show it in its component's group. Its URN does not depend on
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Urn>,
}

/// Per-operation time limits. An operation that runs over fails the step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Limit for create.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub create: Option<Duration>,
    /// Limit for update.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub update: Option<Duration>,
    /// Limit for delete.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub delete: Option<Duration>,
}

impl Timeouts {
    fn is_empty(&self) -> bool {
        *self == Timeouts::default()
    }
}

/// The options of a declaration that sets none: what [`Decl::options`] borrows then.
static NO_OPTIONS: ResourceOptions = ResourceOptions {
    depends_on: Vec::new(),
    protect: false,
    ignore_changes: Vec::new(),
    retain_on_delete: false,
    delete_before_replace: false,
    timeouts: Timeouts { create: None, update: None, delete: None },
    parent: None,
};

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(Duration::from_secs_f64))
    }
}

/// A resource declaration with its type erased: what the engine works on.
#[derive(Clone)]
pub struct Decl {
    pub(crate) ty: &'static ResourceType,
    pub(crate) name: String,
    /// Sorted by name. Names the schema knows borrow its `'static` strings.
    pub(crate) props: Vec<(Cow<'static, str>, Prop)>,
    /// `None` until an option is set. Most declarations set none, and a `Decl` is moved
    /// several times on its way into the graph (each builder call takes it by value):
    /// behind a pointer, the options cost 8 bytes of it rather than over 100. Shared,
    /// the plan's change for the resource holds them without a copy.
    options: Option<Arc<ResourceOptions>>,
}

impl Decl {
    /// A declaration of resource `name` of type `ty`, with no property set.
    pub fn new(ty: &'static ResourceType, name: impl Into<String>) -> Self {
        Decl { ty, name: name.into(), props: Vec::new(), options: None }
    }

    /// Sets input `property`. Builders call this from their typed setters.
    pub fn set<T>(&mut self, property: &str, value: impl Into<Input<T>>) {
        self.set_prop(property, value.into().into_prop());
    }

    /// Sets input `property` from an already type-erased value.
    pub fn set_prop(&mut self, property: &str, prop: Prop) {
        match self.props.binary_search_by(|(k, _)| k.as_ref().cmp(property)) {
            Ok(i) => self.props[i].1 = prop,
            Err(i) => {
                let key = match self.ty.property(property) {
                    Some(p) => Cow::Borrowed(p.name),
                    None => Cow::Owned(property.to_owned()),
                };
                // Pushed, then moved into place: `insert` has the pair built on the stack
                // and copied, which the processor stalls on; properties are mostly set
                // in order anyway, and then there is nothing to move.
                self.props.push((key, prop));
                self.props[i..].rotate_right(1);
            }
        }
    }

    /// The declared value of `property`.
    pub fn get(&self, property: &str) -> Option<&Prop> {
        self.props.binary_search_by(|(k, _)| k.as_ref().cmp(property)).ok().map(|i| &self.props[i].1)
    }

    /// Whether `property`, a property of this declaration's type, is set.
    pub(crate) fn is_set(&self, property: &'static Property) -> bool {
        // The key of a property the type knows is borrowed from its schema (see
        // `set_prop`), so it is found by address, without comparing names.
        let by_address = |(k, _): &(Cow<'static, str>, Prop)| matches!(k, Cow::Borrowed(k) if std::ptr::eq(*k, property.name));
        self.props.iter().any(by_address) || self.get(property.name).is_some()
    }

    /// The literal value of `property`: `None` if unset or if it comes from another
    /// resource's output (not known before apply). What validation functions check.
    pub fn value(&self, property: &str) -> Option<&Value> {
        match self.get(property)? {
            Prop::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The declared properties, in name order.
    pub fn props(&self) -> impl Iterator<Item = (&str, &Prop)> {
        self.props.iter().map(|(k, p)| (k.as_ref(), p))
    }

    /// The resource type.
    pub fn resource_type(&self) -> &'static ResourceType {
        self.ty
    }

    /// The logical name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options.
    pub fn options(&self) -> &ResourceOptions {
        self.options.as_deref().unwrap_or(&NO_OPTIONS)
    }

    /// The options, shared: a plan's change holds them without a copy.
    pub(crate) fn shared_options(&self) -> Arc<ResourceOptions> {
        static NONE: std::sync::LazyLock<Arc<ResourceOptions>> = std::sync::LazyLock::new(Arc::default);
        self.options.clone().unwrap_or_else(|| NONE.clone())
    }

    /// The options, to change.
    pub fn options_mut(&mut self) -> &mut ResourceOptions {
        Arc::make_mut(self.options.get_or_insert_with(Arc::default))
    }
}

impl fmt::Debug for Decl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decl")
            .field("type", &self.ty.token)
            .field("name", &self.name)
            .field("props", &self.props)
            .field("options", self.options())
            .finish()
    }
}

/// A typed resource builder. Implement it for each resource kind; users call
/// [`Cx::add`](crate::Cx::add) with the builder and get its typed [`Resource::Ref`]
/// back, whose methods return [`Output`]s.
pub trait Resource {
    /// The handle returned by `cx.add`, with a method per output.
    type Ref: From<Handle>;

    /// The declaration built so far.
    fn decl(&self) -> &Decl;

    /// The declaration, to change.
    fn decl_mut(&mut self) -> &mut Decl;

    /// The finished declaration.
    fn into_decl(self) -> Decl;
}

/// Options every resource builder accepts.
pub trait ResourceExt: Resource + Sized {
    /// Depend on `other` even though no output of it is used.
    #[must_use]
    fn depends_on(mut self, other: &Handle) -> Self {
        self.decl_mut().options_mut().depends_on.push(other.urn.clone());
        self
    }

    /// Refuse to delete or replace this resource: a plan that would fails instead.
    #[must_use]
    fn protect(mut self) -> Self {
        self.decl_mut().options_mut().protect = true;
        self
    }

    /// Ignore changes the program makes to these properties once the resource exists.
    ///
    /// # Warning
    /// The cloud keeps the values the resource was created with; changing an ignored
    /// property in the program has no effect until the resource is replaced.
    #[must_use]
    fn ignore_changes<I, S>(mut self, properties: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.decl_mut().options_mut().ignore_changes.extend(properties.into_iter().map(Into::into));
        self
    }

    /// On delete or replacement, leave the cloud resource in place and only forget it.
    #[must_use]
    fn retain_on_delete(mut self) -> Self {
        self.decl_mut().options_mut().retain_on_delete = true;
        self
    }

    /// Replace by deleting the old resource before creating the new one.
    ///
    /// # Warning
    /// The resource does not exist between the two steps, and resources that depend on
    /// it and are replaced with it are also deleted first.
    #[must_use]
    fn delete_before_replace(mut self) -> Self {
        self.decl_mut().options_mut().delete_before_replace = true;
        self
    }

    /// Time limits for the provider's create, update and delete of this resource.
    #[must_use]
    fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.decl_mut().options_mut().timeouts = timeouts;
        self
    }
}

impl<R: Resource> ResourceExt for R {}

/// A reference to a declared resource, from which outputs are taken.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Handle {
    urn: Urn,
}

impl Handle {
    /// A handle to the resource with this URN.
    pub fn new(urn: Urn) -> Self {
        Handle { urn }
    }

    /// The resource's URN.
    pub fn urn(&self) -> &Urn {
        &self.urn
    }

    /// An output of the resource, by property name.
    pub fn output<T>(&self, property: impl Into<Cow<'static, str>>) -> Output<T> {
        Output::new(self.urn.clone(), property)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.urn)
    }
}

/// A resource of any type, built property by property. Useful for resource types that
/// have no typed builder (a custom provider's, a test's); typed builders are nicer.
#[derive(Clone, Debug)]
pub struct DynamicResource {
    decl: Decl,
}

impl DynamicResource {
    /// A resource `name` of type `ty`.
    pub fn new(ty: &'static ResourceType, name: impl Into<String>) -> Self {
        DynamicResource { decl: Decl::new(ty, name) }
    }

    /// Sets input `property`.
    #[must_use]
    pub fn set<T>(mut self, property: &str, value: impl Into<Input<T>>) -> Self {
        self.decl.set(property, value);
        self
    }
}

impl Resource for DynamicResource {
    type Ref = Handle;
    fn decl(&self) -> &Decl {
        &self.decl
    }
    fn decl_mut(&mut self) -> &mut Decl {
        &mut self.decl
    }
    fn into_decl(self) -> Decl {
        self.decl
    }
}

/// Implements [`Resource`] for a builder that is a newtype over [`Decl`], with `Ref` as
/// its typed handle: `impl_resource!(Vpc => VpcRef);`.
#[macro_export]
macro_rules! impl_resource {
    ($builder:ty => $handle:ty) => {
        impl $crate::Resource for $builder {
            type Ref = $handle;
            fn decl(&self) -> &$crate::Decl {
                &self.0
            }
            fn decl_mut(&mut self) -> &mut $crate::Decl {
                &mut self.0
            }
            fn into_decl(self) -> $crate::Decl {
                self.0
            }
        }
    };
}

/// Defines a typed handle: a newtype over [`Handle`] that derefs to it (so
/// `depends_on(&vpc)` and `vpc.urn()` work) and has one method per output.
///
/// ```
/// cairn_sdk::typed_handle! {
///     /// A created VPC.
///     pub struct VpcRef {
///         /// The VPC id.
///         id: String,
///         /// Its CIDR block.
///         cidr_block: String,
///     }
/// }
/// ```
#[macro_export]
macro_rules! typed_handle {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $output:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        $vis struct $name($crate::Handle);

        impl From<$crate::Handle> for $name {
            fn from(h: $crate::Handle) -> Self {
                $name(h)
            }
        }

        impl ::std::ops::Deref for $name {
            type Target = $crate::Handle;
            fn deref(&self) -> &$crate::Handle {
                &self.0
            }
        }

        impl $name {
            $(
                $(#[$fmeta])*
                pub fn $output(&self) -> $crate::Output<$t> {
                    self.0.output(stringify!($output))
                }
            )*
        }
    };
}
