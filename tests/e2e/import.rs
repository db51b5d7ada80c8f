//! Importing the platform's data: its workflows come in with their ids, tenants, statuses and
//! statistics, string steps and triggers mapped and free-form rules kept; a dry run changes
//! nothing, a second run changes nothing, bad rows are reported and the rest come in; a tenant
//! imports only its own rows, and only from the source the operator configured.

use engarde::proto::agent::v1 as apb;
use engarde::proto::workflow::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::import_fixture::*;
use crate::langflow_support::{FakeLangflow, RealLangflow, catalog_fixture, prompt_flow};

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
        // With a password in the URL (the test server trusts every login): it never shows.
        // (A TEST_DATABASE_URL that has a password of its own is used as it is.)
        let source = platform.url().replacen("://postgres@", "://postgres:import-s3cret@", 1);
        let service = spawn_workflow_service(&db, &[("IMPORT_SOURCE_URL", source)]).await;
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
        platform
            .execute(&format!("UPDATE platform.workflow_definitions SET status = 'archived' WHERE id = '{}'", seed[5].id))
            .await;
        let dry = client.import_workflows(import_request(true)).await.unwrap().into_inner();
        assert_eq!(counts(&dry), (0, 3, 8, 4));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[3].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.name.as_str(), got.version, got.execution_count), (seed[3].name.as_deref().unwrap(), 1, 40));
        let updated = client.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(counts(&updated), (0, 3, 8, 4));
        // A new status alone is no new version (as archiving is not).
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[5].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.status, got.version), (pb::WorkflowStatus::Archived as i32, 1));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[3].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.name.as_str(), got.version, got.execution_count, got.success_count), ("Renamed", 2, 100, 50));
        let got = client.get_workflow(pb::GetWorkflowRequest { id: seed[4].id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.version, got.execution_count, got.success_count), (1, 7, 6));
        let logs = service.logs();
        assert!(logs.contains("workflows imported") && !logs.contains("import-s3cret"), "{logs}");
    }
);

both_backends!(
    async fn the_import_is_off_until_the_operator_names_a_source(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client(SEED_TENANT).await;
        let status = expect_code(client.import_workflows(import_request(false)).await, Code::FailedPrecondition);
        assert!(status.message().contains("import is not enabled"), "{status:?}");

        let platform = PlatformDb::new().await;
        platform.insert_workflows(&seed_workflows(SEED_TENANT)).await;
        let db = TestDb::new(backend).await;
        let env = [("IMPORT_SOURCE_URL", platform.url()), ("IMPORT_MAX_ROWS", "10".to_owned())];
        let service = spawn_workflow_service(&db, &env).await;
        let mut client = client_of(&service, SEED_TENANT).await;
        // More rows than one answer lists: refused whole, nothing imported.
        let status = expect_code(client.import_workflows(import_request(false)).await, Code::FailedPrecondition);
        assert!(status.message().contains("more than 10 rows"), "{status:?}");
        assert!(own_workflows(&mut client).await.is_empty());
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

/// Both services with the import enabled on `platform`, agent-service on `langflow`.
async fn services_importing_from(backend: Backend, platform: &PlatformDb, langflow: &str) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let source = ("IMPORT_SOURCE_URL", platform.url());
    let workflow = spawn_workflow_service(&workflow_db, std::slice::from_ref(&source)).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &[source, ("LANGFLOW_URL", langflow.to_owned())]).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

fn agents_request(dry_run: bool) -> apb::ImportAgentsRequest {
    apb::ImportAgentsRequest { schema: SCHEMA.into(), dry_run }
}

fn agent_counts(answer: &apb::ImportAgentsResponse) -> (i32, i32, i32, i32) {
    (answer.created, answer.updated, answer.unchanged, answer.failed)
}

both_backends!(
    async fn the_platforms_agents_come_in_linked_to_their_flows_when_langflow_has_them(backend) {
        let (platform, seed, _) = platform_with_seed().await;
        let fake = FakeLangflow::start().await;
        let made_on_the_platform = RealLangflow::new(fake.url())
            .create_flow(&prompt_flow(&catalog_fixture(), "Made on the platform", "{input}", &[]))
            .await;
        let description_before = fake.flow(&made_on_the_platform).unwrap()["description"].clone();
        let linked = platform_agent(SEED_TENANT, "Social poster", &seed[0].id, &made_on_the_platform);
        let unlinked = platform_agent(SEED_TENANT, "Newsletter writer", &seed[1].id, "flow-gone-since-2024");
        let bad_type = AgentRow { agent_type: Some("seo_wizard".into()), ..platform_agent(SEED_TENANT, "Bad", &seed[2].id, "x") };
        let bad_id = AgentRow { id: "agent-42".into(), ..platform_agent(SEED_TENANT, "Old", &seed[2].id, "x") };
        let theirs = platform_agent(OTHER_TENANT, "Theirs", &seed[0].id, "x");
        platform.insert_agents(&[linked.clone(), unlinked.clone(), bad_type.clone(), bad_id.clone(), theirs.clone()]).await;

        let app = services_importing_from(backend, &platform, &fake.url()).await;
        let imported = app.workflows(SEED_TENANT).await.import_workflows(import_request(false)).await.unwrap().into_inner();
        assert_eq!(imported.created, 11);
        let mut agents = app.agents(SEED_TENANT).await;

        // A dry run: what would happen, nothing changed here nor in Langflow.
        let dry = agents.import_agents(agents_request(true)).await.unwrap().into_inner();
        assert_eq!(agent_counts(&dry), (2, 0, 0, 2), "{dry:#?}");
        let listed = agents.list_agents(apb::ListAgentsRequest { page_size: 50, ..Default::default() }).await.unwrap();
        assert!(listed.into_inner().agents.is_empty(), "a dry run imports nothing");
        assert_eq!(fake.flow(&made_on_the_platform).unwrap()["description"], description_before, "not adopted");

        let first = agents.import_agents(agents_request(false)).await.unwrap().into_inner();
        assert_eq!(agent_counts(&first), (2, 0, 0, 2), "{first:#?}");
        let row = |id: &str| first.rows.iter().find(|r| r.id == id).cloned().expect("row reported");
        assert!(row(&bad_type.id).reason.starts_with("agent_type: unknown type \"seo_wizard\""), "{:?}", row(&bad_type.id));
        assert!(row(&bad_id.id).reason.starts_with("id: \"agent-42\" is not a UUID"));
        assert!(first.rows.iter().all(|r| r.id != theirs.id), "only the caller's rows");

        let got = agents.get_agent(apb::GetAgentRequest { id: linked.id.clone() }).await.unwrap().into_inner();
        assert_eq!((got.name.as_str(), got.tenant_id.as_str()), ("Social poster", SEED_TENANT));
        assert_eq!(got.agent_type, apb::AgentType::ContentGeneration as i32);
        assert_eq!(got.status, apb::AgentStatus::Active as i32);
        assert_eq!(got.langflow_workflow_id, made_on_the_platform);
        assert_eq!(got.flow_origin, apb::FlowOrigin::Linked as i32);
        assert_eq!((got.total_executions, got.successful_executions, got.average_response_time_ms), (20, 17, 1500.0));
        assert_eq!(got.capabilities, ["human_review", "text_generation"]);
        let configuration = got.configuration.unwrap();
        assert_eq!((configuration.brand_voice.as_str(), configuration.tone.as_str()), ("Warm and direct", "friendly"));
        assert_eq!(configuration.extra.get("max_posts").map(String::as_str), Some("3"));
        assert_eq!(configuration.extra.get("channels").map(String::as_str), Some("[\"linkedin\"]"));
        let snapshot = got.workflow_snapshot.unwrap();
        assert_eq!((snapshot.workflow_id.as_str(), snapshot.workflow_version), (seed[0].id.as_str(), 1));
        assert_eq!(snapshot.workflow_name, "Social Media Content Pipeline");
        let config = snapshot.workflow_config.unwrap();
        assert_eq!(config.steps.len(), 4);
        let extra = engarde::kit::struct_json::struct_to_json("extra_rules", &config.extra_rules.unwrap()).unwrap();
        assert_eq!(extra["brand_safety"]["level"], "strict", "the free-form rules are in the snapshot too");
        assert_ne!(fake.flow(&made_on_the_platform).unwrap()["description"], description_before, "adopted: marked");

        let got = agents.get_agent(apb::GetAgentRequest { id: unlinked.id.clone() }).await.unwrap().into_inner();
        assert!(got.langflow_workflow_id.is_empty());
        assert_eq!(got.status, apb::AgentStatus::Draft as i32, "no flow, so it does not run");
        assert!(row(&unlinked.id).notes.iter().any(|n| n.contains("flow-gone-since-2024") && n.contains("not linked")));

        // A second run changes nothing; another tenant sees none of it.
        let again = agents.import_agents(agents_request(false)).await.unwrap().into_inner();
        assert_eq!(agent_counts(&again), (0, 0, 2, 2), "{again:#?}");
        let got = agents.get_agent(apb::GetAgentRequest { id: linked.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.version, 1);
        let mut other = app.agents(OTHER_TENANT).await;
        expect_code(other.get_agent(apb::GetAgentRequest { id: linked.id.clone() }).await, Code::NotFound);

        // Provisioning makes no second agent of a workflow an imported agent was made from.
        let provisioned = agents
            .provision_agents(apb::ProvisionAgentsRequest { dry_run: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let made_from: Vec<String> =
            provisioned.created.iter().filter_map(|a| a.workflow_snapshot.as_ref().map(|s| s.workflow_id.clone())).collect();
        assert!(made_from.len() >= 9, "the other workflows would get agents: {made_from:?}");
        assert!(!made_from.contains(&seed[0].id) && !made_from.contains(&seed[1].id), "{made_from:?}");
    }
);

both_backends!(
    async fn the_operator_imports_every_tenants_agents_with_the_command(backend) {
        let (platform, seed, _) = platform_with_seed().await;
        let ours = platform_agent(SEED_TENANT, "Ours", &seed[0].id, "no-such-flow");
        let theirs = platform_agent(OTHER_TENANT, "Theirs", &seed[0].id, "no-such-flow");
        platform.insert_agents(&[ours.clone(), theirs.clone()]).await;
        let fake = FakeLangflow::start().await;
        let app = services_importing_from(backend, &platform, &fake.url()).await;
        // Without a source, the RPC is off.
        let plain = spawn_agent_service(&TestDb::new(backend).await, &app.workflow.url(), &[]).await;
        let mut off = apb::agent_service_client::AgentServiceClient::with_interceptor(plain.channel().await, as_tenant(SEED_TENANT));
        let status = expect_code(off.import_agents(agents_request(false)).await, Code::FailedPrecondition);
        assert!(status.message().contains("import is not enabled"), "{status:?}");

        app.workflows(SEED_TENANT).await.import_workflows(import_request(false)).await.unwrap();
        let output = std::process::Command::new(binary("agent-service"))
            .env_clear()
            .env("DATABASE_URL", app.agent_db.url())
            .env("WORKFLOW_SERVICE_URL", app.workflow.url())
            .env("LANGFLOW_URL", fake.url())
            .env("AUTH_MODE", "dev")
            .env("SERVICE_TOKEN_SECRET", SERVICE_SECRET)
            .env("RUST_LOG", "warn")
            .args(["import", "--source-url", &platform.url(), "--schema", SCHEMA])
            .output()
            .expect("agent-service import runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(summary, json!({"dry_run": false, "created": 2, "updated": 0, "unchanged": 0, "failed": 0}));

        let got = app.agents(SEED_TENANT).await.get_agent(apb::GetAgentRequest { id: ours.id.clone() }).await;
        let got = got.unwrap().into_inner();
        assert_eq!(got.workflow_snapshot.unwrap().workflow_id, seed[0].id, "snapshot read for the row's tenant");
        let got = app.agents(OTHER_TENANT).await.get_agent(apb::GetAgentRequest { id: theirs.id.clone() }).await;
        let got = got.unwrap().into_inner();
        assert!(got.workflow_snapshot.is_none(), "the other tenant has no such workflow");
    }
);
