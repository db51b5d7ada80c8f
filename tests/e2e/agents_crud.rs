//! Agents one by one: create, read, list, update with etags, the lifecycle state machine,
//! delete, bad input field by field, idempotent retries and tenant isolation.

use engarde::proto::agent::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;

pub fn new_agent(name: &str) -> pb::CreateAgentRequest {
    pb::CreateAgentRequest {
        name: name.into(),
        description: "Writes captions".into(),
        agent_type: pb::AgentType::CopyGeneration as i32,
        configuration: Some(pb::AgentConfig { tone: "friendly".into(), ..Default::default() }),
        capabilities: vec!["text_generation".into(), "captions".into(), "captions".into()],
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

fn fields(status: &tonic::Status) -> Vec<String> {
    field_violations(status).into_iter().map(|(f, _)| f).collect()
}

fn by_id(id: &str) -> (String, String, String) {
    (id.to_owned(), String::new(), String::new())
}

both_backends!(
    async fn an_agent_is_created_read_updated_and_deleted(backend) {
        let app = spawn_app(backend).await;
        let mut agents = app.agents("tenant-a").await;

        let created = agents.create_agent(new_agent("Caption writer")).await.unwrap().into_inner();
        assert_eq!((created.name.as_str(), created.tenant_id.as_str(), created.version), ("Caption writer", "tenant-a", 1));
        assert_eq!(created.status, pb::AgentStatus::Draft as i32);
        assert_eq!(created.capabilities, ["captions", "text_generation"]);
        assert!(created.workflow_snapshot.is_none());
        assert_eq!(created.configuration.as_ref().unwrap().tone, "friendly");
        let fetched = agents.get_agent(pb::GetAgentRequest { id: created.id.clone() }).await.unwrap().into_inner();
        assert_eq!(fetched, created);

        let mut patch = created.clone();
        patch.name = "Caption writer v2".into();
        patch.description = "not in the mask".into();
        patch.capabilities = vec!["hashtags".into()];
        let updated = agents
            .update_agent(pb::UpdateAgentRequest { agent: Some(patch.clone()), update_mask: mask(&["name", "capabilities"]), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((updated.name.as_str(), updated.description.as_str(), updated.version), ("Caption writer v2", "Writes captions", 2));
        assert_eq!(updated.capabilities, ["hashtags"]);
        // The etag of version 1 is stale now.
        expect_code(
            agents.update_agent(pb::UpdateAgentRequest { agent: Some(patch), update_mask: mask(&["name"]), request_id: String::new() }).await,
            Code::Aborted,
        );

        // Listing: filters, and pages in creation order.
        for i in 0..4 {
            let mut request = new_agent(&format!("Agent {i}"));
            request.agent_type = pb::AgentType::ContentGeneration as i32;
            agents.create_agent(request).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = agents
                .list_agents(pb::ListAgentsRequest { page_size: 2, page_token: page_token.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            assert!(page.agents.len() <= 2);
            seen.extend(page.agents.into_iter().map(|a| a.name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(seen, ["Caption writer v2", "Agent 0", "Agent 1", "Agent 2", "Agent 3"]);
        let copy_writers = agents
            .list_agents(pb::ListAgentsRequest { agent_type: pb::AgentType::CopyGeneration as i32, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(copy_writers.agents.len(), 1);
        let status = expect_code(
            agents
                .list_agents(pb::ListAgentsRequest { agent_type: pb::AgentType::CopyGeneration as i32, page_size: 1, page_token, ..Default::default() })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["page_token"]);

        let deleted = agents
            .delete_agent(pb::DeleteAgentRequest { id: created.id.clone(), etag: updated.etag.clone(), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.id, created.id);
        expect_code(agents.get_agent(pb::GetAgentRequest { id: created.id.clone() }).await, Code::NotFound);
    }
);

both_backends!(
    async fn the_lifecycle_allows_only_its_moves(backend) {
        let app = spawn_app(backend).await;
        let mut agents = app.agents("tenant-a").await;
        let agent = agents.create_agent(new_agent("Walker-free")).await.unwrap().into_inner();
        let id = agent.id.clone();
        let (i, e, r) = by_id(&id);

        // Only DeployAgent leaves DRAFT.
        expect_code(agents.activate_agent(pb::ActivateAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await, Code::FailedPrecondition);
        expect_code(agents.pause_agent(pb::PauseAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await, Code::FailedPrecondition);
        expect_code(agents.reset_agent(pb::ResetAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await, Code::FailedPrecondition);
        // A stale etag is refused before the move is judged.
        expect_code(agents.deploy_agent(pb::DeployAgentRequest { id: i.clone(), etag: "\"99\"".into(), request_id: r.clone() }).await, Code::Aborted);

        let deployed = agents.deploy_agent(pb::DeployAgentRequest { id: i.clone(), etag: agent.etag.clone(), request_id: r.clone() }).await.unwrap().into_inner();
        assert_eq!(deployed.status, pb::AgentStatus::Deployed as i32);
        expect_code(agents.deploy_agent(pb::DeployAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await, Code::FailedPrecondition);
        let active = agents.activate_agent(pb::ActivateAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await.unwrap().into_inner();
        assert_eq!(active.status, pb::AgentStatus::Active as i32);
        // An active agent is paused before it is deleted.
        expect_code(agents.delete_agent(pb::DeleteAgentRequest { id: i.clone(), ..Default::default() }).await, Code::FailedPrecondition);
        expect_code(agents.reset_agent(pb::ResetAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await, Code::FailedPrecondition);
        let paused = agents.pause_agent(pb::PauseAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await.unwrap().into_inner();
        assert_eq!(paused.status, pb::AgentStatus::Paused as i32);
        let resumed = agents.activate_agent(pb::ActivateAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await.unwrap().into_inner();
        assert_eq!((resumed.status, resumed.version), (pb::AgentStatus::Active as i32, 5));
        agents.pause_agent(pb::PauseAgentRequest { id: i.clone(), etag: e.clone(), request_id: r.clone() }).await.unwrap();
        agents.delete_agent(pb::DeleteAgentRequest { id: i.clone(), ..Default::default() }).await.unwrap();
    }
);

both_backends!(
    async fn bad_input_is_refused_field_by_field(backend) {
        let app = spawn_app(backend).await;
        let mut agents = app.agents("tenant-a").await;

        let mut request = new_agent(" ");
        request.agent_type = 0;
        request.capabilities = vec!["Not OK".into()];
        request.configuration = Some(pb::AgentConfig {
            tone: "t".repeat(500),
            model: Some(pb::ModelSettings { provider: "Open{AI}".into(), temperature: Some(3.0), max_tokens: Some(40_000), ..Default::default() }),
            extra: [("Bad Key".to_string(), "v".to_string())].into(),
            ..Default::default()
        });
        let status = expect_code(agents.create_agent(request).await, Code::InvalidArgument);
        assert_eq!(
            fields(&status),
            [
                "name",
                "agent_type",
                "configuration.tone",
                "configuration.model.provider",
                "configuration.model.model_name",
                "configuration.model.temperature",
                "configuration.model.max_tokens",
                "configuration.extra[\"Bad Key\"]",
                "capabilities[0]",
            ]
        );
        let mut walker = new_agent("Walker");
        walker.agent_type = pb::AgentType::Walker as i32;
        assert_eq!(fields(&expect_code(agents.create_agent(walker).await, Code::InvalidArgument)), ["agent_type"]);

        let status = expect_code(agents.get_agent(pb::GetAgentRequest { id: "agent-1".into() }).await, Code::InvalidArgument);
        assert_eq!(fields(&status), ["id"]);
        let status = expect_code(agents.list_agents(pb::ListAgentsRequest { status: 77, ..Default::default() }).await, Code::InvalidArgument);
        assert_eq!(fields(&status), ["status"]);
        let status = expect_code(agents.list_agents(pb::ListAgentsRequest { workflow_id: "w".into(), ..Default::default() }).await, Code::InvalidArgument);
        assert_eq!(fields(&status), ["workflow_id"]);
        let status = expect_code(
            agents.create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest { workflow_id: String::new(), ..Default::default() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["workflow_id"]);
        let status = expect_code(
            agents
                .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                    workflow_id: uuid::Uuid::new_v4().to_string(),
                    overrides: Some(pb::AgentOverrides { name: Some(String::new()), agent_type: 99, ..Default::default() }),
                    request_id: String::new(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["overrides.name", "overrides.agent_type"]);
        let status = expect_code(
            agents.upgrade_agent(pb::UpgradeAgentRequest { agent_id: "x".into(), ..Default::default() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["agent_id"]);
        let status = expect_code(
            agents.create_agent(pb::CreateAgentRequest { request_id: "has space".into(), ..new_agent("Ok") }).await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["request_id"]);

        let agent = agents.create_agent(new_agent("Configured")).await.unwrap().into_inner();
        let status = expect_code(
            agents
                .update_agent(pb::UpdateAgentRequest { agent: Some(agent.clone()), update_mask: mask(&["status"]), request_id: String::new() })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["update_mask.paths[0]"]);
        let status = expect_code(
            agents
                .update_agent_config(pb::UpdateAgentConfigRequest {
                    agent_id: agent.id.clone(),
                    configuration: Some(pb::AgentConfig {
                        model: Some(pb::ModelSettings { temperature: Some(-1.0), ..Default::default() }),
                        ..Default::default()
                    }),
                    update_mask: mask(&["model.temperature", "colour"]),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["update_mask.paths[1]"]);
        let status = expect_code(
            agents
                .update_agent_config(pb::UpdateAgentConfigRequest {
                    agent_id: agent.id.clone(),
                    configuration: Some(pb::AgentConfig {
                        model: Some(pb::ModelSettings { temperature: Some(-1.0), ..Default::default() }),
                        ..Default::default()
                    }),
                    update_mask: mask(&["model.temperature"]),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(fields(&status), ["configuration.model.temperature"]);
        // Nothing was changed by the refused calls.
        let unchanged = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
        assert_eq!(unchanged, agent);
    }
);

both_backends!(
    async fn another_tenants_agents_do_not_exist(backend) {
        let app = spawn_app(backend).await;
        let mut alice = app.agents("tenant-alice").await;
        let mut bob = app.agents("tenant-bob").await;
        let agent = alice.create_agent(new_agent("Alice's")).await.unwrap().into_inner();
        let id = agent.id.clone();

        expect_code(bob.get_agent(pb::GetAgentRequest { id: id.clone() }).await, Code::NotFound);
        expect_code(
            bob.update_agent(pb::UpdateAgentRequest { agent: Some(agent.clone()), update_mask: mask(&["name"]), request_id: String::new() }).await,
            Code::NotFound,
        );
        expect_code(bob.delete_agent(pb::DeleteAgentRequest { id: id.clone(), ..Default::default() }).await, Code::NotFound);
        expect_code(bob.deploy_agent(pb::DeployAgentRequest { id: id.clone(), ..Default::default() }).await, Code::NotFound);
        expect_code(bob.get_agent_config(pb::GetAgentConfigRequest { agent_id: id.clone() }).await, Code::NotFound);
        expect_code(
            bob.update_agent_config(pb::UpdateAgentConfigRequest { agent_id: id.clone(), ..Default::default() }).await,
            Code::NotFound,
        );
        expect_code(bob.upgrade_agent(pb::UpgradeAgentRequest { agent_id: id.clone(), ..Default::default() }).await, Code::NotFound);
        assert!(bob.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents.is_empty());
        assert!(bob.list_installed_agents(pb::ListInstalledAgentsRequest::default()).await.unwrap().into_inner().installed_agents.is_empty());
        // ...and Alice's agent is untouched.
        assert_eq!(alice.get_agent(pb::GetAgentRequest { id }).await.unwrap().into_inner(), agent);
    }
);

both_backends!(
    async fn a_retried_request_gets_its_first_answer(backend) {
        let app = spawn_app(backend).await;
        let mut agents = app.agents("tenant-a").await;

        let request = pb::CreateAgentRequest { request_id: "create-1".into(), ..new_agent("Once") };
        let first = agents.create_agent(request.clone()).await.unwrap().into_inner();
        let again = agents.create_agent(request.clone()).await.unwrap().into_inner();
        assert_eq!(again, first);
        let other = pb::CreateAgentRequest { name: "Twice".into(), ..request };
        expect_code(agents.create_agent(other).await, Code::AlreadyExists);
        // The same id on another method is another request too.
        expect_code(
            agents.deploy_agent(pb::DeployAgentRequest { id: first.id.clone(), etag: String::new(), request_id: "create-1".into() }).await,
            Code::AlreadyExists,
        );
        let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
        assert_eq!(listed.len(), 1);

        // A retried transition answers the first result instead of FAILED_PRECONDITION.
        let deploy = pb::DeployAgentRequest { id: first.id.clone(), etag: String::new(), request_id: "deploy-1".into() };
        let deployed = agents.deploy_agent(deploy.clone()).await.unwrap().into_inner();
        assert_eq!(agents.deploy_agent(deploy).await.unwrap().into_inner(), deployed);

        // Request ids are per tenant.
        let mut bob = app.agents("tenant-bob").await;
        let bobs = bob.create_agent(pb::CreateAgentRequest { request_id: "create-1".into(), ..new_agent("Bob's") }).await.unwrap().into_inner();
        assert_ne!(bobs.id, first.id);
    }
);
