//! Listens for PostgreSQL's announcements of committed workflow changes (migration 0002's
//! trigger) and tells the [`WorkflowCache`], so that a replica drops what another replica's
//! writes made stale.
//!
//! An announcement sent while the listening connection is down is lost for good, so the cache
//! is off from the moment the connection fails until a new one listens again; it then starts
//! empty of anything older.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::cache::WorkflowCache;

/// The channel the trigger notifies, with the owning tenant as payload.
pub const CHANNEL: &str = "engarde_workflow_changes";

/// Longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Feeds `cache` for as long as `pool` is open.
pub fn spawn(pool: PgPool, cache: Arc<WorkflowCache>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !pool.is_closed() {
            match listen(&pool).await {
                Ok(mut listener) => {
                    cache.enable();
                    tracing::info!(channel = CHANNEL, "workflow cache on: listening for changes");
                    backoff = Duration::from_millis(100);
                    let ended = follow(&mut listener, &cache).await;
                    cache.disable();
                    if pool.is_closed() {
                        break;
                    }
                    tracing::warn!(reason = ended, "workflow cache off: lost the change feed; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen for workflow changes");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnecting is ours to do: the cache must be off while nothing listens.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Applies announcements until the connection is lost; answers why it ended.
async fn follow(listener: &mut PgListener, cache: &WorkflowCache) -> String {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => cache.changed(notification.payload()),
            Ok(None) => return "connection lost".to_owned(),
            Err(e) => return e.to_string(),
        }
    }
}
