use std::sync::Arc;

use crate::{FileStore, StateError, Store};

/// The state location used when none is given: `.cairn` in the working directory.
pub const DEFAULT_LOCATION: &str = "file://.cairn";

/// Opens the store at `location`: a directory path or `file://PATH`. The CLI takes it
/// from `--state` or `CAIRN_STATE`.
pub async fn open(location: &str) -> Result<Arc<dyn Store>, StateError> {
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Arc::new(FileStore::new(path)));
    }
    if location.contains("://") || location.is_empty() {
        return Err(StateError::BadLocation(location.to_owned()));
    }
    Ok(Arc::new(FileStore::new(location)))
}
