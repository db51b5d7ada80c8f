//! Importing the platform's `ai_agents`: read the source's rows, map each one (see
//! [`crate::domain::platform`]), take its snapshot from workflow-service, link its Langflow flow
//! when Langflow has it, and import it through the repository, one transaction per row, so that
//! a bad row is reported and the others still come in.

use std::sync::Arc;

use engarde::kit::auth::Tenant;
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::import::{self, ImportReport, Outcome, RowReport, SourceUrl};
use sqlx::postgres::PgConnection;

use crate::domain::mapping::snapshot_of;
use crate::domain::platform::{self, MappedAgent, PlatformAgent};
use crate::domain::{FlowOrigin, now};
use crate::flow_mark;
use crate::linkage::{FlowLinker, check_flow_id};
use crate::storage::{AgentRepository, ImportApplied};
use crate::workflows::{Credentials, WorkflowClient};

/// The source's table.
const TABLE: &str = "ai_agents";

/// What an import works with.
#[derive(Clone)]
pub struct AgentImporter {
    pub repo: Arc<dyn AgentRepository>,
    pub workflows: WorkflowClient,
    pub linker: FlowLinker,
}

/// Whose rows an import reads, and as whom it reads their workflows.
pub enum Scope {
    /// A caller's own rows, its workflows read with its credentials (the RPC).
    Caller(Credentials, Tenant),
    /// Every tenant's rows, their workflows read with this service's identity acting for each
    /// (the operator's command).
    Everyone,
}

impl AgentImporter {
    pub async fn run(
        &self,
        source: &SourceUrl,
        schema: &str,
        scope: &Scope,
        max_rows: u32,
        dry_run: bool,
    ) -> ServiceResult<ImportReport> {
        let tenant = match scope {
            Scope::Caller(_, tenant) => Some(tenant.as_str()),
            Scope::Everyone => None,
        };
        let rows = {
            let mut connection = source.connect().await?;
            let rows = read(&mut connection, schema, tenant, max_rows).await;
            let _ = sqlx::Connection::close(connection).await;
            rows?
        };
        let mut report = ImportReport { dry_run, rows: Vec::with_capacity(rows.len()) };
        for row in &rows {
            report.rows.push(self.import_row(row, scope, dry_run).await?);
        }
        Ok(report)
    }

    async fn import_row(&self, row: &PlatformAgent, scope: &Scope, dry_run: bool) -> ServiceResult<RowReport> {
        let id = row.id.clone().unwrap_or_default();
        let mut mapped = match platform::map_agent(row, now()) {
            Ok(mapped) => mapped,
            Err(reason) => {
                tracing::info!(agent_id = %id, reason, "platform agent not imported");
                return Ok(RowReport::failed(id, reason));
            }
        };
        self.take_snapshot(&mut mapped, scope).await?;
        self.link_flow(&mut mapped, dry_run).await?;
        let outcome = match self.repo.import(&mapped.agent, dry_run).await? {
            ImportApplied::Created => Outcome::Created,
            ImportApplied::Updated => Outcome::Updated,
            ImportApplied::Unchanged => Outcome::Unchanged,
            ImportApplied::Refused(reason) => return Ok(RowReport::failed(id, reason)),
        };
        Ok(RowReport { id, outcome, reason: String::new(), notes: mapped.notes })
    }

    /// The snapshot of the workflow the row names, as workflow-service has it now (for the
    /// tenant of the row): the import of workflows comes first.
    async fn take_snapshot(&self, mapped: &mut MappedAgent, scope: &Scope) -> ServiceResult<()> {
        let Some(workflow_id) = mapped.workflow_id else { return Ok(()) };
        let credentials = match scope {
            Scope::Caller(credentials, _) => credentials.clone(),
            Scope::Everyone => {
                let tenant =
                    Tenant::parse(&mapped.agent.tenant_id).map_err(|e| ServiceError::internal(anyhow::anyhow!(e)))?;
                self.workflows.as_service(tenant)
            }
        };
        match self.workflows.find(&credentials, workflow_id).await? {
            Some(workflow) => mapped.agent.snapshot = Some(snapshot_of(&workflow)),
            None => mapped.notes.push(format!(
                "workflow_definition: workflow {workflow_id} is not in workflow-service (import the workflows \
                 first): no snapshot"
            )),
        }
        Ok(())
    }

    /// Links the row's Langflow flow when Langflow has it and the tenant may link it (a flow not
    /// made by agent-service is adopted, except in a dry run, which only checks); otherwise the
    /// agent comes in without a flow, and a note says why.
    async fn link_flow(&self, mapped: &mut MappedAgent, dry_run: bool) -> ServiceResult<()> {
        let Some(flow_id) = mapped.flow_id.clone() else {
            platform::without_flow(&mut mapped.agent, &mut mapped.notes);
            return Ok(());
        };
        let tenant = mapped.agent.tenant_id.clone();
        let linked = match self.check_flow(&flow_id, &tenant, dry_run).await {
            Ok(endpoint) => Ok(endpoint),
            Err(
                e
                @ (ServiceError::NotFound(_) | ServiceError::FailedPrecondition(_) | ServiceError::InvalidArgument(_)),
            ) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        match linked {
            Ok(endpoint_name) => {
                mapped.agent.langflow_workflow_id = flow_id;
                mapped.agent.langflow_deployment_id = endpoint_name;
                mapped.agent.flow_origin = FlowOrigin::Linked;
            }
            Err(reason) => {
                mapped.notes.push(format!("langflow_workflow_id: {flow_id:?} not linked: {reason}"));
                platform::without_flow(&mut mapped.agent, &mut mapped.notes);
            }
        }
        Ok(())
    }

    /// The endpoint name of a flow the tenant may link (see [`FlowLinker::claim_for_link`]).
    async fn check_flow(&self, flow_id: &str, tenant: &str, dry_run: bool) -> ServiceResult<String> {
        check_flow_id(flow_id)?;
        let client = self.linker.client()?;
        if dry_run {
            let flow = client.flow(flow_id).await?.ok_or_else(|| flow_mark::flow_not_found(flow_id))?;
            flow_mark::check_link(flow_id, &flow.description, &self.linker.deployment, tenant, true)?;
            return Ok(flow.endpoint_name);
        }
        self.linker.claim_for_link(flow_id, tenant, true).await?;
        Ok(self.linker.endpoint_name(flow_id).await?.unwrap_or_default())
    }
}

/// The source's `ai_agents` rows, each column cast to what the mapping reads.
async fn read(
    connection: &mut PgConnection,
    schema: &str,
    tenant: Option<&str>,
    max_rows: u32,
) -> ServiceResult<Vec<PlatformAgent>> {
    let source = import::SourceTable {
        schema,
        table: TABLE,
        columns: "id::text, tenant_id::text, name::text, description::text, agent_type::text, status::text, \
                  langflow_workflow_id::text, langflow_deployment_id::text, workflow_definition::text, \
                  configuration::text, capabilities::text, total_executions::bigint, \
                  successful_executions::bigint, average_response_time::float8",
    };
    import::read_source(connection, source, tenant, max_rows, platform_agent).await
}

fn platform_agent(row: &sqlx::postgres::PgRow) -> Result<PlatformAgent, sqlx::Error> {
    use sqlx::Row as _;
    Ok(PlatformAgent {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        name: row.try_get(2)?,
        description: row.try_get(3)?,
        agent_type: row.try_get(4)?,
        status: row.try_get(5)?,
        langflow_workflow_id: row.try_get(6)?,
        langflow_deployment_id: row.try_get(7)?,
        workflow_definition: row.try_get(8)?,
        configuration: row.try_get(9)?,
        capabilities: row.try_get(10)?,
        total_executions: row.try_get(11)?,
        successful_executions: row.try_get(12)?,
        average_response_time: row.try_get(13)?,
    })
}
