//! `engarde.workflow.v1.WorkflowService`.

use std::sync::Arc;

use engarde::kit::auth::Tenant;
use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::import::ImportConfig;
use engarde::kit::page_budget::PageBudget;
use engarde::kit::pagination::{PageRequest, filter_fingerprint};
use engarde::kit::request::{invalid_if_any, parse_update_mask};
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_server::WorkflowService;
use tonic::{Request, Response, Status};

use super::convert::{
    category_from_pb, config_from_pb, parse_id, parse_report, recorded_to_pb, status_from_pb, workflow_to_pb,
};
use crate::domain::lifecycle::{self, EditableField};
use crate::domain::{
    ExecutionReport, MAX_REPORTS_PER_BATCH, NewWorkflow, Status as WorkflowStatus, Workflow, WorkflowFilter, validation,
};
use crate::storage::WorkflowRepository;

/// The service's handlers, over a repository.
#[derive(Clone)]
pub struct WorkflowApi {
    repo: Arc<dyn WorkflowRepository>,
    limits: AnswerLimits,
    import: ImportConfig,
}

/// Bounds on the size of answers.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimits {
    /// How many bytes of items one answer may carry (a ListWorkflows page, a validation report).
    pub pages: PageBudget,
    /// How many violations a ValidateWorkflowConfig report lists; the rest are only counted.
    pub reported_violations: usize,
}

impl WorkflowApi {
    pub fn new(repo: Arc<dyn WorkflowRepository>, limits: AnswerLimits) -> Self {
        Self { repo, limits, import: ImportConfig { import_source_url: None, import_max_rows: 5000 } }
    }

    /// With ImportWorkflows enabled as `import` says (it is off without a source).
    pub fn with_import(mut self, import: ImportConfig) -> Self {
        self.import = import;
        self
    }
}

impl WorkflowApi {
    /// A lifecycle transition: `next` decides the new status from the current workflow.
    async fn change_status(
        &self,
        tenant: &Tenant,
        key: Option<IdempotencyKey>,
        id: &str,
        etag: String,
        next: fn(&Workflow) -> ServiceResult<WorkflowStatus>,
    ) -> ServiceResult<pb::WorkflowDefinition> {
        let id = parse_id("id", id)?;
        let mutation = Box::new(move |w: &mut Workflow| {
            lifecycle::ensure_owned(w)?;
            lifecycle::ensure_fresh(w, &etag)?;
            w.status = next(w)?;
            Ok(())
        });
        let workflow = self.repo.mutate(tenant.as_str(), id, key.as_ref(), mutation).await?;
        tracing::info!(workflow_id = %id, status = workflow.status.as_str(), "workflow status changed");
        Ok(workflow_to_pb(&workflow))
    }
}

/// Runs a handler body with the caller's tenant, turning its error into a status.
async fn handle<Req, Res, F, Fut>(request: Request<Req>, body: F) -> Result<Response<Res>, Status>
where
    F: FnOnce(Tenant, Req) -> Fut,
    Fut: Future<Output = ServiceResult<Res>>,
{
    let tenant = Tenant::of(&request)?;
    body(tenant, request.into_inner()).await.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    #[tracing::instrument(skip_all)]
    async fn create_workflow(
        &self,
        request: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("CreateWorkflow", &req.request_id, &req)?;
            let mut violations = Vec::new();
            validation::check_name("name", &req.name, &mut violations);
            validation::check_description("description", &req.description, &mut violations);
            let category = match category_from_pb("category", req.category) {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    violations.push(FieldViolation::new("category", "is required"));
                    None
                }
                Err(ServiceError::InvalidArgument(v)) => {
                    violations.extend(v);
                    None
                }
                Err(e) => return Err(e),
            };
            let config = config_from_pb("workflow_config", req.workflow_config).map_err(|v| violations.extend(v)).ok();
            invalid_if_any(violations)?;
            let (Some(category), Some(config)) = (category, config) else {
                return Err(ServiceError::internal(anyhow::anyhow!("validated request lost a field")));
            };
            let new = NewWorkflow { name: req.name.trim().to_owned(), description: req.description, category, config };
            let created = self.repo.create(tenant.as_str(), new, key.as_ref()).await?;
            tracing::info!(workflow_id = %created.id, "workflow created");
            Ok(workflow_to_pb(&created))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let id = parse_id("id", &req.id)?;
            Ok(workflow_to_pb(&self.repo.get(tenant.as_str(), id).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        handle(request, |tenant, req| async move {
            if req.name_contains.chars().count() > validation::MAX_NAME_CHARS {
                return Err(ServiceError::invalid("name_contains", "must be at most 200 characters"));
            }
            let filter = WorkflowFilter {
                category: category_from_pb("category", req.category)?,
                status: status_from_pb("status", req.status)?,
                is_template: req.is_template,
                name_contains: req.name_contains,
            };
            let parts = filter.fingerprint_parts();
            let fingerprint = filter_fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let workflows = self.repo.list(tenant.as_str(), &filter, &page).await?;
            let filled = page.fill(
                &workflows[..],
                self.limits.pages,
                workflow_to_pb,
                |w| vec![w.name.clone(), w.id.to_string()],
                |w| format!("workflow {}", w.id),
            )?;
            Ok(pb::ListWorkflowsResponse { next_page_token: filled.next_page_token, workflows: filled.items })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_workflow(
        &self,
        request: Request<pb::UpdateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("UpdateWorkflow", &req.request_id, &req)?;
            let Some(patch) = req.workflow else {
                return Err(ServiceError::invalid("workflow", "is required"));
            };
            let id = parse_id("workflow.id", &patch.id)?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let mut violations = Vec::new();
            let fields = parse_update_mask(
                &paths,
                EditableField::parse,
                "name, description, category or workflow_config",
                &mut violations,
            )?;
            let mut category = None;
            let mut config = None;
            for field in &fields {
                match field {
                    EditableField::Name => validation::check_name("workflow.name", &patch.name, &mut violations),
                    EditableField::Description => {
                        validation::check_description("workflow.description", &patch.description, &mut violations)
                    }
                    EditableField::Category => match category_from_pb("workflow.category", patch.category) {
                        Ok(Some(c)) => category = Some(c),
                        Ok(None) => violations.push(FieldViolation::new("workflow.category", "is required")),
                        Err(ServiceError::InvalidArgument(v)) => violations.extend(v),
                        Err(e) => return Err(e),
                    },
                    EditableField::Config => {
                        match config_from_pb("workflow.workflow_config", patch.workflow_config.clone()) {
                            Ok(c) => config = Some(c),
                            Err(v) => violations.extend(v),
                        }
                    }
                }
            }
            invalid_if_any(violations)?;
            let etag = patch.etag.clone();
            let updated = self
                .repo
                .mutate(
                    tenant.as_str(),
                    id,
                    key.as_ref(),
                    Box::new(move |w| {
                        lifecycle::ensure_owned(w)?;
                        lifecycle::ensure_fresh(w, &etag)?;
                        for field in &fields {
                            lifecycle::ensure_editable(w.status, *field)?;
                        }
                        for field in fields {
                            match field {
                                EditableField::Name => w.name = patch.name.trim().to_owned(),
                                EditableField::Description => w.description = patch.description.clone(),
                                EditableField::Category => w.category = category.unwrap_or(w.category),
                                EditableField::Config => w.config = config.clone().unwrap_or_else(|| w.config.clone()),
                            }
                        }
                        Ok(())
                    }),
                )
                .await?;
            tracing::info!(workflow_id = %id, version = updated.version, "workflow updated");
            Ok(workflow_to_pb(&updated))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn delete_workflow(
        &self,
        request: Request<pb::DeleteWorkflowRequest>,
    ) -> Result<Response<pb::DeleteWorkflowResponse>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("DeleteWorkflow", &req.request_id, &req)?;
            let id = parse_id("id", &req.id)?;
            let etag = req.etag;
            let deleted = self
                .repo
                .delete(
                    tenant.as_str(),
                    id,
                    key.as_ref(),
                    Box::new(move |w| {
                        lifecycle::ensure_owned(w)?;
                        lifecycle::ensure_fresh(w, &etag)?;
                        lifecycle::ensure_deletable(w)
                    }),
                )
                .await?;
            tracing::info!(workflow_id = %deleted, "workflow deleted");
            Ok(pb::DeleteWorkflowResponse { id: deleted.to_string() })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn activate_workflow(
        &self,
        request: Request<pb::ActivateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("ActivateWorkflow", &req.request_id, &req)?;
            self.change_status(&tenant, key, &req.id, req.etag, lifecycle::activate).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn archive_workflow(
        &self,
        request: Request<pb::ArchiveWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("ArchiveWorkflow", &req.request_id, &req)?;
            self.change_status(&tenant, key, &req.id, req.etag, lifecycle::archive).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn clone_workflow(
        &self,
        request: Request<pb::CloneWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        handle(request, |tenant, req| async move {
            let key = IdempotencyKey::from_request("CloneWorkflow", &req.request_id, &req)?;
            let source_id = parse_id("source_id", &req.source_id)?;
            if !req.name.is_empty() {
                let mut violations = Vec::new();
                validation::check_name("name", &req.name, &mut violations);
                invalid_if_any(violations)?;
            }
            let source = self.repo.get(tenant.as_str(), source_id).await?;
            let name = if req.name.is_empty() {
                let mut name = format!("{} (copy)", source.name);
                if name.chars().count() > validation::MAX_NAME_CHARS {
                    name = name.chars().take(validation::MAX_NAME_CHARS).collect();
                }
                name
            } else {
                req.name.trim().to_owned()
            };
            let new =
                NewWorkflow { name, description: source.description, category: source.category, config: source.config };
            let clone = self.repo.create(tenant.as_str(), new, key.as_ref()).await?;
            tracing::info!(workflow_id = %clone.id, source_id = %source_id, "workflow cloned");
            Ok(workflow_to_pb(&clone))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn validate_workflow_config(
        &self,
        request: Request<pb::ValidateWorkflowConfigRequest>,
    ) -> Result<Response<pb::ValidateWorkflowConfigResponse>, Status> {
        handle(request, |_tenant, req| async move {
            let violations = match config_from_pb("workflow_config", req.workflow_config) {
                Ok(_) => Vec::new(),
                Err(v) => v,
            };
            // A small request can hold thousands of bad steps, and a violation may quote the
            // input: the report lists the first ones, within a count and the page budget, and
            // counts the rest.
            let found = violations.len();
            let listed = violations
                .into_iter()
                .take(self.limits.reported_violations)
                .map(|v| pb::ConfigViolation { field: v.field, description: v.description });
            let (violations, _) = self.limits.pages.keep_fitting(listed, &mut 0);
            Ok(pb::ValidateWorkflowConfigResponse {
                valid: found == 0,
                omitted_violations: i32::try_from(found - violations.len()).unwrap_or(i32::MAX),
                violations,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn record_execution(
        &self,
        request: Request<pb::RecordExecutionRequest>,
    ) -> Result<Response<pb::RecordExecutionResponse>, Status> {
        handle(request, |tenant, req| async move {
            let mut violations = Vec::new();
            let report = parse_report("", &req, &mut violations);
            invalid_if_any(violations)?;
            let Some(report) = report else {
                return Err(ServiceError::internal(anyhow::anyhow!("validated report lost a field")));
            };
            let recorded = self
                .repo
                .record_execution(tenant.as_str(), report.workflow_id, &report.execution_id, report.succeeded)
                .await?;
            Ok(recorded_to_pb(&recorded))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn record_executions(
        &self,
        request: Request<pb::RecordExecutionsRequest>,
    ) -> Result<Response<pb::RecordExecutionsResponse>, Status> {
        handle(request, |tenant, req| async move {
            if req.executions.len() > MAX_REPORTS_PER_BATCH {
                return Err(ServiceError::invalid(
                    "executions",
                    format!("must hold at most {MAX_REPORTS_PER_BATCH} entries, not {}", req.executions.len()),
                ));
            }
            let mut violations = Vec::new();
            let reports: Vec<ExecutionReport> = req
                .executions
                .iter()
                .enumerate()
                .filter_map(|(i, entry)| parse_report(&format!("executions[{i}]."), entry, &mut violations))
                .collect();
            invalid_if_any(violations)?;
            let recorded = self.repo.record_executions(tenant.as_str(), &reports).await?;
            let results = recorded
                .into_iter()
                .map(|outcome| pb::RecordExecutionResult {
                    result: Some(match outcome {
                        Ok(recorded) => pb::record_execution_result::Result::Recorded(recorded_to_pb(&recorded)),
                        Err(e) => {
                            let status = Status::from(e);
                            pb::record_execution_result::Result::Error(pb::RecordExecutionError {
                                code: status.code() as i32,
                                message: status.message().to_owned(),
                            })
                        }
                    }),
                })
                .collect();
            Ok(pb::RecordExecutionsResponse { results })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn import_workflows(
        &self,
        request: Request<pb::ImportWorkflowsRequest>,
    ) -> Result<Response<pb::ImportWorkflowsResponse>, Status> {
        handle(request, |tenant, req| async move {
            super::import::import_workflows(&*self.repo, &self.import, &tenant, req).await
        })
        .await
    }
}
