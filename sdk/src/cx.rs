//! The program's context: where a program declares its resources.

use std::fmt;

use cairn_state::Urn;

use crate::graph::Node;
use crate::input::{Input, Output, Prop};
use crate::resource::{Decl, Handle, Resource};
use crate::schema::ResourceType;

/// What a stack's program receives: it declares resources with [`Cx::add`].
///
/// The program must be a pure function of the user's state: the same state must
/// declare the same resources, so that a restart never undoes what an event did.
pub struct Cx {
    stack: String,
    /// Already in the graph's form, so that the graph takes the vector over as it is
    /// rather than moving every declaration into one of its own.
    decls: Vec<Node>,
    /// What the stack's previous render declared, each URN replaced as this render
    /// declares something else at its position: see [`Cx::add`].
    previous: Declared,
    /// Whether every resource declared so far reused the URN at its position.
    reused: bool,
    /// The stack outputs, in the order exported.
    exports: Vec<(String, Prop)>,
    /// The outputs of the stacks this one references, as last loaded.
    references: std::sync::Arc<crate::reference::Loaded>,
    /// What the program asked of them that cannot be given, and the components that
    /// failed.
    errors: Vec<crate::error::ValidationError>,
    /// The components declared, in order.
    components: Vec<Component>,
    /// The component being declared, if any: the parent of what is added now.
    parent: Option<Urn>,
}

/// A component: a group of resources declared together ([`Cx::component`]). It has a
/// URN, and may be inside another component.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Component {
    /// Its URN: the stack, its type (`aws:Network`) and its name.
    pub urn: Urn,
    /// The component it is inside, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Urn>,
}

/// A component's body failed: the failure is reported with the render's other
/// problems (see [`Cx::component`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("component {0} failed (its error is reported with the program's other problems)")]
pub struct ComponentFailed(pub Urn);

/// What a render declared: see [`Cx::into_parts`].
pub(crate) struct Parts {
    pub(crate) nodes: Vec<Node>,
    pub(crate) distinct: bool,
    pub(crate) declared: Declared,
    pub(crate) exports: Vec<(String, Prop)>,
    pub(crate) errors: Vec<crate::error::ValidationError>,
    pub(crate) components: Vec<Component>,
}

/// What a stack's last render declared, for the next one to reuse.
#[derive(Debug, Default)]
pub(crate) struct Declared {
    /// The URNs, in declaration order.
    pub(crate) urns: Vec<Urn>,
    /// Whether they are known to differ from one another: a graph was built of them.
    pub(crate) distinct: bool,
}

impl Cx {
    /// A context for stack `stack`, with nothing declared yet.
    pub fn new(stack: impl Into<String>) -> Self {
        Cx::reusing(stack, Declared::default())
    }

    /// A context that reuses what a previous render of the stack declared. A stack
    /// renders the same resources time after time: room is made for as many (growing
    /// the vector would copy them all over), and their URNs are shared.
    pub(crate) fn reusing(stack: impl Into<String>, previous: Declared) -> Self {
        Cx {
            stack: stack.into(),
            decls: Vec::with_capacity(previous.urns.len()),
            previous,
            reused: true,
            exports: Vec::new(),
            references: Default::default(),
            errors: Vec::new(),
            components: Vec::new(),
            parent: None,
        }
    }

    /// The stack being rendered.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// Declares a resource and returns its typed handle, whose outputs feed other
    /// resources' inputs.
    pub fn add<R: Resource>(&mut self, resource: R) -> R::Ref {
        let mut decl = resource.into_decl();
        if let Some(parent) = &self.parent {
            decl.options_mut().parent.get_or_insert_with(|| parent.clone());
        }
        let urn = self.urn_of(&decl);
        self.decls.push(Node { urn: urn.clone(), decl });
        R::Ref::from(Handle::new(urn))
    }

    /// Declares component `name` of type `ty` (`aws:Network`): the resources `body`
    /// adds belong to it, and plans and the graph show them grouped under it. Their URNs
    /// are their own, as if declared outside it, so grouping existing resources into a
    /// component changes nothing in the cloud. Components nest.
    ///
    /// A body that fails does not stop the render at once: its error is collected with
    /// the program's other problems (invalid properties, dangling references, other
    /// components' errors) and all are reported together, naming the component. The
    /// `Err` returned can be passed on with `?`.
    ///
    /// ```
    /// # use cairn_sdk::Cx;
    /// fn site(cx: &mut Cx, name: &str, pages: u32) -> Result<(), cairn_sdk::cx::ComponentFailed> {
    ///     cx.component("demo:Site", name, |cx| {
    ///         if pages == 0 {
    ///             return Err("a site needs at least one page".into());
    ///         }
    ///         // cx.add(...) the site's resources.
    ///         let _ = cx;
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub fn component<T>(
        &mut self,
        ty: &str,
        name: &str,
        body: impl FnOnce(&mut Cx) -> Result<T, crate::BoxError>,
    ) -> Result<T, ComponentFailed> {
        let urn = Urn::new(&self.stack, ty, name);
        self.components.push(Component { urn: urn.clone(), parent: self.parent.clone() });
        let outer = self.parent.replace(urn.clone());
        let result = body(self);
        self.parent = outer;
        result.map_err(|e| {
            self.errors.push(crate::error::ValidationError::Component { urn: urn.clone(), message: e.to_string() });
            ComponentFailed(urn)
        })
    }

    /// Exports a stack output: a value `outputs` prints and other stacks read through a
    /// stack reference, such as `cx.export("queue_url", queue.url())`. It is recorded
    /// in state by each apply, once known; a plan shows how it changes.
    pub fn export<T>(&mut self, name: impl Into<String>, value: impl Into<Input<T>>) {
        self.exports.push((name.into(), value.into().into_prop()));
    }

    /// Output `output` of the stack `stack`, which the stack declares with
    /// [`Stack::reference`](crate::Stack::reference): its value when the stack was opened,
    /// known at plan time, so a change of it shows in this stack's plan. A stack not
    /// referenced, not deployed, or without the output fails the render with an error
    /// that says which, listing the outputs it has.
    pub fn stack_output<T>(&mut self, stack: &str, output: &str) -> Output<T> {
        let value = match self.references.get(stack) {
            None => Err(format!("the stack does not reference it: add .reference(StackReference::new(\"{stack}\")) to stack '{}'", self.stack)),
            Some(Err(why)) => Err(why.clone()),
            Some(Ok(outputs)) => outputs.get(output).cloned().ok_or_else(|| {
                if outputs.is_empty() {
                    "it exports none (yet): export it with cx.export and run `up` on it".to_owned()
                } else {
                    format!("it exports only: {}", outputs.keys().cloned().collect::<Vec<_>>().join(", "))
                }
            }),
        };
        match value {
            Ok(value) => Output::known(value),
            Err(reason) => {
                self.errors.push(crate::error::ValidationError::Reference { stack: stack.to_owned(), output: output.to_owned(), reason });
                Output::known(serde_json::Value::Null)
            }
        }
    }

    pub(crate) fn with_references(mut self, references: std::sync::Arc<crate::reference::Loaded>) -> Self {
        self.references = references;
        self
    }

    /// The URN of `decl`, about to be declared.
    fn urn_of(&mut self, decl: &Decl) -> Urn {
        let position = self.decls.len();
        let urns = &mut self.previous.urns;
        match urns.get(position) {
            // The resource declared here last time: its URN is shared rather than built
            // again, which saves allocating it now and freeing it with the plan, and
            // state, which holds the same URN, then matches it by address.
            Some(urn) if urn.is(&self.stack, decl.ty.token, &decl.name) => urn.clone(),
            _ => {
                self.reused = false;
                let urn = Urn::new(&self.stack, decl.ty.token, &decl.name);
                match urns.get_mut(position) {
                    Some(slot) => *slot = urn.clone(),
                    None => urns.push(urn.clone()),
                }
                urn
            }
        }
    }

    /// A handle to a resource by type and name, declared elsewhere in the program (or
    /// not at all: validation then reports the dangling reference).
    pub fn reference<R: From<Handle>>(&self, ty: &'static ResourceType, name: &str) -> R {
        R::from(Handle::new(Urn::new(&self.stack, ty.token, name)))
    }

    /// How many resources have been declared.
    pub fn len(&self) -> usize {
        self.decls.len()
    }

    /// Whether nothing has been declared.
    pub fn is_empty(&self) -> bool {
        self.decls.is_empty()
    }

    /// The declarations, in order, not yet validated (their `deps` are empty); whether
    /// their URNs are known to be distinct (each is one a graph was built of); their
    /// URNs, for the next render to reuse; and the stack outputs.
    pub(crate) fn into_parts(self) -> Parts {
        let distinct = self.reused && self.previous.distinct;
        let mut urns = self.previous.urns;
        urns.truncate(self.decls.len());
        Parts {
            nodes: self.decls,
            distinct,
            declared: Declared { urns, distinct: false },
            exports: self.exports,
            errors: self.errors,
            components: self.components,
        }
    }
}

impl fmt::Debug for Cx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decls: Vec<_> = self.decls.iter().map(|n| (&n.urn, &n.decl)).collect();
        f.debug_struct("Cx").field("stack", &self.stack).field("decls", &decls).finish()
    }
}
