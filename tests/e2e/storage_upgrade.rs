//! An existing PostgreSQL database upgrades to native UUID ids with nothing lost.
//!
//! Both services' databases are made as they were before the UUID migration (agent-service's
//! PostgreSQL migrations up to [`AGENT_MIGRATIONS_BEFORE_UUID`], workflow-service's up to
//! [`WORKFLOW_MIGRATIONS_BEFORE_UUID`]) and filled with raw SQL as the old code wrote them (TEXT
//! ids, hyphenated lowercase UUIDs): workflows with their counted executions, agents (one made
//! from a workflow and claimed for it, one stand-alone, one of another tenant), executions,
//! sessions and their messages, feedback, a report in the outbox, walker runs with their steps,
//! events and reviews, schedule ticks. Then both services start on them, which applies every
//! migration after those, and everything is read back through the gRPC API and compared, field
//! by field, with what was inserted; then new things are written, to show the upgraded
//! databases work: the report is delivered, feedback and an agent are added, a pending review is
//! approved and its run finishes, a workflow is provisioned.
//!
//! Until the UUID migrations exist, nothing is pending when the services start and this checks
//! that the data the old code wrote reads back exactly; once they exist, it is their upgrade test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use engarde::kit::versioning::etag_of;
use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use prost::Message as _;
use prost_types::Timestamp;
use serde_json::json;
use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::types::Json;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::*;

/// agent-service's PostgreSQL migrations before the one that makes ids `uuid` (0001-0006).
pub const AGENT_MIGRATIONS_BEFORE_UUID: i64 = 6;
/// workflow-service's PostgreSQL migrations before the one that makes ids `uuid` (0001-0003).
pub const WORKFLOW_MIGRATIONS_BEFORE_UUID: i64 = 3;

const TENANT: &str = "default-tenant-001";
const OTHER_TENANT: &str = "other-tenant-002";

fn migrations_dir(service: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(service).join("migrations").join("postgres")
}

/// Applies `service`'s PostgreSQL migrations up to and including version `last` to `url`, as
/// the service of that time did (same files, same `_sqlx_migrations` rows and checksums).
async fn migrate_until(url: &str, service: &str, last: i64) {
    let migrator = Migrator::new(migrations_dir(service)).await.expect("read the migrations");
    let versions: Vec<i64> = migrator.iter().map(|m| m.version).filter(|v| *v <= last).collect();
    assert_eq!(versions, (1..=last).collect::<Vec<_>>(), "{service}: migrations 1..={last} exist");
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await.expect("connect to PostgreSQL");
    migrator.run_to(last, &pool).await.expect("apply the migrations before the UUID one");
    pool.close().await;
}

/// The newest migration version of `service` (what its start-up brings a database to).
async fn newest_migration(service: &str) -> i64 {
    let migrator = Migrator::new(migrations_dir(service)).await.expect("read the migrations");
    migrator.iter().map(|m| m.version).max().expect("migrations")
}

/// A fixed instant, `minutes` after the first (microseconds, as PostgreSQL stores them).
fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
        + chrono::Duration::microseconds(123_456)
        + chrono::Duration::minutes(minutes)
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn time(t: &Option<Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref().map(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a valid timestamp"))
}

/// The database's spelling of a protobuf enum value: its name without the prefix, lowercase.
fn db_name(proto_name: &str, prefix: &str) -> String {
    proto_name.strip_prefix(prefix).expect("prefixed enum name").to_lowercase()
}

fn id() -> String {
    Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------------------------
// What the old code wrote, and how.

/// A walk of three steps: draft (llm), review of the draft, publish (output); manual trigger.
fn walk_config() -> wpb::WorkflowConfig {
    wpb::WorkflowConfig {
        steps: vec![
            wpb::Step {
                id: "draft".into(),
                name: "Draft".into(),
                kind: wpb::StepKind::Llm as i32,
                prompt: "Write a post about {input}".into(),
                reviews_step: String::new(),
            },
            wpb::Step {
                id: "review".into(),
                name: "Review".into(),
                kind: wpb::StepKind::Review as i32,
                prompt: String::new(),
                reviews_step: "draft".into(),
            },
            wpb::Step {
                id: "publish".into(),
                name: "Publish".into(),
                kind: wpb::StepKind::Output as i32,
                prompt: String::new(),
                reviews_step: String::new(),
            },
        ],
        triggers: vec![wpb::Trigger {
            r#type: wpb::TriggerType::Manual as i32,
            cron: String::new(),
            timezone: String::new(),
        }],
        rules: Some(wpb::Rules {
            approval_required: false,
            max_retries: 1,
            autonomous: false,
            review_timeout_seconds: 86_400,
            review_default_action: wpb::ReviewDefaultAction::Reject as i32,
        }),
        langflow_flow_json: String::new(),
        extra_rules: None,
    }
}

/// One llm step, scheduled weekly as well as manual.
fn headline_config() -> wpb::WorkflowConfig {
    wpb::WorkflowConfig {
        steps: vec![wpb::Step {
            id: "headlines".into(),
            name: "Headlines".into(),
            kind: wpb::StepKind::Llm as i32,
            prompt: "Write two headlines for {input}".into(),
            reviews_step: String::new(),
        }],
        triggers: vec![
            wpb::Trigger { r#type: wpb::TriggerType::Manual as i32, cron: String::new(), timezone: String::new() },
            wpb::Trigger {
                r#type: wpb::TriggerType::Scheduled as i32,
                cron: "0 9 * * 1".into(),
                timezone: "Europe/Paris".into(),
            },
        ],
        rules: Some(wpb::Rules {
            approval_required: true,
            max_retries: 2,
            autonomous: true,
            review_timeout_seconds: 3_600,
            review_default_action: wpb::ReviewDefaultAction::Approve as i32,
        }),
        langflow_flow_json: String::new(),
        extra_rules: None,
    }
}

/// A workflow config as workflow-service stored it: its domain type serialised by serde.
fn config_json(c: &wpb::WorkflowConfig) -> serde_json::Value {
    let steps: Vec<_> = c
        .steps
        .iter()
        .map(|s| {
            let kind = db_name(wpb::StepKind::try_from(s.kind).unwrap().as_str_name(), "STEP_KIND_");
            let mut step = json!({ "id": s.id, "name": s.name, "kind": kind });
            if !s.prompt.is_empty() {
                step["prompt"] = json!(s.prompt);
            }
            if !s.reviews_step.is_empty() {
                step["reviews_step"] = json!(s.reviews_step);
            }
            step
        })
        .collect();
    let triggers: Vec<_> = c
        .triggers
        .iter()
        .map(|t| {
            let kind = db_name(wpb::TriggerType::try_from(t.r#type).unwrap().as_str_name(), "TRIGGER_TYPE_");
            let mut trigger = json!({ "type": kind });
            if !t.cron.is_empty() {
                trigger["cron"] = json!(t.cron);
            }
            if !t.timezone.is_empty() {
                trigger["timezone"] = json!(t.timezone);
            }
            trigger
        })
        .collect();
    let rules = c.rules.unwrap_or_default();
    json!({
        "steps": steps,
        "triggers": triggers,
        "rules": {
            "approval_required": rules.approval_required,
            "max_retries": rules.max_retries,
            "autonomous": rules.autonomous,
            "review_timeout_seconds": rules.review_timeout_seconds,
            "review_default_action": db_name(
                wpb::ReviewDefaultAction::try_from(rules.review_default_action).unwrap().as_str_name(),
                "REVIEW_DEFAULT_ACTION_"),
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn workflow(
    id: &str,
    tenant: &str,
    name: &str,
    category: wpb::WorkflowCategory,
    config: wpb::WorkflowConfig,
    status: wpb::WorkflowStatus,
    (execution_count, success_count): (i64, i64),
    version: i64,
    (created, updated): (i64, i64),
) -> wpb::WorkflowDefinition {
    wpb::WorkflowDefinition {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        description: format!("{name}, as the old code wrote it"),
        category: category as i32,
        workflow_config: Some(config),
        status: status as i32,
        is_template: tenant.is_empty(),
        execution_count,
        success_count,
        success_rate: if execution_count == 0 { 0.0 } else { success_count as f64 / execution_count as f64 },
        version,
        // A workflow's etag names its version and status.
        etag: format!("\"{version}-{}\"", status.as_str_name().trim_start_matches("WORKFLOW_STATUS_").to_lowercase()),
        create_time: Some(ts(at(created))),
        update_time: Some(ts(at(updated))),
    }
}

async fn insert_workflow(conn: &mut PgConnection, w: &wpb::WorkflowDefinition) {
    sqlx::query(
        "INSERT INTO workflows (id, tenant_id, name, description, category, config, status, is_template, \
         execution_count, success_count, version, created_at, updated_at, name_folded) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&w.id)
    .bind(&w.tenant_id)
    .bind(&w.name)
    .bind(&w.description)
    .bind(db_name(w.category().as_str_name(), "WORKFLOW_CATEGORY_"))
    .bind(Json(config_json(w.workflow_config.as_ref().unwrap())))
    .bind(db_name(w.status().as_str_name(), "WORKFLOW_STATUS_"))
    .bind(w.is_template)
    .bind(w.execution_count)
    .bind(w.success_count)
    .bind(w.version)
    .bind(time(&w.create_time))
    .bind(time(&w.update_time))
    .bind(w.name.to_lowercase())
    .execute(conn)
    .await
    .expect("insert a workflow");
}

async fn insert_workflow_execution(conn: &mut PgConnection, execution: &str, workflow: &str, succeeded: bool) {
    sqlx::query(
        "INSERT INTO workflow_executions (execution_id, workflow_id, tenant_id, succeeded, recorded_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(execution)
    .bind(workflow)
    .bind(TENANT)
    .bind(succeeded)
    .bind(at(50))
    .execute(conn)
    .await
    .expect("insert a counted execution");
}

fn agent_config(tone: &str, model: Option<(&str, &str, f64, i32)>, extra: &[(&str, &str)]) -> pb::AgentConfig {
    pb::AgentConfig {
        brand_voice: "Warm, direct".into(),
        tone: tone.into(),
        target_audience: "Small shop owners".into(),
        model: Some(match model {
            Some((provider, model_name, temperature, max_tokens)) => pb::ModelSettings {
                provider: provider.into(),
                model_name: model_name.into(),
                temperature: Some(temperature),
                max_tokens: Some(max_tokens),
                ..Default::default()
            },
            None => pb::ModelSettings::default(),
        }),
        extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// An agent's configuration as agent-service stored it: its domain type serialised by serde.
fn agent_config_json(c: &pb::AgentConfig) -> serde_json::Value {
    let model = c.model.clone().unwrap_or_default();
    json!({
        "brand_voice": c.brand_voice,
        "tone": c.tone,
        "target_audience": c.target_audience,
        "model": {
            "provider": model.provider,
            "model_name": model.model_name,
            "temperature": model.temperature,
            "max_tokens": model.max_tokens,
        },
        "extra": c.extra,
    })
}

async fn insert_agent(conn: &mut PgConnection, a: &pb::Agent) {
    let snapshot = a.workflow_snapshot.as_ref();
    let flow_origin = match a.flow_origin() {
        pb::FlowOrigin::Unspecified => String::new(),
        origin => db_name(origin.as_str_name(), "FLOW_ORIGIN_"),
    };
    let score_sum = (a.feedback_mean_score * a.feedback_count as f64).round() as i64;
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name, description, agent_type, status, status_reason, \
         langflow_workflow_id, langflow_deployment_id, source_workflow_id, source_workflow_version, \
         source_workflow_name, source_workflow_category, source_workflow_config, configuration, capabilities, \
         total_executions, successful_executions, average_response_time_ms, version, created_at, updated_at, \
         flow_origin, feedback_count, feedback_score_sum, scheduled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
         $22, $23, $24, $25, $26)",
    )
    .bind(&a.id)
    .bind(&a.tenant_id)
    .bind(&a.name)
    .bind(&a.description)
    .bind(db_name(a.agent_type().as_str_name(), "AGENT_TYPE_"))
    .bind(db_name(a.status().as_str_name(), "AGENT_STATUS_"))
    .bind(&a.status_reason)
    .bind(&a.langflow_workflow_id)
    .bind(&a.langflow_deployment_id)
    .bind(snapshot.map(|s| s.workflow_id.clone()))
    .bind(snapshot.map(|s| s.workflow_version))
    .bind(snapshot.map(|s| s.workflow_name.clone()))
    .bind(snapshot.map(|s| db_name(s.category().as_str_name(), "WORKFLOW_CATEGORY_")))
    .bind(snapshot.map(|s| s.workflow_config.as_ref().unwrap().encode_to_vec()))
    .bind(Json(agent_config_json(a.configuration.as_ref().unwrap())))
    .bind(Json(&a.capabilities))
    .bind(a.total_executions)
    .bind(a.successful_executions)
    .bind(a.average_response_time_ms)
    .bind(a.version)
    .bind(time(&a.create_time))
    .bind(time(&a.update_time))
    .bind(flow_origin)
    .bind(a.feedback_count)
    .bind(score_sum)
    // No scheduled trigger in these snapshots: what the old code wrote for them.
    .bind(false)
    .execute(conn)
    .await
    .expect("insert an agent");
}

async fn insert_execution(conn: &mut PgConnection, e: &pb::Execution, error_code: &str) {
    sqlx::query(
        "INSERT INTO executions (id, tenant_id, agent_id, session_id, step_id, input, output, status, error, \
         latency_ms, error_code, report_workflow_id, report_credentials, request_id, fingerprint, started_at, \
         finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, '', NULL, NULL, $12, $13)",
    )
    .bind(&e.id)
    .bind(TENANT)
    .bind(&e.agent_id)
    .bind(&e.session_id)
    .bind(&e.step_id)
    .bind(&e.input)
    .bind(&e.output)
    .bind(db_name(e.status().as_str_name(), "EXECUTION_STATUS_"))
    .bind(&e.error)
    .bind(e.latency_ms)
    .bind(error_code)
    .bind(time(&e.start_time))
    .bind(time(&e.finish_time))
    .execute(conn)
    .await
    .expect("insert an execution");
}

async fn insert_messages(conn: &mut PgConnection, agent: &str, session: &pb::Session, messages: &[pb::SessionMessage]) {
    sqlx::query(
        "INSERT INTO sessions (agent_id, session_id, tenant_id, message_count, last_sequence, last_message_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(agent)
    .bind(&session.session_id)
    .bind(TENANT)
    .bind(session.message_count)
    .bind(messages.iter().map(|m| m.sequence).max().unwrap_or(0))
    .bind(time(&session.last_message_time))
    .execute(&mut *conn)
    .await
    .expect("insert a session");
    for m in messages {
        sqlx::query(
            "INSERT INTO session_messages (agent_id, session_id, sequence, role, text, execution_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(agent)
        .bind(&session.session_id)
        .bind(m.sequence)
        .bind(db_name(m.role().as_str_name(), "MESSAGE_ROLE_"))
        .bind(&m.text)
        .bind(&m.execution_id)
        .bind(time(&m.create_time))
        .execute(&mut *conn)
        .await
        .expect("insert a session message");
    }
}

async fn insert_feedback(conn: &mut PgConnection, f: &pb::Feedback) {
    sqlx::query(
        "INSERT INTO feedback (id, tenant_id, agent_id, execution_id, score, comment, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&f.id)
    .bind(TENANT)
    .bind(&f.agent_id)
    .bind(&f.execution_id)
    .bind(f.score)
    .bind(&f.comment)
    .bind(time(&f.create_time))
    .execute(conn)
    .await
    .expect("insert feedback");
}

/// A run as stored: the answer's fields and those the API does not show.
struct StoredRun {
    run: pb::Run,
    current_step: i32,
    /// (prompt, reviews_index) of each step, in order.
    step_plans: Vec<(String, Option<i32>)>,
    events: Vec<pb::RunEvent>,
}

async fn insert_run(conn: &mut PgConnection, stored: &StoredRun, agent: &pb::Agent) {
    let r = &stored.run;
    let rules = agent.workflow_snapshot.as_ref().unwrap().workflow_config.as_ref().unwrap().rules.unwrap();
    sqlx::query(
        "INSERT INTO runs (id, tenant_id, agent_id, status, trigger_kind, input, output, error, current_step, \
         max_retries, approval_required, review_timeout_secs, review_default_action, request_id, fingerprint, \
         scheduled_for, lease_owner, lease_expires_at, next_attempt_at, created_at, updated_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, $14, NULL, NULL, $15, $16, \
         $17, $18)",
    )
    .bind(&r.id)
    .bind(TENANT)
    .bind(&r.agent_id)
    .bind(db_name(r.status().as_str_name(), "RUN_STATUS_"))
    .bind(db_name(r.trigger().as_str_name(), "RUN_TRIGGER_"))
    .bind(&r.input)
    .bind(&r.output)
    .bind(&r.error)
    .bind(stored.current_step)
    .bind(rules.max_retries)
    .bind(rules.approval_required)
    .bind(rules.review_timeout_seconds)
    .bind(db_name(rules.review_default_action().as_str_name(), "REVIEW_DEFAULT_ACTION_"))
    .bind(time(&r.scheduled_time))
    .bind(time(&r.update_time))
    .bind(time(&r.create_time))
    .bind(time(&r.update_time))
    .bind(time(&r.finish_time))
    .execute(&mut *conn)
    .await
    .expect("insert a run");
    for (step, (prompt, reviews_index)) in r.steps.iter().zip(&stored.step_plans) {
        sqlx::query(
            "INSERT INTO run_steps (run_id, step_index, step_id, kind, prompt, reviews_index, status, input, output, \
             attempts, error, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&r.id)
        .bind(step.index)
        .bind(&step.step_id)
        .bind(&step.kind)
        .bind(prompt)
        .bind(*reviews_index)
        .bind(db_name(step.status().as_str_name(), "STEP_STATUS_"))
        .bind(&step.input)
        .bind(&step.output)
        .bind(step.attempts)
        .bind(&step.error)
        .bind(time(&step.start_time))
        .bind(time(&step.finish_time))
        .execute(&mut *conn)
        .await
        .expect("insert a run step");
    }
    for e in &stored.events {
        sqlx::query(
            "INSERT INTO run_events (run_id, sequence, kind, step_id, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.run_id)
        .bind(e.sequence)
        .bind(&e.kind)
        .bind(&e.step_id)
        .bind(&e.detail)
        .bind(time(&e.time))
        .execute(&mut *conn)
        .await
        .expect("insert a run event");
    }
}

async fn insert_review(conn: &mut PgConnection, r: &pb::Review, step_index: i32, edited_output: Option<&str>) {
    sqlx::query(
        "INSERT INTO reviews (id, tenant_id, run_id, agent_id, step_index, step_id, status, output, edited_output, \
         deadline, default_action, created_at, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&r.id)
    .bind(TENANT)
    .bind(&r.run_id)
    .bind(&r.agent_id)
    .bind(step_index)
    .bind(&r.step_id)
    .bind(db_name(r.status().as_str_name(), "REVIEW_STATUS_"))
    .bind(&r.output)
    .bind(edited_output)
    .bind(time(&r.deadline))
    .bind(r.default_action.to_lowercase())
    .bind(time(&r.create_time))
    .bind(time(&r.decide_time))
    .execute(conn)
    .await
    .expect("insert a review");
}

fn step(index: i32, id: &str, kind: &str, status: pb::StepStatus, io: (&str, &str), times: (i64, i64)) -> pb::RunStep {
    let pending = status == pb::StepStatus::Pending;
    let done = !matches!(status, pb::StepStatus::Pending | pb::StepStatus::WaitingReview | pb::StepStatus::Running);
    pb::RunStep {
        index,
        step_id: id.into(),
        kind: kind.into(),
        status: status as i32,
        input: io.0.into(),
        output: io.1.into(),
        attempts: if pending { 0 } else { 1 },
        error: String::new(),
        start_time: (!pending).then(|| ts(at(times.0))),
        finish_time: done.then(|| ts(at(times.1))),
    }
}

fn events(run: &str, list: &[(&str, &str, &str, i64)]) -> Vec<pb::RunEvent> {
    list.iter()
        .enumerate()
        .map(|(i, (kind, step_id, detail, minute))| pb::RunEvent {
            sequence: i as i64 + 1,
            run_id: run.into(),
            kind: (*kind).into(),
            step_id: (*step_id).into(),
            detail: (*detail).into(),
            time: Some(ts(at(*minute))),
        })
        .collect()
}

/// Reads the events of a run from the start: `expected` of them when the run is still going
/// (its watch stays open), or all of them up to the end of the stream when it has ended.
async fn watch_events(runs: &mut RunClient, run: &str, expected: Option<usize>) -> Vec<pb::RunEvent> {
    let mut stream =
        runs.watch_run(pb::WatchRunRequest { id: run.into(), from_sequence: 0 }).await.expect("WatchRun").into_inner();
    let mut out = Vec::new();
    loop {
        if expected == Some(out.len()) {
            return out;
        }
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the watch answers in time")
            .expect("WatchRun's stream");
        match next {
            Some(event) => out.push(event),
            None => return out,
        }
    }
}

fn sorted_by_id<T, F: Fn(&T) -> String>(mut items: Vec<T>, key: F) -> Vec<T> {
    items.sort_by_key(|item| key(item));
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_postgres_database_upgrades_to_uuid_ids_with_nothing_lost() {
    // As spawn_app does: each service its own database.
    let workflow_db = TestDb::new(Backend::Postgres).await;
    let agent_db = TestDb::new(Backend::Postgres).await;
    migrate_until(workflow_db.url(), "workflow-service", WORKFLOW_MIGRATIONS_BEFORE_UUID).await;
    migrate_until(agent_db.url(), "agent-service", AGENT_MIGRATIONS_BEFORE_UUID).await;

    // ---- workflow-service's data, as the old code wrote it.
    let (w1, w2, w3, template, foreign) = (id(), id(), id(), id(), id());
    use wpb::{WorkflowCategory as Cat, WorkflowStatus as St};
    let spring = workflow(
        &w1,
        TENANT,
        "Spring Launch Posts",
        Cat::ContentGeneration,
        walk_config(),
        St::Active,
        (2, 1),
        3,
        (0, 10),
    );
    let headlines =
        workflow(&w2, TENANT, "Ad Copy Headlines", Cat::AbTesting, headline_config(), St::Draft, (2, 2), 1, (1, 1));
    let budget = workflow(
        &w3,
        TENANT,
        "Old Budget Plan",
        Cat::BudgetOptimization,
        walk_config(),
        St::Archived,
        (0, 0),
        2,
        (2, 12),
    );
    let shared = workflow(
        &template,
        "",
        "Migrated Weekly Report",
        Cat::AnalyticsAutomation,
        headline_config(),
        St::Active,
        (0, 0),
        1,
        (3, 3),
    );
    let theirs = workflow(
        &foreign,
        OTHER_TENANT,
        "Someone Else's Plan",
        Cat::ContentGeneration,
        walk_config(),
        St::Active,
        (0, 0),
        1,
        (4, 4),
    );
    let (e1, e2, e3) = (id(), id(), id());
    {
        let mut conn = PgConnection::connect(workflow_db.url()).await.expect("connect");
        for w in [&spring, &headlines, &budget, &shared, &theirs] {
            insert_workflow(&mut conn, w).await;
        }
        // The executions already counted: two of the agent's below, two of an agent since deleted.
        insert_workflow_execution(&mut conn, &e1, &w1, true).await;
        insert_workflow_execution(&mut conn, &e2, &w1, false).await;
        insert_workflow_execution(&mut conn, &id(), &w2, true).await;
        insert_workflow_execution(&mut conn, &id(), &w2, true).await;
        conn.close().await.unwrap();
    }

    // ---- agent-service's data.
    let (a_id, b_id, c_id) = (id(), id(), id());
    let walker = pb::Agent {
        id: a_id.clone(),
        tenant_id: TENANT.into(),
        name: "Spring Launch Posts Agent".into(),
        description: "Made from the spring workflow".into(),
        agent_type: pb::AgentType::ContentGeneration as i32,
        status: pb::AgentStatus::Active as i32,
        status_reason: String::new(),
        langflow_workflow_id: id(),
        langflow_deployment_id: Uuid::new_v4().simple().to_string(),
        workflow_snapshot: Some(pb::WorkflowSnapshot {
            workflow_id: w1.clone(),
            workflow_version: 3,
            workflow_name: spring.name.clone(),
            category: Cat::ContentGeneration as i32,
            workflow_config: Some(walk_config()),
        }),
        configuration: Some(agent_config("playful", Some(("openai", "gpt-4o-mini", 0.7, 512)), &[("region", "EU")])),
        capabilities: vec!["social_posts".into(), "hashtags".into()],
        total_executions: 3,
        successful_executions: 2,
        average_response_time_ms: 100.0,
        version: 4,
        etag: etag_of(4),
        create_time: Some(ts(at(20))),
        update_time: Some(ts(at(40))),
        flow_origin: pb::FlowOrigin::Generated as i32,
        feedback_count: 1,
        feedback_mean_score: 4.0,
        token_usage: Some(pb::TokenUsage::default()),
    };
    let standalone = pb::Agent {
        id: b_id.clone(),
        tenant_id: TENANT.into(),
        name: "Copy Helper".into(),
        description: String::new(),
        agent_type: pb::AgentType::CopyGeneration as i32,
        status: pb::AgentStatus::Draft as i32,
        status_reason: String::new(),
        langflow_workflow_id: String::new(),
        langflow_deployment_id: String::new(),
        workflow_snapshot: None,
        configuration: Some(agent_config("formal", None, &[])),
        capabilities: Vec::new(),
        total_executions: 0,
        successful_executions: 0,
        average_response_time_ms: 0.0,
        version: 1,
        etag: etag_of(1),
        create_time: Some(ts(at(5))),
        update_time: Some(ts(at(5))),
        flow_origin: pb::FlowOrigin::Unspecified as i32,
        feedback_count: 0,
        feedback_mean_score: 0.0,
        token_usage: Some(pb::TokenUsage::default()),
    };
    let not_ours =
        pb::Agent { id: c_id.clone(), tenant_id: OTHER_TENANT.into(), name: "Not yours".into(), ..standalone.clone() };

    let execution =
        |id: &str, session: &str, input: &str, output: &str, error: &str, latency: f64, minute: i64| pb::Execution {
            id: id.into(),
            agent_id: a_id.clone(),
            session_id: session.into(),
            input: input.into(),
            output: output.into(),
            status: if error.is_empty() { pb::ExecutionStatus::Succeeded } else { pb::ExecutionStatus::Failed } as i32,
            error: error.into(),
            latency_ms: latency,
            step_id: String::new(),
            start_time: Some(ts(at(minute))),
            finish_time: Some(ts(at(minute) + chrono::Duration::milliseconds(latency as i64))),
            token_usage: None,
        };
    let exec1 = execution(&e1, "launch-chat", "spring sale", "Post: spring sale", "", 120.5, 21);
    let exec2 = execution(&e2, "launch-chat", "summer sale", "", "Langflow is unavailable", 80.25, 22);
    let exec3 = execution(&e3, "review-chat", "autumn sale", "Post: autumn sale", "", 99.25, 23);
    let message = |sequence: i64, role: pb::MessageRole, text: &str, execution: &pb::Execution| pb::SessionMessage {
        sequence,
        role: role as i32,
        text: text.into(),
        execution_id: execution.id.clone(),
        create_time: execution.finish_time,
    };
    let launch_messages = vec![
        message(1, pb::MessageRole::User, "spring sale", &exec1),
        message(2, pb::MessageRole::Agent, "Post: spring sale", &exec1),
    ];
    let review_messages = vec![
        message(1, pb::MessageRole::User, "autumn sale", &exec3),
        message(2, pb::MessageRole::Agent, "Post: autumn sale", &exec3),
    ];
    let launch_session =
        pb::Session { session_id: "launch-chat".into(), message_count: 2, last_message_time: exec1.finish_time };
    let review_session =
        pb::Session { session_id: "review-chat".into(), message_count: 2, last_message_time: exec3.finish_time };
    let feedback1 = pb::Feedback {
        id: id(),
        execution_id: e1.clone(),
        agent_id: a_id.clone(),
        score: 4,
        comment: "on brand".into(),
        create_time: Some(ts(at(25))),
    };

    // A manual run waiting for the review of its draft, and a scheduled one that went through.
    let (r1, r2, v1, v2) = (id(), id(), id(), id());
    let draft_prompt = "Write a post about {input}".to_owned();
    let plans = vec![(draft_prompt.clone(), None), (String::new(), Some(0)), (String::new(), None)];
    let waiting = StoredRun {
        run: pb::Run {
            id: r1.clone(),
            agent_id: a_id.clone(),
            status: pb::RunStatus::WaitingReview as i32,
            trigger: pb::RunTrigger::Manual as i32,
            input: "spring sale".into(),
            output: String::new(),
            error: String::new(),
            steps: vec![
                step(0, "draft", "llm", pb::StepStatus::Succeeded, ("spring sale", "Draft: spring sale"), (30, 31)),
                step(1, "review", "review", pb::StepStatus::WaitingReview, ("Draft: spring sale", ""), (31, 31)),
                step(2, "publish", "output", pb::StepStatus::Pending, ("", ""), (0, 0)),
            ],
            scheduled_time: None,
            create_time: Some(ts(at(30))),
            update_time: Some(ts(at(31))),
            finish_time: None,
        },
        current_step: 1,
        step_plans: plans.clone(),
        events: events(
            &r1,
            &[
                ("run_started", "", "", 30),
                ("step_started", "draft", "attempt 1", 30),
                ("step_succeeded", "draft", "Draft: spring sale", 31),
                ("step_started", "review", "attempt 1", 31),
                ("review_requested", "review", &format!("review {v1}"), 31),
            ],
        ),
    };
    let digest = "Draft: weekly digest";
    let finished = StoredRun {
        run: pb::Run {
            id: r2.clone(),
            agent_id: a_id.clone(),
            status: pb::RunStatus::Succeeded as i32,
            trigger: pb::RunTrigger::Scheduled as i32,
            input: "weekly digest".into(),
            output: digest.into(),
            error: String::new(),
            steps: vec![
                step(0, "draft", "llm", pb::StepStatus::Succeeded, ("weekly digest", digest), (26, 26)),
                step(1, "review", "review", pb::StepStatus::Succeeded, (digest, digest), (26, 27)),
                step(2, "publish", "output", pb::StepStatus::Succeeded, (digest, digest), (27, 27)),
            ],
            scheduled_time: Some(ts(at(26))),
            create_time: Some(ts(at(26))),
            update_time: Some(ts(at(27))),
            finish_time: Some(ts(at(27))),
        },
        current_step: 3,
        step_plans: plans,
        events: events(
            &r2,
            &[
                ("run_started", "", "", 26),
                ("step_started", "draft", "attempt 1", 26),
                ("step_succeeded", "draft", digest, 26),
                ("step_started", "review", "attempt 1", 26),
                ("review_requested", "review", &format!("review {v2}"), 26),
                ("review_approved", "review", "approved", 27),
                ("step_succeeded", "review", digest, 27),
                ("step_started", "publish", "attempt 1", 27),
                ("step_succeeded", "publish", digest, 27),
                ("run_succeeded", "", digest, 27),
            ],
        ),
    };
    // The pending review's deadline is real time ahead, so that it does not expire during the test.
    let deadline = {
        let t = Utc::now() + chrono::Duration::days(30);
        DateTime::from_timestamp(t.timestamp(), t.timestamp_subsec_micros() * 1000).unwrap()
    };
    let pending = pb::Review {
        id: v1.clone(),
        run_id: r1.clone(),
        agent_id: a_id.clone(),
        step_id: "review".into(),
        output: "Draft: spring sale".into(),
        status: pb::ReviewStatus::Pending as i32,
        deadline: Some(ts(deadline)),
        default_action: "REJECT".into(),
        create_time: Some(ts(at(31))),
        decide_time: None,
    };
    let approved = pb::Review {
        id: v2.clone(),
        run_id: r2.clone(),
        output: digest.into(),
        status: pb::ReviewStatus::Approved as i32,
        deadline: Some(ts(at(26 + 24 * 60))),
        create_time: Some(ts(at(26))),
        decide_time: Some(ts(at(27))),
        ..pending.clone()
    };
    {
        let mut conn = PgConnection::connect(agent_db.url()).await.expect("connect");
        // The claim first, as provisioning wrote it: its foreign key is checked at commit.
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO provisioned_workflows (tenant_id, workflow_id, agent_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(TENANT)
        .bind(&w1)
        .bind(&a_id)
        .bind(at(20))
        .execute(&mut *tx)
        .await
        .expect("insert the provisioning claim");
        for agent in [&walker, &standalone, &not_ours] {
            insert_agent(&mut tx, agent).await;
        }
        tx.commit().await.expect("commit the agents");
        insert_execution(&mut conn, &exec1, "").await;
        insert_execution(&mut conn, &exec2, "unavailable").await;
        insert_execution(&mut conn, &exec3, "").await;
        insert_messages(&mut conn, &a_id, &launch_session, &launch_messages).await;
        insert_messages(&mut conn, &a_id, &review_session, &review_messages).await;
        insert_feedback(&mut conn, &feedback1).await;
        // exec3 finished but is not reported yet: its report waits in the outbox.
        sqlx::query(
            "INSERT INTO execution_reports (execution_id, tenant_id, workflow_id, succeeded, credentials, attempts, \
             next_attempt_at, last_error) VALUES ($1, $2, $3, TRUE, '', 1, $4, 'workflow-service unavailable')",
        )
        .bind(&e3)
        .bind(TENANT)
        .bind(&w1)
        .bind(at(24))
        .execute(&mut conn)
        .await
        .expect("insert a report");
        insert_run(&mut conn, &finished, &walker).await;
        insert_run(&mut conn, &waiting, &walker).await;
        insert_review(&mut conn, &approved, 1, None).await;
        insert_review(&mut conn, &pending, 1, None).await;
        for (tick, run) in [(at(26), Some(&r2)), (at(26 + 7 * 24 * 60), None)] {
            sqlx::query("INSERT INTO schedule_ticks (agent_id, tick_at, run_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&a_id)
                .bind(tick)
                .bind(run.cloned())
                .bind(tick)
                .execute(&mut conn)
                .await
                .expect("insert a schedule tick");
        }
        conn.close().await.unwrap();
    }

    // ---- Both services start on these databases: they apply every migration after those.
    let workflow_service = spawn_workflow_service(&workflow_db, &[]).await;
    let agent_service =
        spawn_agent_service(&agent_db, &workflow_service.url(), &[("REPORT_INTERVAL_MS", "300".to_owned())]).await;
    let app = TestApp { workflow: workflow_service, agent: agent_service, workflow_db, agent_db };
    for (db, service) in [(&app.workflow_db, "workflow-service"), (&app.agent_db, "agent-service")] {
        let applied = db.sql("SELECT max(version)::text FROM _sqlx_migrations WHERE success").await;
        assert_eq!(applied, newest_migration(service).await.to_string(), "{service} applied every migration");
    }
    let mut workflows = app.workflows(TENANT).await;
    let mut agents = app.agents(TENANT).await;
    let mut executions = app.executions(TENANT).await;
    let mut runs = app.runs(TENANT).await;

    // ---- Workflows: the outbox's report of exec3 is delivered and counted once, on top of the
    // statistics kept.
    let spring_now =
        wpb::WorkflowDefinition { execution_count: 3, success_count: 2, success_rate: 2.0 / 3.0, ..spring.clone() };
    eventually(Duration::from_secs(30), "the outbox's report is counted", || {
        let mut workflows = workflows.clone();
        let id = w1.clone();
        async move {
            workflows.get_workflow(wpb::GetWorkflowRequest { id }).await.unwrap().into_inner().execution_count == 3
        }
    })
    .await;
    let got = workflows.get_workflow(wpb::GetWorkflowRequest { id: w1.clone() }).await.unwrap().into_inner();
    assert_eq!(got, spring_now);
    eventually(Duration::from_secs(10), "the outbox is empty", || async {
        app.agent_db.sql("SELECT count(*)::text FROM execution_reports").await == "0"
    })
    .await;
    for w in [&headlines, &budget, &shared] {
        let got = workflows.get_workflow(wpb::GetWorkflowRequest { id: w.id.clone() }).await.unwrap().into_inner();
        assert_eq!(&got, w);
    }
    expect_code(workflows.get_workflow(wpb::GetWorkflowRequest { id: foreign.clone() }).await, Code::NotFound);
    let own = workflows
        .list_workflows(wpb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.workflows, vec![headlines.clone(), budget.clone(), spring_now.clone()], "by name");
    let found = workflows
        .list_workflows(wpb::ListWorkflowsRequest { name_contains: "LAUNCH".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.workflows, vec![spring_now.clone()]);
    let templates = workflows
        .list_workflows(wpb::ListWorkflowsRequest {
            is_template: Some(true),
            category: Cat::AnalyticsAutomation as i32,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(templates.workflows.contains(&shared), "the old template is listed with the library: {templates:?}");
    // A counted execution is still known by its id: reported again, it is not counted twice.
    let again = workflows
        .record_execution(wpb::RecordExecutionRequest {
            workflow_id: w1.clone(),
            execution_id: e1.clone(),
            succeeded: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.counted, "{again:?}");
    assert_eq!(again.execution_count, 3);

    // ---- Agents.
    for a in [&walker, &standalone] {
        let got = agents.get_agent(pb::GetAgentRequest { id: a.id.clone() }).await.unwrap().into_inner();
        assert_eq!(&got, a);
    }
    expect_code(agents.get_agent(pb::GetAgentRequest { id: c_id.clone() }).await, Code::NotFound);
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(
        sorted_by_id(listed.agents, |a| a.id.clone()),
        sorted_by_id(vec![walker.clone(), standalone.clone()], |a| a.id.clone())
    );
    let of_workflow = agents
        .list_agents(pb::ListAgentsRequest { workflow_id: w1.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_workflow.agents, vec![walker.clone()]);
    let installed = agents.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(installed.installed_agents.len(), 2, "{installed:?}");
    let install = installed.installed_agents.iter().find(|i| i.agent.as_ref() == Some(&walker)).expect("installed");
    let alone = installed.installed_agents.iter().find(|i| i.agent.as_ref() == Some(&standalone)).expect("installed");
    assert!(alone.workflow_id.is_empty(), "{alone:?}");
    assert_eq!((install.workflow_id.as_str(), install.workflow_current_version), (w1.as_str(), 3));
    assert!(!install.upgrade_available && !install.workflow_deleted, "{install:?}");

    // The claim of w1 holds: a dry run offers w2 only (w3 is archived).
    let dry = agents
        .provision_agents(pb::ProvisionAgentsRequest {
            filter: Some(pb::ProvisionFilter {
                workflow_ids: vec![w1.clone(), w2.clone(), w3.clone()],
                ..Default::default()
            }),
            dry_run: true,
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let offered: Vec<&str> =
        dry.created.iter().map(|a| a.workflow_snapshot.as_ref().unwrap().workflow_id.as_str()).collect();
    assert_eq!(offered, vec![w2.as_str()], "{dry:?}");
    let mut skipped: Vec<(String, i32)> = dry.skipped.iter().map(|s| (s.workflow_id.clone(), s.reason)).collect();
    skipped.sort();
    let mut expected_skips =
        vec![(w1.clone(), pb::SkipReason::AlreadyHasAgent as i32), (w3.clone(), pb::SkipReason::Archived as i32)];
    expected_skips.sort();
    assert_eq!(skipped, expected_skips, "{dry:?}");
    let dry_all = agents
        .provision_agents(pb::ProvisionAgentsRequest { dry_run: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        dry_all.created.iter().all(|a| a.workflow_snapshot.as_ref().unwrap().workflow_id != w1),
        "the provisioned workflow is not offered again: {dry_all:?}"
    );
    assert!(dry_all.skipped.iter().any(|s| s.workflow_id == w1 && s.reason == pb::SkipReason::AlreadyHasAgent as i32));

    // ---- Executions, sessions, messages, feedback.
    let listed = executions
        .list_executions(pb::ListExecutionsRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions, vec![exec3.clone(), exec2.clone(), exec1.clone()], "newest first");
    let got = executions.get_execution(pb::GetExecutionRequest { id: e2.clone() }).await.unwrap().into_inner();
    assert_eq!(got, exec2);
    let sessions = executions
        .list_sessions(pb::ListSessionsRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sessions.sessions, vec![review_session.clone(), launch_session.clone()], "most recent first");
    for (session, messages) in [("launch-chat", &launch_messages), ("review-chat", &review_messages)] {
        let got = executions
            .list_session_messages(pb::ListSessionMessagesRequest {
                agent_id: a_id.clone(),
                session_id: session.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.messages, messages, "{session}");
    }
    let feedback = executions
        .list_feedback(pb::ListFeedbackRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(feedback.feedback, vec![feedback1.clone()]);

    // ---- Runs, their steps and events, reviews.
    for stored in [&waiting, &finished] {
        let got = runs.get_run(pb::GetRunRequest { id: stored.run.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got, stored.run);
    }
    let listed = runs
        .list_runs(pb::ListRunsRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sorted_by_id(listed.runs, |r| r.id.clone()),
        sorted_by_id(vec![waiting.run.clone(), finished.run.clone()], |r| r.id.clone())
    );
    assert_eq!(watch_events(&mut runs, &r2, None).await, finished.events, "a finished run's whole story");
    assert_eq!(watch_events(&mut runs, &r1, Some(5)).await, waiting.events, "a waiting run's story so far");
    let reviews = runs
        .list_pending_reviews(pb::ListPendingReviewsRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reviews.reviews, vec![pending.clone()]);
    // Schedule ticks have no RPC: read as an operator would.
    let ticks = app
        .agent_db
        .sql(
            "SELECT string_agg(agent_id::text || ' ' || coalesce(run_id::text, '-'), ',' ORDER BY tick_at) \
             FROM schedule_ticks",
        )
        .await;
    assert_eq!(ticks, format!("{a_id} {r2},{a_id} -"));

    // ---- The upgraded databases take new writes.
    // Feedback on an old execution moves the old counters.
    let new_feedback = executions
        .submit_feedback(pb::SubmitFeedbackRequest {
            execution_id: e3.clone(),
            score: 5,
            comment: "after the upgrade".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((new_feedback.agent_id.as_str(), new_feedback.execution_id.as_str()), (a_id.as_str(), e3.as_str()));
    let got = agents.get_agent(pb::GetAgentRequest { id: a_id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.feedback_count, got.feedback_mean_score), (2, 4.5), "{got:?}");
    let feedback = executions
        .list_feedback(pb::ListFeedbackRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(feedback.feedback, vec![new_feedback.clone(), feedback1.clone()], "newest first");

    // A new agent beside the old ones.
    let created = agents
        .create_agent(pb::CreateAgentRequest {
            name: "After the upgrade".into(),
            agent_type: pb::AgentType::AudienceAnalysis as i32,
            capabilities: vec!["segments".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    Uuid::parse_str(&created.id).expect("a UUID id");
    let got = agents.get_agent(pb::GetAgentRequest { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, created);
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.agents.len(), 3, "{listed:?}");

    // The pending review approved: the run walks on to its end.
    runs.approve_step(pb::ApproveStepRequest {
        run_id: r1.clone(),
        step_id: "review".into(),
        review_id: v1.clone(),
        edited_output: None,
        request_id: String::new(),
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the approved run finishes", || {
        let mut runs = runs.clone();
        let id = r1.clone();
        async move {
            runs.get_run(pb::GetRunRequest { id }).await.unwrap().into_inner().status == pb::RunStatus::Succeeded as i32
        }
    })
    .await;
    let done = runs.get_run(pb::GetRunRequest { id: r1.clone() }).await.unwrap().into_inner();
    assert_eq!(done.output, "Draft: spring sale", "{done:?}");
    let story = watch_events(&mut runs, &r1, None).await;
    assert_eq!(story[..5], waiting.events[..], "the old events come first");
    assert_eq!(story.last().map(|e| e.kind.as_str()), Some("run_succeeded"), "{story:?}");
    assert!(story.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1), "numbered without gaps: {story:?}");
    let reviews = runs
        .list_pending_reviews(pb::ListPendingReviewsRequest { agent_id: a_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(reviews.reviews.is_empty(), "{reviews:?}");

    // Provisioning claims w2 next to the old claim of w1.
    let provisioned = agents
        .provision_agents(pb::ProvisionAgentsRequest {
            filter: Some(pb::ProvisionFilter { workflow_ids: vec![w1.clone(), w2.clone()], ..Default::default() }),
            dry_run: false,
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(provisioned.created.len(), 1, "{provisioned:?}");
    assert_eq!(provisioned.created[0].workflow_snapshot.as_ref().unwrap().workflow_id, w2);
    assert_eq!(provisioned.created[0].workflow_snapshot.as_ref().unwrap().workflow_config, Some(headline_config()));
    let dry = agents
        .provision_agents(pb::ProvisionAgentsRequest {
            filter: Some(pb::ProvisionFilter { workflow_ids: vec![w1.clone(), w2.clone()], ..Default::default() }),
            dry_run: true,
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dry.created.is_empty(), "{dry:?}");
    assert_eq!(dry.skipped.len(), 2, "{dry:?}");
}
