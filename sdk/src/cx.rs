//! The program's context: where a program declares its resources.

use std::fmt;

use cairn_state::Urn;

use crate::graph::Node;
use crate::resource::{Handle, Resource};
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
    /// The URNs the stack's previous render declared, in order, each replaced as this
    /// render declares something else at its position: see [`Cx::add`].
    urns: Vec<Urn>,
    /// `urn:cairn:<stack>::<type>::` for the type of the last resource declared (as
    /// found in `urns`), to check the URNs there against.
    prefix: (String, Option<&'static ResourceType>),
}

impl Cx {
    /// A context for stack `stack`, with nothing declared yet.
    pub fn new(stack: impl Into<String>) -> Self {
        Cx::reusing(stack, Vec::new())
    }

    /// A context that reuses the URNs a previous render of the stack declared, in
    /// order. A stack renders the same resources time after time: room is made for as
    /// many (growing the vector would copy them all over), and their URNs are shared.
    pub(crate) fn reusing(stack: impl Into<String>, urns: Vec<Urn>) -> Self {
        Cx { stack: stack.into(), decls: Vec::with_capacity(urns.len()), urns, prefix: (String::new(), None) }
    }

    /// The stack being rendered.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// Declares a resource and returns its typed handle, whose outputs feed other
    /// resources' inputs.
    pub fn add<R: Resource>(&mut self, resource: R) -> R::Ref {
        let decl = resource.into_decl();
        let position = self.decls.len();
        let urn = match self.urns.get(position) {
            // The resource declared here last time: its URN is shared rather than built
            // again, which saves allocating it now and freeing it with the plan, and
            // state, which holds the same URN, then matches it by address.
            Some(urn) if self.prefix_of(decl.ty).len() + decl.name.len() == urn.as_str().len()
                && urn.as_str().ends_with(decl.name.as_str())
                && urn.as_str().starts_with(self.prefix.0.as_str()) => urn.clone(),
            _ => {
                let urn = Urn::new(&self.stack, decl.ty.token, &decl.name);
                match self.urns.get_mut(position) {
                    Some(slot) => *slot = urn.clone(),
                    None => self.urns.push(urn.clone()),
                }
                urn
            }
        };
        self.decls.push(Node { urn: urn.clone(), decl, deps: Vec::new() });
        R::Ref::from(Handle::new(urn))
    }

    /// `urn:cairn:<stack>::<ty>::`, the part of the URNs of resources of type `ty` before
    /// their name.
    fn prefix_of(&mut self, ty: &'static ResourceType) -> &str {
        let (prefix, of) = &mut self.prefix;
        if !of.is_some_and(|of| std::ptr::eq(of, ty)) {
            *of = Some(ty);
            prefix.clear();
            prefix.push_str(Urn::new(&self.stack, ty.token, "").as_str());
        }
        prefix
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

    /// The declarations, in order, not yet validated (their `deps` are empty), and
    /// their URNs, for the next render to reuse.
    pub(crate) fn into_parts(self) -> (Vec<Node>, Vec<Urn>) {
        let mut urns = self.urns;
        urns.truncate(self.decls.len());
        (self.decls, urns)
    }
}

impl fmt::Debug for Cx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decls: Vec<_> = self.decls.iter().map(|n| (&n.urn, &n.decl)).collect();
        f.debug_struct("Cx").field("stack", &self.stack).field("decls", &decls).finish()
    }
}
