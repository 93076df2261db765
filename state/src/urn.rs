use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity of a resource: `urn:cairn:<stack>::<type>::<name>`.
///
/// A URN is derived from the stack, the resource's type token and its logical name,
/// never from anything the cloud assigns, so the same program always yields the same
/// URNs. Two resources of one stack may share a name only if their types differ.
///
/// Cheap to clone (a shared string): the graph, plans and state pass URNs around a lot.
#[derive(Clone, PartialOrd, Ord)]
pub struct Urn(Arc<str>);

// Equal URNs have equal text, so hashing the text agrees with `eq`'s shortcut.
impl std::hash::Hash for Urn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Urn {
    fn eq(&self, other: &Self) -> bool {
        // References made from a handle share the declaration's URN: skip the compare.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Urn {}

impl Serialize for Urn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Urn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(UrnVisitor)
    }
}

/// Reads a URN straight into its shared allocation (no `String` in between), or, while
/// a state is read, into the allocation of the same URN read before.
struct UrnVisitor;

impl Visitor<'_> for UrnVisitor {
    type Value = Urn;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Cairn URN")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Urn, E> {
        check(s).map_err(E::custom)?;
        Ok(READ.with_borrow_mut(|read| match read {
            Some(read) => match read.get(s) {
                Some(urn) => Urn(urn.clone()),
                None => {
                    let urn: Arc<str> = Arc::from(s);
                    read.insert(urn.clone());
                    Urn(urn)
                }
            },
            None => Urn(Arc::from(s)),
        }))
    }
}

thread_local! {
    /// While [`sharing_urns`] runs: the URNs read so far.
    static READ: RefCell<Option<FxHashSet<Arc<str>>>> = const { RefCell::new(None) };
}

/// Runs `read` (a deserialization) so that the URNs it reads more than once share one
/// allocation. A state's resources name each resource again in their dependencies and
/// their children's parents: read alone, a 100,000-resource state held about 180,000
/// extra copies. Shared, they also compare equal by address.
pub(crate) fn sharing_urns<T>(read: impl FnOnce() -> T) -> T {
    /// Ends the sharing however `read` ends, a panic included.
    struct Done(bool);
    impl Drop for Done {
        fn drop(&mut self) {
            if self.0 {
                READ.set(None);
            }
        }
    }
    // A nested read (a state inside something being read) joins the outer one.
    let outermost = READ.with_borrow_mut(|r| r.is_none() && r.replace(FxHashSet::default()).is_none());
    let _done = Done(outermost);
    read()
}

/// A string that is not a well-formed Cairn URN.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a Cairn URN (expected urn:cairn:<stack>::<type>::<name>)")]
pub struct UrnError(String);

const PREFIX: &str = "urn:cairn:";

impl Urn {
    /// Builds the URN of resource `name` of type `ty` in `stack`.
    pub fn new(stack: &str, ty: &str, name: &str) -> Self {
        thread_local! {
            // Where URNs are assembled before being copied into their shared allocation:
            // building a fresh `String` and converting it would allocate twice per URN,
            // and a render makes one URN per resource.
            static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
        }
        SCRATCH.with_borrow_mut(|s| {
            s.clear();
            s.push_str(PREFIX);
            s.push_str(stack);
            s.push_str("::");
            s.push_str(ty);
            s.push_str("::");
            s.push_str(name);
            Urn(Arc::from(s.as_str()))
        })
    }

    /// Whether this is the URN of resource `name` of type `ty` in `stack`: the one
    /// [`Urn::new`] would build, found without building it.
    pub fn is(&self, stack: &str, ty: &str, name: &str) -> bool {
        let s = self.as_str();
        // The length first, then from the end: the name is the part most likely to differ.
        s.len() == PREFIX.len() + stack.len() + ty.len() + name.len() + 4
            && s.strip_suffix(name)
                .and_then(|s| s.strip_suffix("::"))
                .and_then(|s| s.strip_suffix(ty))
                .and_then(|s| s.strip_suffix("::"))
                .and_then(|s| s.strip_suffix(stack))
                == Some(PREFIX)
    }

    /// Parses a URN, checking its shape.
    pub fn parse(s: &str) -> Result<Self, UrnError> {
        check(s)?;
        Ok(Urn(s.into()))
    }

    /// The whole URN as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> (&str, &str, &str) {
        let rest = &self.0[PREFIX.len()..];
        let mut it = rest.splitn(3, "::");
        let stack = it.next().unwrap_or_default();
        let ty = it.next().unwrap_or_default();
        let name = it.next().unwrap_or_default();
        (stack, ty, name)
    }

    /// The stack part.
    pub fn stack(&self) -> &str {
        self.parts().0
    }

    /// The type token, e.g. `aws:ec2:Vpc`.
    pub fn ty(&self) -> &str {
        self.parts().1
    }

    /// The logical name given in the program.
    pub fn name(&self) -> &str {
        self.parts().2
    }
}

impl fmt::Display for Urn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Urn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Whether `s` has a URN's shape.
fn check(s: &str) -> Result<(), UrnError> {
    match s.strip_prefix(PREFIX) {
        Some(rest) if rest.splitn(3, "::").count() == 3 => Ok(()),
        _ => Err(UrnError(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_even_with_colons_in_the_type() {
        let urn = Urn::new("dev", "aws:ec2:Vpc", "shop");
        assert_eq!(urn.as_str(), "urn:cairn:dev::aws:ec2:Vpc::shop");
        assert_eq!((urn.stack(), urn.ty(), urn.name()), ("dev", "aws:ec2:Vpc", "shop"));
        assert_eq!(Urn::parse(urn.as_str()).unwrap(), urn);
    }

    #[test]
    fn is_tells_the_urn_of_a_resource_without_building_one() {
        let urn = Urn::new("dev", "aws:ec2:Vpc", "shop");
        assert!(urn.is("dev", "aws:ec2:Vpc", "shop"));
        assert!(!urn.is("dev", "aws:ec2:Vpc", "shoe"));
        assert!(!urn.is("dev", "aws:ec2:Subnet", "shop"));
        assert!(!urn.is("prod", "aws:ec2:Vpc", "shop"));
        // The same text, split differently.
        assert!(!urn.is("dev", "aws:ec2", "Vpc::shop"));
        assert!(!urn.is("dev::aws", "ec2:Vpc", "shop"));
    }

    #[test]
    fn malformed_urns_are_refused() {
        assert!(Urn::parse("arn:aws:sqs:x").is_err());
        assert!(Urn::parse("urn:cairn:dev::only-type").is_err());
        assert!(serde_json::from_str::<Urn>(r#""urn:cairn:dev::only-type""#).is_err());
    }

    #[test]
    fn a_state_read_shares_each_urn_it_repeats_and_one_read_alone_does_not() {
        let text = r#"["urn:cairn:dev::t::a", "urn:cairn:dev::t::a", "urn:cairn:dev::t::b"]"#;
        let shared: Vec<Urn> = sharing_urns(|| serde_json::from_str(text)).unwrap();
        assert!(Arc::ptr_eq(&shared[0].0, &shared[1].0));
        assert_eq!(shared[2].as_str(), "urn:cairn:dev::t::b");
        // The sharing ends with the read.
        let alone: Vec<Urn> = serde_json::from_str(text).unwrap();
        assert_eq!(alone[0], alone[1]);
        assert!(!Arc::ptr_eq(&alone[0].0, &alone[1].0));
        assert!(!Arc::ptr_eq(&alone[0].0, &shared[0].0));
    }
}
