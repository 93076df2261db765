use std::sync::Arc;

use crate::{FileStore, StateError, Store};

/// The state location used when none is given: `.cairn` in the working directory.
pub const DEFAULT_LOCATION: &str = "file://.cairn";

/// The environment variable naming the state location.
pub const STATE_ENV: &str = "CAIRN_STATE";

/// The location to use: `explicit` (the command line's `--state`) if given, else
/// `CAIRN_STATE` if set, else [`DEFAULT_LOCATION`].
pub fn location(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var(STATE_ENV).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_LOCATION.to_owned())
}

/// Opens the store at `location`: a directory path, `file://PATH`, or (with the `s3`
/// feature) `s3://BUCKET/PREFIX`. The CLI takes it from `--state` or `CAIRN_STATE`.
/// Its locks have leases of [`CAIRN_LEASE_SECS`](crate::LEASE_ENV) seconds, 15 if unset.
pub async fn open(location: &str) -> Result<Arc<dyn Store>, StateError> {
    let lease = crate::lease_from_env()?;
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Arc::new(FileStore::new(path).with_lease(lease)));
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        return open_s3(location, rest, lease).await;
    }
    if location.contains("://") || location.is_empty() {
        return Err(StateError::BadLocation(location.to_owned()));
    }
    Ok(Arc::new(FileStore::new(location).with_lease(lease)))
}

#[cfg(feature = "s3")]
async fn open_s3(location: &str, rest: &str, lease: std::time::Duration) -> Result<Arc<dyn Store>, StateError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StateError::BadLocation(location.to_owned()));
    }
    Ok(Arc::new(crate::S3Store::from_env(bucket, prefix).await.with_lease(lease)))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(location: &str, _rest: &str, _lease: std::time::Duration) -> Result<Arc<dyn Store>, StateError> {
    Err(StateError::NoS3(location.to_owned()))
}
