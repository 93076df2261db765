//! The provider interface: how the engine reaches a cloud.
//!
//! The engine speaks to providers in a type-erased JSON layer ([`Props`]); users only
//! see typed builders. A provider serves one package of type tokens (`aws`, `test`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_state::{Props, Urn};
use serde_json::Value;

use crate::resource::Decl;
use crate::schema::{CheckFailure, PropertyKind, ResourceType};

/// What a failed provider call lets the engine conclude. `NotFound`, `Failed`,
/// `Unsupported` and `Unconfigured` mean nothing changed; `Uncertain` means the request
/// MAY have taken effect, so the step is kept pending and settled by a look-up or a
/// read before the next plan; `Incomplete` means a create made the resource but a later
/// call of the same step failed, so the resource is recorded and read back.
///
/// When in doubt a provider says `Uncertain`: settling costs a look-up, while a wrong
/// `Failed` leaves a resource the state does not know (an orphan, or a duplicate on the
/// next create).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The resource does not exist in the cloud (any more).
    NotFound,
    /// The cloud refused the operation: nothing changed.
    Failed,
    /// The request MAY have taken effect (a timeout, a dropped connection, a server
    /// error, throttling after retries).
    Uncertain,
    /// The endpoint does not implement the operation.
    Unsupported,
    /// The provider cannot reach its cloud at all (no credentials, no region, ...),
    /// from [`Provider::ready`]: nothing was called.
    Unconfigured,
    /// A create's call made the resource, identified by `id`, but a later call of the
    /// same step (tagging, an attribute, an attachment, a wait, the read-back) failed.
    /// The resource exists, somewhere between nothing and what was asked: the engine
    /// records it with its id, fails the step, and reads it back before the next plan,
    /// which then updates or replaces it. Never a duplicate, never an orphan.
    Incomplete {
        /// The id the create call returned.
        id: String,
    },
}

/// The provider operation a call was part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderOp {
    /// [`Provider::ready`].
    Ready,
    /// [`Provider::create`].
    Create,
    /// [`Provider::read`].
    Read,
    /// [`Provider::update`].
    Update,
    /// [`Provider::delete`].
    Delete,
    /// [`Provider::lookup`].
    Lookup,
}

impl fmt::Display for ProviderOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderOp::Ready => "ready",
            ProviderOp::Create => "create",
            ProviderOp::Read => "read",
            ProviderOp::Update => "update",
            ProviderOp::Delete => "delete",
            ProviderOp::Lookup => "lookup",
        })
    }
}

/// A failed provider call: which resource and operation (`urn`, `op`), what the engine
/// may conclude (`kind`), what happened and what to do (`message`), and the error that
/// caused it, if any (`source`, e.g. the AWS SDK's error, kept as a value).
///
/// A provider makes one with [`ProviderError::failed`], [`ProviderError::uncertain`],
/// ... and returns it; the engine adds the resource and operation before anyone sees it,
/// so a provider's message need not name them.
///
/// It serializes (in an apply's JSON report) without its source.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ProviderError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urn: Option<Urn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<ProviderOp>,
    #[serde(flatten)]
    kind: ErrorKind,
    message: String,
    #[serde(skip)]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    /// An error of `kind`, saying what happened and what to do.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        ProviderError { urn: None, op: None, kind, message: message.to_string(), source: None }
    }

    /// The cloud refused: nothing changed.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// The request may have taken effect.
    pub fn uncertain(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Uncertain, message)
    }

    /// A call that panicked, with the panic's message: a bug in the provider. Uncertain,
    /// as the call may have taken effect.
    pub(crate) fn panicked(message: &str) -> Self {
        Self::uncertain(format!("the provider panicked: {message}"))
    }

    /// The resource does not exist.
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The endpoint does not implement the operation.
    pub fn unsupported(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// The provider cannot reach its cloud: `message` says what is missing and how to
    /// set it.
    pub fn unconfigured(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unconfigured, message)
    }

    /// The error that caused this one.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// This error, as the failure of operation `op` on resource `urn` (the engine calls
    /// this on every error a provider returns).
    #[must_use]
    pub fn at(mut self, urn: &Urn, op: ProviderOp) -> Self {
        self.urn = Some(urn.clone());
        self.op = Some(op);
        self
    }

    /// The error with its kind changed, e.g. a refusal that in context means the request
    /// may have taken effect.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// This error, for a step whose create call already made resource `id`: whatever
    /// failed afterwards, the resource exists, so it becomes [`ErrorKind::Incomplete`].
    #[must_use]
    pub fn after_create(mut self, id: &str) -> Self {
        if !matches!(self.kind, ErrorKind::Incomplete { .. }) {
            self.message = self.describe_kind();
            self.kind = ErrorKind::Incomplete { id: id.to_owned() };
        }
        self
    }

    /// What the engine may conclude.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The resource, once the engine has said it.
    pub fn urn(&self) -> Option<&Urn> {
        self.urn.as_ref()
    }

    /// The operation, once the engine has said it.
    pub fn op(&self) -> Option<ProviderOp> {
        self.op
    }

    /// What happened and what to do, as the provider said it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the cloud may have carried out the request despite the error.
    pub fn is_uncertain(&self) -> bool {
        self.kind == ErrorKind::Uncertain
    }

    /// The message with what the kind implies, without the resource.
    fn describe_kind(&self) -> String {
        let m = &self.message;
        match &self.kind {
            ErrorKind::NotFound => format!("not found: {m}"),
            ErrorKind::Failed | ErrorKind::Unconfigured => m.clone(),
            ErrorKind::Uncertain => format!("{m} (the request may have taken effect)"),
            // The message says what the endpoint lacks.
            ErrorKind::Unsupported => m.clone(),
            ErrorKind::Incomplete { id } => {
                format!("{m}; it was created as {id} and is kept in state: the next run reads it back and finishes it")
            }
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{} '{}': ", urn.ty(), urn.name())?;
        }
        f.write_str(&self.describe_kind())
    }
}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderError")
            .field("urn", &self.urn)
            .field("op", &self.op)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

/// Equal when all but the source are: the source is the cause, kept for inspection.
impl PartialEq for ProviderError {
    fn eq(&self, other: &Self) -> bool {
        (&self.urn, self.op, &self.kind, &self.message) == (&other.urn, other.op, &other.kind, &other.message)
    }
}

impl std::error::Error for ProviderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What a provider knows about a resource in the cloud.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The cloud's identifier.
    pub id: String,
    /// The inputs as the cloud sees them now (for drift detection).
    pub inputs: Props,
    /// The outputs.
    pub outputs: Props,
}

impl Observed {
    /// A resource with id `id`, its `inputs` as read, and its `outputs`.
    pub fn new<'a>(id: impl Into<String>, inputs: Props, outputs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Observed { id: id.into(), inputs, outputs: outputs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }
    }
}

/// The value a property will have after apply: known now, or not. Borrowed from the
/// declaration or the state where possible.
#[derive(Clone, Debug, PartialEq)]
pub enum Planned<'a> {
    /// Known at plan time.
    Known(Cow<'a, Value>),
    /// Depends on a value known only after apply.
    Unknown,
}

impl Planned<'_> {
    /// The value, if known.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Planned::Known(v) => Some(v),
            Planned::Unknown => None,
        }
    }

    /// Whether it is known.
    pub fn is_known(&self) -> bool {
        matches!(self, Planned::Known(_))
    }
}

/// One property's change.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PropertyDiff {
    /// The property.
    pub name: String,
    /// The value before; absent when the property is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after; absent when removed or not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
    /// False when the new value is known only after apply.
    pub known: bool,
    /// Whether this change forces a replacement (or may, when not known).
    pub replaces: bool,
    /// A secret: `old` and `new` hold `"[secret]"` instead of the values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl PropertyDiff {
    /// A change of `name` from `old` to `new` (`None` for unknown when `known` is false).
    pub fn new(name: impl Into<String>, old: Option<Value>, new: Option<Value>, known: bool, replaces: bool) -> Self {
        PropertyDiff { name: name.into(), old, new, known, replaces, secret: false }
    }
}

/// How a provider decided a resource changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiffResult {
    /// The properties that change, in name order.
    pub changes: Vec<PropertyDiff>,
}

/// The request to diff a resource's old inputs against its planned ones.
#[derive(Debug)]
pub struct DiffRequest<'a> {
    /// The resource. To tell whether a create is the object a delete removes, the
    /// planner also diffs one resource's inputs against another's: a diff must not
    /// depend on the URN for its answer.
    pub urn: &'a Urn,
    /// Its type.
    pub ty: &'static ResourceType,
    /// The inputs in state.
    pub old: &'a Props,
    /// The planned inputs in name order, some perhaps unknown.
    pub new: &'a [(&'a str, Planned<'a>)],
}

/// A cloud provider. Implementations talk to a real API. The engine runs many calls at
/// once: an apply polls its steps' calls together on its own task, and several stacks
/// may apply at the same time. So a call must wait, not block its thread: blocking work
/// belongs in `tokio::task::spawn_blocking`, or it holds up every other call of the
/// apply.
///
/// `check` and `diff` are local and synchronous: they must not make network calls,
/// because preview runs them and must not touch the cloud.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// The package of type tokens served: `aws` serves `aws:ec2:Vpc`.
    fn package(&self) -> &str;

    /// Extra local checks of a declaration, after the type's own (read known values
    /// with [`Decl::value`]).
    fn check(&self, _urn: &Urn, _decl: &Decl) -> Vec<CheckFailure> {
        Vec::new()
    }

    /// Which properties change and whether that forces a replacement. The default
    /// follows the schema; override it where the cloud's semantics differ.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        schema_diff(req)
    }

    /// Creates the resource and returns its id and outputs.
    ///
    /// The resource's type token is `urn.ty()`; the provider tags what it creates with
    /// the stack and URN so that [`Provider::lookup`] can find it again.
    async fn create(&self, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError>;

    /// Reads the resource's current inputs and outputs; `None` if it is gone.
    async fn read(&self, urn: &Urn, id: &str, inputs: &Props, outputs: &Props) -> Result<Option<Observed>, ProviderError>;

    /// Changes the resource in place from `old` to `new` inputs.
    async fn update(&self, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError>;

    /// Deletes the resource. Deleting one that is already gone succeeds.
    async fn delete(&self, urn: &Urn, id: &str, inputs: &Props, outputs: &Props) -> Result<(), ProviderError>;

    /// Checks, before any call, that the provider can reach its cloud at all (its
    /// credentials and region, say), and if not, says exactly what is missing and how
    /// to set it. The engine asks once before it applies, refreshes or settles pending
    /// operations with this provider (and the CLI before it locks the stack), so a
    /// missing setting is an error that calls nothing and leaves state untouched, not a
    /// failure of every step. The default: ready.
    async fn ready(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// How long a call this provider sent can still take effect after the process that
    /// sent it died: the request may be on its way, or the service still at work on it.
    /// When a crash interrupted operations, the engine settles them (see
    /// [`crate::recover`]); where a look-up finds the call not done yet (a create not
    /// there, a delete's resource still there), it waits this long
    /// and looks again before it concludes, so that a late call does not leave a second
    /// copy of a resource, or a state that names one the cloud deleted. The default,
    /// zero, suits a provider whose calls cannot outlive its process (an in-memory one).
    fn landing_window(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Finds every resource tagged with this URN (`cairn:stack`, `cairn:urn`: the tags
    /// Cairn puts on everything it creates). Used to settle creates that were
    /// interrupted; during a replacement the old and the new copy both match.
    /// `created_with` are the inputs the create was sent with (empty when not known): a
    /// resource type that carries no tags (a DNS record, a queue policy) finds itself
    /// through them, by its parent and its key. Reads alone: previews call it without
    /// the stack's lock (settling under the lock calls [`Provider::lookup_created`]).
    async fn lookup(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError>;

    /// [`Provider::lookup`], when the engine settles an interrupted create holding the
    /// stack's lock (never for a preview): it may also make a call that makes nothing
    /// new but tells what no read can, where the cloud has such a call. An SNS
    /// subscription its endpoint has not confirmed is listed without its ARN, which only
    /// subscribing again tells (AWS makes no second one). The default: the look-up.
    async fn lookup_created(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        self.lookup(urn, created_with).await
    }
}

/// The diff the schema implies: every changed input, known or not, with replacement
/// forced by the properties marked so. An input the program stopped setting counts as
/// a change, except an optional computed one, which the cloud then keeps as it is.
pub fn schema_diff(req: &DiffRequest<'_>) -> DiffResult {
    let ty = req.ty;
    let mut changes = Vec::new();
    let mut new_iter = req.new.iter().peekable();
    let mut old_iter = req.old.iter().peekable();
    loop {
        let (name, old, new) = match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some((ok, _)), Some((nk, _))) if ok == nk => {
                let (k, o) = old_iter.next().unwrap();
                let (_, n) = new_iter.next().unwrap();
                (k, Some(o), Some(n))
            }
            (Some((ok, _)), Some((nk, _))) if ok < nk => {
                let (k, o) = old_iter.next().unwrap();
                (k, Some(o), None)
            }
            (Some(_), None) => {
                let (k, o) = old_iter.next().unwrap();
                (k, Some(o), None)
            }
            _ => {
                let (k, n) = new_iter.next().unwrap();
                (*k, None, Some(n))
            }
        };
        // The schema is looked up only for properties that changed.
        let schema = || ty.property(name);
        let replaces = || schema().is_some_and(|p| p.forces_replacement);
        match (old, new) {
            (Some(o), Some(Planned::Known(n))) if o == n.as_ref() => {}
            (Some(o), Some(Planned::Known(n))) => {
                changes.push(PropertyDiff::new(name, Some(o.clone()), Some(n.clone().into_owned()), true, replaces()))
            }
            (old, Some(Planned::Unknown)) => {
                changes.push(PropertyDiff::new(name, old.cloned(), None, false, replaces()))
            }
            (None, Some(Planned::Known(n))) => {
                changes.push(PropertyDiff::new(name, None, Some(n.clone().into_owned()), true, replaces()))
            }
            (Some(o), None) => {
                if schema().is_some_and(|p| p.kind == PropertyKind::OptionalComputed) {
                    continue;
                }
                changes.push(PropertyDiff::new(name, Some(o.clone()), None, true, replaces()))
            }
            (None, None) => {}
        }
    }
    DiffResult { changes }
}

/// The providers of a stack, by package.
#[derive(Clone, Debug, Default)]
pub struct Providers {
    /// A stack has a handful of packages: a scan beats hashing the package of every
    /// resource's type on every plan.
    by_package: Vec<(String, Arc<dyn Provider>)>,
}

impl Providers {
    /// No providers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the provider for its package. The provider is given secrets
    /// opened ([`crate::secret`]).
    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        let package = provider.package().to_owned();
        let provider: Arc<dyn Provider> = Arc::new(crate::secret::Opening(provider));
        match self.by_package.iter_mut().find(|(p, _)| *p == package) {
            Some(slot) => slot.1 = provider,
            None => self.by_package.push((package, provider)),
        }
    }

    /// Checks that every provider serving one of `tokens` is ready ([`Provider::ready`]),
    /// asking each once. Fails with the first that is not.
    pub fn ready<'t>(&self, tokens: impl IntoIterator<Item = &'t str>) -> impl std::future::Future<Output = crate::Result<()>> + Send + '_ {
        // The providers first, so the future holds no borrow of the caller's iterator.
        let mut serving: Vec<&(String, Arc<dyn Provider>)> = Vec::new();
        for token in tokens {
            if let Some(found) = self.by_package.iter().find(|(p, _)| serves(p, token)) {
                if !serving.iter().any(|(p, _)| *p == found.0) {
                    serving.push(found);
                }
            }
        }
        async move {
            for (package, provider) in serving {
                provider.ready().await.map_err(|source| crate::Error::ProviderNotReady { package: package.clone(), source })?;
            }
            Ok(())
        }
    }

    /// The longest [`Provider::landing_window`] of the providers serving `tokens`.
    pub fn landing_window<'t>(&self, tokens: impl IntoIterator<Item = &'t str>) -> std::time::Duration {
        tokens.into_iter().filter_map(|token| self.for_token(token)).map(|p| p.landing_window()).max().unwrap_or_default()
    }

    /// Checks that every registered provider is ready ([`Provider::ready`]).
    pub async fn all_ready(&self) -> crate::Result<()> {
        for (package, provider) in &self.by_package {
            provider.ready().await.map_err(|source| crate::Error::ProviderNotReady { package: package.clone(), source })?;
        }
        Ok(())
    }

    /// The provider serving the package of type token `token` (`aws` for `aws:ec2:Vpc`).
    pub fn for_token(&self, token: &str) -> Option<&Arc<dyn Provider>> {
        self.by_package.iter().find(|(p, _)| serves(p, token)).map(|(_, provider)| provider)
    }
}

/// [`Providers::for_token`] for resource types, remembering the last type asked
/// about: a program declares many resources of one type in a row, and a plan asks
/// once per resource.
pub(crate) struct ProviderOf<'a> {
    providers: &'a Providers,
    last: Option<(&'static ResourceType, Option<&'a Arc<dyn Provider>>)>,
}

impl<'a> ProviderOf<'a> {
    pub(crate) fn new(providers: &'a Providers) -> Self {
        ProviderOf { providers, last: None }
    }

    /// The provider serving resources of type `ty`.
    pub(crate) fn get(&mut self, ty: &'static ResourceType) -> Option<&'a Arc<dyn Provider>> {
        match self.last {
            Some((last, provider)) if std::ptr::eq(last, ty) => provider,
            _ => {
                let provider = self.providers.for_token(ty.token);
                self.last = Some((ty, provider));
                provider
            }
        }
    }
}

/// Whether `package` is the package of type token `token`: the token up to its first
/// ':', or all of it if it has none. Called for every resource of every plan, so each
/// (short) package is matched as a prefix rather than the token searched for a ':'.
fn serves(package: &str, token: &str) -> bool {
    match token.strip_prefix(package) {
        Some(rest) => (rest.is_empty() || rest.starts_with(':')) && !package.contains(':'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Property;
    use serde_json::json;

    static T: ResourceType = ResourceType::new(
        "test:Thing",
        &[Property::input("a").forces_replacement(), Property::input("b"), Property::optional_computed("zone")],
    );

    fn props(v: Value) -> Props {
        Props::from_value(v).unwrap()
    }

    #[test]
    fn provider_is_object_safe() {
        fn _takes(_: &dyn Provider) {}
    }

    #[test]
    fn schema_diff_marks_replacements_unknowns_and_removals() {
        let urn = Urn::new("dev", T.token, "x");
        let old = props(json!({"a": 1, "b": 2, "zone": "z1", "gone": true}));
        let three = json!(3);
        let new = vec![("a", Planned::Unknown), ("b", Planned::Known(Cow::Borrowed(&three)))];
        let d = schema_diff(&DiffRequest { urn: &urn, ty: &T, old: &old, new: &new });
        let summary: Vec<_> = d.changes.iter().map(|c| (c.name.as_str(), c.known, c.replaces)).collect();
        assert_eq!(summary, [("a", false, true), ("b", true, false), ("gone", true, false)]);
    }
}
