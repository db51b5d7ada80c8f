//! Listens for PostgreSQL's announcements of committed workflow changes (migration 0002's
//! trigger) and statistics changes (0005's, naming the tenant whose figures moved) and tells the
//! [`WorkflowCache`], so that a replica drops what another replica's writes made stale.
//!
//! An announcement sent while the listening connection is down is lost for good, so the cache
//! is off from the moment the connection fails (or goes deaf: the feed's heartbeat catches a
//! half-open connection) until a new one listens again; it then starts empty of anything older.
//! The feed's connections are its own, never the service's pool (see [`pg_feed`]): a pool whose
//! every connection is busy does not hold announcements back while the cache serves what they
//! made stale.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::pg_feed::{self, FeedEvent};
use sqlx::PgPool;

use super::cache::WorkflowCache;

/// The channel the triggers notify, with the tenant whose reads changed as payload ('' for the
/// template library).
pub const CHANNEL: &str = "engarde_workflow_changes";

/// Feeds `cache` for as long as `pool` is open, checking the feed every `heartbeat`.
pub fn spawn(pool: PgPool, cache: Arc<WorkflowCache>, heartbeat: Duration) {
    pg_feed::spawn(pool, vec![CHANNEL.to_owned()], heartbeat, move |event| match event {
        FeedEvent::Listening => {
            cache.enable();
            tracing::info!(channel = CHANNEL, "workflow cache on: listening for changes");
        }
        FeedEvent::Notification { payload, .. } => cache.changed(payload),
        FeedEvent::Lost(reason) => {
            cache.disable();
            tracing::warn!(reason, "workflow cache off: lost the change feed; reconnecting");
        }
    });
}
