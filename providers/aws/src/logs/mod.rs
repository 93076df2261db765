//! CloudWatch Logs: log groups.

pub mod log_group;

pub use log_group::{LogGroup, LogGroupRef, LOG_GROUP};

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(LOG_GROUP.token, &log_group::LogGroupKind);
}
