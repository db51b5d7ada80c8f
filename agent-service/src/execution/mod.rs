//! Running agents through Langflow: executions, conversation memory, feedback, and the outbox
//! that reports executions to workflow-service.
//!
//! An execution is written before it is answered and never lost: it is stored RUNNING (before
//! Langflow is called when a request id must not run twice; otherwise only once the run has
//! lasted `EXECUTION_RUNNING_ROW_AFTER_MS`, so a short run is written once, finished), Langflow
//! is called, and its outcome is recorded in one transaction with everything it changes (the
//! agent's statistics, the conversation, the report to workflow-service, the agent's ERROR when
//! its flow is gone), a commit shared with the finishes that arrive with it ([`group_commit`]).
//! That work runs in a task of its own, so a caller that goes away does not
//! cut it short; a process that dies mid-run leaves a RUNNING row that [`janitor`] finishes.

pub mod group_commit;
pub mod janitor;
pub mod memory;
pub mod model;
pub mod reporter;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::domain::execution::TokenUsage;
use crate::domain::{Agent, FlowOrigin, now};
use crate::langflow::{LangflowClient, LangflowError, flow};
use crate::storage::executions::Started;
use crate::storage::{AgentRepository, ExecutionRepository};
use group_commit::FinishCommitter;
use model::{Execution, Finish, NewExecution, Outcome, langflow_session_id, pick_step};

pub use memory::MemoryWindow;
pub use stream::StreamItem;

/// How many times recording an outcome is tried when the database is briefly unavailable.
const RECORD_ATTEMPTS: u32 = 3;

/// A caller's request to run an agent, validated at the edge.
#[derive(Debug, Clone)]
pub struct ExecuteRequest {
    pub agent_id: Uuid,
    pub input: String,
    /// Empty: a new conversation.
    pub session_id: String,
    /// Empty: the first llm step.
    pub step_id: String,
    pub key: Option<IdempotencyKey>,
    /// The caller's deadline (its `grpc-timeout`), if it set one.
    pub deadline: Option<Duration>,
}

/// Runs agents and records what happened.
#[derive(Clone)]
pub struct Executor {
    agents: Arc<dyn AgentRepository>,
    executions: Arc<dyn ExecutionRepository>,
    /// Records finishes, several in one commit when they arrive together.
    finishes: FinishCommitter,
    langflow: Option<Arc<LangflowClient>>,
    /// Wakes the reporter when an execution queued a report.
    reports: Arc<Notify>,
    /// The deadline of a unary call whose caller set none (the server's own RPC timeout).
    default_deadline: Duration,
    /// How much of a session's memory each execution gives the model.
    memory: MemoryWindow,
    /// How long a run without a request id goes before its RUNNING row is written (zero: at
    /// once); one that ends sooner is stored once, finished.
    running_row_after: Duration,
}

/// An execution ready to run: stored nowhere yet.
struct Run {
    new: NewExecution,
    langflow: Arc<LangflowClient>,
    flow_id: String,
    tweaks: Value,
    deadline: Option<Duration>,
    /// The model's credential reference, to name in an error about the credential.
    api_key_ref: String,
    /// Whether the flow runs a model (a timeout is then the model's).
    has_model: bool,
}

/// Whether a run's RUNNING row was written before it ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunningRow {
    Written,
    /// Not yet: its finish stores the execution.
    NotYet,
}

enum Prepared {
    /// The request id started an execution before: answer it.
    Existing(Execution),
    Run(Run),
}

impl Executor {
    pub fn new(
        agents: Arc<dyn AgentRepository>,
        executions: Arc<dyn ExecutionRepository>,
        finishes: FinishCommitter,
        langflow: Option<Arc<LangflowClient>>,
        reports: Arc<Notify>,
        default_deadline: Duration,
        memory: MemoryWindow,
    ) -> Self {
        let running_row_after = Duration::ZERO;
        Self { agents, executions, finishes, langflow, reports, default_deadline, memory, running_row_after }
    }

    /// Writes the RUNNING row of a run without a request id only once it has run this long
    /// (zero: at once, while Langflow is called).
    pub fn with_running_row_after(mut self, after: Duration) -> Self {
        self.running_row_after = after;
        self
    }

    pub fn executions(&self) -> &Arc<dyn ExecutionRepository> {
        &self.executions
    }

    /// Runs the agent once and answers the recorded execution (or, when it failed, its error).
    pub async fn execute(&self, tenant: &str, request: ExecuteRequest) -> ServiceResult<Execution> {
        let deadline = Some(request.deadline.unwrap_or(self.default_deadline).min(self.default_deadline));
        let prepared = self.prepare(tenant, request, deadline, None).await?;
        self.answer(prepared).await
    }

    /// Runs the agent once, streaming its progress: started, Langflow's text and events as they
    /// arrive, finished (then the error, when it failed). The run and its record go on when the
    /// receiver is dropped.
    pub async fn execute_streamed(
        &self,
        tenant: &str,
        request: ExecuteRequest,
    ) -> ServiceResult<mpsc::Receiver<ServiceResult<StreamItem>>> {
        let deadline = request.deadline;
        let (sender, receiver) = mpsc::channel(stream::CHANNEL_CAPACITY);
        match self.prepare(tenant, request, deadline, None).await? {
            Prepared::Existing(execution) => stream::replay(execution, &sender).await,
            Prepared::Run(run) => {
                let executor = self.clone();
                // The run goes on in the caller's trace.
                tokio::spawn(engarde::kit::trace::carried(async move { executor.run_streamed(run, sender).await }));
            }
        }
        Ok(receiver)
    }

    /// Runs one llm step of a walker run as an execution of its agent (an internal caller: no
    /// deadline but Langflow's run timeout, the prompt the run pinned rather than the agent's
    /// current one, and a request key the walker derives from the run and step). Answers the
    /// execution as recorded, or its error; a key that started an execution before answers that
    /// one without running the flow again.
    pub(crate) async fn execute_step(
        &self,
        tenant: &str,
        request: ExecuteRequest,
        pinned_prompt: String,
    ) -> ServiceResult<Execution> {
        let prepared = self.prepare(tenant, request, None, Some(pinned_prompt)).await?;
        self.answer(prepared).await
    }

    /// Answers a prepared execution: the earlier one its key started, or a run in a task of
    /// its own, so that a caller going away (or a walker losing its run mid-step) drops this
    /// future, not the run and its record.
    async fn answer(&self, prepared: Prepared) -> ServiceResult<Execution> {
        let run = match prepared {
            Prepared::Existing(execution) => return execution.into_answer(),
            Prepared::Run(run) => run,
        };
        let executor = self.clone();
        // The run goes on in the caller's trace.
        tokio::spawn(engarde::kit::trace::carried(async move { executor.run_once(run).await }))
            .await
            .map_err(|e| ServiceError::internal(anyhow::anyhow!("execution task failed: {e}")))?
    }

    /// The checks before a run, and what it needs. `pinned_prompt`: the step's prompt as an
    /// internal caller pinned it (a walker run's plan), instead of the agent's snapshot's.
    async fn prepare(
        &self,
        tenant: &str,
        request: ExecuteRequest,
        deadline: Option<Duration>,
        pinned_prompt: Option<String>,
    ) -> ServiceResult<Prepared> {
        if let Some(key) = &request.key
            && let Some(existing) = self.executions.find_by_request(tenant, key).await?
        {
            return Ok(Prepared::Existing(existing));
        }
        let agent = self.agents.get_for_run(tenant, request.agent_id).await?;
        if !agent.status.runs() {
            return Err(ServiceError::FailedPrecondition(format!(
                "agent {} is {}; only a deployed or active agent executes",
                agent.id,
                agent.status.as_str()
            )));
        }
        let Some(langflow) = &self.langflow else {
            return Err(ServiceError::FailedPrecondition(
                "no Langflow is configured (set LANGFLOW_URL): agents cannot execute".into(),
            ));
        };
        if agent.langflow_workflow_id.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "agent {} has no Langflow flow; link one or regenerate it",
                agent.id
            )));
        }
        let (step_id, prompt) = match &pinned_prompt {
            Some(prompt) => (request.step_id.clone(), prompt.clone()),
            None => pick_step(agent.snapshot.as_ref(), &request.step_id)?,
        };
        let (session_id, history) = if request.session_id.is_empty() {
            (Uuid::new_v4().to_string(), String::new())
        } else if pinned_prompt.is_some() {
            // A walk's step carries what came before it in its input (the previous step's
            // output): the session's earlier turns would only repeat it to the model.
            (request.session_id, String::new())
        } else {
            let earlier =
                self.executions.recent_messages(agent.id, &request.session_id, self.memory.max_messages).await?;
            (request.session_id, self.memory.render(&earlier))
        };
        let tweaks = run_tweaks(langflow, &agent, &prompt, &history).await?;
        let new = NewExecution {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            agent_id: agent.id,
            session_id,
            step_id,
            input: request.input,
            started_at: now(),
            request: request.key,
            report_workflow_id: agent.source_workflow_id(),
        };
        Ok(Prepared::Run(Run {
            new,
            langflow: langflow.clone(),
            flow_id: agent.langflow_workflow_id.clone(),
            tweaks,
            deadline: deadline.map(leave_time_to_record),
            has_model: agent.configuration.model.is_set(),
            api_key_ref: agent.configuration.model.api_key_ref.clone(),
        }))
    }

    async fn run_once(&self, run: Run) -> ServiceResult<Execution> {
        let session = langflow_session_id(run.new.agent_id, &run.new.session_id);
        let call = async {
            let clock = Instant::now();
            let result = run.langflow.run(&run.flow_id, &run.new.input, &session, &run.tweaks, run.deadline).await;
            (result.map(|o| (o.text, o.usage)), clock)
        };
        if run.new.request.is_some() {
            // The RUNNING row is what keeps a retry from running the flow again: it comes first,
            // and a retry is answered without calling Langflow.
            if let Started::Existing(existing) = self.executions.start(&run.new).await? {
                return existing.into_answer();
            }
            let (result, clock) = call.await;
            return self.record(&run, result, clock, RunningRow::Written).await?.into_answer();
        }
        // Nothing to deduplicate (so nothing started before). A run that ends before its
        // RUNNING row is due is stored once, finished; a longer one has its row written while
        // Langflow goes on. If that row cannot be written, the run is answered with that error
        // and its result dropped, as if it had not run.
        let mut call = std::pin::pin!(call);
        if !self.running_row_after.is_zero() {
            tokio::select! {
                biased;
                (result, clock) = &mut call => {
                    return self.record(&run, result, clock, RunningRow::NotYet).await?.into_answer();
                }
                () = tokio::time::sleep(self.running_row_after) => {}
            }
        }
        let (started, (result, clock)) = tokio::join!(self.executions.start(&run.new), call);
        if let Started::Existing(existing) = started? {
            return existing.into_answer();
        }
        self.record(&run, result, clock, RunningRow::Written).await?.into_answer()
    }

    /// Records how a run ended; answers the execution as recorded.
    async fn record(
        &self,
        run: &Run,
        result: Result<(String, Option<TokenUsage>), LangflowError>,
        clock: Instant,
        row: RunningRow,
    ) -> ServiceResult<Execution> {
        let latency_ms = clock.elapsed().as_secs_f64() * 1000.0;
        let execution = &run.new;
        let (outcome, flow_gone) = match result {
            Ok((output, usage)) => (Outcome::Succeeded { output, usage }, None),
            Err(error) => {
                let kind = error.failure_kind();
                // Only a missing flow needs a person; a model's faults pass, or are its
                // configuration's, which the caller is told of: the agent stays as it is.
                let gone = matches!(error, LangflowError::FlowNotFound(_)).then(|| run.flow_id.clone());
                let error = match &error {
                    LangflowError::ModelCredentials(_) => credential_error(&error, &run.api_key_ref),
                    LangflowError::Timeout(_) if run.has_model => format!("the model did not answer in time: {error}"),
                    _ => error.to_string(),
                };
                tracing::warn!(execution_id = %execution.id, agent_id = %execution.agent_id, error, "execution failed");
                (Outcome::Failed { kind, error }, gone)
            }
        };
        let unstored = (row == RunningRow::NotYet).then(|| Box::new(run.new.clone()));
        let fails_agent = flow_gone.is_some();
        let finish =
            Finish { execution_id: execution.id, outcome, latency_ms, finished_at: now(), flow_gone, unstored };
        let recorded = self.finish(&execution.tenant_id, finish).await;
        if fails_agent {
            // The finish moved the agent to ERROR: the next run here must see it at once.
            self.agents.changed_elsewhere(execution.agent_id);
        }
        if let (RunningRow::NotYet, Err(error)) = (row, &recorded)
            && !matches!(error, ServiceError::Unavailable(_) | ServiceError::NotFound(_))
        {
            // The database refused this finish (not an outage, not a deleted agent): the run
            // still happened. Its RUNNING row is written now, as it would have been first, for
            // the janitor to record it failed and count it.
            if let Err(e) = self.executions.start(&run.new).await {
                tracing::warn!(execution_id = %execution.id, error = %e, "an unrecorded execution could not be left running");
            }
        }
        recorded
    }

    /// Records a finish (retrying while the database is briefly unavailable) and wakes the
    /// reporter. An execution finished by someone else meanwhile is answered as they recorded it.
    pub(crate) async fn finish(&self, tenant: &str, finish: Finish) -> ServiceResult<Execution> {
        let mut attempt = 1;
        let finished = loop {
            match self.finishes.finish(finish.clone()).await {
                Err(ServiceError::Unavailable(reason)) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(execution_id = %finish.execution_id, attempt, reason, "recording an execution failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => break other?,
            }
        };
        match finished {
            Some(finished) => {
                if finished.reported {
                    self.reports.notify_one();
                }
                let e = &finished.execution;
                tracing::info!(
                    execution_id = %e.id, agent_id = %e.agent_id, status = e.status.as_str(),
                    latency_ms = e.latency_ms, "execution recorded"
                );
                Ok(finished.execution)
            }
            None => self.executions.get(tenant, finish.execution_id).await,
        }
    }
}

/// The tweaks of one run of `agent`'s flow: its step's prompt, its configuration, the
/// conversation so far and, for a generated flow with a model, the model's settings as they are
/// now (FAILED_PRECONDITION when this Langflow no longer offers the provider).
pub(crate) async fn run_tweaks(
    langflow: &LangflowClient,
    agent: &Agent,
    step_prompt: &str,
    history: &str,
) -> Result<Value, LangflowError> {
    let model = &agent.configuration.model;
    let provider = if agent.flow_origin == FlowOrigin::Generated && model.is_set() {
        Some(langflow.model_provider(&model.provider).await?)
    } else {
        None
    };
    let context = flow::RunContext { step_prompt, config: &agent.configuration, history, provider };
    Ok(flow::tweaks_for(agent.flow_origin, &context))
}

/// The error of a model that refused its credential, naming the reference (never the key).
fn credential_error(error: &LangflowError, api_key_ref: &str) -> String {
    if api_key_ref.is_empty() {
        format!("{error}; the agent names no credential (set configuration.model.api_key_ref)")
    } else {
        format!(
            "{error}; check the key held by the Langflow global variable or environment variable {api_key_ref:?} \
             (configuration.model.api_key_ref)"
        )
    }
}

/// The share of a caller's deadline given to Langflow: the rest (a fifth, at most 500 ms) is
/// kept to record the outcome and answer before the deadline, even on a busy host whose
/// commit takes tens of milliseconds.
fn leave_time_to_record(deadline: Duration) -> Duration {
    let margin = (deadline / 5).min(Duration::from_millis(500));
    deadline.saturating_sub(margin).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn langflow_gets_most_of_the_deadline() {
        assert_eq!(leave_time_to_record(Duration::from_secs(1)), Duration::from_millis(800));
        assert_eq!(leave_time_to_record(Duration::from_secs(60)), Duration::from_millis(59_500));
        assert_eq!(leave_time_to_record(Duration::ZERO), Duration::from_millis(1));
    }
}
