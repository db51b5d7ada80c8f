//! ProvisionAgents at scale: an agent for every workflow of the one tenant that has none yet
//! (all but the seeded agents' own), in one call, beside the same rows written set-based with
//! psql (in a transaction rolled back): the agents, copied from the agent made through the API,
//! and their provisioning claims.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use uuid::Uuid;

use super::direct;
use super::seed::ONE_TENANT;
use crate::bench::load::{self, AsTenant};

/// The call's deadline: agent-service must be started with an RPC_TIMEOUT_SECS at least this.
pub const DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Answers of every size are read: the service trims its own to its limit.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// The workflows of the one tenant that have no agent yet.
const UNPROVISIONED: &str = "FROM workflow.workflows w WHERE w.tenant_id = '{tenant}' AND NOT w.is_template \
     AND NOT EXISTS (SELECT 1 FROM agent.provisioned_workflows p WHERE p.tenant_id = w.tenant_id \
     AND p.workflow_id = w.id)";

/// One provisioning.
pub struct Provision {
    pub created: usize,
    pub skipped: usize,
    /// Created agents the answer left out for its size.
    pub omitted: usize,
    pub took: Duration,
    /// The same rows written set-based with psql, in one transaction.
    pub direct: Duration,
}

/// Provisions the one tenant's workflows through agent-service at `ag`; `template` is the agent
/// made through the API, whose columns the direct baseline copies.
pub async fn measure(ag: SocketAddr, database_url: &str, template: Uuid, dir: &Path) -> anyhow::Result<Provision> {
    let unprovisioned = UNPROVISIONED.replace("{tenant}", ONE_TENANT);
    let agents = format!(
        "INSERT INTO agent.agents (id, tenant_id, name, description, agent_type, status, source_workflow_id, \
         source_workflow_version, source_workflow_name, source_workflow_category, source_workflow_config, \
         configuration, capabilities, created_at, updated_at, scheduled) \
         SELECT gen_random_uuid(), w.tenant_id, w.name || ' Agent', t.description, t.agent_type, 'draft', w.id, \
         t.source_workflow_version, w.name, t.source_workflow_category, t.source_workflow_config, \
         t.configuration, t.capabilities, now(), now(), FALSE \
         FROM (SELECT * FROM agent.agents WHERE id = '{template}') t CROSS JOIN LATERAL \
         (SELECT w.* {unprovisioned}) w"
    );
    let claims = format!(
        "INSERT INTO agent.provisioned_workflows (tenant_id, workflow_id, agent_id, created_at) \
         SELECT a.tenant_id, a.source_workflow_id, a.id, a.created_at FROM agent.agents a \
         WHERE a.tenant_id = '{ONE_TENANT}' AND a.status = 'draft' AND a.id <> '{template}'"
    );
    let times = direct::once(database_url, &["BEGIN".into(), agents, claims, "ROLLBACK".into()], dir)?;
    let direct: Duration = times[1..3].iter().sum();

    let channel = load::channels(ag, 1, DEADLINE).await?.remove(0);
    let mut client =
        AgentServiceClient::with_interceptor(channel, AsTenant::new(ONE_TENANT)?).max_decoding_message_size(MAX_ANSWER);
    let started = Instant::now();
    let answer = client
        .provision_agents(apb::ProvisionAgentsRequest {
            filter: Some(apb::ProvisionFilter { include_templates: Some(false), ..Default::default() }),
            ..Default::default()
        })
        .await
        .context("ProvisionAgents")?
        .into_inner();
    let took = started.elapsed();
    let omitted = usize::try_from(answer.omitted_created).unwrap_or(0);
    Ok(Provision {
        created: answer.created.len() + omitted,
        skipped: answer.skipped.len() + usize::try_from(answer.omitted_skipped).unwrap_or(0),
        omitted,
        took,
        direct,
    })
}
