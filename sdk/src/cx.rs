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
}

impl Cx {
    /// A context for stack `stack`, with nothing declared yet.
    pub fn new(stack: impl Into<String>) -> Self {
        Cx { stack: stack.into(), decls: Vec::new() }
    }

    /// A context with room for `n` declarations: a stack renders the same number of
    /// resources time after time, and growing the vector would copy them all over.
    pub(crate) fn with_capacity(stack: impl Into<String>, n: usize) -> Self {
        Cx { stack: stack.into(), decls: Vec::with_capacity(n) }
    }

    /// The stack being rendered.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// Declares a resource and returns its typed handle, whose outputs feed other
    /// resources' inputs.
    pub fn add<R: Resource>(&mut self, resource: R) -> R::Ref {
        let decl = resource.into_decl();
        let urn = Urn::new(&self.stack, decl.ty.token, &decl.name);
        self.decls.push(Node { urn: urn.clone(), decl, deps: Vec::new() });
        R::Ref::from(Handle::new(urn))
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

    /// The declarations, in order, not yet validated (their `deps` are empty).
    pub(crate) fn into_nodes(self) -> Vec<Node> {
        self.decls
    }
}

impl fmt::Debug for Cx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decls: Vec<_> = self.decls.iter().map(|n| (&n.urn, &n.decl)).collect();
        f.debug_struct("Cx").field("stack", &self.stack).field("decls", &decls).finish()
    }
}
