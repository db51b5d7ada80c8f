//! A feed of PostgreSQL notifications (`LISTEN`), for a service that must hear of every
//! committed change others make: workflow-service's read cache, agent-service's run watchers.
//!
//! It listens on a connection of its own, never one of the service's pool, and nothing it awaits
//! while listening depends on that pool: a pool whose every connection is busy (slow queries, a
//! lock) delays no notification, and the feed holds none of its connections.
//!
//! A notification sent while the connection is down is lost for good, so the owner is told when
//! the feed listens ([`FeedEvent::Listening`]: anything may have been missed before) and when it
//! stops ([`FeedEvent::Lost`]); the feed reconnects by itself, with a backoff. A connection can
//! also go deaf without failing (a network partition leaves it half open, with no reset to
//! notice): so the feed notifies a channel of its own every heartbeat, over a second connection
//! of its own and from a task of its own, and counts the listening connection lost when three
//! heartbeats in a row have not come back, or when one cannot be sent.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::db::dedicated_connection;

/// Longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Heartbeats missed in a row before the listening connection counts as lost.
const MISSED_HEARTBEATS: u32 = 3;

/// What the feed tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent<'a> {
    /// A connection listens, from now on: what was notified before may have been missed.
    Listening,
    /// A notification on one of the feed's channels.
    Notification { channel: &'a str, payload: &'a str },
    /// The connection was lost (or went deaf), why: notifications are missed until the next
    /// [`FeedEvent::Listening`].
    Lost(&'a str),
}

/// Listens on `channels` for as long as `pool` is open (`pool` only lends its connect options),
/// checking the connection every `heartbeat`, and tells `on` what happens.
pub fn spawn(
    pool: PgPool,
    channels: Vec<String>,
    heartbeat: Duration,
    mut on: impl FnMut(FeedEvent<'_>) + Send + 'static,
) {
    // This feed's own channel: only its heartbeats arrive there.
    let heartbeats = format!("engarde_heartbeat_{}", uuid::Uuid::new_v4().simple());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !pool.is_closed() {
            // A connection of its own per attempt: a lost one is dropped with its pool, never
            // waited for.
            match listen(&dedicated_connection(&pool), &channels, &heartbeats).await {
                Ok(mut listener) => {
                    on(FeedEvent::Listening);
                    backoff = Duration::from_millis(100);
                    let ended = follow(&mut listener, &pool, &heartbeats, heartbeat, &mut on).await;
                    // The service is closing its database: nothing is lost that it still needs.
                    if pool.is_closed() {
                        break;
                    }
                    on(FeedEvent::Lost(&ended));
                }
                Err(e) => {
                    tracing::warn!(channels = ?channels, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

async fn listen(connection: &PgPool, channels: &[String], heartbeats: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(connection).await?;
    // Reconnecting is ours to do: the owner must know that nothing listened meanwhile.
    listener.eager_reconnect(false);
    listener.listen_all(channels.iter().map(String::as_str).chain([heartbeats])).await?;
    Ok(listener)
}

/// Passes notifications on until the connection is lost or deaf; answers why it ended.
async fn follow(
    listener: &mut PgListener,
    pool: &PgPool,
    heartbeats: &str,
    heartbeat: Duration,
    on: &mut impl FnMut(FeedEvent<'_>),
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
                Ok(Some(notification)) if notification.channel() == heartbeats => last_heard = Instant::now(),
                Ok(Some(notification)) => {
                    on(FeedEvent::Notification { channel: notification.channel(), payload: notification.payload() });
                }
                Ok(None) => return "connection lost".to_owned(),
                Err(e) => return e.to_string(),
            },
        }
    }
}

/// Sends the heartbeats, every `heartbeat`, over a connection of their own and in a task of
/// their own: however long a send takes, the listening loop goes on passing notifications on
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
