//! Agents made from workflows: the mapping, archived and foreign workflows, upgrades to a newer
//! workflow version, a deleted source workflow, and workflow-service being down.

use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::workflow::v1 as wpb;
use prost_types::FieldMask;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;

fn from_workflow(id: &str) -> pb::CreateAgentFromWorkflowRequest {
    pb::CreateAgentFromWorkflowRequest { workflow_id: id.into(), overrides: None, request_id: String::new() }
}

both_backends!(
    async fn an_agent_takes_its_name_type_snapshot_and_capabilities_from_its_workflow(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let workflow = workflows.create_workflow(create_request("Weekly posts")).await.unwrap().into_inner();

        let agent = agents.create_agent_from_workflow(from_workflow(&workflow.id)).await.unwrap().into_inner();
        assert_eq!(agent.name, "Weekly posts Agent");
        assert_eq!(agent.description, workflow.description);
        assert_eq!(agent.agent_type, pb::AgentType::ContentGeneration as i32);
        assert_eq!(agent.status, pb::AgentStatus::Draft as i32);
        assert_eq!(agent.capabilities, ["human_review", "result_recording", "scheduled_runs", "text_generation"]);
        let snapshot = agent.workflow_snapshot.clone().unwrap();
        assert_eq!((snapshot.workflow_id.as_str(), snapshot.workflow_version), (workflow.id.as_str(), 1));
        assert_eq!(snapshot.workflow_name, "Weekly posts");
        assert_eq!(snapshot.category, wpb::WorkflowCategory::ContentGeneration as i32);
        assert_eq!(snapshot.workflow_config, workflow.workflow_config);

        // Overrides replace the derived choices; a second agent of one workflow is allowed.
        let custom = agents
            .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                workflow_id: workflow.id.clone(),
                overrides: Some(pb::AgentOverrides {
                    name: Some("Night shift".into()),
                    description: Some(String::new()),
                    agent_type: pb::AgentType::Walker as i32,
                    configuration: Some(pb::AgentConfig { tone: "calm".into(), ..Default::default() }),
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((custom.name.as_str(), custom.description.as_str()), ("Night shift", ""));
        assert_eq!(custom.agent_type, pb::AgentType::Walker as i32);
        assert_eq!(custom.configuration.unwrap().tone, "calm");
        let by_workflow = agents
            .list_agents(pb::ListAgentsRequest { workflow_id: workflow.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_workflow.agents.len(), 2);

        // A workflow that asks to walk on its own makes a walker.
        let mut autonomous = create_request("Autopilot");
        autonomous.workflow_config.as_mut().unwrap().rules.as_mut().unwrap().autonomous = true;
        let autonomous = workflows.create_workflow(autonomous).await.unwrap().into_inner();
        let walker = agents.create_agent_from_workflow(from_workflow(&autonomous.id)).await.unwrap().into_inner();
        assert_eq!(walker.agent_type, pb::AgentType::Walker as i32);

        // A template of the library works as well.
        let templates = workflows
            .list_workflows(wpb::ListWorkflowsRequest { is_template: Some(true), page_size: 200, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows;
        let template = templates.iter().find(|t| t.name == "Audience Segmentation").unwrap();
        let analyst = agents.create_agent_from_workflow(from_workflow(&template.id)).await.unwrap().into_inner();
        assert_eq!(analyst.agent_type, pb::AgentType::AudienceAnalysis as i32);

        // Workflows given agents this way count as provisioned.
        let outcome = agents
            .provision_agents(pb::ProvisionAgentsRequest {
                filter: Some(pb::ProvisionFilter { workflow_ids: vec![workflow.id.clone(), template.id.clone()], ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(outcome.created.is_empty());
        assert!(outcome.skipped.iter().all(|s| s.reason == pb::SkipReason::AlreadyHasAgent as i32));
        assert_eq!(outcome.skipped.len(), 2);

        // Deleting one of two agents of a workflow keeps it provisioned; deleting both frees it.
        agents.delete_agent(pb::DeleteAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        let dry = pb::ProvisionAgentsRequest {
            filter: Some(pb::ProvisionFilter { workflow_ids: vec![workflow.id.clone()], ..Default::default() }),
            dry_run: true,
            request_id: String::new(),
            ..Default::default()
        };
        assert!(agents.provision_agents(dry.clone()).await.unwrap().into_inner().created.is_empty());
        agents.delete_agent(pb::DeleteAgentRequest { id: custom.id.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(agents.provision_agents(dry).await.unwrap().into_inner().created.len(), 1);
    }
);

both_backends!(
    async fn archived_and_foreign_workflows_make_no_agents(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut bobs_workflows = app.workflows("tenant-bob").await;
        let mut bob = app.agents("tenant-bob").await;

        let retired = workflows.create_workflow(create_request("Retired")).await.unwrap().into_inner();
        workflows.archive_workflow(wpb::ArchiveWorkflowRequest { id: retired.id.clone(), ..Default::default() }).await.unwrap();
        expect_code(agents.create_agent_from_workflow(from_workflow(&retired.id)).await, Code::FailedPrecondition);

        let bobs = bobs_workflows.create_workflow(create_request("Bob's")).await.unwrap().into_inner();
        expect_code(agents.create_agent_from_workflow(from_workflow(&bobs.id)).await, Code::NotFound);
        expect_code(agents.create_agent_from_workflow(from_workflow(&uuid::Uuid::new_v4().to_string())).await, Code::NotFound);
        assert!(agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents.is_empty());

        // Bob's own call works: the boundary is the tenant, not the workflow.
        bob.create_agent_from_workflow(from_workflow(&bobs.id)).await.unwrap();
    }
);

both_backends!(
    async fn an_idempotent_create_from_a_workflow_makes_one_agent(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let workflow = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        let other = workflows.create_workflow(create_request("Other")).await.unwrap().into_inner();

        let request = pb::CreateAgentFromWorkflowRequest { request_id: "from-wf-1".into(), ..from_workflow(&workflow.id) };
        let first = agents.create_agent_from_workflow(request.clone()).await.unwrap().into_inner();
        assert_eq!(agents.create_agent_from_workflow(request).await.unwrap().into_inner(), first);
        let reused = pb::CreateAgentFromWorkflowRequest { request_id: "from-wf-1".into(), ..from_workflow(&other.id) };
        expect_code(agents.create_agent_from_workflow(reused).await, Code::AlreadyExists);
        assert_eq!(agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents.len(), 1);
    }
);

both_backends!(
    async fn an_agent_is_upgraded_to_its_workflows_newest_version_explicitly(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let workflow = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        let agent = agents.create_agent_from_workflow(from_workflow(&workflow.id)).await.unwrap().into_inner();

        // Nothing to do yet.
        let noop = agents.upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), ..Default::default() }).await.unwrap().into_inner();
        assert!(noop.changes.is_empty());
        assert_eq!((noop.from_version, noop.to_version), (1, 1));
        assert_eq!(noop.agent.unwrap().version, agent.version);

        // The workflow moves on: a new prompt for step 1 and a new last step.
        let mut patch = workflow.clone();
        let config = patch.workflow_config.as_mut().unwrap();
        config.steps[0].prompt = "Write a better post about {input}".into();
        config.steps.push(wpb::Step { id: "archive".into(), kind: wpb::StepKind::Output as i32, ..Default::default() });
        let updated = workflows
            .update_workflow(wpb::UpdateWorkflowRequest {
                workflow: Some(patch),
                update_mask: Some(FieldMask { paths: vec!["workflow_config".into()] }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.version, 2);
        let installed = agents.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
        assert!(installed.installed_agents[0].upgrade_available);
        assert_eq!(installed.installed_agents[0].workflow_current_version, 2);

        // The dry run shows the difference and changes nothing.
        let preview = agents
            .upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), dry_run: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(preview.dry_run);
        assert_eq!((preview.from_version, preview.to_version), (1, 2));
        let changes: Vec<(&str, i32)> = preview.changes.iter().map(|c| (c.field.as_str(), c.kind)).collect();
        assert_eq!(
            changes,
            [
                ("workflow_config.steps[0].prompt", pb::ChangeKind::Changed as i32),
                ("workflow_config.steps[3]", pb::ChangeKind::Added as i32),
            ]
        );
        assert_eq!(preview.changes[0].before, "Write a post about {input}");
        assert_eq!(preview.changes[0].after, "Write a better post about {input}");
        let unchanged = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
        assert_eq!(unchanged, agent);

        // A stale etag is refused; the real run moves the snapshot and makes a new agent version.
        expect_code(
            agents.upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), etag: "\"7\"".into(), ..Default::default() }).await,
            Code::Aborted,
        );
        let request = pb::UpgradeAgentRequest { agent_id: agent.id.clone(), etag: agent.etag.clone(), request_id: "upgrade-1".into(), dry_run: false };
        let upgraded = agents.upgrade_agent(request.clone()).await.unwrap().into_inner();
        assert!(!upgraded.dry_run);
        assert_eq!(upgraded.changes, preview.changes);
        let upgraded_agent = upgraded.agent.clone().unwrap();
        let snapshot = upgraded_agent.workflow_snapshot.as_ref().unwrap();
        assert_eq!(snapshot.workflow_version, 2);
        assert_eq!(snapshot.workflow_config, updated.workflow_config);
        assert_eq!(upgraded_agent.version, agent.version + 1);
        // A retry answers the same; a further upgrade has nothing to do.
        assert_eq!(agents.upgrade_agent(request).await.unwrap().into_inner(), upgraded);
        let again = agents.upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), ..Default::default() }).await.unwrap().into_inner();
        assert!(again.changes.is_empty());
        assert_eq!((again.from_version, again.to_version), (2, 2));

        // The source workflow is deleted: the agent stays, says so, and cannot be upgraded.
        workflows.archive_workflow(wpb::ArchiveWorkflowRequest { id: workflow.id.clone(), ..Default::default() }).await.unwrap();
        workflows.delete_workflow(wpb::DeleteWorkflowRequest { id: workflow.id.clone(), ..Default::default() }).await.unwrap();
        let installed = agents.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
        let item = &installed.installed_agents[0];
        assert!(item.workflow_deleted);
        assert_eq!(item.workflow_name, "Posts");
        assert_eq!(item.workflow_status, wpb::WorkflowStatus::Unspecified as i32);
        expect_code(
            agents.upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), ..Default::default() }).await,
            Code::FailedPrecondition,
        );
    }
);

both_backends!(
    async fn archiving_a_workflow_offers_no_upgrade_with_nothing_in_it(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let workflow = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        agents.create_agent_from_workflow(from_workflow(&workflow.id)).await.unwrap();
        let archived = workflows
            .archive_workflow(wpb::ArchiveWorkflowRequest { id: workflow.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        // Archiving is no new version of the definition, but it is a change: a new etag.
        assert_eq!(archived.version, workflow.version);
        assert_ne!(archived.etag, workflow.etag);
        expect_code(
            workflows
                .update_workflow(wpb::UpdateWorkflowRequest {
                    workflow: Some(wpb::WorkflowDefinition { description: "x".into(), ..workflow.clone() }),
                    update_mask: Some(FieldMask { paths: vec!["description".into()] }),
                    request_id: String::new(),
                })
                .await,
            Code::Aborted,
        );

        let installed = agents.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
        let item = &installed.installed_agents[0];
        assert_eq!(item.workflow_current_version, archived.version);
        assert_eq!(item.workflow_status, wpb::WorkflowStatus::Archived as i32);
        assert!(!item.upgrade_available, "an upgrade would change nothing: {item:?}");
    }
);

both_backends!(
    async fn workflow_service_down_means_unavailable_and_nothing_made(backend) {
        let mut app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let workflow = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        let standalone = agents.create_agent(crate::agents_crud::new_agent("Stand-alone")).await.unwrap().into_inner();
        let made_before = agents.create_agent_from_workflow(from_workflow(&workflow.id)).await.unwrap().into_inner();

        app.workflow.kill().await;
        let status = expect_code(agents.create_agent_from_workflow(from_workflow(&workflow.id)).await, Code::Unavailable);
        assert!(status.message().contains("workflow-service unavailable"), "{}", status.message());
        expect_code(agents.provision_agents(pb::ProvisionAgentsRequest::default()).await, Code::Unavailable);
        expect_code(agents.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await, Code::Unavailable);

        // Nothing half-made; what needs only agent-service keeps working.
        let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
        assert_eq!(listed, [standalone.clone(), made_before]);
        agents.deploy_agent(pb::DeployAgentRequest { id: standalone.id.clone(), ..Default::default() }).await.unwrap();
    }
);

/// The built-in template all tenants see first.
const SOCIAL_TEMPLATE: &str = "f209e474-b937-43b7-b5a1-535ed3951a4d";

both_backends!(
    /// A release that changes a built-in template reaches a database seeded by the previous
    /// release at the next start, once, and the agents made from the old template see the
    /// upgrade with its field-level difference.
    async fn agents_of_a_template_changed_by_a_release_see_the_upgrade(backend) {
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        // The previous release's library: the same template, with another first prompt and
        // another name for its last step (the current release's revision recorded, so that
        // this start leaves it as the previous release wrote it).
        drop(spawn_workflow_service(&workflow_db, &[]).await);
        let previous = match backend {
            Backend::Postgres => "config = jsonb_set(jsonb_set(config, '{steps,0,prompt}', '\"Old prompt: {input}\"'), \
                                  '{steps,3,name}', '\"Post\"')",
            Backend::Sqlite => "config = json_set(config, '$.steps[0].prompt', 'Old prompt: {input}', '$.steps[3].name', 'Post')",
        };
        workflow_db.sql(&format!("UPDATE workflows SET {previous} WHERE is_template AND name = 'Social Media Content Pipeline'")).await;
        let agent = {
            let workflow = spawn_workflow_service(&workflow_db, &[]).await;
            let agents = spawn_agent_service(&agent_db, &workflow.url(), &[]).await;
            let mut client = AgentServiceClient::with_interceptor(agents.channel().await, as_tenant("tenant-a"));
            let agent = client.create_agent_from_workflow(from_workflow(SOCIAL_TEMPLATE)).await.unwrap().into_inner();
            let snapshot = agent.workflow_snapshot.clone().unwrap();
            assert_eq!(snapshot.workflow_config.unwrap().steps[0].prompt, "Old prompt: {input}");
            let installed = client.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
            assert!(!installed.installed_agents[0].upgrade_available);
            agent
        };

        // The database as the previous release left it (a revision before this one's), then
        // two replicas of this release start at once.
        workflow_db.sql("UPDATE workflows SET template_revision = 0 WHERE is_template").await;
        let (workflow, replica) =
            tokio::join!(spawn_workflow_service(&workflow_db, &[]), spawn_workflow_service(&workflow_db, &[]));
        let updates: usize = [&workflow, &replica]
            .iter()
            .map(|s| if s.logs().contains("inserted=0 updated=1") { 1 } else { 0 })
            .sum();
        assert_eq!(updates, 1, "one replica updates the one changed template:\n{}\n{}", workflow.logs(), replica.logs());
        let agents = spawn_agent_service(&agent_db, &workflow.url(), &[]).await;
        let mut client = AgentServiceClient::with_interceptor(agents.channel().await, as_tenant("tenant-a"));
        let installed = client.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner();
        let item = &installed.installed_agents[0];
        assert!(item.upgrade_available && item.is_template, "{item:?}");
        assert_eq!(item.workflow_current_version, 2);

        let preview = client
            .upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), dry_run: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((preview.from_version, preview.to_version), (1, 2));
        let changes: Vec<(&str, i32, &str)> =
            preview.changes.iter().map(|c| (c.field.as_str(), c.kind, c.before.as_str())).collect();
        assert_eq!(
            changes,
            [
                ("workflow_config.steps[0].prompt", pb::ChangeKind::Changed as i32, "Old prompt: {input}"),
                ("workflow_config.steps[3].name", pb::ChangeKind::Changed as i32, "Post"),
            ]
        );
        assert_eq!(preview.changes[1].after, "Publish");
        let upgraded = client
            .upgrade_agent(pb::UpgradeAgentRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(upgraded.agent.unwrap().workflow_snapshot.unwrap().workflow_version, 2);

        // A later start changes nothing more.
        drop(replica);
        let again = spawn_workflow_service(&workflow_db, &[]).await;
        assert!(again.logs().contains("inserted=0 updated=0"), "{}", again.logs());
    }
);
