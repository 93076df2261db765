//! Auto Scaling: groups of instances launched from a launch template.

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    let _ = kinds;
}
