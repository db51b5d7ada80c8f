//! The seed's story: a tenant with workflows and no agents provisions them, sees one installed
//! agent per workflow, configures one, and a second provisioning creates nothing. Plus
//! provisioning from two agent-service processes at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use prost_types::FieldMask;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;

/// The agent type a workflow gets: a walker when it walks on its own, else by its category.
pub fn expected_type(workflow: &wpb::WorkflowDefinition) -> pb::AgentType {
    let config = workflow.workflow_config.as_ref().unwrap();
    if config.rules.as_ref().is_some_and(|r| r.autonomous) {
        return pb::AgentType::Walker;
    }
    match wpb::WorkflowCategory::try_from(workflow.category).unwrap() {
        wpb::WorkflowCategory::ContentGeneration => pb::AgentType::ContentGeneration,
        wpb::WorkflowCategory::AbTesting => pb::AgentType::CopyGeneration,
        wpb::WorkflowCategory::AudienceIntelligence => pb::AgentType::AudienceAnalysis,
        wpb::WorkflowCategory::BudgetOptimization => pb::AgentType::CampaignOptimization,
        wpb::WorkflowCategory::AnalyticsAutomation => pb::AgentType::AnalyticsReporting,
        wpb::WorkflowCategory::Unspecified => panic!("a workflow without category"),
    }
}

/// Every workflow the tenant can see, by id.
pub async fn all_workflows(client: &mut WorkflowClient) -> HashMap<String, wpb::WorkflowDefinition> {
    let listed = client
        .list_workflows(wpb::ListWorkflowsRequest { page_size: 200, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    listed.workflows.into_iter().map(|w| (w.id.clone(), w)).collect()
}

/// Every installed agent, a small page at a time (so that paging is exercised too).
pub async fn all_installed(client: &mut AgentClient) -> Vec<pb::InstalledAgent> {
    let mut installed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_installed_agents(pb::ListInstalledAgentsRequest { page_size: 5, page_token })
            .await
            .unwrap()
            .into_inner();
        installed.extend(page.installed_agents);
        if page.next_page_token.is_empty() {
            return installed;
        }
        page_token = page.next_page_token;
    }
}

fn a_configuration() -> pb::AgentConfig {
    pb::AgentConfig {
        brand_voice: "Bold, warm, no jargon".into(),
        tone: "playful".into(),
        target_audience: "Small-business owners".into(),
        model: Some(pb::ModelSettings {
            provider: "openai".into(),
            model_name: "gpt-4o-mini".into(),
            temperature: Some(0.4),
            max_tokens: Some(800),
            ..Default::default()
        }),
        extra: BTreeMap::from([("cta.style".to_string(), "soft".to_string())]),
    }
}

both_backends!(
    async fn a_tenant_with_workflows_and_no_agents_gets_one_agent_per_workflow(backend) {
        let app = spawn_app(backend).await;
        let tenant = "seed-tenant";
        let mut workflows = app.workflows(tenant).await;
        let mut agents = app.agents(tenant).await;

        // The seed: the 11 templates plus one workflow of the tenant's own; no agents.
        workflows.create_workflow(create_request("Our weekly posts")).await.unwrap();
        let seen = all_workflows(&mut workflows).await;
        assert_eq!(seen.len(), 12);
        assert_eq!(seen.values().filter(|w| w.is_template).count(), 11);
        assert!(all_installed(&mut agents).await.is_empty());

        // A dry run answers what would be made, and makes nothing.
        let dry = agents
            .provision_agents(pb::ProvisionAgentsRequest { dry_run: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(dry.dry_run);
        assert_eq!(dry.created.len(), 12);
        assert!(dry.skipped.is_empty());
        assert!(all_installed(&mut agents).await.is_empty());

        let request = pb::ProvisionAgentsRequest { request_id: "provision-1".into(), ..Default::default() };
        let provisioned = agents.provision_agents(request.clone()).await.unwrap().into_inner();
        assert!(!provisioned.dry_run);
        assert_eq!(provisioned.created.len(), 12);
        assert!(provisioned.skipped.is_empty());
        // A retry of the same request gets the same answer, and makes nothing more.
        assert_eq!(agents.provision_agents(request).await.unwrap().into_inner(), provisioned);

        // Installed: one agent per workflow, typed after its category, pinned at its version.
        let installed = all_installed(&mut agents).await;
        assert_eq!(installed.len(), 12);
        let sources: BTreeSet<&str> = installed.iter().map(|i| i.workflow_id.as_str()).collect();
        assert_eq!(sources, seen.keys().map(String::as_str).collect());
        for item in &installed {
            let workflow = &seen[&item.workflow_id];
            let agent = item.agent.as_ref().unwrap();
            let snapshot = agent.workflow_snapshot.as_ref().unwrap();
            assert_eq!(agent.name, format!("{} Agent", workflow.name));
            assert_eq!(agent.agent_type, expected_type(workflow) as i32, "{}", workflow.name);
            assert_eq!(agent.status, pb::AgentStatus::Draft as i32);
            assert_eq!(agent.tenant_id, tenant);
            assert_eq!((snapshot.workflow_id.as_str(), snapshot.workflow_version), (workflow.id.as_str(), workflow.version));
            assert_eq!(snapshot.workflow_config, workflow.workflow_config);
            assert!(agent.capabilities.contains(&"text_generation".to_string()), "{:?}", agent.capabilities);
            assert_eq!((item.workflow_name.as_str(), item.category), (workflow.name.as_str(), workflow.category));
            assert_eq!(item.workflow_status, workflow.status);
            assert_eq!(item.is_template, workflow.is_template);
            assert!(!item.workflow_deleted && !item.upgrade_available);
        }
        // Oldest first, then by id: the order is stable across pages.
        let ids: Vec<String> = installed.iter().map(|i| i.agent.as_ref().unwrap().id.clone()).collect();
        let mut created_ids: Vec<String> = provisioned.created.iter().map(|a| a.id.clone()).collect();
        created_ids.sort();
        assert_eq!(ids, created_ids);

        // Configure one agent: read, replace with the etag read, and a stale etag is refused.
        let agent_id = ids[0].clone();
        let config = agents
            .get_agent_config(pb::GetAgentConfigRequest { agent_id: agent_id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(config.configuration.as_ref().unwrap().brand_voice, "");
        let updated = agents
            .update_agent_config(pb::UpdateAgentConfigRequest {
                agent_id: agent_id.clone(),
                configuration: Some(a_configuration()),
                update_mask: None,
                etag: config.etag.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.configuration, Some(a_configuration()));
        assert_ne!(updated.etag, config.etag);
        let read_back = agents.get_agent_config(pb::GetAgentConfigRequest { agent_id: agent_id.clone() }).await.unwrap().into_inner();
        assert_eq!(read_back, updated);

        // A masked update changes only what it names (and one entry of extra).
        let masked = agents
            .update_agent_config(pb::UpdateAgentConfigRequest {
                agent_id: agent_id.clone(),
                configuration: Some(pb::AgentConfig {
                    tone: "professional".into(),
                    extra: BTreeMap::from([("region".to_string(), "emea".to_string())]),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask { paths: vec!["tone".into(), "extra.region".into()] }),
                etag: updated.etag.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let masked_config = masked.configuration.unwrap();
        assert_eq!((masked_config.tone.as_str(), masked_config.brand_voice.as_str()), ("professional", "Bold, warm, no jargon"));
        assert_eq!(masked_config.extra.len(), 2);

        let stale = agents
            .update_agent_config(pb::UpdateAgentConfigRequest {
                agent_id: agent_id.clone(),
                configuration: Some(a_configuration()),
                update_mask: None,
                etag: config.etag.clone(),
                request_id: String::new(),
            })
            .await;
        expect_code(stale, Code::Aborted);

        // A second provisioning creates nothing: every workflow already has its agent.
        let again = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert!(again.created.is_empty());
        assert_eq!(again.skipped.len(), 12);
        assert!(again.skipped.iter().all(|s| s.reason == pb::SkipReason::AlreadyHasAgent as i32));
        assert!(again.skipped.iter().all(|s| !s.workflow_name.is_empty()));
        assert_eq!(all_installed(&mut agents).await.len(), 12);
    }
);

both_backends!(
    async fn provisioning_honours_its_filter(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("filter-tenant").await;
        let mut agents = app.agents("filter-tenant").await;
        let own = workflows.create_workflow(create_request("Own")).await.unwrap().into_inner();
        let retired = workflows.create_workflow(create_request("Retired")).await.unwrap().into_inner();
        workflows
            .archive_workflow(wpb::ArchiveWorkflowRequest { id: retired.id.clone(), ..Default::default() })
            .await
            .unwrap();

        // Own workflows only: the archived one is skipped, and says why.
        let own_only = agents
            .provision_agents(pb::ProvisionAgentsRequest {
                filter: Some(pb::ProvisionFilter { include_templates: Some(false), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own_only.created.len(), 1);
        assert_eq!(own_only.created[0].workflow_snapshot.as_ref().unwrap().workflow_id, own.id);
        assert_eq!(own_only.skipped.len(), 1);
        assert_eq!((own_only.skipped[0].workflow_id.as_str(), own_only.skipped[0].reason), (retired.id.as_str(), pb::SkipReason::Archived as i32));

        // One category of templates.
        let analytics = agents
            .provision_agents(pb::ProvisionAgentsRequest {
                filter: Some(pb::ProvisionFilter { category: wpb::WorkflowCategory::AnalyticsAutomation as i32, ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(analytics.created.len() >= 2);
        assert!(analytics.created.iter().all(|a| {
            a.workflow_snapshot.as_ref().unwrap().category == wpb::WorkflowCategory::AnalyticsAutomation as i32
        }));
        // (The library's analytics templates walk on their own: their agents are walkers.)
        assert!(analytics.created.iter().all(|a| a.agent_type == pb::AgentType::Walker as i32));

        // Named ids: one that does not exist, one excluded by the category.
        let missing = uuid::Uuid::new_v4().to_string();
        let named = agents
            .provision_agents(pb::ProvisionAgentsRequest {
                filter: Some(pb::ProvisionFilter {
                    category: wpb::WorkflowCategory::AbTesting as i32,
                    workflow_ids: vec![own.id.clone(), missing.clone()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(named.created.is_empty());
        let reasons: HashMap<String, i32> = named.skipped.iter().map(|s| (s.workflow_id.clone(), s.reason)).collect();
        assert_eq!(reasons[&missing], pb::SkipReason::WorkflowNotFound as i32);
        assert_eq!(reasons[&own.id], pb::SkipReason::ExcludedByFilter as i32);

        let status = expect_code(
            agents
                .provision_agents(pb::ProvisionAgentsRequest {
                    filter: Some(pb::ProvisionFilter { workflow_ids: vec!["nope".into()], category: 42, ..Default::default() }),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        let fields: Vec<String> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["filter.category", "filter.workflow_ids[0]"]);
    }
);

both_backends!(
    async fn concurrent_provisioning_from_two_processes_makes_each_agent_once(backend) {
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        // Two replicas of agent-service on one database.
        let first = spawn_agent_service(&agent_db, &workflow.url(), &[]).await;
        let second = spawn_agent_service(&agent_db, &workflow.url(), &[]).await;
        let tenant = "busy-tenant";
        let mut workflows =
            engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::with_interceptor(workflow.channel().await, as_tenant(tenant));
        for i in 0..4 {
            workflows.create_workflow(create_request(&format!("Own {i}"))).await.unwrap();
        }
        let expected = 11 + 4;

        let client = |process: &ServiceProcess| {
            let url = process.url();
            async move {
                let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
                engarde::proto::agent::v1::agent_service_client::AgentServiceClient::with_interceptor(channel, as_tenant(tenant))
            }
        };
        let mut calls = Vec::new();
        for round in 0..3 {
            for process in [&first, &second] {
                let mut agents = client(process).await;
                calls.push(tokio::spawn(async move {
                    // Distinct request ids: these are different requests, not retries.
                    let request = pb::ProvisionAgentsRequest { request_id: format!("{round}-{}", uuid::Uuid::new_v4()), ..Default::default() };
                    agents.provision_agents(request).await.map(|r| r.into_inner())
                }));
            }
        }
        let mut created = Vec::new();
        for call in calls {
            let outcome = call.await.unwrap().unwrap_or_else(|status| panic!("provisioning failed: {status:?}\n{}", first.logs()));
            assert_eq!(outcome.created.len() + outcome.skipped.len(), expected);
            assert!(outcome.skipped.iter().all(|s| s.reason == pb::SkipReason::AlreadyHasAgent as i32));
            created.extend(outcome.created);
        }
        assert_eq!(created.len(), expected, "each workflow's agent is made exactly once");

        let mut agents = client(&first).await;
        let listed = agents
            .list_agents(pb::ListAgentsRequest { page_size: 200, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .agents;
        assert_eq!(listed.len(), expected);
        let sources: BTreeSet<String> =
            listed.iter().map(|a| a.workflow_snapshot.as_ref().unwrap().workflow_id.clone()).collect();
        assert_eq!(sources.len(), expected);
    }
);

/// A flow export by the shared rules: one node is enough for the fake Langflow.
const USABLE_EXPORT: &str =
    r#"{"name": "Exported", "data": {"nodes": [{"id": "ChatInput-1", "data": {"type": "ChatInput"}}], "edges": []}}"#;
/// The export of the issue: valid JSON, no nodes.
const NODELESS_EXPORT: &str = r#"{"data":{}}"#;

/// Gives a stored workflow `export` behind workflow-service's back, as a row written before its
/// validation refused such exports would hold it; waits until workflow-service answers it.
async fn store_export_behind_the_back(app: &TestApp, workflows: &mut WorkflowClient, id: &str, export: &str) {
    let sql = match app.workflow_db.backend() {
        Backend::Postgres => format!(
            "UPDATE workflows SET config = jsonb_set(config, '{{langflow_flow_json}}', to_jsonb('{export}'::text)) \
             WHERE id = '{id}' RETURNING 'updated'"
        ),
        Backend::Sqlite => format!(
            "UPDATE workflows SET config = json_set(config, '$.langflow_flow_json', '{export}') \
             WHERE id = '{id}' RETURNING 'updated'"
        ),
    };
    assert_eq!(app.workflow_db.sql(&sql).await, "updated");
    // PostgreSQL announces the change to workflow-service's cache; wait until it is read back.
    eventually(std::time::Duration::from_secs(30), "workflow-service reads the stored export", || {
        let mut workflows = workflows.clone();
        let id = id.to_string();
        async move {
            let workflow = workflows.get_workflow(wpb::GetWorkflowRequest { id }).await.unwrap().into_inner();
            workflow.workflow_config.unwrap().langflow_flow_json == export
        }
    })
    .await;
}

both_backends!(
    async fn one_workflow_with_an_unusable_flow_export_is_skipped_and_the_others_are_provisioned(backend) {
        let fake = crate::langflow_support::FakeLangflow::start().await;
        let app = crate::agents_execution::spawn_with_langflow(backend, &fake.url(), &[]).await;
        let tenant = "export-tenant";
        let mut workflows = app.workflows(tenant).await;
        let mut agents = app.agents(tenant).await;

        // Workflow-service no longer takes a flow export without nodes...
        let mut nodeless = create_request("Nodeless");
        nodeless.workflow_config.as_mut().unwrap().langflow_flow_json = NODELESS_EXPORT.into();
        let status = expect_code(workflows.create_workflow(nodeless).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.langflow_flow_json");

        // ...but one can still be stored (written before, or around, that validation).
        let generated = workflows.create_workflow(create_request("Generated")).await.unwrap().into_inner();
        let mut uploaded = create_request("Uploaded");
        uploaded.workflow_config.as_mut().unwrap().langflow_flow_json = USABLE_EXPORT.into();
        let uploaded = workflows.create_workflow(uploaded).await.unwrap().into_inner();
        let mut broken = create_request("Broken");
        broken.workflow_config.as_mut().unwrap().langflow_flow_json = USABLE_EXPORT.into();
        let broken = workflows.create_workflow(broken).await.unwrap().into_inner();
        store_export_behind_the_back(&app, &mut workflows, &broken.id, NODELESS_EXPORT).await;

        // The dry run and the provisioning agree: 11 templates and 2 good workflows get agents,
        // the broken one is skipped with its reason.
        for dry_run in [true, false] {
            let outcome = agents
                .provision_agents(pb::ProvisionAgentsRequest { dry_run, ..Default::default() })
                .await
                .unwrap_or_else(|e| panic!("dry_run {dry_run}: {e:?}"))
                .into_inner();
            assert_eq!(outcome.created.len(), 13, "dry_run {dry_run}");
            assert_eq!(outcome.skipped.len(), 1, "dry_run {dry_run}: {:?}", outcome.skipped);
            let skipped = &outcome.skipped[0];
            assert_eq!(
                (skipped.workflow_id.as_str(), skipped.workflow_name.as_str(), skipped.reason),
                (broken.id.as_str(), "Broken", pb::SkipReason::InvalidFlowExport as i32)
            );
            assert!(skipped.detail.contains("no nodes"), "{}", skipped.detail);
        }
        let installed = all_installed(&mut agents).await;
        let sources: BTreeSet<&str> = installed.iter().map(|i| i.workflow_id.as_str()).collect();
        assert_eq!(installed.len(), 13);
        assert!(sources.contains(generated.id.as_str()) && sources.contains(uploaded.id.as_str()));
        assert!(!sources.contains(broken.id.as_str()));
        assert!(installed.iter().all(|i| !i.agent.as_ref().unwrap().langflow_workflow_id.is_empty()));
        assert_eq!(fake.flows().len(), 13);

        // One agent from it is refused as a problem of the workflow, not as Langflow being down.
        let status = expect_code(
            agents
                .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                    workflow_id: broken.id.clone(),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
        );
        assert!(status.message().contains("no nodes"), "{}", status.message());
        assert_eq!(fake.flows().len(), 13);
    }
);

both_backends!(
    async fn a_re_run_with_langflow_makes_no_flow_for_workflows_that_have_agents(backend) {
        let fake = crate::langflow_support::FakeLangflow::start().await;
        let app = crate::agents_execution::spawn_with_langflow(backend, &fake.url(), &[]).await;
        let mut agents = app.agents("rerun-tenant").await;

        let first = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert_eq!(first.created.len(), 11, "the templates are provisioned");
        assert_eq!(fake.flows_created(), 11);

        let again = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert!(again.created.is_empty(), "{:?}", again.created);
        assert_eq!(again.skipped.len(), 11);
        assert!(again.skipped.iter().all(|s| s.reason == pb::SkipReason::AlreadyHasAgent as i32), "{:?}", again.skipped);
        assert_eq!(fake.flows_created(), 11, "a re-run creates no flow (and so deletes none)");
        assert_eq!(fake.flows().len(), 11);
    }
);

both_backends!(
    async fn a_flow_export_langflow_refuses_is_that_workflows_skip_reason(backend) {
        let fake = crate::langflow_support::FakeLangflow::start().await;
        let app = crate::agents_execution::spawn_with_langflow(backend, &fake.url(), &[]).await;
        let tenant = "refused-tenant";
        let mut workflows = app.workflows(tenant).await;
        let mut agents = app.agents(tenant).await;
        let mut refused = create_request("Refused export");
        refused.workflow_config.as_mut().unwrap().langflow_flow_json = USABLE_EXPORT.into();
        let refused = workflows.create_workflow(refused).await.unwrap().into_inner();
        fake.refuse_flows_named(Some("Refused export"));

        let outcome = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert_eq!(outcome.created.len(), 11, "the templates are provisioned");
        assert_eq!(outcome.skipped.len(), 1, "{:?}", outcome.skipped);
        assert_eq!(
            (outcome.skipped[0].workflow_id.as_str(), outcome.skipped[0].reason),
            (refused.id.as_str(), pb::SkipReason::InvalidFlowExport as i32)
        );
        assert!(outcome.skipped[0].detail.contains("Langflow refused it"), "{}", outcome.skipped[0].detail);
        assert_eq!(fake.flows().len(), 11);

        let status = expect_code(
            agents
                .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                    workflow_id: refused.id.clone(),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
        );
        assert!(status.message().contains("Langflow refused it"), "{}", status.message());
    }
);
