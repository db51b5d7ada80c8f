//! The scale data sets, written in bulk with COPY (not RPCs) into the tables of services that
//! are already running (each has made its schema and run its migrations), shaped as the services
//! write them: the JSON and protobuf columns of workflows and agents are copied from a workflow
//! and an agent made through the API, everything else is generated here.
//!
//! At factor F: F×1,000 workflows in one tenant and F×1,000 more spread over 1,000 tenants;
//! F×100 agents in the one tenant, each made from one of its workflows and scheduled (an active
//! agent whose snapshot has a cron trigger); F×10,000 finished executions with their sessions
//! (ten executions each) and messages (two per execution); F×1,000 finished walker runs with
//! their three steps, their review and their eight events. The *hot* agent, the first, has a
//! tenth of the executions and runs; the other agents share the rest evenly.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::copy::TableCopy;

/// The tenant that holds the one-tenant workflows, every agent, execution and run.
pub const ONE_TENANT: &str = "scale-one";
/// How many tenants the spread workflows are shared among.
pub const SPREAD_TENANTS: usize = 1_000;
/// Executions of one session.
const SESSION_EXECUTIONS: usize = 10;
/// How far back the data set's history goes.
const HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The sizes of a data set at a factor of the base.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub factor: usize,
}

impl Shape {
    /// Workflows of the one tenant (and as many again spread over [`SPREAD_TENANTS`]).
    pub fn workflows(self) -> usize {
        self.factor * 1_000
    }
    pub fn agents(self) -> usize {
        self.factor * 100
    }
    pub fn executions(self) -> usize {
        self.factor * 10_000
    }
    pub fn runs(self) -> usize {
        self.factor * 1_000
    }
    /// Execution reports queued at once for the outbox to drain.
    pub fn reports(self) -> usize {
        self.factor * 1_000
    }

    /// The agent of the `n`th execution (or run) in time: every tenth is the hot agent's (index
    /// 0), the others go round the rest.
    pub fn agent_of(self, n: usize) -> usize {
        let agents = self.agents();
        if n.is_multiple_of(10) || agents == 1 { 0 } else { 1 + (n - n / 10 - 1) % (agents - 1) }
    }
}

/// What the API wrote for one workflow and one agent made from it: the columns whose shape
/// (JSON of the domain types, the encoded protobuf snapshot) belongs to the services.
pub struct Templates {
    pub workflow_config: String,
    pub workflow_description: String,
    pub workflow_category: String,
    pub agent_description: String,
    pub agent_type: String,
    pub agent_configuration: String,
    pub agent_capabilities: String,
    /// The snapshot, as bytea's text form (`\x…`).
    pub agent_snapshot: String,
    pub agent_snapshot_version: i64,
    pub agent_snapshot_category: String,
}

impl Templates {
    /// Reads them back from the rows of `workflow_id` and `agent_id`.
    pub async fn read(conn: &mut PgConnection, workflow_id: Uuid, agent_id: Uuid) -> anyhow::Result<Self> {
        let (workflow_config, workflow_description, workflow_category): (String, String, String) =
            sqlx::query_as("SELECT config::text, description, category FROM workflow.workflows WHERE id = $1")
                .bind(workflow_id)
                .fetch_one(&mut *conn)
                .await
                .context("reading the API-made workflow")?;
        let row: (String, String, String, String, String, i64, String) = sqlx::query_as(
            "SELECT description, agent_type, configuration::text, capabilities::text, \
                    source_workflow_config::text, source_workflow_version, source_workflow_category \
             FROM agent.agents WHERE id = $1",
        )
        .bind(agent_id)
        .fetch_one(&mut *conn)
        .await
        .context("reading the API-made agent")?;
        Ok(Self {
            workflow_config,
            workflow_description,
            workflow_category,
            agent_description: row.0,
            agent_type: row.1,
            agent_configuration: row.2,
            agent_capabilities: row.3,
            agent_snapshot: row.4,
            agent_snapshot_version: row.5,
            agent_snapshot_category: row.6,
        })
    }
}

/// What was seeded, for the reads to aim at.
pub struct Seeded {
    /// The one tenant's workflows, in name order.
    pub workflows: Vec<Uuid>,
    /// One workflow of each spread tenant: (tenant, id).
    pub spread: Vec<(String, Uuid)>,
    pub agents: Vec<Uuid>,
    /// The hot agent's newest session.
    pub hot_session: String,
    pub rows: Vec<(&'static str, u64)>,
    pub took: Duration,
}

/// A v7 id at `at` whose random part is `kind` and `n`: the same data set has the same ids, and
/// ids sort by time as the services' own do.
pub fn seeded_id(kind: u8, n: usize, at: DateTime<Utc>) -> Uuid {
    let mut random = [0u8; 10];
    random[1] = kind;
    random[3..10].copy_from_slice(&(n as u64).to_le_bytes()[..7]);
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The `n`th of `count` instants spread evenly over the history, oldest first.
fn instant(start: DateTime<Utc>, n: usize, count: usize) -> DateTime<Utc> {
    let step = HISTORY.as_micros() / count.max(1) as u128;
    start + chrono::Duration::microseconds(i64::try_from(step * n as u128).unwrap_or(i64::MAX))
}

/// The one tenant's `i`th workflow's name (names sort as the indexes do).
pub fn workflow_name(i: usize) -> String {
    format!("Scale workflow {i:07}")
}

pub fn session_id(agent: usize, session: usize) -> String {
    format!("session-{agent}-{session}")
}

const INPUT: &str = "Campaign brief: spring launch of the trail running shoe, audience 25-40, channels Instagram \
                     and LinkedIn, tone upbeat.";
const OUTPUT: &str = "1. Spring is here and so is your new trail partner: light, grippy, ready for mud. Try it \
                      this weekend. 2. Your Monday run deserves better shoes: meet the trail shoe built for \
                      early starts. Shop now. 3. Twenty kilometres, one pair, zero blisters: our testers said \
                      it, and so will you. Find your size today.";

/// Seeds the data set of `shape` on `database_url` (services already running there, `templates`
/// read from their API-made rows), then VACUUM ANALYZE so that the planner and the visibility
/// map see what a long-running, autovacuumed database would.
pub async fn seed(database_url: &str, shape: Shape, templates: &Templates) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let mut conn = PgConnection::connect(database_url).await.context("connecting to seed")?;
    // Seeding is not a user's commit: nothing waits for its durability.
    sqlx::query("SET synchronous_commit = off").execute(&mut conn).await?;
    let now = Utc::now();
    let start = now - chrono::Duration::from_std(HISTORY)?;
    let mut rows = Vec::new();

    // Workflows: the one tenant's, then the spread tenants'.
    let mut copy = TableCopy::begin(
        &mut conn,
        "workflow.workflows",
        &[
            "id",
            "tenant_id",
            "name",
            "name_folded",
            "description",
            "category",
            "config",
            "status",
            "is_template",
            "version",
            "created_at",
            "updated_at",
        ],
    )
    .await?;
    let mut workflows = Vec::with_capacity(shape.workflows());
    let mut spread = Vec::with_capacity(SPREAD_TENANTS);
    let total = shape.workflows() * 2;
    for n in 0..total {
        let at = instant(start, n, total);
        let id = seeded_id(1, n, at);
        let (tenant, name) = if n < shape.workflows() {
            workflows.push(id);
            (ONE_TENANT.to_owned(), workflow_name(n))
        } else {
            let k = n - shape.workflows();
            let tenant = format!("scale-t{:04}", k % SPREAD_TENANTS);
            if k < SPREAD_TENANTS {
                spread.push((tenant.clone(), id));
            }
            (tenant, format!("Spread workflow {:07}", k / SPREAD_TENANTS))
        };
        copy.rows
            .plain(id)
            .text(&tenant)
            .text(&name)
            .text(&name.to_lowercase())
            .text(&templates.workflow_description)
            .text(&templates.workflow_category)
            .text(&templates.workflow_config)
            .plain("active")
            .plain(false)
            .plain(1)
            .plain(ts(at))
            .plain(ts(at))
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("workflows", copy.finish().await?));

    // Executions per agent, for the agents' counters.
    let mut executions_of = vec![0i64; shape.agents()];
    for n in 0..shape.executions() {
        executions_of[shape.agent_of(n)] += 1;
    }

    // Agents, made from the one tenant's first workflows, and their provisioning claims.
    let agents: Vec<Uuid> = (0..shape.agents()).map(|a| seeded_id(2, a, instant(start, a, shape.agents()))).collect();
    let mut copy = TableCopy::begin(
        &mut conn,
        "agent.agents",
        &[
            "id",
            "tenant_id",
            "name",
            "description",
            "agent_type",
            "status",
            "source_workflow_id",
            "source_workflow_version",
            "source_workflow_name",
            "source_workflow_category",
            "source_workflow_config",
            "configuration",
            "capabilities",
            "total_executions",
            "successful_executions",
            "average_response_time_ms",
            "created_at",
            "updated_at",
            "scheduled",
        ],
    )
    .await?;
    for (a, id) in agents.iter().enumerate() {
        // Updated now: the scheduler counts cron ticks from here, so none is due during the run.
        copy.rows
            .plain(id)
            .text(ONE_TENANT)
            .text(&format!("Scale agent {a:06}"))
            .text(&templates.agent_description)
            .text(&templates.agent_type)
            .plain("active")
            .plain(workflows[a])
            .plain(templates.agent_snapshot_version)
            .text(&workflow_name(a))
            .text(&templates.agent_snapshot_category)
            .text(&templates.agent_snapshot)
            .text(&templates.agent_configuration)
            .text(&templates.agent_capabilities)
            .plain(executions_of[a])
            .plain(executions_of[a])
            .plain(2.5)
            .plain(ts(instant(start, a, shape.agents())))
            .plain(ts(now))
            .plain(true)
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("agents", copy.finish().await?));
    let mut copy = TableCopy::begin(
        &mut conn,
        "agent.provisioned_workflows",
        &["tenant_id", "workflow_id", "agent_id", "created_at"],
    )
    .await?;
    for (a, id) in agents.iter().enumerate() {
        copy.rows.text(ONE_TENANT).plain(workflows[a]).plain(id).plain(ts(instant(start, a, shape.agents()))).end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("provisioned_workflows", copy.finish().await?));

    // Executions, oldest first; each agent's k-th is in its session k / 10.
    let mut copy = TableCopy::begin(
        &mut conn,
        "agent.executions",
        &[
            "id",
            "tenant_id",
            "agent_id",
            "session_id",
            "input",
            "output",
            "status",
            "latency_ms",
            "started_at",
            "finished_at",
        ],
    )
    .await?;
    let mut made_of = vec![0usize; shape.agents()];
    // (agent, session, executions, time of the last)
    let mut sessions: Vec<(usize, usize, usize, DateTime<Utc>)> = Vec::new();
    let mut last_session_of: Vec<Option<usize>> = vec![None; shape.agents()];
    for n in 0..shape.executions() {
        let at = instant(start, n, shape.executions());
        let a = shape.agent_of(n);
        let k = made_of[a];
        made_of[a] += 1;
        let session = k / SESSION_EXECUTIONS;
        match last_session_of[a] {
            Some(i) if sessions[i].1 == session => {
                sessions[i].2 += 1;
                sessions[i].3 = at;
            }
            _ => {
                last_session_of[a] = Some(sessions.len());
                sessions.push((a, session, 1, at));
            }
        }
        copy.rows
            .plain(seeded_id(3, n, at))
            .text(ONE_TENANT)
            .plain(agents[a])
            .text(&session_id(a, session))
            .text(INPUT)
            .text(OUTPUT)
            .plain("succeeded")
            .plain(412.5)
            .plain(ts(at))
            .plain(ts(at + chrono::Duration::milliseconds(412)))
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("executions", copy.finish().await?));

    let mut copy = TableCopy::begin(
        &mut conn,
        "agent.sessions",
        &["agent_id", "session_id", "tenant_id", "message_count", "last_sequence", "last_message_at"],
    )
    .await?;
    for (a, session, executions, last) in &sessions {
        copy.rows
            .plain(agents[*a])
            .text(&session_id(*a, *session))
            .text(ONE_TENANT)
            .plain(executions * 2)
            .plain(executions * 2)
            .plain(ts(*last))
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("sessions", copy.finish().await?));

    // Two messages per execution (the user's input, the agent's answer), numbered in the session.
    let mut copy = TableCopy::begin(
        &mut conn,
        "agent.session_messages",
        &["agent_id", "session_id", "sequence", "role", "text", "execution_id", "created_at"],
    )
    .await?;
    let mut made_of = vec![0usize; shape.agents()];
    for n in 0..shape.executions() {
        let at = instant(start, n, shape.executions());
        let a = shape.agent_of(n);
        let k = made_of[a];
        made_of[a] += 1;
        let session = session_id(a, k / SESSION_EXECUTIONS);
        let sequence = 2 * (k % SESSION_EXECUTIONS) + 1;
        let id = seeded_id(3, n, at);
        for (offset, role, text) in [(0, "user", INPUT), (1, "agent", OUTPUT)] {
            copy.rows
                .plain(agents[a])
                .text(&session)
                .plain(sequence + offset)
                .plain(role)
                .text(text)
                .plain(id)
                .plain(ts(at + chrono::Duration::milliseconds(412)))
                .end_row();
        }
        copy.flush_if_full().await?;
    }
    rows.push(("session_messages", copy.finish().await?));

    rows.extend(seed_runs(&mut conn, shape, start, &agents).await?);

    let hot_session = sessions
        .iter()
        .rev()
        .find(|(a, ..)| *a == 0)
        .map(|(a, s, ..)| session_id(*a, *s))
        .context("the hot agent has no session")?;
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await.context("VACUUM ANALYZE")?;
    Ok(Seeded { workflows, spread, agents, hot_session, rows, took: started.elapsed() })
}

/// Finished walker runs of the workflow's three steps (draft, review, publish), each with its
/// steps, its approved review and its events.
async fn seed_runs(
    conn: &mut PgConnection,
    shape: Shape,
    start: DateTime<Utc>,
    agents: &[Uuid],
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let mut rows = Vec::new();
    let runs = shape.runs();
    let at = |r: usize| instant(start, r, runs);
    let id = |r: usize| seeded_id(4, r, at(r));
    let mut copy = TableCopy::begin(
        conn,
        "agent.runs",
        &[
            "id",
            "tenant_id",
            "agent_id",
            "status",
            "trigger_kind",
            "input",
            "output",
            "current_step",
            "max_retries",
            "approval_required",
            "review_timeout_secs",
            "review_default_action",
            "next_attempt_at",
            "created_at",
            "updated_at",
            "finished_at",
        ],
    )
    .await?;
    for r in 0..runs {
        let t = at(r);
        copy.rows
            .plain(id(r))
            .text(ONE_TENANT)
            .plain(agents[shape.agent_of(r)])
            .plain("succeeded")
            .plain("manual")
            .text(INPUT)
            .text(OUTPUT)
            .plain(3)
            .plain(2)
            .plain(true)
            .plain(86_400)
            .plain("reject")
            .plain(ts(t))
            .plain(ts(t))
            .plain(ts(t + chrono::Duration::minutes(30)))
            .plain(ts(t + chrono::Duration::minutes(30)))
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("runs", copy.finish().await?));

    let steps: [(&str, &str, Option<i32>); 3] =
        [("draft_post", "llm", None), ("review", "review", Some(0)), ("publish", "output", None)];
    let mut copy = TableCopy::begin(
        conn,
        "agent.run_steps",
        &[
            "run_id",
            "step_index",
            "step_id",
            "kind",
            "prompt",
            "reviews_index",
            "status",
            "input",
            "output",
            "attempts",
            "started_at",
            "finished_at",
        ],
    )
    .await?;
    for r in 0..runs {
        let t = at(r);
        for (i, (step_id, kind, reviews)) in steps.iter().enumerate() {
            copy.rows
                .plain(id(r))
                .plain(i)
                .plain(step_id)
                .plain(kind)
                .text(if *kind == "llm" { "Write three short posts about {input}." } else { "" })
                .opt_text(reviews.map(|x| x.to_string()).as_deref())
                .plain("succeeded")
                .text(INPUT)
                .text(OUTPUT)
                .plain(1)
                .plain(ts(t + chrono::Duration::minutes(i as i64 * 10)))
                .plain(ts(t + chrono::Duration::minutes(i as i64 * 10 + 5)))
                .end_row();
        }
        copy.flush_if_full().await?;
    }
    rows.push(("run_steps", copy.finish().await?));

    let mut copy = TableCopy::begin(
        conn,
        "agent.reviews",
        &[
            "id",
            "tenant_id",
            "run_id",
            "agent_id",
            "step_index",
            "step_id",
            "status",
            "output",
            "deadline",
            "default_action",
            "created_at",
            "decided_at",
        ],
    )
    .await?;
    for r in 0..runs {
        let t = at(r) + chrono::Duration::minutes(10);
        copy.rows
            .plain(seeded_id(5, r, t))
            .text(ONE_TENANT)
            .plain(id(r))
            .plain(agents[shape.agent_of(r)])
            .plain(1)
            .plain("review")
            .plain("approved")
            .text(OUTPUT)
            .plain(ts(t + chrono::Duration::days(1)))
            .plain("reject")
            .plain(ts(t))
            .plain(ts(t + chrono::Duration::minutes(5)))
            .end_row();
        copy.flush_if_full().await?;
    }
    rows.push(("reviews", copy.finish().await?));

    let mut copy =
        TableCopy::begin(conn, "agent.run_events", &["run_id", "sequence", "kind", "step_id", "detail", "created_at"])
            .await?;
    for r in 0..runs {
        let t = at(r);
        let mut events = vec![("run_started", "", "")];
        for (step_id, ..) in &steps {
            events.push(("step_started", step_id, "attempt 1"));
            events.push(("step_succeeded", step_id, OUTPUT));
        }
        events.push(("run_succeeded", "", OUTPUT));
        for (seq, (kind, step_id, detail)) in events.into_iter().enumerate() {
            copy.rows
                .plain(id(r))
                .plain(seq + 1)
                .plain(kind)
                .text(step_id)
                .text(detail)
                .plain(ts(t + chrono::Duration::minutes(seq as i64 * 4)))
                .end_row();
        }
        copy.flush_if_full().await?;
    }
    rows.push(("run_events", copy.finish().await?));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_agent_has_a_tenth_and_the_others_share_the_rest_evenly() {
        let shape = Shape { factor: 1 };
        let mut of = vec![0usize; shape.agents()];
        for n in 0..shape.executions() {
            of[shape.agent_of(n)] += 1;
        }
        assert_eq!(of[0], shape.executions() / 10);
        let (min, max) = (of[1..].iter().min().unwrap(), of[1..].iter().max().unwrap());
        assert!(max - min <= 1, "{min}..{max}");
        assert_eq!(of.iter().sum::<usize>(), shape.executions());
    }

    #[test]
    fn seeded_ids_are_distinct_v7_in_time_order() {
        let t = Utc::now();
        let a = seeded_id(3, 1, t);
        let b = seeded_id(3, 2, t);
        let c = seeded_id(4, 1, t);
        let later = seeded_id(3, 0, t + chrono::Duration::seconds(1));
        assert_eq!(a.get_version_num(), 7);
        assert!(a != b && a != c && b != c);
        assert!(later > a && later > b);
    }
}
