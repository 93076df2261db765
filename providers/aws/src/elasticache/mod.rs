//! ElastiCache: Redis subnet groups, cache clusters and replication groups.

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    let _ = kinds;
}
