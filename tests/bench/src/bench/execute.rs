//! `--only execute`: ExecuteAgent through an in-process fast fake Langflow, against calling that
//! fake directly with the same concurrency. The difference is what the services themselves add
//! (gRPC, auth, the agent and its execution record in the database, the report to
//! workflow-service). Answers "skipped" while agent-service answers ExecuteAgent UNIMPLEMENTED.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Json;
use axum::extract::Path;
use axum::routing::{get, post};
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::load::{self, AsTenant};
use super::procs::Service;
use super::stats::Summary;
use super::{Ctx, sample_workflow};

/// Langflow's component catalog as the real server answers it (the flow builder reads it).
const CATALOG: &str = include_str!("../../../e2e/fixtures/langflow_catalog.json");

/// What the execute benchmark found.
#[allow(clippy::large_enum_variant)] // made once per run
pub enum Outcome {
    /// ExecuteAgent is not there yet: why.
    Skipped(String),
    Measured {
        /// With the configured concurrency.
        through_service: Summary,
        direct: Summary,
        /// One call at a time: the services' own latency, without queueing. Each kind is called
        /// in turn (an ExecuteAgent, a direct run, a durable commit, and again), so that all of
        /// them meet the same moments of the machine: a checkpoint's writes, autovacuum, another
        /// process. Measured each in a phase of its own, the same binaries' difference varied
        /// from 0.6 to 1.9 ms between runs.
        through_service_alone: Summary,
        direct_alone: Summary,
        /// One durable one-row commit on the services' PostgreSQL, one at a time: the floor
        /// under an execution, whose record reaches the disk before it is answered. `None`
        /// through the real Langflow, where it is lost in the flow's own time.
        durable_commit_alone: Option<Summary>,
        /// ExecuteAgent one call at a time, back to back (nothing between two calls), right
        /// after the closed loop's reports were delivered: the measurement before the turns,
        /// kept beside it.
        through_service_back_to_back: Summary,
    },
}

/// A Langflow that answers at once: runs, flow creation and reads, the catalog, the version.
fn fake_langflow() -> axum::Router {
    async fn run(Path(_flow): Path<String>, Json(body): Json<Value>) -> Json<Value> {
        let session = body.get("session_id").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("bench");
        Json(json!({
            "session_id": session,
            "outputs": [{"outputs": [{"results": {"message": {"text": "ok"}}}]}]
        }))
    }
    async fn create_flow() -> Json<Value> {
        Json(json!({ "id": uuid::Uuid::new_v4().to_string() }))
    }
    async fn read_flow(Path(id): Path<String>) -> Json<Value> {
        Json(json!({ "id": id, "name": "bench", "data": {} }))
    }
    async fn delete_flow(Path(id): Path<String>) -> Json<Value> {
        Json(json!({ "id": id }))
    }
    async fn catalog() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], CATALOG)
    }
    async fn version() -> Json<Value> {
        Json(json!({ "version": "1.13.0", "main_version": "1.13.0", "package": "Langflow" }))
    }
    axum::Router::new()
        .route("/api/v1/run/{id}", post(run))
        .route("/api/v1/flows/", post(create_flow))
        .route("/api/v1/flows/{id}", get(read_flow).delete(delete_flow))
        .route("/api/v1/all", get(catalog))
        .route("/api/v1/version", get(version))
}

/// Starts the fake on its own runtime (like the bare server); answers its address.
pub(super) fn spawn_fake_langflow(workers: usize) -> anyhow::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the fake Langflow")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("fake-langflow")
        .enable_all()
        .build()
        .context("the fake Langflow's runtime")?;
    std::thread::Builder::new().name("fake-langflow".into()).spawn(move || {
        runtime.block_on(async move {
            let result = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(listener) => axum::serve(listener, fake_langflow()).await.map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                eprintln!("fake Langflow stopped: {e:#}");
            }
        });
    })?;
    Ok(addr)
}

/// Runs the execute benchmark against the running workflow-service at `workflow_addr`, with an
/// agent-service of its own (schema `agent_exec` of `database_url`) pointed at the fake.
pub async fn run(ctx: &Ctx, workflow_addr: SocketAddr, database_url: &str) -> anyhow::Result<Outcome> {
    let fake = spawn_fake_langflow(ctx.workers)?;
    let commit = DurableCommit::create(database_url).await?;
    let outcome = run_against(
        ctx,
        workflow_addr,
        database_url,
        &format!("http://{fake}"),
        "agent_exec",
        ctx.load,
        ctx.agent_calls,
        Some(&commit),
    )
    .await;
    commit.drop_table().await?;
    outcome
}

/// The durable-commit baseline: one-row INSERTs into a table of its own, each its own
/// transaction committed with PostgreSQL's defaults (so waiting for the disk), over a pool like
/// the services' (no ping before each statement).
struct DurableCommit {
    pool: sqlx::PgPool,
    table: String,
    insert: String,
}

impl DurableCommit {
    async fn create(database_url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect(database_url)
            .await
            .context("connecting to PostgreSQL for the durable-commit baseline")?;
        let table = format!("engarde_bench_commit_{}", uuid::Uuid::new_v4().simple());
        let create = format!("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL)");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&pool).await.context("creating the baseline's table")?;
        let insert = format!("INSERT INTO {table} (at) VALUES (now())");
        Ok(Self { pool, table, insert })
    }

    /// One commit.
    async fn once(&self) -> Result<(), String> {
        sqlx::query(sqlx::AssertSqlSafe(self.insert.as_str()))
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn drop_table(self) -> anyhow::Result<()> {
        let drop = format!("DROP TABLE {}", self.table);
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&self.pool).await.context("dropping the baseline's table")?;
        self.pool.close().await;
        Ok(())
    }
}

/// The same comparison through a real Langflow at `langflow_url`: ExecuteAgent against running
/// the agent's flow directly, `load.concurrency` callers each (Langflow is slow: a few).
pub async fn run_real(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    database_url: &str,
    langflow_url: &str,
    load: load::LoadSpec,
) -> anyhow::Result<Outcome> {
    run_against(ctx, workflow_addr, database_url, langflow_url, "agent_real", load, 10, None).await
}

#[allow(clippy::too_many_arguments)] // one caller each for the fake and the real Langflow
async fn run_against(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    database_url: &str,
    langflow_url: &str,
    schema: &str,
    load: load::LoadSpec,
    calls_alone: usize,
    commit: Option<&DurableCommit>,
) -> anyhow::Result<Outcome> {
    let agent = start_agent_service(ctx, workflow_addr, database_url, langflow_url, schema, &[]).await?;
    let result = measure(ctx, workflow_addr, &agent, langflow_url, load, calls_alone, commit).await;
    agent.stop().await;
    result
}

/// An agent-service of the benchmark's own (schema `schema` of `database_url`, development
/// auth) on the running workflow-service, pointed at the Langflow at `langflow_url`, with the
/// `extra` settings.
pub(super) async fn start_agent_service(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    database_url: &str,
    langflow_url: &str,
    schema: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Service> {
    let mut env = vec![("LANGFLOW_URL", langflow_url.to_owned())];
    env.extend(extra.iter().cloned());
    ctx.start_agent_service(workflow_addr, database_url, schema, &env).await
}

async fn measure(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    agent: &Service,
    fake_url: &str,
    load: load::LoadSpec,
    calls_alone: usize,
    commit: Option<&DurableCommit>,
) -> anyhow::Result<Outcome> {
    let Deployed { tenant, mut workflows, workflow, agent_channels, mut agents, made } =
        deployed_agent(ctx, workflow_addr, agent, "bench-exec", None).await?;
    let request = apb::ExecuteAgentRequest { agent_id: made.id.clone(), input: "Say ok".into(), ..Default::default() };
    let mut executions = ExecutionServiceClient::with_interceptor(agent_channels[0].clone(), tenant.clone());
    match executions.execute_agent(request.clone()).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            return Ok(Outcome::Skipped(format!("ExecuteAgent not available ({})", s.message())));
        }
        Err(s) => bail!("the first ExecuteAgent failed: {s:?}"),
    }

    let clients: Arc<Vec<_>> = Arc::new(
        agent_channels.iter().map(|c| ExecutionServiceClient::with_interceptor(c.clone(), tenant.clone())).collect(),
    );
    let execute = {
        let request = request.clone();
        move |task: usize| {
            let mut client = clients[task % clients.len()].clone();
            let request = request.clone();
            async move { client.execute_agent(request).await.map(drop) }
        }
    };
    let through_service = load::closed_loop(load, execute.clone()).await;
    // The closed loop leaves a backlog of reports in the outbox; delivering it would compete
    // with the calls measured alone, which are to show what one call costs by itself.
    let drained = outbox_drained(&mut agents, &mut workflows, &made.id, &workflow.id).await?;
    println!(
        "  the outbox delivered the closed loop's reports to workflow-service {:.1} s after it ended",
        drained.as_secs_f64()
    );
    let through_service_back_to_back = one_at_a_time(calls_alone, &execute).await;

    // The same runs, straight to the fake, with as many concurrent callers.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .timeout(load::CALL_TIMEOUT)
        .build()
        .context("HTTP client")?;
    let url = Arc::new(format!("{fake_url}/api/v1/run/{}", made.langflow_workflow_id));
    let body = Arc::new(json!({
        "input_value": "Say ok", "input_type": "chat", "output_type": "chat", "session_id": "", "tweaks": {}
    }));
    let run_directly = move |_: usize| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move { run_flow_directly(&http, &url, &body).await }
    };
    let direct = load::closed_loop(load, run_directly.clone()).await;

    let (mut through_service_alone, mut direct_alone, mut commit_alone) =
        (OneByOne::default(), OneByOne::default(), OneByOne::default());
    for _ in 0..calls_alone {
        through_service_alone.time(execute(0)).await;
        direct_alone.time(run_directly(0)).await;
        if let Some(commit) = commit {
            commit_alone.time(commit.once()).await;
        }
    }
    Ok(Outcome::Measured {
        through_service,
        direct,
        through_service_alone: through_service_alone.summary(),
        direct_alone: direct_alone.summary(),
        durable_commit_alone: commit.map(|_| commit_alone.summary()),
        through_service_back_to_back,
    })
}

/// What an execute benchmark runs: an agent of a tenant of its own, made (with `overrides`)
/// from a new workflow of that tenant, and deployed.
pub(super) struct Deployed {
    pub tenant: AsTenant,
    pub workflows: WorkflowServiceClient<InterceptedService<Channel, AsTenant>>,
    pub workflow: engarde::proto::workflow::v1::WorkflowDefinition,
    /// `ctx.channels` connections to agent-service.
    pub agent_channels: Vec<Channel>,
    pub agents: AgentServiceClient<InterceptedService<Channel, AsTenant>>,
    pub made: apb::Agent,
}

pub(super) async fn deployed_agent(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    agent: &Service,
    tenant_prefix: &str,
    overrides: Option<apb::AgentOverrides>,
) -> anyhow::Result<Deployed> {
    let tenant = AsTenant::new(&format!("{tenant_prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))?;
    let wf_channel = load::channels(workflow_addr, 1, load::CALL_TIMEOUT).await?.remove(0);
    let mut workflows = WorkflowServiceClient::with_interceptor(wf_channel, tenant.clone());
    let workflow = workflows
        .create_workflow(sample_workflow("Bench execution"))
        .await
        .context("CreateWorkflow for the execute benchmark")?
        .into_inner();
    let agent_channels = load::channels(agent.addr, ctx.channels, load::CALL_TIMEOUT).await?;
    let mut agents = AgentServiceClient::with_interceptor(agent_channels[0].clone(), tenant.clone());
    let made = agents
        .create_agent_from_workflow(apb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            overrides,
            ..Default::default()
        })
        .await
        .context("CreateAgentFromWorkflow")?
        .into_inner();
    agents
        .deploy_agent(apb::DeployAgentRequest { id: made.id.clone(), ..Default::default() })
        .await
        .context("DeployAgent")?;
    Ok(Deployed { tenant, workflows, workflow, agent_channels, agents, made })
}

/// One run of a flow straight to Langflow (or the fake), as the baselines make them.
pub(super) async fn run_flow_directly(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let response = http.post(url).json(body).send().await.map_err(|e| format!("HTTP: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.bytes().await.map(drop).map_err(|e| format!("HTTP body: {e}"))
}

/// Waits until workflow-service has counted every execution agent-service recorded for the
/// agent (its outbox is empty); answers how long that took.
async fn outbox_drained(
    agents: &mut AgentServiceClient<InterceptedService<Channel, AsTenant>>,
    workflows: &mut WorkflowServiceClient<InterceptedService<Channel, AsTenant>>,
    agent_id: &str,
    workflow_id: &str,
) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    loop {
        let recorded = agents
            .get_agent(apb::GetAgentRequest { id: agent_id.to_owned() })
            .await
            .context("GetAgent")?
            .into_inner()
            .total_executions;
        let counted = workflows
            .get_workflow(engarde::proto::workflow::v1::GetWorkflowRequest { id: workflow_id.to_owned() })
            .await
            .context("GetWorkflow")?
            .into_inner()
            .execution_count;
        if counted >= recorded {
            return Ok(started.elapsed());
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            bail!("the outbox still holds {} reports after 120 s", recorded - counted);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `n` calls, each sent when the previous one answered.
async fn one_at_a_time<F, Fut, E>(n: usize, call: &F) -> Summary
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: load::FailureName,
{
    let mut timed = OneByOne::default();
    for _ in 0..n {
        timed.time(call(0)).await;
    }
    timed.summary()
}

/// The latencies of calls made one at a time (no window: their rate means nothing).
#[derive(Default)]
struct OneByOne(super::stats::Samples);

impl OneByOne {
    async fn time<E: load::FailureName>(&mut self, call: impl std::future::Future<Output = Result<(), E>>) {
        let started = std::time::Instant::now();
        match call.await {
            Ok(()) => self.0.record(started.elapsed()),
            Err(e) => self.0.error(e.failure_name()),
        }
    }

    fn summary(self) -> Summary {
        self.0.summarize(std::time::Duration::ZERO)
    }
}
