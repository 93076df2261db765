//! Stack references: one stack reading another's outputs, as layered Terraform setups
//! read a network's remote state. The application stack declares
//! `Stack::reference(StackReference::new("network"))`; its program reads
//! `cx.stack_output::<String>("network", "vpc_id")`. Each stack keeps its own state and
//! lock, so the two are deployed separately.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cairn_state::Store;
use serde_json::Value;

/// Another stack whose outputs a program reads: by name, in this stack's store or in
/// the store at another state URL (`file://DIR`, `s3://BUCKET/PREFIX`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackReference {
    pub(crate) stack: String,
    pub(crate) location: Option<String>,
}

impl StackReference {
    /// The stack `stack`, in the same store as the stack that reads it.
    pub fn new(stack: impl Into<String>) -> Self {
        StackReference { stack: stack.into(), location: None }
    }

    /// The stack in the store at `location` instead, a state URL.
    #[must_use]
    pub fn state(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

/// What the referenced stacks held when last loaded: each one's outputs, or why there
/// are none.
pub(crate) type Loaded = HashMap<String, Result<BTreeMap<String, Value>, String>>;

/// Loads the outputs of every stack in `references`, from `store` or each one's own.
pub(crate) async fn load(references: &[StackReference], store: &dyn Store) -> Loaded {
    let mut loaded = Loaded::new();
    for reference in references {
        let outputs = match &reference.location {
            None => outputs_in(store, &reference.stack).await,
            Some(location) => match cairn_state::open(location).await {
                Ok(other) => outputs_in(&*other, &reference.stack).await,
                Err(e) => Err(format!("its store {location} cannot be opened: {e}")),
            },
        };
        loaded.insert(reference.stack.clone(), outputs);
    }
    loaded
}

async fn outputs_in(store: &dyn Store, stack: &str) -> Result<BTreeMap<String, Value>, String> {
    match store.load(stack).await {
        Ok(Some(state)) => Ok(state.outputs),
        Ok(None) => Err(format!("it has no state in {}: deploy it first", store.location())),
        Err(e) => Err(format!("its state cannot be read: {e}")),
    }
}

/// The loaded references, shared by a stack's clones and read by each render.
pub(crate) type Shared = Arc<std::sync::RwLock<Arc<Loaded>>>;
