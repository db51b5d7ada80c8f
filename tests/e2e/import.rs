//! Importing the platform's data: its workflows come in with their ids, tenants, statuses and
//! statistics, string steps and triggers mapped and free-form rules kept; a dry run changes
//! nothing, a second run changes nothing, bad rows are reported and the rest come in; a tenant
//! imports only its own rows, and only from the source the operator configured.

use engarde::proto::workflow::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::import_fixture::*;

const OTHER_TENANT: &str = "other-tenant-002";

async fn client_of(service: &ServiceProcess, tenant: &str) -> WorkflowClient {
    pb::workflow_service_client::WorkflowServiceClient::with_interceptor(service.channel().await, as_tenant(tenant))
}

fn import_request(dry_run: bool) -> pb::ImportWorkflowsRequest {
    pb::ImportWorkflowsRequest { schema: SCHEMA.into(), dry_run }
}

fn outcome(row: &pb::ImportedRow) -> pb::ImportOutcome {
    pb::ImportOutcome::try_from(row.outcome).unwrap()
}

/// (created, updated, unchanged, failed)
fn counts(answer: &pb::ImportWorkflowsResponse) -> (i32, i32, i32, i32) {
    (answer.created, answer.updated, answer.unchanged, answer.failed)
}

/// The tenant's own workflows (not the library's).
async fn own_workflows(client: &mut WorkflowClient) -> Vec<pb::WorkflowDefinition> {
    let request = pb::ListWorkflowsRequest { is_template: Some(false), page_size: 200, ..Default::default() };
    client.list_workflows(request).await.unwrap().into_inner().workflows
}

/// The platform's database with the seed of `SEED_TENANT`, two rows of another tenant and the
/// bad rows; answers the seed and the bad rows with their expected reasons.
async fn platform_with_seed() -> (PlatformDb, Vec<WorkflowRow>, Vec<(WorkflowRow, &'static str)>) {
    let platform = PlatformDb::new().await;
    let seed = seed_workflows(SEED_TENANT);
    let bad = bad_workflows(SEED_TENANT);
    platform.insert_workflows(&seed).await;
    platform.insert_workflows(&seed_workflows(OTHER_TENANT)[..2]).await;
    platform.insert_workflows(&bad.iter().map(|(row, _)| row.clone()).collect::<Vec<_>>()).await;
    (platform, seed, bad)
}

both_backends!(
    async fn the_platforms_workflows_come_in_with_their_ids_and_statistics(backend) {
        let (platform, seed, bad) = platform_with_seed().await;
        let db = TestDb::new(backend).await;
        let service = spawn_workflow_service(&db, &[("IMPORT_SOURCE_URL", platform.url())]).await;
        let mut client = client_of(&service, SEED_TENANT).await;

        // A dry run says what would happen, and changes nothing.
        let dry = client.import_workflows(import_request(true)).await.unwrap().into_inner();
        assert!(dry.dry_run);
        assert_eq!(counts(&dry), (11, 0, 0, 4), "{dry:#?}");
        assert!(own_workflows(&mut client).await.is_empty(), "a dry run imports nothing");

        let first = client.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(counts(&first), (11, 0, 0, 4), "{first:#?}");
        assert_eq!(first.rows.len(), 15, "only the caller's tenant's rows: {first:#?}");
        for (row, reason) in &bad {
            let reported = first.rows.iter().find(|r| r.id == row.id).expect("bad row reported by id");
            assert_eq!(outcome(reported), pb::ImportOutcome::Failed);
            assert!(reported.reason.starts_with(reason), "{} for {}: {:?}", reason, row.id, reported.reason);
        }

        // Every seed row, as the tenant reads it: its id, values and statistics.
        for (n, row) in seed.iter().enumerate() {
            let reported = first.rows.iter().find(|r| r.id == row.id).expect("seed row reported");
            assert_eq!(outcome(reported), pb::ImportOutcome::Created, "{reported:?}");
            let got = client.get_workflow(pb::GetWorkflowRequest { id: row.id.clone() }).await.unwrap().into_inner();
            assert_eq!(got.tenant_id, SEED_TENANT);
            assert_eq!(Some(got.name.as_str()), row.name.as_deref());
            assert_eq!(Some(got.description.as_str()), row.description.as_deref());
            assert_eq!(got.status, pb::WorkflowStatus::Active as i32);
            assert!(!got.is_template, "a tenant's row is its own workflow, not a shared template");
            assert_eq!(got.version, 1);
            let executions = 10 * (n as i64 + 1);
            assert_eq!(got.execution_count, executions, "{}", got.name);
            assert_eq!(got.success_count, (executions as f64 * 0.9).round() as i64, "{}", got.name);
            let config = got.workflow_config.unwrap();
            let platform_config: serde_json::Value = serde_json::from_str(row.workflow_config.as_ref().unwrap()).unwrap();
            let ids: Vec<&str> = config.steps.iter().map(|s| s.id.as_str()).collect();
            let expected: Vec<&str> =
                platform_config["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
            assert_eq!(ids, expected);
            let extra = config.extra_rules.expect("the platform's own rules are kept");
            let extra = engarde::kit::struct_json::struct_to_json("extra_rules", &extra).unwrap();
            assert_eq!(
                serde_json::Value::Object(extra),
                json!({"platforms": ["linkedin", "instagram"],
                       "brand_safety": {"level": "strict", "blocked_words": ["free", "guarantee"]},
                       "notify": null})
            );
        }
        let pipeline = client.get_workflow(pb::GetWorkflowRequest { id: seed[0].id.clone() }).await.unwrap().into_inner();
        assert_eq!(pipeline.name, "Social Media Content Pipeline");
        assert_eq!(pipeline.category, pb::WorkflowCategory::ContentGeneration as i32);
        let config = pipeline.workflow_config.unwrap();
        let kinds: Vec<i32> = config.steps.iter().map(|s| s.kind).collect();
        use pb::StepKind::{Llm, Output, Review};
        assert_eq!(kinds, [Llm as i32, Llm as i32, Review as i32, Output as i32]);
        assert!(config.steps[0].prompt.contains("{input}"));
        let triggers: Vec<(i32, &str)> = config.triggers.iter().map(|t| (t.r#type, t.cron.as_str())).collect();
        assert_eq!(triggers, [(pb::TriggerType::Manual as i32, ""), (pb::TriggerType::Scheduled as i32, "0 9 * * *")]);
        assert!(config.rules.unwrap().approval_required);
        assert_eq!(own_workflows(&mut client).await.len(), 11);

        // Another tenant neither sees them nor imports them.
        let mut other = client_of(&service, OTHER_TENANT).await;
        expect_code(other.get_workflow(pb::GetWorkflowRequest { id: seed[0].id.clone() }).await, Code::NotFound);
        let theirs = other.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(counts(&theirs), (2, 0, 0, 0), "only its own two rows: {theirs:#?}");

        // A second run changes nothing (no new versions either).
        let again = client.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(counts(&again), (0, 0, 11, 4), "{again:#?}");
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[3].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.version, got.execution_count), (1, 40));

        // A changed row is updated: a new name makes a new version, new figures do not.
        platform
            .execute(&format!(
                "UPDATE platform.workflow_definitions SET name = 'Renamed', execution_count = 100, success_rate = 0.5 \
                 WHERE id = '{}'",
                seed[3].id
            ))
            .await;
        platform
            .execute(&format!("UPDATE platform.workflow_definitions SET execution_count = 7 WHERE id = '{}'", seed[4].id))
            .await;
        let dry = client.import_workflows(import_request(true)).await.unwrap().into_inner();
        assert_eq!(counts(&dry), (0, 2, 9, 4));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[3].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.name.as_str(), got.version, got.execution_count), (seed[3].name.as_deref().unwrap(), 1, 40));
        let updated = client.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(counts(&updated), (0, 2, 9, 4));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[3].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.name.as_str(), got.version, got.execution_count, got.success_count), ("Renamed", 2, 100, 50));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[4].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.version, got.execution_count, got.success_count), (1, 7, 6));
    }
);

both_backends!(
    async fn the_import_is_off_until_the_operator_names_a_source(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client(SEED_TENANT).await;
        let status = expect_code(client.import_workflows(import_request(false)).await, Code::FailedPrecondition);
        assert!(status.message().contains("import is not enabled"), "{status:?}");

        let platform = PlatformDb::new().await;
        let db = TestDb::new(backend).await;
        let service = spawn_workflow_service(&db, &[("IMPORT_SOURCE_URL", platform.url())]).await;
        let mut client = client_of(&service, SEED_TENANT).await;
        for schema in ["", "platform; DROP TABLE x", "1st", "a.b"] {
            let request = pb::ImportWorkflowsRequest { schema: schema.into(), dry_run: true };
            let status = expect_code(client.import_workflows(request).await, Code::InvalidArgument);
            assert_eq!(field_violations(&status)[0].0, "schema", "{schema:?}");
        }
        // A schema without the platform's table is the source's problem, said as such.
        let request = pb::ImportWorkflowsRequest { schema: "public".into(), dry_run: true };
        let status = expect_code(client.import_workflows(request).await, Code::FailedPrecondition);
        assert!(status.message().contains("workflow_definitions"), "{status:?}");
        assert!(!status.message().contains(&platform.url()), "the source's URL is not answered");
    }
);

/// A Struct of JSON, for requests.
fn rules_struct(value: serde_json::Value) -> prost_types::Struct {
    engarde::kit::struct_json::json_to_struct(value.as_object().unwrap())
}

both_backends!(
    async fn rules_we_do_not_interpret_are_stored_and_answered_intact(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        let rules = json!({"tone": {"formal": 0.25, "words": ["crisp", "clear"]}, "quota": 3.0, "off": false, "none": null});
        let mut request = crate::workflows_crud::create_request("With extra rules");
        request.workflow_config.as_mut().unwrap().extra_rules = Some(rules_struct(rules.clone()));
        let created = client.create_workflow(request).await.unwrap().into_inner();
        let got = client.get_workflow(pb::GetWorkflowRequest { id: created.id.clone() }).await.unwrap().into_inner();
        let extra = got.workflow_config.unwrap().extra_rules.unwrap();
        assert_eq!(serde_json::Value::Object(engarde::kit::struct_json::struct_to_json("x", &extra).unwrap()), rules);

        // Bounded: too deep, and no NUL anywhere in it.
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        let mut request = crate::workflows_crud::create_request("Too deep");
        request.workflow_config.as_mut().unwrap().extra_rules = Some(rules_struct(deep));
        let status = expect_code(client.create_workflow(request).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.extra_rules");
        let mut request = crate::workflows_crud::create_request("NUL");
        request.workflow_config.as_mut().unwrap().extra_rules = Some(rules_struct(json!({"k": ["ok", "no\u{0}"]})));
        let status = expect_code(client.create_workflow(request).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.extra_rules[\"k\"][1]");
    }
);

both_backends!(
    async fn the_operator_imports_every_tenant_with_the_command(backend) {
        let (platform, seed, bad) = platform_with_seed().await;
        let db = TestDb::new(backend).await;
        let run = |dry_run: bool| {
            let mut command = std::process::Command::new(binary("workflow-service"));
            command
                .env_clear()
                .env("DATABASE_URL", db.url())
                .env("RUST_LOG", "warn")
                .args(["import", "--source-url", &platform.url(), "--schema", SCHEMA]);
            if dry_run {
                command.arg("--dry-run");
            }
            command.output().expect("workflow-service import runs")
        };
        let lines = |output: &std::process::Output| -> Vec<serde_json::Value> {
            String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
        };

        let dry = run(true);
        let report = lines(&dry);
        let summary = report.last().unwrap();
        assert_eq!(summary, &json!({"dry_run": true, "created": 13, "updated": 0, "unchanged": 0, "failed": 4}));

        let first = run(false);
        assert_eq!(first.status.code(), Some(2), "some rows failed: {}", String::from_utf8_lossy(&first.stderr));
        let report = lines(&first);
        assert_eq!(report.last().unwrap()["created"], 13);
        for (row, reason) in &bad {
            let line = report.iter().find(|l| l["id"] == row.id.as_str()).expect("bad row reported");
            assert_eq!(line["outcome"], "failed");
            assert!(line["reason"].as_str().unwrap().starts_with(reason), "{line}");
        }
        assert!(!String::from_utf8_lossy(&first.stderr).contains("postgres://postgres@"), "no source URL in logs");

        let again = run(false);
        assert_eq!(lines(&again).last().unwrap(), &json!({"dry_run": false, "created": 0, "updated": 0, "unchanged": 13, "failed": 4}));

        // Every tenant's rows came in, each readable by its own tenant only.
        let service = spawn_workflow_service(&db, &[]).await;
        let mut client = client_of(&service, SEED_TENANT).await;
        assert_eq!(own_workflows(&mut client).await.len(), 11);
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[10].id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.execution_count, 110);
        let mut other = client_of(&service, OTHER_TENANT).await;
        assert_eq!(own_workflows(&mut other).await.len(), 2);
    }
);
