//! The client of workflow-service: how agent-service reads workflows.
//!
//! A call made for a caller carries the caller's credentials, so workflow-service applies its own
//! tenant rules (another tenant's workflow is NOT_FOUND there, and so here). Work this service
//! does on its own (reporting executions, checking a schedule's workflow) goes as this service:
//! its service identity (`engarde::kit::service_identity`) and the tenant it acts for. Every attempt has a deadline;
//! an UNAVAILABLE answer is retried with backoff, up to [`ATTEMPTS`] attempts in all (these are
//! reads, safe to repeat). Answers are mapped into this service's errors: a workflow-service
//! that cannot be reached is UNAVAILABLE "workflow-service unavailable".

use std::time::Duration;

use engarde::kit::auth::{TENANT_HEADER, Tenant};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::service_identity::ServiceTokens;
use engarde::kit::trace::{self, Span, SpanKind};
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::domain::execution::Report;
use crate::domain::{SourceWorkflow, WorkflowCategory, WorkflowStatus};

/// Attempts per call, the first included.
pub const ATTEMPTS: u32 = 3;
/// The wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The page size asked of ListWorkflows (its maximum).
const LIST_PAGE_SIZE: i32 = 200;
/// A bound on pages, so that a misbehaving peer cannot keep a call looping forever.
const MAX_LIST_PAGES: usize = 1000;

/// The credentials a call to workflow-service goes with: a caller's, forwarded, or this
/// service's own ([`WorkflowClient::as_service`]).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The `authorization` header: the caller's as sent (production mode: its bearer token), or
    /// this service's token.
    authorization: Option<AsciiMetadataValue>,
    /// The tenant the caller was authenticated as. Sent as `x-tenant-id`, so that in development
    /// mode workflow-service acts for the same tenant even when the caller relied on the default.
    tenant: Tenant,
}

impl Credentials {
    /// The credentials of an incoming request, authenticated as `tenant`.
    pub fn of<T>(request: &Request<T>, tenant: &Tenant) -> Self {
        Self { authorization: request.metadata().get("authorization").cloned(), tenant: tenant.clone() }
    }

    fn attach<T>(&self, request: &mut Request<T>) {
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        // A parsed tenant id is ASCII letters, digits and -_. : always a valid header value.
        if let Ok(value) = MetadataValue::try_from(self.tenant.as_str()) {
            metadata.insert(TENANT_HEADER, value);
        }
    }
}

/// What workflow-service did with a batch of execution reports.
#[derive(Debug)]
pub enum BatchRecorded {
    /// One outcome per report, in their order: counted now (true) or before, or why not.
    Each(Vec<ServiceResult<bool>>),
    /// It does not know RecordExecutions (an older release, during a rolling deploy): nothing
    /// was recorded.
    Unsupported,
}

/// Which workflows to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkflowQuery {
    pub category: Option<WorkflowCategory>,
    /// `Some(false)`: only the tenant's own workflows; `None`: templates too.
    pub is_template: Option<bool>,
}

/// workflow-service over a lazily connected channel (it may start after this service).
#[derive(Clone)]
pub struct WorkflowClient {
    client: WorkflowServiceClient<Channel>,
    call_timeout: Duration,
    /// This service's identity; `None` in development mode without SERVICE_TOKEN_SECRET.
    service: Option<ServiceTokens>,
}

impl WorkflowClient {
    /// A client of the workflow-service at `url`; connects on first use. It accepts answers of
    /// up to `max_message_bytes` (this service's MAX_MESSAGE_BYTES; workflow-service bounds its
    /// pages by its own, so the two must be set alike). `tls` for an https:// `url` (its CA, and
    /// the client certificate of mTLS).
    pub fn connect_lazy(
        url: &str,
        call_timeout: Duration,
        max_message_bytes: usize,
        service: Option<ServiceTokens>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("WORKFLOW_SERVICE_URL {url:?} is not a valid URL: {e}"))?
            .connect_timeout(call_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint =
                endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("WORKFLOW_SERVICE_URL {url:?}: TLS: {e}"))?;
        }
        let client = WorkflowServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(Self { client, call_timeout, service })
    }

    /// One workflow the caller can read; NOT_FOUND when there is none (or it is another tenant's).
    pub async fn get(&self, credentials: &Credentials, id: Uuid) -> ServiceResult<SourceWorkflow> {
        let request = pb::GetWorkflowRequest { id: id.to_string() };
        let workflow = self
            .call(&format!("workflow {id}"), credentials, request, |mut client, request| async move {
                client.get_workflow(request).await
            })
            .await?;
        source_workflow(workflow)
    }

    /// Like [`Self::get`], but `None` when the workflow does not exist for the caller.
    pub async fn find(&self, credentials: &Credentials, id: Uuid) -> ServiceResult<Option<SourceWorkflow>> {
        match self.get(credentials, id).await {
            Ok(workflow) => Ok(Some(workflow)),
            Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// This service's own credentials, acting for `tenant`: for work no caller waits on.
    pub fn as_service(&self, tenant: Tenant) -> Credentials {
        // A signed token is base64url and dots: always a valid header value.
        let authorization = self.service.as_ref().and_then(|tokens| tokens.bearer().parse().ok());
        Credentials { authorization, tenant }
    }

    /// Reports an execution's outcome to its workflow's statistics (RecordExecution, idempotent
    /// by execution id there, and callable only with this service's identity); answers whether
    /// it was counted now (false: counted before).
    pub async fn record_execution(
        &self,
        tenant: Tenant,
        workflow_id: Uuid,
        execution_id: Uuid,
        succeeded: bool,
    ) -> ServiceResult<bool> {
        let request = pb::RecordExecutionRequest {
            workflow_id: workflow_id.to_string(),
            execution_id: execution_id.to_string(),
            succeeded,
        };
        let recorded = self
            .call(
                &format!("workflow {workflow_id}"),
                &self.as_service(tenant),
                request,
                |mut client, request| async move { client.record_execution(request).await },
            )
            .await?;
        Ok(recorded.counted)
    }

    /// Reports the outcomes of `reports`, all `tenant`'s, in one call (RecordExecutions, as
    /// [`Self::record_execution`] reports one): one outcome per report, in their order, each
    /// whether it was counted now or why not. [`BatchRecorded::Unsupported`] when
    /// workflow-service is of a release before RecordExecutions (it answered UNIMPLEMENTED).
    pub async fn record_executions(&self, tenant: Tenant, reports: &[Report]) -> ServiceResult<BatchRecorded> {
        let executions = reports
            .iter()
            .map(|r| pb::RecordExecutionRequest {
                workflow_id: r.workflow_id.to_string(),
                execution_id: r.execution_id.to_string(),
                succeeded: r.succeeded,
            })
            .collect();
        let request = pb::RecordExecutionsRequest { executions };
        let answered = self
            .call_status(&self.as_service(tenant), request, |mut client, request| async move {
                client.record_executions(request).await
            })
            .await;
        let answered = match answered {
            Ok(answered) => answered,
            Err(status) if status.code() == Code::Unimplemented => return Ok(BatchRecorded::Unsupported),
            Err(status) => return Err(error_of("workflows", status, self.call_timeout)),
        };
        if answered.results.len() != reports.len() {
            return Err(ServiceError::internal(anyhow::anyhow!(
                "workflow-service answered {} results for {} reports",
                answered.results.len(),
                reports.len()
            )));
        }
        let outcomes = reports.iter().zip(answered.results).map(|(report, result)| match result.result {
            Some(pb::record_execution_result::Result::Recorded(recorded)) => Ok(recorded.counted),
            Some(pb::record_execution_result::Result::Error(e)) => {
                let status = Status::new(Code::from_i32(e.code), e.message);
                Err(error_of(&format!("workflow {}", report.workflow_id), status, self.call_timeout))
            }
            None => Err(ServiceError::internal(anyhow::anyhow!(
                "workflow-service answered no result for execution {}",
                report.execution_id
            ))),
        });
        Ok(BatchRecorded::Each(outcomes.collect()))
    }

    /// Every workflow the caller can read that matches `query`, paging through ListWorkflows.
    pub async fn list_all(
        &self,
        credentials: &Credentials,
        query: WorkflowQuery,
    ) -> ServiceResult<Vec<SourceWorkflow>> {
        let mut workflows = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_LIST_PAGES {
            let request = pb::ListWorkflowsRequest {
                category: query.category.map(category_to_pb).unwrap_or(pb::WorkflowCategory::Unspecified) as i32,
                status: pb::WorkflowStatus::Unspecified as i32,
                is_template: query.is_template,
                name_contains: String::new(),
                page_size: LIST_PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let page = self
                .call("workflows", credentials, request, |mut client, request| async move {
                    client.list_workflows(request).await
                })
                .await?;
            for workflow in page.workflows {
                workflows.push(source_workflow(workflow)?);
            }
            if page.next_page_token.is_empty() {
                return Ok(workflows);
            }
            page_token = page.next_page_token;
        }
        Err(ServiceError::internal(anyhow::anyhow!("workflow-service answered more than {MAX_LIST_PAGES} pages")))
    }

    /// Sends `message` with the caller's credentials and a deadline, retrying on UNAVAILABLE;
    /// the answer in this service's terms.
    async fn call<M, R, F, Fut>(&self, what: &str, credentials: &Credentials, message: M, send: F) -> ServiceResult<R>
    where
        M: Clone + WorkflowRpc,
        F: Fn(WorkflowServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.call_status(credentials, message, send).await.map_err(|status| error_of(what, status, self.call_timeout))
    }

    /// [`Self::call`], answering workflow-service's status as it is.
    async fn call_status<M, R, F, Fut>(&self, credentials: &Credentials, message: M, send: F) -> Result<R, Status>
    where
        M: Clone + WorkflowRpc,
        F: Fn(WorkflowServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = Request::new(message.clone());
            credentials.attach(&mut request);
            // Tell workflow-service the deadline too, so it stops working on an abandoned call.
            request.set_timeout(self.call_timeout);
            // Each attempt is a client span, the parent of workflow-service's server span (when
            // no span is recorded, the caller's trace goes on), so both services' logs show the
            // same trace id.
            let span = rpc_span::<M>();
            if let Some(value) = span.traceparent().and_then(|t| MetadataValue::try_from(t).ok()) {
                request.metadata_mut().insert("traceparent", value);
            }
            let status = match tokio::time::timeout(self.call_timeout, send(self.client.clone(), request)).await {
                Ok(Ok(response)) => {
                    span.end_rpc(SpanKind::Client, Code::Ok);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer in time"),
            };
            span.end_rpc(SpanKind::Client, status.code());
            if status.code() == Code::Unavailable && attempt < ATTEMPTS {
                tracing::warn!(attempt, reason = status.message(), "workflow-service unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
                continue;
            }
            return Err(status);
        }
    }
}

/// A request to workflow-service, by the method it is sent to (the name of its client span).
trait WorkflowRpc {
    const METHOD: &'static str;
}

impl WorkflowRpc for pb::GetWorkflowRequest {
    const METHOD: &'static str = "GetWorkflow";
}

impl WorkflowRpc for pb::ListWorkflowsRequest {
    const METHOD: &'static str = "ListWorkflows";
}

impl WorkflowRpc for pb::RecordExecutionRequest {
    const METHOD: &'static str = "RecordExecution";
}

impl WorkflowRpc for pb::RecordExecutionsRequest {
    const METHOD: &'static str = "RecordExecutions";
}

/// The client span of one attempt of `M`'s call, with OpenTelemetry's `rpc.*` attributes.
fn rpc_span<M: WorkflowRpc>() -> Span {
    use engarde::proto::workflow::v1::workflow_service_server::SERVICE_NAME;
    Span::client(
        || format!("{SERVICE_NAME}/{}", M::METHOD).into(),
        || trace::rpc_attributes(&format!("/{SERVICE_NAME}/{}", M::METHOD)),
    )
}

/// workflow-service's answer in this service's terms.
fn error_of(what: &str, status: Status, timeout: Duration) -> ServiceError {
    let message = status.message().to_owned();
    // A status with a source was made here by tonic from a broken connection, not answered by
    // workflow-service: e.g. over TLS 1.3 a refused client certificate ends the connection
    // only after the client thinks it is made, and the call then fails INTERNAL or UNKNOWN.
    if matches!(status.code(), Code::Internal | Code::Unknown) && std::error::Error::source(&status).is_some() {
        tracing::warn!(code = ?status.code(), reason = %message, "workflow-service connection failed");
        return ServiceError::Unavailable("workflow-service unavailable".into());
    }
    match status.code() {
        Code::NotFound => ServiceError::not_found(what),
        Code::Unavailable | Code::ResourceExhausted | Code::Cancelled => {
            tracing::warn!(code = ?status.code(), reason = %message, "workflow-service call failed");
            ServiceError::Unavailable("workflow-service unavailable".into())
        }
        Code::DeadlineExceeded => {
            ServiceError::DeadlineExceeded(format!("workflow-service did not answer within {} ms", timeout.as_millis()))
        }
        Code::PermissionDenied => ServiceError::PermissionDenied(message),
        Code::Unauthenticated => ServiceError::Unauthenticated(message),
        Code::FailedPrecondition => ServiceError::FailedPrecondition(message),
        Code::AlreadyExists => ServiceError::AlreadyExists(message),
        Code::Aborted => ServiceError::Aborted(message),
        // An answer larger than this service accepts: the two services' MAX_MESSAGE_BYTES differ.
        // A deployment's state, not a bug here nor the caller's fault.
        Code::OutOfRange => {
            tracing::warn!(reason = %message, "workflow-service answered more than MAX_MESSAGE_BYTES allows");
            ServiceError::FailedPrecondition(
                "workflow-service answered more than this service's MAX_MESSAGE_BYTES; set it alike on both".into(),
            )
        }
        // INVALID_ARGUMENT would mean this service sent a bad request: a bug here, as are the rest.
        code => ServiceError::internal(anyhow::anyhow!("workflow-service answered {code:?}: {message}")),
    }
}

fn category_to_pb(category: WorkflowCategory) -> pb::WorkflowCategory {
    match category {
        WorkflowCategory::ContentGeneration => pb::WorkflowCategory::ContentGeneration,
        WorkflowCategory::AbTesting => pb::WorkflowCategory::AbTesting,
        WorkflowCategory::AudienceIntelligence => pb::WorkflowCategory::AudienceIntelligence,
        WorkflowCategory::BudgetOptimization => pb::WorkflowCategory::BudgetOptimization,
        WorkflowCategory::AnalyticsAutomation => pb::WorkflowCategory::AnalyticsAutomation,
    }
}

/// A workflow as workflow-service answered it; a malformed answer is that service's bug.
fn source_workflow(workflow: pb::WorkflowDefinition) -> ServiceResult<SourceWorkflow> {
    let bad = |what: &str| {
        ServiceError::internal(anyhow::anyhow!(
            "workflow-service answered workflow {:?} with a bad {what}",
            workflow.id
        ))
    };
    let category = match pb::WorkflowCategory::try_from(workflow.category) {
        Ok(pb::WorkflowCategory::ContentGeneration) => WorkflowCategory::ContentGeneration,
        Ok(pb::WorkflowCategory::AbTesting) => WorkflowCategory::AbTesting,
        Ok(pb::WorkflowCategory::AudienceIntelligence) => WorkflowCategory::AudienceIntelligence,
        Ok(pb::WorkflowCategory::BudgetOptimization) => WorkflowCategory::BudgetOptimization,
        Ok(pb::WorkflowCategory::AnalyticsAutomation) => WorkflowCategory::AnalyticsAutomation,
        Ok(pb::WorkflowCategory::Unspecified) | Err(_) => return Err(bad("category")),
    };
    let status = match pb::WorkflowStatus::try_from(workflow.status) {
        Ok(pb::WorkflowStatus::Draft) => WorkflowStatus::Draft,
        Ok(pb::WorkflowStatus::Active) => WorkflowStatus::Active,
        Ok(pb::WorkflowStatus::Archived) => WorkflowStatus::Archived,
        Ok(pb::WorkflowStatus::Unspecified) | Err(_) => return Err(bad("status")),
    };
    let id = Uuid::parse_str(&workflow.id).map_err(|_| bad("id"))?;
    Ok(SourceWorkflow {
        id,
        name: workflow.name,
        description: workflow.description,
        category,
        status,
        is_template: workflow.is_template,
        version: workflow.version,
        config: workflow.workflow_config.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_over_the_message_limit_is_a_precondition_not_a_bug() {
        let status = Status::out_of_range("Error, decoded message length too large: found 5000000 bytes");
        match error_of("workflows", status, Duration::from_secs(1)) {
            ServiceError::FailedPrecondition(message) => assert!(message.contains("MAX_MESSAGE_BYTES"), "{message}"),
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }
}
