//! The resource graph: declarations, their dependencies, and validation.
//!
//! Built from what a program declared. Validation runs before anything else and
//! reports every problem at once: duplicate names, unknown or missing properties, the
//! types' own checks, references to undeclared resources or properties, and cycles.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use cairn_state::Urn;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use rustc_hash::FxHashMap as HashMap;

use crate::error::{ValidationError, ValidationErrors};
use crate::input::Prop;
use crate::resource::Decl;
use crate::schema::PropertyKind;
use crate::cx::Component;
use crate::secret::Keyring;

/// A validated resource graph. Nodes keep declaration order; [`Graph::resources`] and
/// plans follow a deterministic topological order: by depth (a resource comes after
/// everything it depends on), then by type token and name.
#[derive(Debug)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    /// The nodes' indices by URN, built when first needed: see [`Graph::from_declared`].
    index: Index,
    /// What each node depends on.
    pub(crate) deps: Deps,
    /// Node indices in topological order.
    pub(crate) order: Vec<usize>,
    /// The stack outputs the program exports, by name, in the order exported.
    pub(crate) exports: Vec<(String, Prop)>,
    /// The components the program declares, in order.
    pub(crate) components: Vec<Component>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) urn: Urn,
    pub(crate) decl: Decl,
}

/// Each node's dependencies (the indices of the nodes it depends on, sorted, without
/// repeats), all in one array rather than a vector per node: a graph of 100,000
/// resources holds 100,000 fewer allocations.
#[derive(Debug)]
pub(crate) struct Deps {
    /// Node `i`'s dependencies are `flat[start[i]..start[i + 1]]`.
    start: Vec<u32>,
    flat: Vec<u32>,
}

impl Deps {
    fn with_capacity(nodes: usize) -> Deps {
        let mut start = Vec::with_capacity(nodes + 1);
        start.push(0);
        Deps { start, flat: Vec::with_capacity(nodes * 2) }
    }

    /// Adds the next node's dependencies.
    fn push(&mut self, deps: &[usize]) {
        self.flat.extend(deps.iter().map(|&d| d as u32));
        self.start.push(self.flat.len() as u32);
    }

    /// The indices of the nodes node `i` depends on.
    pub(crate) fn of(&self, i: usize) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.flat[self.start[i] as usize..self.start[i + 1] as usize].iter().map(|&d| d as usize)
    }

    fn len(&self) -> usize {
        self.start.len() - 1
    }
}

/// The nodes' indices, found by URN. Each map is built the first time it is needed.
#[derive(Debug, Default)]
struct Index {
    /// By the address of the node's URN. A reference made from a handle holds the very
    /// URN its declaration does, so most lookups hash a pointer rather than a URN's
    /// forty-odd bytes, and compare nothing.
    by_address: OnceLock<HashMap<usize, u32>>,
    /// By the URN's text, for references that name a resource some other way (by name,
    /// from another render, from a saved plan).
    by_urn: OnceLock<HashMap<Urn, usize>>,
}

impl Index {
    /// The index of the node with this URN, among `nodes`, whose URNs are distinct.
    fn find(&self, nodes: &[Node], urn: &Urn) -> Option<usize> {
        let by_address = self.by_address.get_or_init(|| {
            nodes.iter().enumerate().map(|(i, node)| (address(&node.urn), i as u32)).collect()
        });
        // The address is taken only while `nodes` holds the URN, so no other URN can
        // have it: equal addresses are the same URN.
        match by_address.get(&address(urn)) {
            Some(&i) => Some(i as usize),
            None => self.by_urn.get_or_init(|| index_of(nodes)).get(urn).copied(),
        }
    }
}

/// Where a URN's text is: shared by every clone of it.
fn address(urn: &Urn) -> usize {
    urn.as_str().as_ptr() as usize
}

impl Graph {
    /// Builds and validates the graph of `decls` for `stack`.
    pub fn build(stack: &str, decls: Vec<Decl>) -> Result<Graph, ValidationErrors> {
        Self::from_declared(
            decls.into_iter().map(|d| Node { urn: Urn::new(stack, d.ty.token, &d.name), decl: d }).collect(),
            false,
        )
    }

    /// Builds and validates the graph of declarations whose URNs are already known, in
    /// place: the nodes are not moved.
    ///
    /// `distinct` says the URNs are known to differ (a graph was built from them
    /// before). Then there is no duplicate to look for, and the index by URN is built
    /// only if something needs it: a graph whose resources reference none of each
    /// other, planned against state in its own order, never hashes a URN.
    pub(crate) fn from_declared(mut nodes: Vec<Node>, distinct: bool) -> Result<Graph, ValidationErrors> {
        let mut errors = Vec::new();
        let index = Index::default();
        // Positions of declarations whose URN was declared before: reported, then left
        // out of the graph.
        let mut duplicates: Vec<usize> = Vec::new();
        if !distinct {
            let mut by_urn: HashMap<Urn, usize> = HashMap::with_capacity_and_hasher(nodes.len(), Default::default());
            for (i, node) in nodes.iter().enumerate() {
                match by_urn.entry(node.urn.clone()) {
                    std::collections::hash_map::Entry::Occupied(_) => duplicates.push(i),
                    // Its index once the duplicates before it are gone.
                    std::collections::hash_map::Entry::Vacant(slot) => _ = slot.insert(i - duplicates.len()),
                }
            }
            let _ = index.by_urn.set(by_urn);
        }
        let mut duplicate = duplicates.iter().copied().peekable();
        for (i, node) in nodes.iter_mut().enumerate() {
            if duplicate.next_if_eq(&i).is_some() {
                duplicate_once(&mut errors, &node.urn);
                continue;
            }
            apply_defaults(&mut node.decl);
            check_properties(&node.urn, &node.decl, &mut errors);
        }
        if !duplicates.is_empty() {
            let mut position = 0;
            nodes.retain(|_| {
                let keep = duplicates.binary_search(&position).is_err();
                position += 1;
                keep
            });
        }

        // Edges: every reference inside an input, plus depends_on.
        let mut edges = Deps::with_capacity(nodes.len());
        let mut deps = Vec::new();
        for i in 0..nodes.len() {
            deps.clear();
            let node = &nodes[i];
            for (property, prop) in &node.decl.props {
                // Most inputs are literals, with no reference to look for.
                if matches!(prop, Prop::Value(_)) {
                    continue;
                }
                prop.for_each_ref(&mut |r| match index.find(&nodes, &r.urn) {
                    None => errors.push(ValidationError::Dangling {
                        urn: node.urn.clone(),
                        property: property.to_string(),
                        target: r.urn.clone(),
                    }),
                    Some(t) => {
                        let target_ty = nodes[t].decl.ty;
                        if target_ty.property(&r.property).is_none() {
                            errors.push(ValidationError::UnknownOutput {
                                urn: node.urn.clone(),
                                property: property.to_string(),
                                target: r.clone(),
                                known: target_ty.properties.iter().map(|p| p.name).collect(),
                            });
                        }
                        deps.push(t);
                    }
                });
            }
            for target in &node.decl.options().depends_on {
                match index.find(&nodes, target) {
                    Some(t) => deps.push(t),
                    None => errors.push(ValidationError::Dangling {
                        urn: node.urn.clone(),
                        property: "depends_on".to_owned(),
                        target: target.clone(),
                    }),
                }
            }
            deps.sort_unstable();
            deps.dedup();
            edges.push(&deps);
        }

        let order = match topological_order(&nodes, &edges) {
            Ok(order) => order,
            Err(cycles) => {
                errors.extend(cycles);
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        Ok(Graph { nodes, index, deps: edges, order, exports: Vec::new(), components: Vec::new() })
    }

    /// The graph with the stack outputs `exports`, once checked: each name once, each
    /// reference to a declared resource's property.
    pub(crate) fn with_exports(mut self, exports: Vec<(String, Prop)>) -> Result<Graph, ValidationErrors> {
        let mut errors = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (name, prop) in &exports {
            let mut bad = |reason: String| errors.push(ValidationError::Export { name: name.clone(), reason });
            if name.is_empty() {
                bad("has no name; give it one".to_owned());
            } else if !names.insert(name.as_str()) {
                bad("is exported twice; give each output a name of its own".to_owned());
            }
            prop.for_each_ref(&mut |r| match self.find(&r.urn) {
                None => bad(format!("refers to {}, which this program does not declare; declare it with cx.add", r.urn)),
                Some(t) if self.nodes[t].decl.ty.property(&r.property).is_none() => {
                    bad(format!("refers to '{}' of {}, which has no such property", r.property, r.urn));
                }
                Some(_) => {}
            });
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        self.exports = exports;
        Ok(self)
    }

    /// The stack outputs the program exports, by name.
    pub fn exports(&self) -> &[(String, Prop)] {
        &self.exports
    }

    /// The index of the node with this URN.
    pub(crate) fn find(&self, urn: &Urn) -> Option<usize> {
        self.index.find(&self.nodes, urn)
    }

    /// How many resources the graph holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The resources in order, each with the URNs it depends on.
    pub fn resources(&self) -> impl Iterator<Item = (&Urn, Vec<&Urn>)> {
        self.order.iter().map(move |&i| {
            (&self.nodes[i].urn, self.deps.of(i).map(|d| &self.nodes[d].urn).collect())
        })
    }

    /// The component resource `urn` belongs to, if any.
    pub fn parent_of(&self, urn: &Urn) -> Option<&Urn> {
        self.find(urn).and_then(|i| self.nodes[i].decl.options().parent.as_ref())
    }

    /// The graph in Graphviz DOT, an edge from each dependency to its dependent; each
    /// component a cluster around its resources.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph cairn {\n  rankdir=LR;\n  node [shape=box];\n");
        self.dot_group(None, 1, &mut out);
        for &i in &self.order {
            for d in self.deps.of(i) {
                let _ = writeln!(out, "  \"{}\" -> \"{}\";", self.nodes[d].urn, self.nodes[i].urn);
            }
        }
        out.push_str("}\n");
        out
    }

    /// The nodes and the clusters of components inside `group` (`None`: the top).
    fn dot_group(&self, group: Option<&Urn>, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        for &i in &self.order {
            let n = &self.nodes[i];
            let parent = n.decl.options().parent.as_ref();
            // At the top too: a node whose parent is no declared component.
            let top = group.is_none() && parent.is_some_and(|p| !self.components.iter().any(|c| &c.urn == p));
            if parent == group || top {
                let _ = writeln!(out, "{pad}\"{}\" [label=\"{}\\n{}\"];", n.urn, n.urn.ty(), n.urn.name());
            }
        }
        for c in self.components.iter().filter(|c| c.parent.as_ref() == group && Some(&c.urn) != group) {
            let _ = writeln!(out, "{pad}subgraph \"cluster_{}\" {{", c.urn);
            let _ = writeln!(out, "{pad}  label=\"{} {}\";", c.urn.ty(), c.urn.name());
            self.dot_group(Some(&c.urn), depth + 1, out);
            let _ = writeln!(out, "{pad}}}");
        }
    }
}

/// Reports `urn` as declared more than once, once however many times it is.
fn duplicate_once(errors: &mut Vec<ValidationError>, urn: &Urn) {
    if !errors.iter().any(|e| matches!(e, ValidationError::Duplicate { urn: u } if u == urn)) {
        errors.push(ValidationError::Duplicate { urn: urn.clone() });
    }
}

/// The index of each node by URN, for nodes whose URNs are distinct.
fn index_of(nodes: &[Node]) -> HashMap<Urn, usize> {
    nodes.iter().enumerate().map(|(i, node)| (node.urn.clone(), i)).collect()
}

fn apply_defaults(decl: &mut Decl) {
    for p in decl.ty.inputs() {
        if let Some(default) = p.default {
            if decl.get(p.name).is_none() {
                decl.set_prop(p.name, Prop::Value(default.to_value()));
            }
        }
    }
}

fn check_properties(urn: &Urn, decl: &Decl, errors: &mut Vec<ValidationError>) {
    let ty = decl.ty;
    for (name, _) in &decl.props {
        // A key borrowed from the schema is a property of this type, found by address.
        let schema = match name {
            std::borrow::Cow::Borrowed(key) => ty.properties.iter().find(|p| std::ptr::eq(p.name, *key)),
            std::borrow::Cow::Owned(_) => None,
        };
        if !schema.is_some_and(|p| p.kind != PropertyKind::Output) {
            errors.push(ValidationError::UnknownProperty {
                urn: urn.clone(),
                property: name.to_string(),
                known: ty.inputs().map(|p| p.name).collect(),
            });
        }
    }
    for p in ty.inputs() {
        if p.required && !decl.is_set(p) {
            errors.push(ValidationError::Missing { urn: urn.clone(), property: p.name });
        }
    }
    let mut failures = Vec::new();
    (ty.validate)(decl, &mut failures);
    // The type checks a secret's plaintext; the error does not quote it.
    for failure in failures.iter_mut().filter(|f| ty.property(&f.property).is_some_and(|p| p.secret)) {
        failure.value = failure.value.take().map(|_| serde_json::Value::from(crate::secret::REDACTED));
    }
    errors.extend(failures.into_iter().map(|failure| ValidationError::Invalid { urn: urn.clone(), failure }));
}

impl Graph {
    /// The graph with the program's `components`; two of one URN are refused.
    pub(crate) fn with_components(mut self, components: Vec<Component>) -> Result<Graph, ValidationErrors> {
        let mut errors = Vec::new();
        for (i, c) in components.iter().enumerate() {
            if components[..i].iter().any(|o| o.urn == c.urn) {
                duplicate_once(&mut errors, &c.urn);
            }
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        self.components = components;
        Ok(self)
    }

    /// The components the program declares, in the order declared.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Seals, with `keyring`, every input the schema marks secret that the program set
    /// in plaintext: a literal now, a computed value when it is computed. An error for
    /// each when there is no key.
    pub(crate) fn seal_secret_inputs(&mut self, stack: &str, keyring: Option<&Arc<Keyring>>) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            let ty = node.decl.ty;
            if !ty.properties.iter().any(|p| p.secret) {
                continue;
            }
            for (name, prop) in &mut node.decl.props {
                let Some(property) = ty.property(name).filter(|p| p.secret) else { continue };
                if matches!(prop, Prop::Value(v) if v.is_null() || crate::secret::contains_sealed(v)) {
                    continue;
                }
                let Some(keyring) = keyring else {
                    errors.push(ValidationError::NoSecretsKey { urn: node.urn.clone(), property: property.name, stack: stack.to_owned() });
                    continue;
                };
                *prop = match std::mem::replace(prop, Prop::Value(serde_json::Value::Null)) {
                    Prop::Value(v) => Prop::Value(keyring.seal(&v)),
                    mut computed => {
                        // Its literal parts too, so a plan saved before it is computed
                        // holds no part of the plaintext.
                        seal_literals(&mut computed, keyring);
                        let keyring = keyring.clone();
                        Prop::Apply(Box::new(crate::input::Apply::new("secret", vec![computed], move |args| Ok(keyring.seal(&args[0])))))
                    }
                };
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

/// Seals every literal inside `prop` (a function of the program opens them again); in
/// a literal that already holds sealed parts, the parts around them.
fn seal_literals(prop: &mut Prop, keyring: &Keyring) {
    fn seal_around(value: &mut serde_json::Value, keyring: &Keyring) {
        use serde_json::Value;
        match value {
            v if crate::secret::is_sealed(v) || v.is_null() => {}
            Value::Array(items) if items.iter().any(crate::secret::contains_sealed) => items.iter_mut().for_each(|v| seal_around(v, keyring)),
            Value::Object(map) if map.values().any(crate::secret::contains_sealed) => map.values_mut().for_each(|v| seal_around(v, keyring)),
            v => *v = keyring.seal(v),
        }
    }
    match prop {
        Prop::Value(v) => seal_around(v, keyring),
        Prop::Output(_) => {}
        Prop::List(items) => items.iter_mut().for_each(|p| seal_literals(p, keyring)),
        Prop::Object(fields) => fields.iter_mut().for_each(|(_, p)| seal_literals(p, keyring)),
        Prop::Apply(apply) => apply.args.iter_mut().for_each(|p| seal_literals(p, keyring)),
    }
}

/// Node indices with dependencies first, then by depth and URN; or every cycle found.
fn topological_order(nodes: &[Node], deps: &Deps) -> Result<Vec<usize>, Vec<ValidationError>> {
    let depth = match depths_in_declaration_order(deps) {
        Some(depth) => depth,
        None => depths(nodes, deps)?,
    };
    // By depth, then type and name (the URN's varying parts). The sort compares small
    // keys side by side in one array: the depth, the type's rank and the name's first
    // eight bytes decide nearly every comparison without reading a node, which at 100k
    // nodes would be a cache miss each (a third of the graph's build, measured).
    let rank = type_ranks(nodes);
    let mut keys: Vec<OrderKey> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| OrderKey {
            depth: depth[i],
            ty: rank[&(node.decl.ty as *const _)],
            name: name_prefix(&node.decl.name),
            node: i as u32,
        })
        .collect();
    keys.sort_unstable_by(|a, b| {
        (a.depth, a.ty, a.name)
            .cmp(&(b.depth, b.ty, b.name))
            .then_with(|| nodes[a.node as usize].decl.name.cmp(&nodes[b.node as usize].decl.name))
    });
    // Collected afresh: reusing the keys' allocation would keep three times the room.
    Ok(keys.iter().map(|k| k.node as usize).collect())
}

/// A node's place in the topological order, compared field by field.
struct OrderKey {
    depth: u32,
    ty: u32,
    /// The name's first eight bytes, zero-padded: ordered as the names are, except
    /// that equal prefixes leave the rest to compare.
    name: u64,
    node: u32,
}

/// Each declared type's rank among the types' tokens (equal tokens rank equal).
fn type_ranks(nodes: &[Node]) -> HashMap<*const crate::schema::ResourceType, u32> {
    let mut types: Vec<&'static crate::schema::ResourceType> = Vec::new();
    let mut seen: HashMap<*const crate::schema::ResourceType, u32> = HashMap::default();
    for node in nodes {
        seen.entry(node.decl.ty).or_insert_with(|| {
            types.push(node.decl.ty);
            0
        });
    }
    types.sort_unstable_by_key(|ty| ty.token);
    let mut rank = 0;
    for (i, ty) in types.iter().enumerate() {
        if i > 0 && types[i - 1].token != ty.token {
            rank += 1;
        }
        seen.insert(*ty, rank);
    }
    seen
}

/// The first eight bytes of `name` as a big-endian number, zero-padded, so that
/// numbers order as the names' beginnings do.
fn name_prefix(name: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// Each node's depth (the longest path to it from a root) when every node depends only
/// on nodes declared before it: a program declares a resource after those whose
/// handles it uses, so this is the rule. Then one pass finds the depths, and there can
/// be no cycle. `None` when a node depends on one declared later (or on itself).
fn depths_in_declaration_order(deps: &Deps) -> Option<Vec<u32>> {
    let mut depth: Vec<u32> = Vec::with_capacity(deps.len());
    for i in 0..deps.len() {
        let mut d = 0;
        for dep in deps.of(i) {
            // Only the nodes before this one have a depth yet.
            d = d.max(depth.get(dep)? + 1);
        }
        depth.push(d);
    }
    Some(depth)
}

/// Each node's depth (the longest path to it from a root), in any graph; or every
/// cycle found.
fn depths(nodes: &[Node], deps: &Deps) -> Result<Vec<u32>, Vec<ValidationError>> {
    // Kahn's algorithm, computing each node's depth (longest path from a root).
    let mut waiting: Vec<u32> = (0..nodes.len()).map(|i| deps.of(i).len() as u32).collect();
    // Dependents as one flat array (node i's are at start[i]..start[i + 1]).
    let mut start = vec![0usize; nodes.len() + 1];
    for i in 0..nodes.len() {
        for d in deps.of(i) {
            start[d + 1] += 1;
        }
    }
    for i in 0..nodes.len() {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut flat = vec![0usize; start[nodes.len()]];
    for i in 0..nodes.len() {
        for d in deps.of(i) {
            flat[fill[d]] = i;
            fill[d] += 1;
        }
    }
    let dependents = |i: usize| &flat[start[i]..start[i + 1]];
    let mut depth = vec![0u32; nodes.len()];
    let mut queue: Vec<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = queue.pop() {
        done += 1;
        for &j in dependents(i) {
            depth[j] = depth[j].max(depth[i] + 1);
            waiting[j] -= 1;
            if waiting[j] == 0 {
                queue.push(j);
            }
        }
    }
    if done != nodes.len() {
        return Err(find_cycles(nodes, deps));
    }
    Ok(depth)
}

/// Every cycle, each as a path from its smallest URN. Only runs when there is one.
fn find_cycles(nodes: &[Node], deps: &Deps) -> Vec<ValidationError> {
    let mut g: DiGraph<(), ()> = DiGraph::with_capacity(nodes.len(), nodes.len() * 2);
    for _ in nodes {
        g.add_node(());
    }
    for i in 0..nodes.len() {
        for d in deps.of(i) {
            g.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
        }
    }
    let g = &g;
    let mut errors = Vec::new();
    for scc in tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk the loop from its smallest URN, following edges inside the component,
        // so the message is the same on every run.
        let members: std::collections::HashSet<usize> = scc.iter().map(|n| n.index()).collect();
        let start = *members.iter().min_by_key(|&&i| &nodes[i].urn).expect("non-empty component");
        let mut path = vec![start];
        let mut seen = std::collections::HashSet::from([start]);
        let mut at = start;
        loop {
            let mut next: Vec<usize> =
                g.neighbors(NodeIndex::new(at)).map(|n| n.index()).filter(|i| members.contains(i)).collect();
            next.sort_by(|a, b| nodes[*a].urn.cmp(&nodes[*b].urn));
            let step = next.iter().copied().find(|i| *i == start).or_else(|| next.iter().copied().find(|i| !seen.contains(i)));
            match step {
                Some(s) if s == start => {
                    path.push(start);
                    break;
                }
                Some(s) => {
                    seen.insert(s);
                    path.push(s);
                    at = s;
                }
                // Every neighbour seen: close the loop at the first one on the path.
                None => {
                    let back = next[0];
                    let pos = path.iter().position(|&p| p == back).unwrap_or(0);
                    path.drain(..pos);
                    path.push(back);
                    break;
                }
            }
        }
        errors.push(ValidationError::Cycle { path: path.into_iter().map(|i| nodes[i].urn.clone()).collect() });
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Property, ResourceType};
    use serde_json::json;

    static B: ResourceType = ResourceType::new("test:index:B", &[Property::input("x")]);
    static A: ResourceType = ResourceType::new("test:index:A", &[Property::input("x")]);
    /// Another type with A's token (a second declaration of it): ranked as A.
    static A_AGAIN: ResourceType = ResourceType::new("test:index:A", &[Property::input("x")]);

    #[test]
    fn resources_of_one_depth_are_ordered_by_type_then_name_whatever_their_first_eight_bytes() {
        let names = ["subnet-private-b", "subnet-private-a", "subnet-p", "subnet-pr", "b", "ab", "", "subnet-q"];
        let mut decls = Vec::new();
        for (i, name) in names.iter().enumerate() {
            decls.push(Decl::new(&B, *name));
            decls.push(Decl::new(if i % 2 == 0 { &A } else { &A_AGAIN }, format!("{name}x")));
        }
        let graph = Graph::build("dev", decls).unwrap();
        let got: Vec<(&str, &str)> = graph.order.iter().map(|&i| (graph.nodes[i].decl.ty.token, graph.nodes[i].decl.name.as_str())).collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got[0], ("test:index:A", "abx"));
        assert_eq!(got[got.len() - 1], ("test:index:B", "subnet-q"));
    }

    #[test]
    fn a_literal_holding_a_secret_has_the_parts_around_it_sealed_and_opens_whole() {
        let keyring = Keyring::from_key(&[9; 64]).unwrap();
        let inner = keyring.seal(&json!("inner-secret"));
        let mut prop = Prop::Value(json!(["plain-part", inner, null]));
        seal_literals(&mut prop, &keyring);
        let Prop::Value(sealed) = &prop else { panic!("{prop:?}") };
        assert!(!sealed.to_string().contains("plain-part"), "{sealed}");
        assert_eq!(sealed[1], inner, "a sealed part is not sealed again");
        let (opened, by) = crate::secret::open_all(sealed).unwrap();
        assert_eq!((opened, by.is_some()), (json!(["plain-part", "inner-secret", null]), true));
        // A value sealed whole around a sealed part opens whole too.
        let (opened, _) = crate::secret::open_all(&keyring.seal(&json!({"a": inner}))).unwrap();
        assert_eq!(opened, json!({"a": "inner-secret"}));
    }
}
