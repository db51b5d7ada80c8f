//! On PostgreSQL, hears every committed run event (migration 0006's trigger notifies
//! [`CHANNEL`] with the run's id) on one listening connection per process, and passes it to the
//! [`RunEvents`] hub. Every process's workers write events, so this is how a watcher here learns
//! of a step done anywhere.
//!
//! The connection is the feed's own, never one of the service's pool (a busy pool must not
//! delay announcements, nor the feed hold one of its connections). An announcement sent while
//! the connection is down is lost: when a new one listens, every watcher is woken once to read
//! its run again.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::db::dedicated_connection;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::run_events::RunEvents;

/// The channel the trigger notifies, with the run's id as payload.
pub const CHANNEL: &str = "engarde_run_events";

/// Longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the feed checks, while it listens, whether the service is closing its database.
const CLOSING_CHECK: Duration = Duration::from_secs(1);

/// Feeds `hub` for as long as `pool` is open. `pool` only lends its connect options.
pub fn spawn(pool: PgPool, hub: Arc<RunEvents>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !pool.is_closed() {
            // A connection of its own per attempt: a lost one is dropped, never waited for.
            match listen(&dedicated_connection(&pool)).await {
                Ok(mut listener) => {
                    tracing::info!(channel = CHANNEL, "listening for run events");
                    // Whatever was announced while nobody listened: read again.
                    hub.announce_all();
                    backoff = Duration::from_millis(100);
                    let ended = follow(&mut listener, &pool, &hub).await;
                    if pool.is_closed() {
                        break;
                    }
                    tracing::warn!(reason = ended, "lost the run event feed; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen for run events");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

async fn listen(connection: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(connection).await?;
    // Reconnecting is ours to do: after it, the watchers must read again.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Passes announcements on until the connection is lost; answers why it ended.
async fn follow(listener: &mut PgListener, pool: &PgPool, hub: &RunEvents) -> String {
    let mut closing = tokio::time::interval(CLOSING_CHECK);
    loop {
        tokio::select! {
            _ = closing.tick() => {
                if pool.is_closed() {
                    return "the service is closing its database".to_owned();
                }
            }
            // Cancel-safe: sqlx keeps a partly read message in the connection's buffer.
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => match Uuid::parse_str(notification.payload()) {
                    Ok(run) => hub.announce(run),
                    // Not ours to understand (an operator's NOTIFY): read everything again.
                    Err(_) => hub.announce_all(),
                },
                Ok(None) => return "connection lost".to_owned(),
                Err(e) => return e.to_string(),
            },
        }
    }
}
