//! The link between agents and their Langflow flows: making, replacing and removing flows, with
//! compensation so that a failure leaves neither a half-made agent nor an orphan flow.
//!
//! The rule is "flow first, row second, undo the flow if the row fails": Langflow cannot take
//! part in a database transaction, so a flow is made before the agent row that names it is
//! committed, and deleted again when that commit does not happen. Flows are named after their
//! agent (`… [agent <id>]`) so that an operator can tell whose a flow is, and carry the mark of
//! their agent, tenant and deployment (see [`crate::flow_mark`]).

use std::sync::Arc;

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use futures::StreamExt;

use crate::domain::mapping::unusable_export;
use crate::domain::run::is_llm;
use crate::domain::{Agent, AgentConfig, FlowLink, FlowOrigin, ModelSettings, NewAgent, WorkflowSnapshot};
use crate::flow_mark::{self, DeploymentId, FlowMark, LinkCheck};
use crate::langflow::{LangflowClient, LangflowError, flow, models};

/// How many flows are checked at once by [`FlowLinker::missing_flows`].
const CHECK_CONCURRENCY: usize = 8;

/// Makes, checks and removes agents' flows. Without a Langflow configured it answers
/// FAILED_PRECONDITION for everything that needs one.
#[derive(Clone)]
pub struct FlowLinker {
    pub langflow: Option<Arc<LangflowClient>>,
    /// The deployment whose mark the flows made here carry.
    pub deployment: DeploymentId,
}

/// The prompt a generated flow starts with: the first llm step's (each run sets its own).
fn first_prompt(snapshot: Option<&WorkflowSnapshot>) -> &str {
    snapshot
        .and_then(|s| s.config.steps.iter().find(|step| is_llm(step.kind)).map(|step| step.prompt.as_str()))
        .unwrap_or("")
}

impl FlowLinker {
    /// Checks `model` against the providers this Langflow's catalog offers, and spells its
    /// provider as the catalog does (a provider is matched without regard to case). Problems go
    /// to `out`, naming the field and what the catalog allows; UNAVAILABLE when the catalog
    /// cannot be read. Without a Langflow nothing can be checked (nor run): the settings are
    /// kept as given.
    pub async fn check_offered(
        &self,
        prefix: &str,
        model: &mut ModelSettings,
        out: &mut Vec<FieldViolation>,
    ) -> ServiceResult<()> {
        let Some(client) = self.langflow.as_deref() else { return Ok(()) };
        if !model.is_set() {
            return Ok(());
        }
        let offered = client.model_providers().await?;
        let Some(provider) = models::find(offered, &model.provider) else {
            out.push(FieldViolation::new(
                format!("{prefix}.provider"),
                format!(
                    "{:?} is not a model provider of this Langflow; use one of {}",
                    model.provider,
                    models::names(offered)
                ),
            ));
            return Ok(());
        };
        model.provider = provider.name.clone();
        let other = |what: &str| format!("the {} component of this Langflow takes no {what}", provider.name);
        if !model.base_url.is_empty() && !provider.takes_base_url() {
            let with: Vec<&str> = offered.iter().filter(|p| p.takes_base_url()).map(|p| p.name.as_str()).collect();
            out.push(FieldViolation::new(
                format!("{prefix}.base_url"),
                format!("{} (providers that do: {})", other("base URL"), with.join(", ")),
            ));
        }
        if model.max_tokens.is_some() && !provider.takes_max_tokens() {
            out.push(FieldViolation::new(format!("{prefix}.max_tokens"), other("token limit")));
        }
        if !model.api_key_ref.is_empty() && !provider.takes_api_key() {
            out.push(FieldViolation::new(format!("{prefix}.api_key_ref"), other("API key")));
        }
        Ok(())
    }

    /// Whether a Langflow is configured.
    pub fn configured(&self) -> bool {
        self.langflow.is_some()
    }

    /// The Langflow client, or FAILED_PRECONDITION saying none is configured.
    pub fn client(&self) -> ServiceResult<&LangflowClient> {
        self.langflow.as_deref().ok_or_else(|| LangflowError::NotConfigured.into())
    }

    /// Makes the flow of an agent about to be stored: uploaded from the workflow's flow export
    /// when it carries one, else generated from its steps out of the server's catalog.
    /// FAILED_PRECONDITION means the workflow's flow export cannot be used (a problem of that
    /// workflow, see [`unusable_export`]); UNAVAILABLE and DEADLINE_EXCEEDED mean Langflow's.
    pub async fn create_flow(
        &self,
        tenant: &str,
        agent_id: uuid::Uuid,
        name: &str,
        snapshot: Option<&WorkflowSnapshot>,
        config: &AgentConfig,
    ) -> ServiceResult<FlowLink> {
        let client = self.client()?;
        let export = snapshot.map(|s| s.config.langflow_flow_json.as_str()).unwrap_or("");
        let (data, origin) = if export.is_empty() {
            let catalog = client.catalog().await?;
            (flow::generate(catalog, first_prompt(snapshot), config)?, FlowOrigin::Generated)
        } else {
            (flow::from_export(export).map_err(|e| unusable_export(&e.to_string()))?, FlowOrigin::Uploaded)
        };
        let flow_name = format!("{name} [agent {agent_id}]");
        let description = FlowMark::description(agent_id, tenant, &self.deployment);
        let endpoint_name = endpoint_name_of(agent_id);
        let flow_id = match client.create_flow(&flow_name, &description, &endpoint_name, &data).await {
            // Langflow refusing a flow we generated is our bug or its; refusing the workflow's
            // own export is the export's problem, and retrying will not help.
            Err(LangflowError::Rejected(reason)) if origin == FlowOrigin::Uploaded => {
                return Err(unusable_export(&format!("Langflow refused it: {reason}")));
            }
            other => other?,
        };
        tracing::info!(%agent_id, flow_id, origin = origin.as_str(), "Langflow flow created");
        Ok(FlowLink { flow_id, origin })
    }

    /// Gives a new agent its flow, when a Langflow is configured (without one, agents are made
    /// without flows and cannot execute). Errors as [`Self::create_flow`]'s: provisioning skips a
    /// workflow on FAILED_PRECONDITION and stops on anything else.
    pub async fn attach_flow(&self, tenant: &str, agent: &mut NewAgent) -> ServiceResult<()> {
        if !self.configured() {
            return Ok(());
        }
        let link =
            self.create_flow(tenant, agent.id, &agent.name, agent.snapshot.as_ref(), &agent.configuration).await?;
        agent.flow = Some(link);
        Ok(())
    }

    /// Deletes a flow agent-service made, logging (not failing) when it cannot: used to undo
    /// work after another failure, whose error is the one the caller must see.
    pub async fn discard(&self, link: &FlowLink) {
        if !link.origin.owned() {
            return;
        }
        let Some(client) = self.langflow.as_deref() else { return };
        match client.delete_flow(&link.flow_id).await {
            Ok(()) => tracing::info!(flow_id = link.flow_id, "Langflow flow discarded"),
            Err(e) => {
                tracing::error!(flow_id = link.flow_id, error = %e, "could not discard a Langflow flow: it is orphaned")
            }
        }
    }

    /// Deletes the flow an agent owns (generated or uploaded), before the agent itself goes.
    /// A linked flow is left alone. UNAVAILABLE when Langflow cannot be reached: then nothing
    /// is deleted, and the caller may retry.
    pub async fn delete_owned_flow(&self, agent: &Agent) -> ServiceResult<()> {
        if !agent.flow_origin.owned() || agent.langflow_workflow_id.is_empty() {
            return Ok(());
        }
        match self.langflow.as_deref() {
            Some(client) => Ok(client.delete_flow(&agent.langflow_workflow_id).await?),
            None => {
                tracing::warn!(agent_id = %agent.id, flow_id = agent.langflow_workflow_id,
                    "no Langflow configured: the agent's flow is left behind");
                Ok(())
            }
        }
    }

    /// Checks that `tenant` may link the flow `flow_id` (see [`flow_mark::check_link`]), and
    /// marks a hand-made flow it adopts as its own first (so that no other tenant can adopt it
    /// after). NOT_FOUND when it does not exist.
    pub async fn claim_for_link(&self, flow_id: &str, tenant: &str, adopt: bool) -> ServiceResult<()> {
        let client = self.client()?;
        let flow = client.flow(flow_id).await?.ok_or_else(|| flow_mark::flow_not_found(flow_id))?;
        match flow_mark::check_link(flow_id, &flow.description, &self.deployment, tenant, adopt)? {
            LinkCheck::Allowed => Ok(()),
            LinkCheck::Adopt => {
                let marked = flow_mark::adopted_description(&flow.description, tenant, &self.deployment);
                client.set_description(flow_id, &marked).await?;
                tracing::info!(flow_id, tenant, "hand-made Langflow flow adopted");
                Ok(())
            }
        }
    }

    /// The endpoint name of a flow as Langflow has it now (empty when the flow has none), or
    /// `None` when the flow does not exist.
    pub async fn endpoint_name(&self, flow_id: &str) -> ServiceResult<Option<String>> {
        Ok(self.client()?.flow(flow_id).await?.map(|flow| flow.endpoint_name))
    }

    /// The agents of `agents` whose flow Langflow no longer has.
    pub async fn missing_flows(&self, agents: Vec<Agent>) -> ServiceResult<Vec<Agent>> {
        let client = self.client()?;
        let checked: Vec<ServiceResult<Option<Agent>>> = futures::stream::iter(agents)
            .map(|agent| async move {
                let exists = client.flow_exists(&agent.langflow_workflow_id).await?;
                Ok((!exists).then_some(agent))
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect()
            .await;
        let mut missing = Vec::new();
        for result in checked {
            if let Some(agent) = result? {
                missing.push(agent);
            }
        }
        missing.sort_by_key(|a| a.id);
        Ok(missing)
    }
}

/// The endpoint name agent-service asks for the flows it makes: `engarde-<agent id>` (what
/// Langflow allows: letters, digits, '-' and '_'; unique per Langflow user, so a flow made
/// again for the same agent while the old one still exists gets Langflow's "-1" suffix).
pub fn endpoint_name_of(agent_id: uuid::Uuid) -> String {
    format!("engarde-{agent_id}")
}

/// Refuses a flow id that cannot be a Langflow flow id.
pub fn check_flow_id(flow_id: &str) -> ServiceResult<()> {
    let ok = !flow_id.is_empty()
        && flow_id.len() <= 128
        && flow_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(ServiceError::invalid("flow_id", "must be 1-128 letters, digits, '-' or '_'")) }
}
