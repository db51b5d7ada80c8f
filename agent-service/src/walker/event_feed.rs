//! On PostgreSQL, hears every committed run event (migration 0006's trigger notifies
//! [`CHANNEL`] with the run's id) on one listening connection per process, and passes it to the
//! [`RunEvents`] hub. Every process's workers write events, so this is how a watcher here learns
//! of a step done anywhere.
//!
//! The feed's connections are its own, never the service's pool (see [`pg_feed`]): a busy pool
//! delays no announcement, and the feed holds none of its connections. An announcement sent
//! while the connection is down (or deaf, which the feed's heartbeat catches) is lost: when a
//! connection listens again, every watcher is woken once to read its run again.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::pg_feed::{self, FeedEvent};
use sqlx::PgPool;
use uuid::Uuid;

use super::run_events::RunEvents;

/// The channel the trigger notifies, with the run's id as payload.
pub const CHANNEL: &str = "engarde_run_events";

/// How often the feed checks that its connection still hears: a deaf one is found within three
/// of these, and until then its watchers wait (at worst, until their stream's lifetime ends).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Feeds `hub` for as long as `pool` is open.
pub fn spawn(pool: PgPool, hub: Arc<RunEvents>) {
    pg_feed::spawn(pool, vec![CHANNEL.to_owned()], HEARTBEAT, move |event| match event {
        FeedEvent::Listening => {
            tracing::info!(channel = CHANNEL, "listening for run events");
            // Whatever was announced while nobody listened: read again.
            hub.announce_all();
        }
        FeedEvent::Notification { payload, .. } => match Uuid::parse_str(payload) {
            Ok(run) => hub.announce(run),
            // Not ours to understand (an operator's NOTIFY): read everything again.
            Err(_) => hub.announce_all(),
        },
        FeedEvent::Lost(reason) => tracing::warn!(reason, "lost the run event feed; reconnecting"),
    });
}
