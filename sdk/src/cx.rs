//! The program's context: where a program declares its resources.

use cairn_state::Urn;

use crate::resource::{Decl, Handle, Resource};
use crate::schema::ResourceType;

/// What a stack's program receives: it declares resources with [`Cx::add`].
///
/// The program must be a pure function of the user's state: the same state must
/// declare the same resources, so that a restart never undoes what an event did.
#[derive(Debug)]
pub struct Cx {
    stack: String,
    decls: Vec<(Urn, Decl)>,
}

impl Cx {
    /// A context for stack `stack`, with nothing declared yet.
    pub fn new(stack: impl Into<String>) -> Self {
        Cx { stack: stack.into(), decls: Vec::new() }
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
        self.decls.push((urn.clone(), decl));
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

    pub(crate) fn into_decls(self) -> Vec<(Urn, Decl)> {
        self.decls
    }
}
