//! How long agent-service keeps what grows with use, and the janitor that enforces it (see
//! `engarde::kit::retention` for how it deletes). Every retention is off by default: rows are
//! kept until an operator chooses otherwise.

use std::sync::Arc;

use engarde::kit::retention::{Expiring, JanitorSettings, Keep, parse_keep, spawn_janitor};

use crate::storage::AgentRepository;
use crate::storage::retention::RetentionRepository;

/// Retention of agent-service's rows: a duration (`30d`, `12h`, `90m`, `45s`), or `0` to keep
/// them forever (the default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RetentionSettings {
    /// Finished executions (and their feedback) older than this are deleted; the agent's and
    /// the workflow's counters keep them. One still waiting to be reported is kept until it is.
    #[arg(long, env = "EXECUTION_RETENTION", default_value = "0", value_parser = parse_keep)]
    pub execution_retention: Keep,
    /// Conversation messages older than this are deleted (a session left empty is forgotten).
    #[arg(long, env = "SESSION_MESSAGE_RETENTION", default_value = "0", value_parser = parse_keep)]
    pub session_message_retention: Keep,
    /// Events of ended walker runs older than this are deleted (WatchRun then replays fewer).
    #[arg(long, env = "RUN_EVENT_RETENTION", default_value = "0", value_parser = parse_keep)]
    pub run_event_retention: Keep,
}

/// Starts the janitor over every retention set, and the idempotency keys'.
pub fn spawn(
    settings: &RetentionSettings,
    janitor: &JanitorSettings,
    agents: Arc<dyn AgentRepository>,
    purges: Arc<dyn RetentionRepository>,
) {
    let mut kinds = vec![Expiring::new("idempotency_keys", janitor.idempotency_retention, move |before, limit| {
        let agents = agents.clone();
        async move { agents.expire_idempotency_keys(before, limit).await }
    })];
    if let Keep(Some(keep)) = settings.execution_retention {
        let purges = purges.clone();
        kinds.push(Expiring::new("executions", keep, move |cutoff, limit| {
            let purges = purges.clone();
            async move { purges.purge_executions(cutoff, limit).await }
        }));
    }
    if let Keep(Some(keep)) = settings.session_message_retention {
        let purges = purges.clone();
        kinds.push(Expiring::new("session_messages", keep, move |cutoff, limit| {
            let purges = purges.clone();
            async move { purges.purge_session_messages(cutoff, limit).await }
        }));
    }
    if let Keep(Some(keep)) = settings.run_event_retention {
        kinds.push(Expiring::new("run_events", keep, move |cutoff, limit| {
            let purges = purges.clone();
            async move { purges.purge_run_events(cutoff, limit).await }
        }));
    }
    spawn_janitor(janitor, kinds);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;
    use crate::config::Config;

    #[test]
    fn retention_is_off_by_default_and_read_as_durations() {
        let defaults = Config::try_parse_from(["agent-service"]).unwrap();
        assert_eq!(defaults.retention.execution_retention, Keep(None));
        assert_eq!(defaults.common.janitor.idempotency_retention, Duration::from_secs(86_400));
        let set = Config::try_parse_from([
            "agent-service",
            "--execution-retention",
            "30d",
            "--session-message-retention",
            "12h",
            "--run-event-retention",
            "0",
        ])
        .unwrap();
        assert_eq!(set.retention.execution_retention, Keep(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(set.retention.session_message_retention, Keep(Some(Duration::from_secs(12 * 3_600))));
        assert_eq!(set.retention.run_event_retention, Keep(None));
        assert!(Config::try_parse_from(["agent-service", "--execution-retention", "30"]).is_err());
    }
}
