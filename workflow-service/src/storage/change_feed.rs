//! Listens for PostgreSQL's announcements of committed workflow changes (migration 0002's
//! trigger) and tells the [`WorkflowCache`], so that a replica drops what another replica's
//! writes made stale.
//!
//! An announcement sent while the listening connection is down is lost for good, so the cache
//! is off from the moment the connection fails until a new one listens again; it then starts
//! empty of anything older. A connection can also go deaf without failing (a network partition
//! leaves it half open, with no reset to notice): so the feed notifies a channel of its own
//! every heartbeat, over another connection, and counts the connection lost when three
//! heartbeats in a row have not come back.
//!
//! Neither connection comes from the service's pool, and nothing the listening loop awaits
//! depends on it: when every pooled connection is busy (a burst of slow queries, a lock), the
//! announcements are still applied as they arrive, instead of waiting behind the queries for a
//! connection to send a heartbeat with while the cache serves what they made stale.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::db::dedicated_connection;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cache::WorkflowCache;

/// The channel the trigger notifies, with the owning tenant as payload.
pub const CHANNEL: &str = "engarde_workflow_changes";

/// Longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Heartbeats missed in a row before the listening connection counts as lost.
const MISSED_HEARTBEATS: u32 = 3;

/// Feeds `cache` for as long as `pool` is open, checking the feed every `heartbeat`. `pool` only
/// lends its connect options (and says when the service is closing): the feed's connections are
/// its own.
pub fn spawn(pool: PgPool, cache: Arc<WorkflowCache>, heartbeat: Duration) {
    // This replica's own channel: only its heartbeats arrive there.
    let heartbeats = format!("engarde_wf_heartbeat_{}", uuid::Uuid::new_v4().simple());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !pool.is_closed() {
            // A connection of its own per attempt: a lost one is dropped with its pool, never
            // waited for.
            match listen(&dedicated_connection(&pool), &heartbeats).await {
                Ok(mut listener) => {
                    cache.enable();
                    tracing::info!(channel = CHANNEL, "workflow cache on: listening for changes");
                    backoff = Duration::from_millis(100);
                    let ended = follow(&mut listener, &pool, &cache, &heartbeats, heartbeat).await;
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

async fn listen(connection: &PgPool, heartbeats: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(connection).await?;
    // Reconnecting is ours to do: the cache must be off while nothing listens.
    listener.eager_reconnect(false);
    listener.listen_all([CHANNEL, heartbeats]).await?;
    Ok(listener)
}

/// Applies announcements until the connection is lost or deaf; answers why it ended.
async fn follow(
    listener: &mut PgListener,
    pool: &PgPool,
    cache: &WorkflowCache,
    heartbeats: &str,
    heartbeat: Duration,
) -> String {
    let (failed, mut failures) = mpsc::channel(1);
    let _sender = HeartbeatSender::spawn(dedicated_connection(pool), heartbeats.to_owned(), heartbeat, failed);
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if pool.is_closed() {
                    return "the service is closing its database".to_owned();
                }
                if last_heard.elapsed() > heartbeat * MISSED_HEARTBEATS {
                    return format!("no heartbeat for {} ms: the connection is deaf", last_heard.elapsed().as_millis());
                }
            }
            Some(e) = failures.recv() => return format!("cannot send a heartbeat: {e}"),
            // Cancel-safe: sqlx keeps a partly read message in the connection's buffer.
            received = listener.try_recv() => match received {
                Ok(Some(notification)) if notification.channel() == CHANNEL => cache.changed(notification.payload()),
                Ok(Some(_)) => last_heard = Instant::now(),
                Ok(None) => return "connection lost".to_owned(),
                Err(e) => return e.to_string(),
            },
        }
    }
}

/// Sends the heartbeats, every `heartbeat`, over a connection of their own and in a task of
/// their own: however long a send takes, the listening loop goes on applying announcements
/// meanwhile. A send that fails is reported (the feed cannot be checked, so it counts as lost);
/// one that hangs is caught by the heartbeats it leaves unheard. Stops when dropped.
struct HeartbeatSender(tokio::task::JoinHandle<()>);

impl HeartbeatSender {
    fn spawn(connection: PgPool, channel: String, heartbeat: Duration, failed: mpsc::Sender<sqlx::Error>) -> Self {
        Self(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(heartbeat);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(&channel).execute(&connection).await {
                    // One report is enough: the listening loop ends on it.
                    let _ = failed.try_send(e);
                }
            }
        }))
    }
}

impl Drop for HeartbeatSender {
    fn drop(&mut self) {
        self.0.abort();
    }
}
