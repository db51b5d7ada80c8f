//! The lifecycle of an agent, an explicit state machine:
//!
//! ```text
//! DRAFT --deploy--> DEPLOYED --activate--> ACTIVE <--pause / activate--> PAUSED
//! any --fail (the system, with a reason)--> ERROR --reset--> DRAFT
//! ```
//!
//! Illegal moves are FAILED_PRECONDITION. Langflow linkage (a later issue) hooks into `deploy`
//! and uses [`fail`] when a flow breaks in a way that needs a person.

use engarde::kit::error::{ServiceError, ServiceResult};

use super::model::{Agent, AgentStatus};

/// A move a caller may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Deploy,
    Activate,
    Pause,
    Reset,
}

impl Transition {
    fn verb(self) -> &'static str {
        match self {
            Self::Deploy => "deployed",
            Self::Activate => "activated",
            Self::Pause => "paused",
            Self::Reset => "reset",
        }
    }

    /// The states this move starts from, and where it leads.
    fn rule(self) -> (&'static [AgentStatus], AgentStatus) {
        match self {
            Self::Deploy => (&[AgentStatus::Draft], AgentStatus::Deployed),
            Self::Activate => (&[AgentStatus::Deployed, AgentStatus::Paused], AgentStatus::Active),
            Self::Pause => (&[AgentStatus::Active], AgentStatus::Paused),
            Self::Reset => (&[AgentStatus::Error], AgentStatus::Draft),
        }
    }
}

/// The state `transition` leads to from `from`, or FAILED_PRECONDITION.
pub fn next_status(from: AgentStatus, transition: Transition) -> ServiceResult<AgentStatus> {
    let (sources, target) = transition.rule();
    if sources.contains(&from) {
        return Ok(target);
    }
    let allowed = sources.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ");
    Err(ServiceError::FailedPrecondition(format!(
        "an agent that is {} cannot be {}; only one that is {allowed} can",
        from.as_str(),
        transition.verb()
    )))
}

/// Applies a caller's move to the agent.
pub fn apply(agent: &mut Agent, transition: Transition) -> ServiceResult<()> {
    agent.status = next_status(agent.status, transition)?;
    if transition == Transition::Reset {
        agent.status_reason.clear();
    }
    Ok(())
}

/// Moves the agent to ERROR from any state, recording why. Only the system does this (no RPC
/// enters ERROR): a Langflow flow that is gone, a deployment that failed.
pub fn fail(agent: &mut Agent, reason: &str) {
    agent.status = AgentStatus::Error;
    agent.status_reason = reason.to_owned();
}

/// The agent's flow changed (linked, unlinked, regenerated): whatever its state, it goes back to
/// DRAFT and must be deployed again, and an ERROR caused by the old flow is forgotten.
pub fn flow_changed(agent: &mut Agent) {
    agent.status = AgentStatus::Draft;
    agent.status_reason.clear();
    agent.langflow_deployment_id.clear();
}

/// Refuses a change based on a stale version. An empty etag means "whatever the version".
pub fn ensure_fresh(agent: &Agent, etag: &str) -> ServiceResult<()> {
    engarde::kit::versioning::ensure_fresh(&format!("agent {}", agent.id), agent.version, etag)
}

/// An active agent is paused before it is deleted, so nothing is cut off mid-run.
pub fn ensure_deletable(agent: &Agent) -> ServiceResult<()> {
    if agent.status == AgentStatus::Active {
        return Err(ServiceError::FailedPrecondition(format!(
            "agent {} is active; pause it before deleting it",
            agent.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentStatus::*;
    use Transition::*;

    #[test]
    fn the_legal_moves() {
        assert_eq!(next_status(Draft, Deploy).unwrap(), Deployed);
        assert_eq!(next_status(Deployed, Activate).unwrap(), Active);
        assert_eq!(next_status(Active, Pause).unwrap(), Paused);
        assert_eq!(next_status(Paused, Activate).unwrap(), Active);
        assert_eq!(next_status(Error, Reset).unwrap(), Draft);
    }

    #[test]
    fn every_other_move_is_a_failed_precondition() {
        let legal = [(Draft, Deploy), (Deployed, Activate), (Active, Pause), (Paused, Activate), (Error, Reset)];
        for from in AgentStatus::ALL {
            for t in [Deploy, Activate, Pause, Reset] {
                if legal.contains(&(*from, t)) {
                    continue;
                }
                let err = next_status(*from, t).unwrap_err();
                assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{from:?} {t:?}");
            }
        }
    }
}
