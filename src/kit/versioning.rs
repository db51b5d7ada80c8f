//! Versions and etags of stored resources: optimistic concurrency for every update.
//!
//! A resource's etag is its version quoted as HTTP does, so it reads as opaque. An update that
//! carries an etag other than the current one is ABORTED: somebody changed the resource since
//! the caller read it.

use super::error::{ServiceError, ServiceResult};

/// The etag of `version`.
pub fn etag_of(version: i64) -> String {
    format!("\"{version}\"")
}

/// The version an etag names, if it is one of ours.
pub fn version_of_etag(etag: &str) -> Option<i64> {
    etag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// Refuses a change based on a stale read of `what` (e.g. "workflow 0193…"), now at
/// `current_version`. An empty etag means "whatever the version".
pub fn ensure_fresh(what: &str, current_version: i64, etag: &str) -> ServiceResult<()> {
    if etag.is_empty() {
        return Ok(());
    }
    match version_of_etag(etag) {
        None => Err(ServiceError::invalid("etag", "is not an etag this service issued")),
        Some(v) if v != current_version => Err(ServiceError::Aborted(format!(
            "{what} has changed since it was read (etag {etag} is stale, current is {}); read it again",
            etag_of(current_version)
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_name_versions() {
        assert_eq!(version_of_etag(&etag_of(7)), Some(7));
        assert_eq!(version_of_etag("7"), None);
        assert!(ensure_fresh("x", 3, "").is_ok());
        assert!(ensure_fresh("x", 3, &etag_of(3)).is_ok());
        assert!(matches!(ensure_fresh("x", 3, &etag_of(2)), Err(ServiceError::Aborted(_))));
        assert!(matches!(ensure_fresh("x", 3, "junk"), Err(ServiceError::InvalidArgument(_))));
    }
}
