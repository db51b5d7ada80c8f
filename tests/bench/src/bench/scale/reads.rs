//! The reads at scale: each RPC called one at a time, beside the statements the service sends
//! for it (copied from its storage code, with the same parameters) run directly with psql.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::agent::v1::run_service_client::RunServiceClient;
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use uuid::Uuid;

use super::direct::{self, Param, Statements};
use super::seed::{ONE_TENANT, Seeded};
use crate::bench::load::{self, AsTenant};
use crate::bench::stats::{Samples, Summary};

/// Calls made before those timed (connections opened, statements prepared on the pool's
/// connections).
const WARM_UP: usize = 20;
/// Rows of a first page.
pub const PAGE: i32 = 50;
/// Rows of a page while walking deep, and how deep.
pub const DEEP_PAGE: i32 = 10;
pub const DEEP: usize = 100;

// The statements, as the services' storage code sends them (workflow-service
// storage/sql.rs and row.rs; agent-service storage/*.rs).
const WORKFLOW_COLUMNS: &str = "w.id, w.tenant_id, w.name, w.description, w.category, w.config, w.status, \
     w.is_template, COALESCE(s.execution_count, 0) AS execution_count, COALESCE(s.success_count, 0) AS \
     success_count, w.version, w.created_at, w.updated_at";
const WORKFLOWS_OF_2: &str = "workflows w LEFT JOIN workflow_statistics s ON s.workflow_id = w.id AND s.tenant_id = $2";
const WORKFLOWS_OF_1: &str = "workflows w LEFT JOIN workflow_statistics s ON s.workflow_id = w.id AND s.tenant_id = $1";
const LIST_WORKFLOWS_FILTERS: &str = "AND ($2 = '' OR w.category = $2) AND ($3 = '' OR w.status = $3) \
     AND ($4 = -1 OR w.is_template = ($4 = 1)) AND ($5 = '' OR w.name_folded LIKE $5 ESCAPE '\\') \
     AND ($6 = 0 OR (w.name, w.id) > ($7, $8))";
const ENSURE_AGENT: &str = "SELECT id FROM agents WHERE id = $1 AND tenant_id = $2";
const LIST_EXECUTIONS: &str = "SELECT id, tenant_id, agent_id, session_id, step_id, input, output, status, error, \
     error_code, latency_ms, started_at, finished_at, prompt_tokens, completion_tokens FROM executions \
     WHERE tenant_id = $1 AND ($2 IS NULL OR agent_id = $2) AND ($3 = '' OR session_id = $3) \
     AND ($4 = '' OR status = $4) AND ($5 = 0 OR (started_at, id) < ($6, $7)) \
     ORDER BY started_at DESC, id DESC LIMIT $8";
const LIST_RUNS: &str = "SELECT id, tenant_id, agent_id, status, trigger_kind, input, output, error, current_step, \
     max_retries, approval_required, review_timeout_secs, review_default_action, scheduled_for, lease_owner, \
     created_at, updated_at, finished_at FROM runs WHERE tenant_id = $1 AND ($2 IS NULL OR agent_id = $2) \
     AND ($3 = '' OR status = $3) AND ($4 = 0 OR (created_at, id) < ($5, $6)) \
     ORDER BY created_at DESC, id DESC LIMIT $7";
const RUN_PAGE_STEPS: &str = "SELECT run_id, step_index, step_id, kind, prompt, reviews_index, status, input, output, \
     attempts, error, started_at, finished_at FROM run_steps \
     WHERE run_id IN (SELECT jsonb_array_elements_text($1::jsonb)::uuid) ORDER BY run_id, step_index";
const SESSION_MESSAGES: &str = "SELECT sequence, role, text, execution_id, created_at FROM session_messages \
     WHERE agent_id = $1 AND session_id = $2 AND sequence > $3 ORDER BY sequence LIMIT $4";
const LIST_AGENTS: &str = "SELECT id, tenant_id, name, description, agent_type, status, status_reason, \
     langflow_workflow_id, langflow_deployment_id, source_workflow_id, source_workflow_version, \
     source_workflow_name, source_workflow_category, source_workflow_config, configuration, capabilities, \
     total_executions, successful_executions, average_response_time_ms, version, created_at, updated_at, \
     flow_origin, feedback_count, feedback_score_sum, prompt_tokens, completion_tokens FROM agents \
     WHERE tenant_id = $1 AND ($2 = '' OR agent_type = $2) AND ($3 = '' OR status = $3) \
     AND ($4 IS NULL OR source_workflow_id = $4) AND ($5 = 0 OR (created_at, id) > ($6, $7)) \
     ORDER BY created_at, id LIMIT $8";
const EPOCH: &str = "1970-01-01T00:00:00Z";

fn get_workflow_sql() -> String {
    format!("SELECT {WORKFLOW_COLUMNS} FROM {WORKFLOWS_OF_2} WHERE w.id = $1 AND (w.tenant_id = $2 OR w.is_template)")
}

/// The tenant's own workflows and the library, each a page in order, merged.
fn list_workflows_sql() -> String {
    format!(
        "SELECT * FROM (SELECT {WORKFLOW_COLUMNS} FROM {WORKFLOWS_OF_1} WHERE w.tenant_id = $1 AND NOT w.is_template \
         {LIST_WORKFLOWS_FILTERS} ORDER BY w.name, w.id LIMIT $9) AS own UNION ALL \
         SELECT * FROM (SELECT {WORKFLOW_COLUMNS} FROM {WORKFLOWS_OF_1} WHERE w.tenant_id = '' AND w.is_template \
         {LIST_WORKFLOWS_FILTERS} ORDER BY w.name, w.id LIMIT $9) AS library ORDER BY name, id LIMIT $9"
    )
}

fn get_workflow_statement(id: Uuid, tenant: &str) -> (String, Vec<Param>) {
    (get_workflow_sql(), vec![Param::uuid(id), Param::text(tenant)])
}

/// ListWorkflows' statement with no filter: after `(name, id)` when given.
fn list_workflows_statement(tenant: &str, after: Option<(&str, &str)>, size: i32) -> (String, Vec<Param>) {
    let (has_after, name, id) = match after {
        Some((name, id)) => (1, name.to_owned(), id.to_owned()),
        None => (0, String::new(), Uuid::nil().to_string()),
    };
    let params = vec![
        Param::text(tenant),
        Param::text(""),
        Param::text(""),
        Param::int(-1),
        Param::text(""),
        Param::int(has_after),
        Param::text(name),
        Param::uuid(id),
        Param::int(size.into()),
    ];
    (list_workflows_sql(), params)
}

fn ensure_agent_statement(agent: Uuid) -> (String, Vec<Param>) {
    (ENSURE_AGENT.to_owned(), vec![Param::uuid(agent), Param::text(ONE_TENANT)])
}

/// The parameters of a first page of a list ordered by (time, id): the filters `head`, then
/// the empty cursor and the page size.
fn first_page_params(head: Vec<Param>, size: i32) -> Vec<Param> {
    let mut params = head;
    params.extend([Param::int(0), Param::time(EPOCH), Param::uuid(Uuid::nil()), Param::int(size.into())]);
    params
}

/// One read's figures at one factor.
pub struct Read {
    pub name: &'static str,
    pub service: Summary,
    pub direct: Summary,
    /// Which data the read aims at, and what its direct baseline runs.
    pub note: String,
}

/// Times `calls` calls of `call`, one at a time, after [`WARM_UP`] more.
async fn timed<F, Fut>(calls: usize, mut call: F) -> anyhow::Result<Summary>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut samples = Samples::default();
    for i in 0..WARM_UP + calls {
        let started = Instant::now();
        let outcome = call().await;
        let took = started.elapsed();
        match outcome {
            Ok(()) if i >= WARM_UP => samples.record(took),
            Ok(()) => {}
            Err(status) => anyhow::bail!("a call failed: {status:?}"),
        }
    }
    Ok(samples.summarize(std::time::Duration::ZERO))
}

/// Every read, against workflow-service at `wf` and agent-service at `ag`.
pub async fn measure(
    wf: SocketAddr,
    ag: SocketAddr,
    database_url: &str,
    seeded: &Seeded,
    calls: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Read>> {
    let one = AsTenant::new(ONE_TENANT)?;
    let wf_channel = load::channels(wf, 1, load::CALL_TIMEOUT).await?.remove(0);
    let ag_channel = load::channels(ag, 1, load::CALL_TIMEOUT).await?.remove(0);
    let workflows = WorkflowServiceClient::with_interceptor(wf_channel.clone(), one.clone());
    let mut reads = Vec::new();
    let direct = |statements: Statements| direct::run(database_url, &statements, calls, dir);

    // GetWorkflow: a workflow in the middle of the one tenant's, and one of a spread tenant's.
    let id = seeded.workflows[seeded.workflows.len() / 2];
    let service = timed(calls, || {
        let mut c = workflows.clone();
        async move { c.get_workflow(pb::GetWorkflowRequest { id: id.to_string() }).await.map(drop) }
    })
    .await
    .context("GetWorkflow")?;
    reads.push(Read {
        name: "get_workflow",
        service,
        direct: direct(vec![get_workflow_statement(id, ONE_TENANT)])?,
        note: "one tenant's workflow".into(),
    });
    let (tenant, id) = &seeded.spread[seeded.spread.len() / 2];
    let spread = WorkflowServiceClient::with_interceptor(wf_channel.clone(), AsTenant::new(tenant)?);
    let service = timed(calls, || {
        let mut c = spread.clone();
        async move { c.get_workflow(pb::GetWorkflowRequest { id: id.to_string() }).await.map(drop) }
    })
    .await
    .context("GetWorkflow (spread tenant)")?;
    reads.push(Read {
        name: "get_workflow_spread",
        service,
        direct: direct(vec![get_workflow_statement(*id, tenant)])?,
        note: format!("a workflow of {tenant}, one of 1,000 tenants"),
    });

    // ListWorkflows' first page, in the one tenant and in a spread one.
    for (name, client, tenant) in
        [("list_workflows_first", &workflows, ONE_TENANT), ("list_workflows_first_spread", &spread, tenant.as_str())]
    {
        let service = timed(calls, || {
            let mut c = client.clone();
            async move {
                c.list_workflows(pb::ListWorkflowsRequest { page_size: PAGE, ..Default::default() }).await.map(drop)
            }
        })
        .await
        .with_context(|| format!("ListWorkflows ({name})"))?;
        reads.push(Read {
            name,
            service,
            direct: direct(vec![list_workflows_statement(tenant, None, PAGE)])?,
            note: format!("{tenant}, {PAGE} a page (templates included, as the service lists them)"),
        });
    }

    // ListWorkflows' page DEEP, walking the tokens; then that page again and again.
    let mut walker = workflows.clone();
    let (mut token, mut last) = (String::new(), None);
    for _ in 1..DEEP {
        let page = walker
            .list_workflows(pb::ListWorkflowsRequest {
                page_size: DEEP_PAGE,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .context("walking ListWorkflows' pages")?
            .into_inner();
        last = page.workflows.last().map(|w| (w.name.clone(), w.id.clone()));
        token = page.next_page_token;
        anyhow::ensure!(!token.is_empty(), "the one tenant has fewer than {DEEP} pages of {DEEP_PAGE}");
    }
    let (last_name, last_id) = last.context("an empty page")?;
    let service = timed(calls, || {
        let mut c = workflows.clone();
        let token = token.clone();
        async move {
            let page = c
                .list_workflows(pb::ListWorkflowsRequest {
                    page_size: DEEP_PAGE,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if page.workflows.len() == DEEP_PAGE as usize {
                Ok(())
            } else {
                Err(tonic::Status::data_loss(format!("page {DEEP} has {} workflows", page.workflows.len())))
            }
        }
    })
    .await
    .context("ListWorkflows, deep page")?;
    reads.push(Read {
        name: "list_workflows_deep",
        service,
        direct: direct(vec![list_workflows_statement(ONE_TENANT, Some((&last_name, &last_id)), DEEP_PAGE)])?,
        note: format!("{ONE_TENANT}, page {DEEP} of {DEEP_PAGE} (keyset token)"),
    });

    let hot = seeded.agents[0];
    // ListExecutions by agent: the hot agent (a tenth of every execution), and the last agent
    // (one of the many that share the rest).
    let executions = ExecutionServiceClient::with_interceptor(ag_channel.clone(), one.clone());
    let cold = *seeded.agents.last().context("no agents")?;
    for (name, agent, what) in [
        ("list_executions_by_agent", hot, "the hot agent (a tenth of the executions)"),
        ("list_executions_by_cold_agent", cold, "an ordinary agent (the rest share the other nine tenths)"),
    ] {
        let service = timed(calls, || {
            let mut c = executions.clone();
            async move {
                c.list_executions(apb::ListExecutionsRequest {
                    agent_id: agent.to_string(),
                    page_size: PAGE,
                    ..Default::default()
                })
                .await
                .map(drop)
            }
        })
        .await
        .with_context(|| format!("ListExecutions ({name})"))?;
        let head = vec![Param::text(ONE_TENANT), Param::uuid(agent), Param::text(""), Param::text("")];
        reads.push(Read {
            name,
            service,
            direct: direct(vec![
                ensure_agent_statement(agent),
                (LIST_EXECUTIONS.to_owned(), first_page_params(head, PAGE)),
            ])?,
            note: format!("{what}, first page of {PAGE}"),
        });
    }

    // ListRuns by agent: the hot agent; the baseline reads the same page's steps.
    let runs = RunServiceClient::with_interceptor(ag_channel.clone(), one.clone());
    let page = runs
        .clone()
        .list_runs(apb::ListRunsRequest { agent_id: hot.to_string(), page_size: PAGE, ..Default::default() })
        .await
        .context("ListRuns")?
        .into_inner();
    let run_ids = serde_json::Value::from(page.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>()).to_string();
    let service = timed(calls, || {
        let mut c = runs.clone();
        async move {
            c.list_runs(apb::ListRunsRequest { agent_id: hot.to_string(), page_size: PAGE, ..Default::default() })
                .await
                .map(drop)
        }
    })
    .await
    .context("ListRuns")?;
    let head = vec![Param::text(ONE_TENANT), Param::uuid(hot), Param::text("")];
    reads.push(Read {
        name: "list_runs_by_agent",
        service,
        direct: direct(vec![
            (LIST_RUNS.to_owned(), first_page_params(head, PAGE)),
            (RUN_PAGE_STEPS.to_owned(), vec![Param::text(run_ids)]),
        ])?,
        note: format!("the hot agent (a tenth of the runs), first page of {PAGE} with their steps"),
    });

    // ListSessionMessages: the hot agent's newest session (20 messages).
    let session = seeded.hot_session.clone();
    let service = timed(calls, || {
        let mut c = executions.clone();
        let session = session.clone();
        async move {
            c.list_session_messages(apb::ListSessionMessagesRequest {
                agent_id: hot.to_string(),
                session_id: session,
                page_size: PAGE,
                ..Default::default()
            })
            .await
            .map(drop)
        }
    })
    .await
    .context("ListSessionMessages")?;
    reads.push(Read {
        name: "list_session_messages",
        service,
        direct: direct(vec![
            ensure_agent_statement(hot),
            (
                SESSION_MESSAGES.to_owned(),
                vec![Param::uuid(hot), Param::text(session.clone()), Param::int(0), Param::int(PAGE.into())],
            ),
        ])?,
        note: "the hot agent's newest session, 20 messages".into(),
    });

    // ListInstalledAgents: a page of agents, each with its workflow as it is now (GetWorkflow
    // from workflow-service, several at a time); the baseline runs the same statements in turn.
    let agents = AgentServiceClient::with_interceptor(ag_channel, one.clone());
    let service = timed(calls, || {
        let mut c = agents.clone();
        async move {
            c.list_installed_agents(apb::ListInstalledAgentsRequest { page_size: PAGE, ..Default::default() })
                .await
                .map(drop)
        }
    })
    .await
    .context("ListInstalledAgents")?;
    let head = vec![Param::text(ONE_TENANT), Param::text(""), Param::text(""), Param::null("uuid")];
    let mut statements = vec![(LIST_AGENTS.to_owned(), first_page_params(head, PAGE))];
    statements.extend(seeded.workflows.iter().take(PAGE as usize).map(|id| get_workflow_statement(*id, ONE_TENANT)));
    reads.push(Read {
        name: "list_installed_agents",
        service,
        direct: direct(statements)?,
        note: format!("first page of {PAGE} agents; direct: their list and {PAGE} GetWorkflow statements in turn"),
    });
    Ok(reads)
}
