//! Whether a scheduled agent's workflow is ACTIVE, as the contract says only an ACTIVE
//! workflow's triggers fire: asked of workflow-service with this service's own identity (no
//! caller is there), once per workflow per scheduler pass that has a due tick for it.
//!
//! Why not a longer-lived cache: a tick that fires starts a run, which costs far more than one
//! GetWorkflow (served from workflow-service's cache), and a cache would let an archived
//! workflow's triggers keep firing for as long as it lasts. What is kept is each workflow's
//! last known status, for when workflow-service cannot be reached: its ticks then go on as they
//! did (or stay stopped) rather than all stopping at once for an outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use engarde::kit::auth::Tenant;
use engarde::kit::error::ServiceError;
use uuid::Uuid;

use crate::domain::WorkflowStatus;
use crate::workflows::WorkflowClient;

/// What the scheduler is to do with a due tick, by its workflow's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The workflow is ACTIVE: the tick fires.
    Fire,
    /// The workflow is not ACTIVE (or is gone): the tick is skipped, saying why.
    Skip(String),
    /// Nothing is known yet and workflow-service cannot say now: ask again next pass.
    Unknown(String),
}

/// A tenant's workflow.
type WorkflowKey = (String, Uuid);

/// The statuses of the workflows behind scheduled agents.
#[derive(Clone)]
pub struct WorkflowStatuses {
    client: WorkflowClient,
    /// The last status each workflow was seen with (`None`: it no longer exists).
    last_known: Arc<Mutex<HashMap<WorkflowKey, Option<WorkflowStatus>>>>,
}

/// The statuses asked during one scheduler pass: each workflow once.
pub type PassMemo = HashMap<WorkflowKey, Verdict>;

impl WorkflowStatuses {
    pub fn new(client: WorkflowClient) -> Self {
        Self { client, last_known: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Whether a due tick of an agent made from `workflow_id` (of `tenant`) fires.
    pub async fn verdict(&self, memo: &mut PassMemo, tenant: &str, workflow_id: Uuid) -> Verdict {
        let key = (tenant.to_owned(), workflow_id);
        if let Some(verdict) = memo.get(&key) {
            return verdict.clone();
        }
        let verdict = self.ask(&key).await;
        memo.insert(key, verdict.clone());
        verdict
    }

    async fn ask(&self, key: &WorkflowKey) -> Verdict {
        let (tenant, workflow_id) = key;
        let Ok(parsed) = Tenant::parse(tenant) else {
            return Verdict::Skip(format!("stored tenant {tenant:?} is not a tenant id"));
        };
        let known = match self.client.get(&self.client.as_service(parsed), *workflow_id).await {
            Ok(workflow) => Some(workflow.status),
            Err(ServiceError::NotFound(_)) => None,
            Err(e) => {
                let last = self.last_known.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
                return match last {
                    Some(status) => {
                        tracing::debug!(%workflow_id, error = %e, "workflow-service not answering: using the workflow's last known status");
                        verdict_of(*workflow_id, status)
                    }
                    None => Verdict::Unknown(format!("workflow {workflow_id}'s status is not known: {e}")),
                };
            }
        };
        self.last_known.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), known);
        verdict_of(*workflow_id, known)
    }

    /// Forgets the workflows no scheduled agent uses any more (kept to what `in_use` names).
    pub fn retain(&self, in_use: &std::collections::HashSet<WorkflowKey>) {
        self.last_known.lock().unwrap_or_else(|p| p.into_inner()).retain(|key, _| in_use.contains(key));
    }
}

fn verdict_of(workflow_id: Uuid, status: Option<WorkflowStatus>) -> Verdict {
    match status {
        Some(WorkflowStatus::Active) => Verdict::Fire,
        Some(status) => Verdict::Skip(format!("workflow {workflow_id} is {}", status.as_str())),
        None => Verdict::Skip(format!("workflow {workflow_id} no longer exists")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_workflow_fires() {
        let id = Uuid::nil();
        assert_eq!(verdict_of(id, Some(WorkflowStatus::Active)), Verdict::Fire);
        for (status, why) in [
            (Some(WorkflowStatus::Draft), "is draft"),
            (Some(WorkflowStatus::Archived), "is archived"),
            (None, "no longer exists"),
        ] {
            match verdict_of(id, status) {
                Verdict::Skip(text) => assert!(text.contains(why), "{text}"),
                other => panic!("{status:?}: {other:?}"),
            }
        }
    }
}
