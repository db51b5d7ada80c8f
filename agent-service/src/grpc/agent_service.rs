//! `engarde.agent.v1.AgentService`: agents, their lifecycle, CreateAgentFromWorkflow,
//! provisioning, installed agents, configuration, upgrades and Langflow links.

use std::sync::Arc;

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::page_budget::PageBudget;
use engarde::kit::pagination::{PageRequest, filter_fingerprint};
use engarde::kit::request::{invalid_if_any, parse_update_mask};
use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::caller::{Caller, handle};
use super::convert::{
    agent_config_to_pb, agent_to_pb, agent_type_from_pb, category_from_pb, config_from_pb, default_model_to_pb,
    installed_to_pb, parse_config, parse_id, parse_model, provision_to_pb, status_from_pb, upgrade_to_pb,
};
use crate::agent_flows::AgentFlows;
use crate::domain::configuration::{self, ConfigField, apply_config_update};
use crate::domain::default_model::check_default_model;
use crate::domain::lifecycle::{self, Transition};
use crate::domain::mapping::Overrides;
use crate::domain::provisioning::{MAX_FILTER_WORKFLOW_IDS, ProvisionFilter, ProvisionTarget};
use crate::domain::{Agent, AgentFilter, AgentType, FlowOrigin, NewAgent};
use crate::import::AgentImporter;
use crate::linkage::{FlowLinker, check_flow_id};
use crate::provisioner::{ProvisionMode, Provisioner};
use crate::storage::default_models::{DefaultModelChange, DefaultModelSet};
use crate::storage::{AgentRepository, DefaultModelRepository, mutate_agent, replayed};
use engarde::kit::import::ImportConfig;

/// The service's handlers, over the agent repository, the tenants' default models, the
/// provisioner (workflow-dependent operations) and the flow linker (Langflow).
#[derive(Clone)]
pub struct AgentApi {
    pub(super) repo: Arc<dyn AgentRepository>,
    pub(super) default_models: Arc<dyn DefaultModelRepository>,
    pub(super) provisioner: Provisioner,
    /// Changes of an agent together with its Langflow flow.
    pub(super) flows: AgentFlows,
    /// How many bytes of items one page of a List answer may carry.
    pub(super) pages: PageBudget,
    /// ImportAgents: off without an importer and a configured source.
    pub(super) importer: Option<AgentImporter>,
    pub(super) import: ImportConfig,
}

impl AgentApi {
    pub fn new(
        repo: Arc<dyn AgentRepository>,
        default_models: Arc<dyn DefaultModelRepository>,
        provisioner: Provisioner,
        linker: FlowLinker,
        pages: PageBudget,
    ) -> Self {
        Self {
            flows: AgentFlows::new(repo.clone(), linker),
            repo,
            default_models,
            provisioner,
            pages,
            importer: None,
            import: ImportConfig { import_source_url: None, import_max_rows: 5000 },
        }
    }

    /// With ImportAgents enabled as `import` says (it is off without a source).
    pub fn with_import(mut self, importer: AgentImporter, import: ImportConfig) -> Self {
        self.importer = Some(importer);
        self.import = import;
        self
    }

    /// The stored answer of a request id already used, if any (before any Langflow call).
    async fn replay_agent(&self, caller: &Caller, key: Option<&IdempotencyKey>) -> ServiceResult<Option<pb::Agent>> {
        match self.repo.replay(caller.tenant.as_str(), key).await? {
            Some(json) => Ok(Some(agent_to_pb(&replayed::<Agent>(&json)?))),
            None => Ok(None),
        }
    }
}

/// The fields of UpdateAgent's mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentField {
    Name,
    Description,
    Configuration,
    Capabilities,
}

impl AgentField {
    fn parse(path: &str) -> Option<Self> {
        match path {
            "name" => Some(Self::Name),
            "description" => Some(Self::Description),
            "configuration" => Some(Self::Configuration),
            "capabilities" => Some(Self::Capabilities),
            _ => None,
        }
    }
}

impl AgentApi {
    /// A caller's lifecycle move.
    async fn transition(
        &self,
        caller: &Caller,
        method: &str,
        (id, etag, request_id): (String, String, String),
        message: &impl prost::Message,
        transition: Transition,
    ) -> ServiceResult<pb::Agent> {
        let key = IdempotencyKey::from_request(method, &request_id, message)?;
        let id = parse_id("id", &id)?;
        let agent = mutate_agent(
            self.repo.as_ref(),
            caller.tenant.as_str(),
            id,
            key.as_ref(),
            Box::new(move |a| {
                lifecycle::ensure_fresh(a, &etag)?;
                lifecycle::apply(a, transition)
            }),
        )
        .await?;
        tracing::info!(agent_id = %id, status = agent.status.as_str(), "agent status changed");
        Ok(agent_to_pb(&agent))
    }
}

impl AgentApi {
    /// A generated flow holds its model's node, whose component is the provider's: a new
    /// provider (or a model where there was none, or none where there was one) needs a new
    /// flow. The agent then goes back to DRAFT, to be deployed again, as after any change of
    /// flow. The other model settings reach the flow with each run.
    async fn follow_provider(&self, tenant: &str, before: &str, updated: Agent) -> ServiceResult<Agent> {
        if updated.flow_origin != FlowOrigin::Generated || updated.configuration.model.provider == before {
            return Ok(updated);
        }
        tracing::info!(agent_id = %updated.id, before, after = updated.configuration.model.provider, "model provider changed: regenerating the agent's flow");
        self.flows.regenerate(tenant, updated.id, updated.etag(), None).await
    }
}

fn overrides_from_pb(overrides: Option<pb::AgentOverrides>) -> ServiceResult<Overrides> {
    let Some(o) = overrides else { return Ok(Overrides::default()) };
    let mut violations = Vec::new();
    if let Some(name) = &o.name {
        configuration::check_name("overrides.name", name, &mut violations);
    }
    if let Some(description) = &o.description {
        configuration::check_description("overrides.description", description, &mut violations);
    }
    let agent_type = match agent_type_from_pb("overrides.agent_type", o.agent_type) {
        Ok(t) => t,
        Err(ServiceError::InvalidArgument(v)) => {
            violations.extend(v);
            None
        }
        Err(e) => return Err(e),
    };
    let configuration = match o.configuration {
        None => None,
        Some(c) => config_from_pb("overrides.configuration", Some(c)).map_err(|v| violations.extend(v)).ok(),
    };
    invalid_if_any(violations)?;
    Ok(Overrides { name: o.name.map(|n| n.trim().to_owned()), description: o.description, agent_type, configuration })
}

fn provision_filter_from_pb(filter: Option<pb::ProvisionFilter>) -> ServiceResult<ProvisionFilter> {
    let Some(f) = filter else { return Ok(ProvisionFilter::default()) };
    let mut violations = Vec::new();
    let category = match category_from_pb("filter.category", f.category) {
        Ok(c) => c,
        Err(ServiceError::InvalidArgument(v)) => {
            violations.extend(v);
            None
        }
        Err(e) => return Err(e),
    };
    if f.workflow_ids.len() > MAX_FILTER_WORKFLOW_IDS {
        violations.push(FieldViolation::new("filter.workflow_ids", format!("at most {MAX_FILTER_WORKFLOW_IDS} ids")));
    }
    let mut workflow_ids = Vec::new();
    for (i, id) in f.workflow_ids.iter().enumerate() {
        match Uuid::parse_str(id) {
            Ok(id) => workflow_ids.push(id),
            Err(_) => violations.push(FieldViolation::new(format!("filter.workflow_ids[{i}]"), "must be a UUID")),
        }
    }
    invalid_if_any(violations)?;
    Ok(ProvisionFilter { category, include_templates: f.include_templates.unwrap_or(true), workflow_ids })
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    #[tracing::instrument(skip_all)]
    async fn create_agent(&self, request: Request<pb::CreateAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("CreateAgent", &req.request_id, &req)?;
            let mut violations = Vec::new();
            configuration::check_name("name", &req.name, &mut violations);
            configuration::check_description("description", &req.description, &mut violations);
            let agent_type = match agent_type_from_pb("agent_type", req.agent_type) {
                Ok(None) => {
                    violations.push(FieldViolation::new("agent_type", "is required"));
                    None
                }
                Ok(Some(AgentType::Walker)) => {
                    violations.push(FieldViolation::new(
                        "agent_type",
                        "a walker needs a workflow to walk; use CreateAgentFromWorkflow",
                    ));
                    None
                }
                Ok(t) => t,
                Err(ServiceError::InvalidArgument(v)) => {
                    violations.extend(v);
                    None
                }
                Err(e) => return Err(e),
            };
            let mut config =
                config_from_pb("configuration", req.configuration.clone()).map_err(|v| violations.extend(v)).ok();
            if let Some(c) = &mut config {
                self.flows.linker().check_offered("configuration.model", &mut c.model, &mut violations).await?;
            }
            let capabilities = configuration::check_capabilities("capabilities", &req.capabilities, &mut violations);
            invalid_if_any(violations)?;
            let (Some(agent_type), Some(configuration)) = (agent_type, config) else {
                return Err(ServiceError::internal(anyhow::anyhow!("validated request lost a field")));
            };
            let new = NewAgent {
                id: Uuid::now_v7(),
                name: req.name.trim().to_owned(),
                description: req.description,
                agent_type,
                snapshot: None,
                configuration,
                capabilities,
                flow: None,
            };
            let created = self.repo.create(caller.tenant.as_str(), new, key.as_ref()).await?;
            tracing::info!(agent_id = %created.id, "agent created");
            Ok(agent_to_pb(&created))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("id", &req.id)?;
            Ok(agent_to_pb(&self.repo.get(caller.tenant.as_str(), id).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        handle(request, |caller, req| async move {
            let workflow_id =
                if req.workflow_id.is_empty() { None } else { Some(parse_id("workflow_id", &req.workflow_id)?) };
            let filter = AgentFilter {
                agent_type: agent_type_from_pb("agent_type", req.agent_type)?,
                status: status_from_pb("status", req.status)?,
                workflow_id,
            };
            let parts = filter.fingerprint_parts();
            let fingerprint = filter_fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let agents = self.repo.list(caller.tenant.as_str(), &filter, &page).await?;
            let filled = page.fill(&agents, self.pages, agent_to_pb, sort_key, |a| format!("agent {}", a.id))?;
            Ok(pb::ListAgentsResponse { next_page_token: filled.next_page_token, agents: filled.items })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_agent(&self, request: Request<pb::UpdateAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("UpdateAgent", &req.request_id, &req)?;
            let Some(patch) = req.agent else {
                return Err(ServiceError::invalid("agent", "is required"));
            };
            let id = parse_id("agent.id", &patch.id)?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let mut violations = Vec::new();
            let fields = parse_update_mask(
                &paths,
                AgentField::parse,
                "name, description, configuration or capabilities",
                &mut violations,
            )?;
            let mut config = None;
            let mut capabilities = None;
            for field in &fields {
                match field {
                    AgentField::Name => configuration::check_name("agent.name", &patch.name, &mut violations),
                    AgentField::Description => {
                        configuration::check_description("agent.description", &patch.description, &mut violations)
                    }
                    AgentField::Configuration => {
                        match config_from_pb("agent.configuration", patch.configuration.clone()) {
                            Ok(mut c) => {
                                let linker = self.flows.linker();
                                linker
                                    .check_offered("agent.configuration.model", &mut c.model, &mut violations)
                                    .await?;
                                config = Some(c)
                            }
                            Err(v) => violations.extend(v),
                        }
                    }
                    AgentField::Capabilities => {
                        capabilities = Some(configuration::check_capabilities(
                            "agent.capabilities",
                            &patch.capabilities,
                            &mut violations,
                        ))
                    }
                }
            }
            invalid_if_any(violations)?;
            let provider_before = match &config {
                Some(_) => Some(self.repo.get(caller.tenant.as_str(), id).await?.configuration.model.provider),
                None => None,
            };
            let etag = patch.etag.clone();
            let updated = mutate_agent(
                self.repo.as_ref(),
                caller.tenant.as_str(),
                id,
                key.as_ref(),
                Box::new(move |a| {
                    lifecycle::ensure_fresh(a, &etag)?;
                    for field in fields {
                        match field {
                            AgentField::Name => a.name = patch.name.trim().to_owned(),
                            AgentField::Description => a.description = patch.description.clone(),
                            AgentField::Configuration => {
                                a.configuration = config.clone().unwrap_or_else(|| a.configuration.clone())
                            }
                            AgentField::Capabilities => {
                                a.capabilities = capabilities.clone().unwrap_or_else(|| a.capabilities.clone())
                            }
                        }
                    }
                    Ok(())
                }),
            )
            .await?;
            tracing::info!(agent_id = %id, version = updated.version, "agent updated");
            let updated = match provider_before {
                Some(before) => self.follow_provider(caller.tenant.as_str(), &before, updated).await?,
                None => updated,
            };
            Ok(agent_to_pb(&updated))
        })
        .await
    }

    /// Deletes an agent and the flow it made (a linked flow stays).
    #[tracing::instrument(skip_all)]
    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("DeleteAgent", &req.request_id, &req)?;
            let id = parse_id("id", &req.id)?;
            // A replay answers before Langflow is called for a flow already gone.
            let deleted = match self.repo.replay(caller.tenant.as_str(), key.as_ref()).await? {
                Some(json) => replayed::<Uuid>(&json)?,
                None => self.flows.delete(caller.tenant.as_str(), id, req.etag, key.as_ref()).await?,
            };
            Ok(pb::DeleteAgentResponse { id: deleted.to_string() })
        })
        .await
    }

    /// DRAFT -> DEPLOYED; with a Langflow, the agent's flow must exist.
    #[tracing::instrument(skip_all)]
    async fn deploy_agent(&self, request: Request<pb::DeployAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("DeployAgent", &req.request_id, &req)?;
            let id = parse_id("id", &req.id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            Ok(agent_to_pb(&self.flows.deploy(caller.tenant.as_str(), id, req.etag, key.as_ref()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn activate_agent(&self, request: Request<pb::ActivateAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let fields = (req.id.clone(), req.etag.clone(), req.request_id.clone());
            self.transition(&caller, "ActivateAgent", fields, &req, Transition::Activate).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn pause_agent(&self, request: Request<pb::PauseAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let fields = (req.id.clone(), req.etag.clone(), req.request_id.clone());
            self.transition(&caller, "PauseAgent", fields, &req, Transition::Pause).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_agent(&self, request: Request<pb::ResetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let fields = (req.id.clone(), req.etag.clone(), req.request_id.clone());
            self.transition(&caller, "ResetAgent", fields, &req, Transition::Reset).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn create_agent_from_workflow(
        &self,
        request: Request<pb::CreateAgentFromWorkflowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("CreateAgentFromWorkflow", &req.request_id, &req)?;
            let workflow_id = parse_id("workflow_id", &req.workflow_id)?;
            let mut overrides = overrides_from_pb(req.overrides)?;
            if let Some(c) = &mut overrides.configuration {
                let mut violations = Vec::new();
                let linker = self.flows.linker();
                linker.check_offered("overrides.configuration.model", &mut c.model, &mut violations).await?;
                invalid_if_any(violations)?;
            }
            let agent = self
                .provisioner
                .create_from_workflow(caller.tenant.as_str(), &caller.credentials, workflow_id, overrides, key.as_ref())
                .await?;
            tracing::info!(agent_id = %agent.id, workflow_id = %workflow_id, "agent created from workflow");
            Ok(agent_to_pb(&agent))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn provision_agents(
        &self,
        request: Request<pb::ProvisionAgentsRequest>,
    ) -> Result<Response<pb::ProvisionAgentsResponse>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("ProvisionAgents", &req.request_id, &req)?;
            let filter = provision_filter_from_pb(req.filter)?;
            let mode = ProvisionMode { dry_run: req.dry_run, target: ProvisionTarget::of(req.deploy, req.activate) };
            let outcome = self
                .provisioner
                .provision(caller.tenant.as_str(), &caller.credentials, filter, mode, key.as_ref())
                .await?;
            tracing::info!(
                created = outcome.created.len(),
                skipped = outcome.skipped.len(),
                not_deployed = outcome.not_deployed.len(),
                dry_run = outcome.dry_run,
                "agents provisioned"
            );
            Ok(provision_to_pb(&outcome, self.pages))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_installed_agents(
        &self,
        request: Request<pb::ListInstalledAgentsRequest>,
    ) -> Result<Response<pb::ListInstalledAgentsResponse>, Status> {
        handle(request, |caller, req| async move {
            // The same order and token as an unfiltered ListAgents.
            let parts = AgentFilter::default().fingerprint_parts();
            let fingerprint = filter_fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let installed = self.provisioner.list_installed(caller.tenant.as_str(), &caller.credentials, &page).await?;
            let filled = page.fill(
                &installed,
                self.pages,
                installed_to_pb,
                |i| sort_key(&i.agent),
                |i| format!("agent {}", i.agent.id),
            )?;
            Ok(pb::ListInstalledAgentsResponse {
                next_page_token: filled.next_page_token,
                installed_agents: filled.items,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent_config(
        &self,
        request: Request<pb::GetAgentConfigRequest>,
    ) -> Result<Response<pb::AgentConfiguration>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("agent_id", &req.agent_id)?;
            Ok(agent_config_to_pb(&self.repo.get(caller.tenant.as_str(), id).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_agent_config(
        &self,
        request: Request<pb::UpdateAgentConfigRequest>,
    ) -> Result<Response<pb::AgentConfiguration>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("UpdateAgentConfig", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let mut violations = Vec::new();
            let mut fields = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                match ConfigField::parse(path) {
                    Some(f) => fields.push(f),
                    None => violations.push(FieldViolation::new(
                        format!("update_mask.paths[{i}]"),
                        format!(
                            "{path:?} is not a configuration field; use brand_voice, tone, target_audience, model, \
                             model.provider, model.model_name, model.temperature, model.max_tokens, \
                             model.base_url, model.system_message, model.api_key_ref, extra or extra.<key>"
                        ),
                    )),
                }
            }
            // With a mask only the named fields are taken, so only the merged result must be
            // valid (checked below, on the current configuration); without one, all of it.
            let patch = parse_config(req.configuration);
            if fields.is_empty() {
                configuration::check_config("configuration", &patch, &mut violations);
            }
            invalid_if_any(violations)?;
            // The model as it will be, against this Langflow's catalog (which only an await can
            // read: before the update, on the agent as it is now).
            let current = self.repo.get(caller.tenant.as_str(), id).await?;
            let mut model = apply_config_update(&current.configuration, &patch, &fields).model;
            let mut violations = Vec::new();
            self.flows.linker().check_offered("configuration.model", &mut model, &mut violations).await?;
            invalid_if_any(violations)?;
            let provider = model.provider;
            let etag = req.etag;
            let updated = mutate_agent(
                self.repo.as_ref(),
                caller.tenant.as_str(),
                id,
                key.as_ref(),
                Box::new(move |a: &mut Agent| {
                    lifecycle::ensure_fresh(a, &etag)?;
                    let mut merged = apply_config_update(&a.configuration, &patch, &fields);
                    let mut violations = Vec::new();
                    configuration::check_config("configuration", &merged, &mut violations);
                    invalid_if_any(violations)?;
                    // Spelled as the catalog spells it (checked above).
                    if merged.model.provider.eq_ignore_ascii_case(&provider) {
                        merged.model.provider = provider.clone();
                    }
                    a.configuration = merged;
                    Ok(())
                }),
            )
            .await?;
            tracing::info!(agent_id = %id, version = updated.version, "agent configuration updated");
            let updated =
                self.follow_provider(caller.tenant.as_str(), &current.configuration.model.provider, updated).await?;
            Ok(agent_config_to_pb(&updated))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn upgrade_agent(
        &self,
        request: Request<pb::UpgradeAgentRequest>,
    ) -> Result<Response<pb::UpgradeAgentResponse>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("UpgradeAgent", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            let outcome = self
                .provisioner
                .upgrade(caller.tenant.as_str(), &caller.credentials, id, req.dry_run, req.etag, key.as_ref())
                .await?;
            Ok(upgrade_to_pb(&outcome))
        })
        .await
    }

    /// Sets the tenant's default model; each change is logged with who made it (a model holds
    /// only a credential's reference, never a key, so it is logged whole).
    #[tracing::instrument(skip_all)]
    async fn set_tenant_default_model(
        &self,
        request: Request<pb::SetTenantDefaultModelRequest>,
    ) -> Result<Response<pb::TenantDefaultModel>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("SetTenantDefaultModel", &req.request_id, &req)?;
            let mut model = parse_model(req.model);
            let mut violations = Vec::new();
            check_default_model(&model, &mut violations);
            invalid_if_any(violations)?;
            // As an agent's model is: against this Langflow's catalog, spelled as it spells it.
            let mut violations = Vec::new();
            self.flows.linker().check_offered("model", &mut model, &mut violations).await?;
            invalid_if_any(violations)?;
            let change = DefaultModelChange { model, subject: caller.subject.as_str().to_owned(), etag: req.etag };
            let set = match self.default_models.set_default_model(caller.tenant.as_str(), change, key.as_ref()).await? {
                DefaultModelSet::Replayed(first) => first,
                DefaultModelSet::Changed(set) => {
                    tracing::info!(
                        tenant = caller.tenant.as_str(),
                        subject = caller.subject.as_str(),
                        model = %serde_json::to_string(&set.model).unwrap_or_default(),
                        version = set.version,
                        "tenant default model set"
                    );
                    set
                }
            };
            Ok(default_model_to_pb(&set))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_tenant_default_model(
        &self,
        request: Request<pb::GetTenantDefaultModelRequest>,
    ) -> Result<Response<pb::TenantDefaultModel>, Status> {
        handle(request, |caller, _req| async move {
            Ok(default_model_to_pb(&self.default_models.default_model(caller.tenant.as_str()).await?))
        })
        .await
    }

    // Langflow linkage: each handler answers a replay before any Langflow call, then leaves the
    // work to `AgentFlows` (crate::agent_flows).

    #[tracing::instrument(skip_all)]
    async fn link_agent_flow(&self, request: Request<pb::LinkAgentFlowRequest>) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("LinkAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            check_flow_id(&req.flow_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            let tenant = caller.tenant.as_str();
            Ok(agent_to_pb(&self.flows.link(tenant, id, &req.flow_id, req.adopt, req.etag, key.as_ref()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn unlink_agent_flow(
        &self,
        request: Request<pb::UnlinkAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("UnlinkAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            Ok(agent_to_pb(&self.flows.unlink(caller.tenant.as_str(), id, req.etag, key.as_ref()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn regenerate_agent_flow(
        &self,
        request: Request<pb::RegenerateAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("RegenerateAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            Ok(agent_to_pb(&self.flows.regenerate(caller.tenant.as_str(), id, req.etag, key.as_ref()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn check_agent_links(
        &self,
        request: Request<pb::CheckAgentLinksRequest>,
    ) -> Result<Response<pb::CheckAgentLinksResponse>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("CheckAgentLinks", &req.request_id, &req)?;
            let check = self.flows.check_links(caller.tenant.as_str(), key.as_ref()).await?;
            let broken = check
                .broken
                .into_iter()
                .map(|b| pb::BrokenLink { agent_id: b.agent_id.to_string(), flow_id: b.flow_id })
                .collect();
            Ok(pb::CheckAgentLinksResponse { checked: check.checked, broken })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn import_agents(
        &self,
        request: Request<pb::ImportAgentsRequest>,
    ) -> Result<Response<pb::ImportAgentsResponse>, Status> {
        handle(request, |caller, req| async move {
            super::import::import_agents(self.importer.as_ref(), &self.import, caller, req).await
        })
        .await
    }
}

/// The sort key of a listing (create time, then id), as a page token holds it.
pub(super) fn sort_key(agent: &Agent) -> Vec<String> {
    engarde::kit::pagination::time_id_key(agent.created_at, agent.id)
}
