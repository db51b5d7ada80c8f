//! Listens for PostgreSQL's announcements of committed changes to agents (migration 0018's
//! trigger, naming the agent) and tells the [`AgentCache`], so that a replica stops running an
//! agent as another replica's write left it before.
//!
//! An announcement sent while the listening connection is down is lost for good, so the cache
//! is off from the moment the connection fails (or goes deaf: the feed's heartbeat catches a
//! half-open connection) until a new one listens again; it then starts empty of anything older.
//! The feed's connections are its own, never the service's pool (see [`pg_feed`]).

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::pg_feed::{self, FeedEvent};
use sqlx::PgPool;

use super::agent_cache::AgentCache;

/// The channel the trigger notifies, with the agent's id as payload.
pub const CHANNEL: &str = "engarde_agent_changes";

/// How often the feed checks that its connection still hears: a deaf one is found within three
/// of these, and until then a change another replica made may go unseen here.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Feeds `cache` for as long as `pool` is open.
pub fn spawn(pool: PgPool, cache: Arc<AgentCache>) {
    pg_feed::spawn(pool, vec![CHANNEL.to_owned()], HEARTBEAT, move |event| match event {
        FeedEvent::Listening => {
            cache.enable();
            tracing::info!(channel = CHANNEL, "agent cache on: listening for changes");
        }
        FeedEvent::Notification { payload, .. } => cache.announced(payload),
        FeedEvent::Lost(reason) => {
            cache.disable();
            tracing::warn!(reason, "agent cache off: lost the change feed; reconnecting");
        }
    });
}
