//! The scale benchmark (`--only scale`): for each factor F, both services on a fresh PostgreSQL
//! database, a data set of F× the base written in bulk (`seed`), then each read timed one call
//! at a time beside the same statements run directly (`reads`, `direct`), and the bytes the
//! executions and what hangs off them take. Then the work that grows with the data: one
//! scheduler pass over every scheduled agent (`scheduler`), ProvisionAgents over every workflow
//! of the one tenant (`provision`) and a backlog of execution reports drained (`outbox`). At the
//! largest factor, reads and executions during a retention purge (`purge`).

pub mod copy;
pub mod direct;
pub mod outbox;
pub mod provision;
pub mod purge;
pub mod reads;
pub mod scheduler;
pub mod seed;

use std::time::Duration;

use anyhow::Context as _;
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::procs::{self, Database, Service};
use super::report::Figure;
use super::stats::ms;
use super::{Ctx, load, sample_workflow};
use seed::{ONE_TENANT, Shape, Templates};

/// How long the scheduler's passes are watched (at the default interval, one a second).
const SCHEDULER_WINDOW: Duration = Duration::from_secs(10);

/// Polls `exists` (a `SELECT EXISTS (…)`) every `poll` until it answers false; fails naming
/// `what` when that takes longer than `limit`.
pub async fn until_none(
    conn: &mut PgConnection,
    exists: &'static str,
    poll: Duration,
    limit: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let (left,): (bool,) = sqlx::query_as(exists).fetch_one(&mut *conn).await.with_context(|| what.to_owned())?;
        if !left {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < limit, "{what}: not done in {} s", limit.as_secs());
        tokio::time::sleep(poll).await;
    }
}

/// What to run.
pub struct Options<'a> {
    pub admin_database_url: &'a str,
    pub factors: &'a [usize],
    /// Calls timed per read.
    pub calls: usize,
    /// Leave each factor's database in place (for EXPLAIN afterwards).
    pub keep_databases: bool,
    /// How long the loads without a purge last, at the largest factor (none: no purge); those
    /// during one last the whole purge.
    pub purge_window: Option<Duration>,
}

/// Every factor in turn; answers the figures.
pub async fn run(ctx: &Ctx, options: &Options<'_>) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let largest = options.factors.iter().copied().max();
    for &factor in options.factors {
        let db = Database::create(options.admin_database_url)?;
        let purge = options.purge_window.filter(|_| Some(factor) == largest);
        let result = at_factor(ctx, &db, Shape { factor: factor.max(1) }, options.calls, purge).await;
        if options.keep_databases {
            println!("  kept the {factor}x database: {}", db.url);
            db.keep();
        }
        figures.extend(result.with_context(|| format!("at {factor}x"))?);
    }
    Ok(figures)
}

async fn at_factor(
    ctx: &Ctx,
    db: &Database,
    shape: Shape,
    calls: usize,
    purge: Option<Duration>,
) -> anyhow::Result<Vec<Figure>> {
    let f = shape.factor;
    println!(
        "\n== Scale {f}x: {} workflows in one tenant and {} over {} tenants, {} agents, {} executions, {} runs",
        shape.workflows(),
        shape.workflows(),
        seed::SPREAD_TENANTS,
        shape.agents(),
        shape.executions(),
        shape.runs()
    );
    // The workflow cache off: these figures are the database's; a cached read costs the same at
    // any size.
    let wf = ctx.start_workflow_service(&db.url, &[("WORKFLOW_CACHE_CAPACITY", "0".to_owned())]).await?;
    // Its metrics for the scheduler's own timing; a deadline long enough for one provisioning
    // of every workflow.
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    let mut ag = ctx
        .start_agent_service(
            wf.addr,
            &db.url,
            "agent",
            &[("METRICS_ADDR", metrics.to_string()), ("RPC_TIMEOUT_SECS", provision::DEADLINE.as_secs().to_string())],
        )
        .await?;

    let (workflow_id, agent_id) = made_through_the_api(&wf, &ag).await?;
    let mut conn = PgConnection::connect(&db.url).await.context("connecting to the benchmark database")?;
    let templates = Templates::read(&mut conn, workflow_id, agent_id).await?;
    let seeded = seed::seed(&db.url, shape, &templates).await?;
    let rows: u64 = seeded.rows.iter().map(|(_, n)| n).sum();
    println!(
        "  seeded {rows} rows with COPY in {:.1} s, VACUUM ANALYZE included ({})",
        seeded.took.as_secs_f64(),
        seeded.rows.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ")
    );

    let mut figures = vec![
        Figure::new(&format!("scale_seed_{f}x"), seeded.took.as_secs_f64(), "s")
            .note(format!("{rows} rows with COPY, then VACUUM ANALYZE")),
    ];
    let reads = reads::measure(wf.addr, ag.addr, &db.url, &seeded, calls, &ctx.log_dir).await?;
    ag.check_alive()?;
    for read in reads {
        println!(
            "  {:<28} service p50 {:>7.3} ms p99 {:>7.3} ms | direct p50 {:>7.3} ms p99 {:>7.3} ms  ({})",
            read.name,
            ms(read.service.p50),
            ms(read.service.p99),
            ms(read.direct.p50),
            ms(read.direct.p99),
            read.note
        );
        for (q, service, direct) in
            [("p50", read.service.p50, read.direct.p50), ("p99", read.service.p99, read.direct.p99)]
        {
            figures.push(
                Figure::new(&format!("scale_{}_{q}_{f}x", read.name), ms(service), "ms")
                    .baseline(ms(direct), "same SQL, psql")
                    .note(format!("{calls} calls one at a time; {}", read.note)),
            );
        }
    }
    figures.push(execution_bytes(&mut conn, f).await?);

    let passes = scheduler::measure(&ag, metrics, &db.url, SCHEDULER_WINDOW, &ctx.log_dir).await?;
    println!(
        "  scheduler: {} passes reading {} agents, mean {:.3} ms, {:.1} % of a core idle | psql p50 {:.3} ms \
         (every scheduled agent); the pass working out {} agents' next ticks {:.1} ms",
        passes.passes,
        passes.agents,
        ms(passes.mean),
        passes.cpu_share * 100.0,
        ms(passes.direct.p50),
        passes.cold_agents,
        ms(passes.cold)
    );
    figures.push(
        Figure::new(&format!("scale_scheduler_pass_{f}x"), ms(passes.mean), "ms")
            .baseline(ms(passes.direct.p50), "SELECT of every scheduled agent, psql p50")
            .note(format!(
                "mean of {} passes reading {} agents (none due); the idle process used {:.1} % of a core",
                passes.passes,
                passes.agents,
                passes.cpu_share * 100.0
            )),
    );
    figures.push(
        Figure::new(&format!("scale_scheduler_cold_pass_{f}x"), ms(passes.cold), "ms")
            .baseline(ms(passes.direct.p50), "SELECT of every scheduled agent, psql p50")
            .note(format!("the pass that works out {} agents' next ticks (after the upgrade)", passes.cold_agents)),
    );
    let provisioned = provision::measure(ag.addr, &db.url, agent_id, &ctx.log_dir).await?;
    ag.check_alive()?;
    println!(
        "  provision: {} agents created ({} left out of the answer), {} skipped, in {:.2} s | psql {:.2} s",
        provisioned.created,
        provisioned.omitted,
        provisioned.skipped,
        provisioned.took.as_secs_f64(),
        provisioned.direct.as_secs_f64()
    );
    figures.push(
        Figure::new(&format!("scale_provision_{f}x"), provisioned.took.as_secs_f64(), "s")
            .baseline(provisioned.direct.as_secs_f64(), "same rows set-based, psql")
            .note(format!(
                "ProvisionAgents over {} workflows: {} created, {} skipped",
                shape.workflows() + 1,
                provisioned.created,
                provisioned.skipped
            )),
    );
    ag.stop().await;

    let drain = outbox::measure(ctx, wf.addr, &db.url, &mut conn, shape.reports()).await?;
    println!(
        "  outbox: {} reports delivered in {:.2} s ({:.0}/s) | psql {:.2} s",
        drain.reports,
        drain.took.as_secs_f64(),
        drain.reports as f64 / drain.took.as_secs_f64(),
        drain.direct.as_secs_f64()
    );
    figures.push(
        Figure::new(&format!("scale_outbox_drain_{f}x"), drain.took.as_secs_f64(), "s")
            .baseline(drain.direct.as_secs_f64(), "same rows set-based, psql")
            .note(format!(
                "{} reports queued at once, delivered to RecordExecution: {:.0}/s",
                drain.reports,
                drain.reports as f64 / drain.took.as_secs_f64()
            )),
    );
    if let Some(window) = purge {
        let workflow = seeded.workflows[seeded.workflows.len() / 2];
        let p = purge::measure(ctx, wf.addr, &db.url, &mut conn, workflow, window).await?;
        figures.extend(purge_figures(&p, f, window));
    }
    wf.stop().await;
    Ok(figures)
}

/// A workflow and an agent made from it through the API, in the one tenant: the seed copies
/// the shape of what the services wrote for them.
async fn made_through_the_api(wf: &Service, ag: &Service) -> anyhow::Result<(Uuid, Uuid)> {
    let tenant = load::AsTenant::new(ONE_TENANT)?;
    let channel = load::channels(wf.addr, 1, load::CALL_TIMEOUT).await?.remove(0);
    let workflow = WorkflowServiceClient::with_interceptor(channel, tenant.clone())
        .create_workflow(sample_workflow("Made through the API"))
        .await
        .context("CreateWorkflow")?
        .into_inner();
    let channel = load::channels(ag.addr, 1, load::CALL_TIMEOUT).await?.remove(0);
    let agent = AgentServiceClient::with_interceptor(channel, tenant)
        .create_agent_from_workflow(apb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            ..Default::default()
        })
        .await
        .context("CreateAgentFromWorkflow")?
        .into_inner();
    Ok((workflow.id.parse()?, agent.id.parse()?))
}

/// What executions take on disk with what hangs off them (their sessions and messages, the
/// outbox, feedback): tables, TOAST and indexes, per 1,000,000 executions.
async fn execution_bytes(conn: &mut PgConnection, factor: usize) -> anyhow::Result<Figure> {
    let tables = ["executions", "sessions", "session_messages", "execution_reports", "feedback"];
    let mut parts = Vec::new();
    let mut total = 0i64;
    for table in tables {
        let (all, heap): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT pg_total_relation_size('agent.{table}'), pg_table_size('agent.{table}')"
        )))
        .fetch_one(&mut *conn)
        .await?;
        total += all;
        parts.push(format!("{table} {:.1} MB ({:.1} MB of it indexes)", mb(all), mb(all - heap)));
    }
    let (executions,): (i64,) = sqlx::query_as("SELECT count(*) FROM agent.executions").fetch_one(&mut *conn).await?;
    let per_million = total as f64 / executions.max(1) as f64 * 1e6;
    println!("  storage: {} for {executions} executions", parts.join(", "));
    Ok(Figure::new(&format!("scale_bytes_per_1m_executions_{factor}x"), per_million / 1e9, "GB")
        .note(format!("{executions} executions: {}", parts.join(", "))))
}

fn purge_figures(p: &purge::Purge, f: usize, window: Duration) -> Vec<Figure> {
    let rate = p.deleted as f64 / p.over.as_secs_f64();
    println!(
        "  purge: {} of {} executions deleted in {:.1} s ({rate:.0}/s, messages and run events besides)",
        p.deleted,
        p.executions_before,
        p.over.as_secs_f64()
    );
    let mut figures = Vec::new();
    for (name, without, during) in
        [("get_workflow", &p.without.0, &p.during.0), ("execute_agent", &p.without.1, &p.during.1)]
    {
        println!(
            "  {name:<14} without a purge p50 {:.3} ms p99 {:.3} ms ({} calls); during p50 {:.3} ms p99 {:.3} ms ({} calls)",
            ms(without.p50),
            ms(without.p99),
            without.ok,
            ms(during.p50),
            ms(during.p99),
            during.ok
        );
        figures.push(
            Figure::new(&format!("scale_purge_{name}_p99_{f}x"), ms(during.p99), "ms")
                .baseline(ms(without.p99), "same load, no purge")
                .note(format!(
                    "{:.0} s during the whole purge against {} s without, GetWorkflow and ExecuteAgent (fake \
                     Langflow) one caller each; p50 {:.3} vs {:.3} ms",
                    p.over.as_secs_f64(),
                    window.as_secs(),
                    ms(during.p50),
                    ms(without.p50)
                )),
        );
    }
    figures.push(Figure::new(&format!("scale_purge_executions_deleted_per_s_{f}x"), rate, "rows/s").note(format!(
        "{} of {} executions (retention 1d over 30 days) in {:.1} s; messages and run events besides",
        p.deleted,
        p.executions_before,
        p.over.as_secs_f64()
    )));
    figures
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}
