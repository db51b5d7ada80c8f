//! A tenant's default model: set and read with who and when, refused when bad, given to the
//! agents CreateAgentFromWorkflow and ProvisionAgents make without a model of their own; and
//! ProvisionAgents deploying and activating what it makes.

use engarde::proto::agent::v1 as pb;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::workflows_crud::create_request;

/// A request as sent by `subject` (development mode's `x-subject`).
fn by<T>(subject: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-subject", subject.parse().expect("ascii subject"));
    request
}

fn model(provider: &str, name: &str) -> pb::ModelSettings {
    pb::ModelSettings { provider: provider.into(), model_name: name.into(), ..Default::default() }
}

fn a_default() -> pb::ModelSettings {
    pb::ModelSettings { temperature: Some(0.3), max_tokens: Some(600), ..model("openai", "gpt-4o-mini") }
}

fn set(model: pb::ModelSettings) -> pb::SetTenantDefaultModelRequest {
    pb::SetTenantDefaultModelRequest { model: Some(model), ..Default::default() }
}

async fn read_default(client: &mut AgentClient) -> pb::TenantDefaultModel {
    client.get_tenant_default_model(pb::GetTenantDefaultModelRequest {}).await.unwrap().into_inner()
}

fn model_of(agent: &pb::Agent) -> pb::ModelSettings {
    agent.configuration.as_ref().and_then(|c| c.model.clone()).unwrap_or_default()
}

/// Both services, agent-service with the Langflow at `langflow_url`.
async fn spawn_app_with_langflow(backend: Backend, langflow_url: &str) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &[("LANGFLOW_URL", langflow_url.to_owned())]).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

both_backends!(
    async fn a_tenant_sets_and_reads_its_default_model_with_who_and_when(backend) {
        let app = spawn_app(backend).await;
        let mut agents = app.agents("tenant-models").await;

        // None yet: an empty model, not NOT_FOUND.
        let none = read_default(&mut agents).await;
        assert_eq!(none.model, Some(pb::ModelSettings::default()));
        assert_eq!((none.updated_by.as_str(), none.update_time.is_none()), ("", true));

        let before = chrono::Utc::now().timestamp();
        let request = pb::SetTenantDefaultModelRequest { request_id: "default-1".into(), ..set(a_default()) };
        let first = agents.set_tenant_default_model(by("ada", request.clone())).await.unwrap().into_inner();
        assert_eq!(first.model, Some(a_default()));
        assert_eq!(first.updated_by, "ada");
        let at = first.update_time.expect("update_time").seconds;
        assert!((before..=chrono::Utc::now().timestamp()).contains(&at), "{at} vs {before}");
        assert_ne!(first.etag, none.etag);
        assert_eq!(read_default(&mut agents).await, first);

        // A retry answers the first answer, even from someone else; the same id for another
        // model is a conflict.
        assert_eq!(agents.set_tenant_default_model(by("grace", request)).await.unwrap().into_inner(), first);
        let reused = pb::SetTenantDefaultModelRequest { request_id: "default-1".into(), ..set(model("openai", "o3")) };
        expect_code(agents.set_tenant_default_model(reused).await, Code::AlreadyExists);

        // Bad settings are refused by the rules of an agent's model, naming each field.
        let bad = pb::ModelSettings { temperature: Some(7.0), max_tokens: Some(0), ..model("openai", "gpt-4o-mini") };
        let status = expect_code(agents.set_tenant_default_model(set(bad)).await, Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["model.temperature", "model.max_tokens"], "{status:?}");
        let no_model = pb::ModelSettings { temperature: Some(0.5), ..Default::default() };
        let status = expect_code(agents.set_tenant_default_model(set(no_model)).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "model");
        assert_eq!(read_default(&mut agents).await, first, "a refused change changes nothing");

        // A change based on a stale read is refused.
        let second = agents
            .set_tenant_default_model(by("grace", pb::SetTenantDefaultModelRequest {
                etag: first.etag.clone(),
                ..set(model("anthropic", "claude-sonnet-4"))
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.updated_by, "grace");
        let stale = pb::SetTenantDefaultModelRequest { etag: first.etag.clone(), ..set(a_default()) };
        expect_code(agents.set_tenant_default_model(stale).await, Code::Aborted);

        // Another tenant has its own: none.
        let mut other = app.agents("tenant-other").await;
        assert_eq!(read_default(&mut other).await, none);

        // Clearing is setting an empty model; who cleared it, and when, are kept.
        let cleared = agents
            .set_tenant_default_model(by("ada", pb::SetTenantDefaultModelRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((cleared.model.clone(), cleared.updated_by.as_str()), (Some(pb::ModelSettings::default()), "ada"));
        assert_eq!(read_default(&mut agents).await, cleared);

        // Each change is in the log with the tenant, the subject and the model. The log is
        // written off the call path: the last line may reach the file just after the answer.
        let changes_logged = || app.agent.logs().lines().filter(|l| l.contains("tenant default model set")).count();
        eventually(std::time::Duration::from_secs(10), "the three changes' log lines", || async {
            changes_logged() == 3
        })
        .await;
        let logs = app.agent.logs();
        let changes: Vec<&str> = logs.lines().filter(|l| l.contains("tenant default model set")).collect();
        assert_eq!(changes.len(), 3, "{logs}");
        assert!(changes[0].contains("tenant-models") && changes[0].contains("ada") && changes[0].contains("gpt-4o-mini"));
        assert!(changes[1].contains("grace") && changes[1].contains("claude-sonnet-4"), "{}", changes[1]);
    }
);

both_backends!(
    async fn new_agents_get_the_default_model_unless_they_name_one(backend) {
        let app = spawn_app(backend).await;
        let tenant = "tenant-defaults";
        let mut agents = app.agents(tenant).await;
        let workflow = app.workflows(tenant).await.create_workflow(create_request("Our posts")).await.unwrap().into_inner();
        let from_workflow = |configuration: Option<pb::AgentConfig>| pb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            overrides: configuration.map(|c| pb::AgentOverrides { configuration: Some(c), ..Default::default() }),
            ..Default::default()
        };

        // Made before there is a default: no model, and it keeps none after.
        let earlier = agents.create_agent_from_workflow(from_workflow(None)).await.unwrap().into_inner();
        assert_eq!(model_of(&earlier), pb::ModelSettings::default());

        agents.set_tenant_default_model(set(a_default())).await.unwrap();

        let defaulted = agents.create_agent_from_workflow(from_workflow(None)).await.unwrap().into_inner();
        assert_eq!(model_of(&defaulted), a_default());
        // A configuration of its own, without a model: the rest is kept, the model is the default.
        let toned = pb::AgentConfig { tone: "playful".into(), ..Default::default() };
        let toned = agents.create_agent_from_workflow(from_workflow(Some(toned))).await.unwrap().into_inner();
        assert_eq!((model_of(&toned), toned.configuration.as_ref().unwrap().tone.as_str()), (a_default(), "playful"));
        // A model named in the request wins, all of it.
        let explicit = pb::AgentConfig { model: Some(model("anthropic", "claude-sonnet-4")), ..Default::default() };
        let explicit = agents.create_agent_from_workflow(from_workflow(Some(explicit))).await.unwrap().into_inner();
        assert_eq!(model_of(&explicit), model("anthropic", "claude-sonnet-4"));

        let earlier_now = agents.get_agent(pb::GetAgentRequest { id: earlier.id.clone() }).await.unwrap().into_inner();
        assert_eq!(model_of(&earlier_now), pb::ModelSettings::default());

        // ProvisionAgents gives the default to every agent it makes (the 11 templates; the
        // tenant's own workflow has agents already), in a dry run as for real.
        let dry = agents
            .provision_agents(pb::ProvisionAgentsRequest { dry_run: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dry.created.len(), 11);
        assert!(dry.created.iter().all(|a| model_of(a) == a_default()));
        let provisioned = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert_eq!(provisioned.created.len(), 11);
        for agent in &provisioned.created {
            assert_eq!(model_of(agent), a_default(), "{}", agent.name);
        }

        // Another tenant's default is not this one's.
        let mut other = app.agents("tenant-plain").await;
        let theirs = other.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert!(theirs.created.iter().all(|a| model_of(a) == pb::ModelSettings::default()));
    }
);

both_backends!(
    async fn provisioning_deploys_and_activates_what_it_makes_once(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let mut agents = app.agents("tenant-rollout").await;

        // Deployed: each agent's deployment id is its flow's endpoint name, as Langflow has it.
        let request = pb::ProvisionAgentsRequest { deploy: true, request_id: "rollout-1".into(), ..Default::default() };
        let deployed = agents.provision_agents(request.clone()).await.unwrap().into_inner();
        assert_eq!(deployed.created.len(), 11);
        assert!(deployed.not_deployed.is_empty(), "{:?}", deployed.not_deployed);
        for agent in &deployed.created {
            assert_eq!(agent.status, pb::AgentStatus::Deployed as i32, "{}", agent.name);
            let flow = fake.flow(&agent.langflow_workflow_id).expect("the agent's flow");
            assert_eq!(agent.langflow_deployment_id, format!("engarde-{}", agent.id));
            assert_eq!(flow["endpoint_name"], agent.langflow_deployment_id.as_str());
        }
        assert_eq!(fake.flows_created(), 11);

        // A retry answers the same and makes nothing; a new run provisions nothing new, makes no
        // flow, and reports the workflows as provisioned.
        assert_eq!(agents.provision_agents(request).await.unwrap().into_inner(), deployed);
        let again = pb::ProvisionAgentsRequest { activate: true, request_id: "rollout-2".into(), ..Default::default() };
        let again = agents.provision_agents(again).await.unwrap().into_inner();
        assert!(again.created.is_empty() && again.not_deployed.is_empty());
        assert_eq!(again.skipped.len(), 11);
        assert!(again.skipped.iter().all(|s| s.reason == pb::SkipReason::AlreadyHasAgent as i32));
        assert_eq!(fake.flows_created(), 11);
        for agent in &deployed.created {
            let now = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
            assert_eq!(now.status, pb::AgentStatus::Deployed as i32, "a re-run leaves existing agents alone");
        }

        // Activated (which implies deployed); an agent whose flow cannot be deployed is answered
        // with the reason, and the others go on.
        fake.hide_flows_named(Some("Blog"));
        let mut other = app.agents("tenant-active").await;
        let activate = pb::ProvisionAgentsRequest { activate: true, request_id: "rollout-3".into(), ..Default::default() };
        let active = other.provision_agents(activate.clone()).await.unwrap().into_inner();
        assert_eq!(active.created.len(), 11);
        assert_eq!(fake.flows_created(), 22);
        assert_eq!(active.not_deployed.len(), 1, "{:?}", active.not_deployed);
        let failed = &active.not_deployed[0];
        let blog = active.created.iter().find(|a| a.id == failed.agent_id).unwrap();
        assert!(blog.name.contains("Blog"), "{}", blog.name);
        assert_eq!(failed.workflow_id, blog.workflow_snapshot.as_ref().unwrap().workflow_id);
        assert!(failed.reason.contains("no longer exists"), "{}", failed.reason);
        assert_eq!(blog.status, pb::AgentStatus::Error as i32, "a missing flow puts the agent in ERROR");
        for agent in active.created.iter().filter(|a| a.id != blog.id) {
            assert_eq!(agent.status, pb::AgentStatus::Active as i32, "{}", agent.name);
            assert_eq!(agent.langflow_deployment_id, format!("engarde-{}", agent.id));
        }
        fake.hide_flows_named(None);
        assert_eq!(other.provision_agents(activate).await.unwrap().into_inner(), active);
        assert_eq!(fake.flows_created(), 22);
    }
);

both_backends!(
    async fn a_default_model_is_checked_against_the_langflow_catalog_as_an_agents_is(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let tenant = "tenant-catalog";
        let mut agents = app.agents(tenant).await;

        let status = expect_code(
            agents.set_tenant_default_model(set(model("no-such-provider", "x"))).await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "model.provider", "{status:?}");
        assert_eq!(read_default(&mut agents).await.model, Some(pb::ModelSettings::default()));

        // Stored as the catalog spells the provider, and given so to a new agent and its flow.
        let set_default = agents.set_tenant_default_model(set(a_default())).await.unwrap().into_inner();
        let provider = set_default.model.as_ref().unwrap().provider.clone();
        assert!(provider.eq_ignore_ascii_case("openai"), "{provider}");
        let workflow = app.workflows(tenant).await.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        let agent = agents
            .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                workflow_id: workflow.id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(Some(model_of(&agent)), set_default.model);
        assert!(fake.flow(&agent.langflow_workflow_id).is_some(), "the agent's flow was made");
    }
);

both_backends!(
    async fn a_retry_finishes_a_provisioning_that_stopped_before_deploying(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let tenant = "tenant-interrupted";
        let mut agents = app.agents(tenant).await;
        let request = pb::ProvisionAgentsRequest { activate: true, request_id: "interrupted".into(), ..Default::default() };
        let first = agents.provision_agents(request.clone()).await.unwrap().into_inner();
        assert_eq!(first.created.len(), 11);

        // As a process that died right after the provisioning transaction leaves it: the agents
        // in DRAFT, and the stored answer the one that transaction wrote (still to be brought up).
        let db = &app.agent_db;
        db.sql(&format!("UPDATE agents SET status = 'draft', langflow_deployment_id = '' WHERE tenant_id = '{tenant}'"))
            .await;
        let stored = db
            .sql(&format!("SELECT response FROM idempotency_keys WHERE tenant_id = '{tenant}' AND request_id = 'interrupted'"))
            .await;
        let mut stored: serde_json::Value = serde_json::from_str(&stored).expect("a stored answer");
        assert!(stored["pending"].is_null(), "a finished provisioning has nothing pending: {}", stored["pending"]);
        stored["pending"] = "Active".into();
        for agent in stored["created"].as_array_mut().unwrap() {
            agent["status"] = "draft".into();
            agent["langflow_deployment_id"] = "".into();
        }
        let stored = stored.to_string().replace('\'', "''");
        db.sql(&format!(
            "UPDATE idempotency_keys SET response = '{stored}' WHERE tenant_id = '{tenant}' AND request_id = 'interrupted'"
        ))
        .await;

        // The retry finishes the work (no new agent, no new flow) and answers as the first did.
        let retried = agents.provision_agents(request.clone()).await.unwrap().into_inner();
        assert_eq!(fake.flows_created(), 11);
        let summary = |r: &pb::ProvisionAgentsResponse| -> Vec<(String, i32, String)> {
            r.created.iter().map(|a| (a.id.clone(), a.status, a.langflow_deployment_id.clone())).collect()
        };
        assert_eq!(summary(&retried), summary(&first));
        assert!(retried.created.iter().all(|a| a.status == pb::AgentStatus::Active as i32));
        assert_eq!(agents.provision_agents(request).await.unwrap().into_inner(), retried);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_while_provisioning_needs_a_langflow_and_then_does_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut agents = app.agents("tenant-no-langflow").await;
    for request in [
        pb::ProvisionAgentsRequest { deploy: true, ..Default::default() },
        pb::ProvisionAgentsRequest { activate: true, request_id: "activate".into(), ..Default::default() },
    ] {
        let status = expect_code(agents.provision_agents(request).await, Code::FailedPrecondition);
        assert!(status.message().contains("LANGFLOW_URL"), "{}", status.message());
    }
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.agents.is_empty(), "{listed:?}");
    // Without deploy, provisioning works without a Langflow as before.
    let made = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(made.created.len(), 11);
}
