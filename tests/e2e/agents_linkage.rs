//! Each agent gets a real Langflow flow: made when the agent is, checked when it is deployed,
//! replaced, linked, unlinked, and removed with the agent — and no half-made agent or orphan
//! flow when Langflow fails in the middle.

use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::workflow::v1 as wpb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::{FakeLangflow, RealLangflow, prompt_flow, real_langflow_url};

/// Both services, agent-service using the Langflow at `langflow_url`.
async fn spawn_app_with_langflow(backend: Backend, langflow_url: &str) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &[("LANGFLOW_URL", langflow_url.to_owned())]).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

async fn all_agents(client: &mut AgentClient) -> Vec<pb::Agent> {
    client
        .list_agents(pb::ListAgentsRequest { page_size: 200, ..Default::default() })
        .await
        .expect("list agents")
        .into_inner()
        .agents
}

both_backends!(
    async fn provisioned_agents_get_flows_that_render_their_prompts(backend) {
        let langflow = RealLangflow::from_env();
        let app = spawn_app_with_langflow(backend, &real_langflow_url()).await;
        let mut agents = app.agents("tenant-flows").await;

        let outcome = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert_eq!(outcome.created.len(), 11);
        for agent in &outcome.created {
            assert!(!agent.langflow_workflow_id.is_empty(), "{} has a flow", agent.name);
            assert_eq!(agent.flow_origin, pb::FlowOrigin::Generated as i32);
            assert!(langflow.flow_exists(&agent.langflow_workflow_id).await, "{}'s flow is in Langflow", agent.name);
        }

        // The generated flow runs offline and answers the first step's prompt, rendered.
        let social = outcome.created.iter().find(|a| a.name == "Social Media Content Pipeline Agent").unwrap();
        let first_prompt = social.workflow_snapshot.as_ref().unwrap().workflow_config.as_ref().unwrap().steps[0]
            .prompt
            .clone();
        let session = uuid::Uuid::new_v4().to_string();
        let answer = langflow.run(&social.langflow_workflow_id, "our spring sale", &session).await;
        assert!(answer.contains("our spring sale"), "{answer}");
        let opening = first_prompt.split("{input}").next().unwrap().trim();
        assert!(answer.contains(opening), "the step's prompt is rendered:\n{answer}\nvs\n{first_prompt}");

        // Deploying checks the flow and records its endpoint name, as Langflow has it: the one
        // agent-service asked for (engarde-<agent id>), which runs the flow too.
        let deployed = agents
            .deploy_agent(pb::DeployAgentRequest { id: social.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deployed.status, pb::AgentStatus::Deployed as i32);
        let in_langflow = langflow.flow(&social.langflow_workflow_id).await;
        assert_eq!(in_langflow["endpoint_name"], deployed.langflow_deployment_id.as_str(), "{in_langflow}");
        assert_eq!(deployed.langflow_deployment_id, format!("engarde-{}", social.id));
        let by_name = langflow.run(&deployed.langflow_deployment_id, "our autumn sale", &session).await;
        assert!(by_name.contains("our autumn sale"), "{by_name}");

        // Deleting an agent deletes the flow it made.
        let other = outcome.created.iter().find(|a| a.id != social.id).unwrap();
        agents.delete_agent(pb::DeleteAgentRequest { id: other.id.clone(), ..Default::default() }).await.unwrap();
        assert!(!langflow.flow_exists(&other.langflow_workflow_id).await, "the agent's flow went with it");

        // A tenant's agents' flows are not another's to touch.
        let mut stranger = app.agents("tenant-other").await;
        expect_code(
            stranger
                .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: social.id.clone(), ..Default::default() })
                .await,
            Code::NotFound,
        );
        expect_code(
            stranger
                .link_agent_flow(pb::LinkAgentFlowRequest {
                    agent_id: social.id.clone(),
                    flow_id: social.langflow_workflow_id.clone(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
        let checked = stranger.check_agent_links(pb::CheckAgentLinksRequest::default()).await.unwrap().into_inner();
        assert_eq!(checked.checked, 0);

        for agent in all_agents(&mut agents).await {
            langflow.delete_flow(&agent.langflow_workflow_id).await;
        }
    }
);

/// An agent of `tenant` made from the blog template, with its generated flow.
async fn agent_of_the_blog_template(app: &TestApp, tenant: &str) -> pb::Agent {
    let template = app
        .workflows(tenant)
        .await
        .list_workflows(wpb::ListWorkflowsRequest { name_contains: "Blog".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .workflows
        .remove(0);
    app.agents(tenant)
        .await
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: template.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_check_retried_with_its_request_id_answers_the_first_report_and_checks_nothing_again() {
    let langflow = RealLangflow::from_env();
    let app = spawn_app_with_langflow(Backend::Postgres, &real_langflow_url()).await;
    let mut agents = app.agents("tenant-recheck").await;
    let agent = agent_of_the_blog_template(&app, "tenant-recheck").await;
    assert!(langflow.delete_flow(&agent.langflow_workflow_id).await);
    let check = |request_id: &str| pb::CheckAgentLinksRequest { request_id: request_id.into() };

    let first = agents.check_agent_links(check("check-1")).await.unwrap().into_inner();
    assert_eq!((first.checked, first.broken.len()), (1, 1));
    // Repaired: a new check finds nothing broken.
    let repaired = agents
        .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repaired.status, pb::AgentStatus::Draft as i32);
    let fresh = agents.check_agent_links(check("check-2")).await.unwrap().into_inner();
    assert_eq!((fresh.checked, fresh.broken.len()), (1, 0));

    // The first request's retry answers its report, and changes nothing: the agent stays DRAFT.
    let retried = agents.check_agent_links(check("check-1")).await.unwrap().into_inner();
    assert_eq!(retried, first);
    let agent = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
    assert_eq!(agent.status, pb::AgentStatus::Draft as i32);
    // A bad key is refused like any other.
    expect_code(agents.check_agent_links(check("has space")).await, Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_deleted_behind_the_agents_back_is_found_and_the_agent_errs() {
    let langflow = RealLangflow::from_env();
    let app = spawn_app_with_langflow(Backend::Sqlite, &real_langflow_url()).await;
    let mut agents = app.agents("tenant-gone").await;
    let agent = agent_of_the_blog_template(&app, "tenant-gone").await;
    assert!(langflow.delete_flow(&agent.langflow_workflow_id).await);

    let report = agents.check_agent_links(pb::CheckAgentLinksRequest::default()).await.unwrap().into_inner();
    assert_eq!(report.checked, 1);
    assert_eq!(report.broken.len(), 1);
    assert_eq!(report.broken[0].agent_id, agent.id);
    let errored = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
    assert_eq!(errored.status, pb::AgentStatus::Error as i32);
    assert!(errored.status_reason.contains(&agent.langflow_workflow_id), "{}", errored.status_reason);

    // Regenerating gives it a new flow and brings it back to DRAFT.
    let repaired = agents
        .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repaired.status, pb::AgentStatus::Draft as i32);
    assert_ne!(repaired.langflow_workflow_id, agent.langflow_workflow_id);
    assert!(langflow.flow_exists(&repaired.langflow_workflow_id).await);
    let deployed = agents
        .deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deployed.status, pb::AgentStatus::Deployed as i32);

    // Deploying an agent whose flow vanished is refused, and the agent errs.
    let again = agents
        .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!langflow.flow_exists(&repaired.langflow_workflow_id).await, "the replaced flow was deleted");
    langflow.delete_flow(&again.langflow_workflow_id).await;
    let status = expect_code(
        agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("no longer exists"), "{}", status.message());
    let errored = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
    assert_eq!(errored.status, pb::AgentStatus::Error as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_links_to_an_existing_flow_and_leaves_it_when_it_goes() {
    let langflow = RealLangflow::from_env();
    let app = spawn_app_with_langflow(Backend::Sqlite, &real_langflow_url()).await;
    let mut agents = app.agents("tenant-link").await;
    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            name: "Hand-made".into(),
            agent_type: pb::AgentType::CopyGeneration as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(agent.langflow_workflow_id.is_empty(), "a stand-alone agent starts without a flow");
    let status = expect_code(
        agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("LinkAgentFlow"), "{}", status.message());

    let catalog = langflow.catalog().await;
    let flow_id = langflow.create_flow(&prompt_flow(&catalog, "shared flow", "Shared: {input}", &[])).await;
    // A flow made by hand carries no tenant: linking it takes an explicit adopt.
    let status = expect_code(
        agents
            .link_agent_flow(pb::LinkAgentFlowRequest {
                agent_id: agent.id.clone(),
                flow_id: flow_id.clone(),
                etag: agent.etag.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("adopt"), "{}", status.message());
    let linked = agents
        .link_agent_flow(pb::LinkAgentFlowRequest {
            agent_id: agent.id.clone(),
            flow_id: flow_id.clone(),
            etag: agent.etag.clone(),
            adopt: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (linked.langflow_workflow_id.as_str(), linked.flow_origin),
        (flow_id.as_str(), pb::FlowOrigin::Linked as i32)
    );

    // A stale etag, a flow that does not exist, an id that cannot be one.
    expect_code(
        agents
            .link_agent_flow(pb::LinkAgentFlowRequest {
                agent_id: agent.id.clone(),
                flow_id: flow_id.clone(),
                etag: agent.etag.clone(),
                adopt: true,
                ..Default::default()
            })
            .await,
        Code::Aborted,
    );
    expect_code(
        agents
            .link_agent_flow(pb::LinkAgentFlowRequest {
                agent_id: agent.id.clone(),
                flow_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    let status = expect_code(
        agents
            .link_agent_flow(pb::LinkAgentFlowRequest {
                agent_id: agent.id.clone(),
                flow_id: "../etc".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(field_violations(&status)[0].0, "flow_id");

    let unlinked = agents
        .unlink_agent_flow(pb::UnlinkAgentFlowRequest { agent_id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(unlinked.langflow_workflow_id.is_empty());
    assert!(langflow.flow_exists(&flow_id).await, "unlinking never deletes a flow the agent did not make");
    agents
        .link_agent_flow(pb::LinkAgentFlowRequest {
            agent_id: agent.id.clone(),
            flow_id: flow_id.clone(),
            adopt: true,
            ..Default::default()
        })
        .await
        .unwrap();
    agents.delete_agent(pb::DeleteAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
    assert!(langflow.flow_exists(&flow_id).await, "a linked flow outlives its agent");
    langflow.delete_flow(&flow_id).await;
}

both_backends!(
    async fn a_langflow_failure_midway_leaves_no_agent_and_no_flow(backend) {
        let mut fake = FakeLangflow::start().await;
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let mut agents = app.agents("tenant-fail").await;

        // The fifth flow cannot be made: the four made before it are taken back.
        fake.fail_flow_creation_after(4, 100);
        let status = expect_code(agents.provision_agents(pb::ProvisionAgentsRequest::default()).await, Code::Unavailable);
        assert!(status.message().contains("Langflow"), "{}", status.message());
        assert!(all_agents(&mut agents).await.is_empty(), "no half-made agents");
        assert!(fake.flows().is_empty(), "no orphan flows: {:?}", fake.flows());
        fake.fail_flow_creation(0);

        // Langflow down: nothing is made either.
        fake.stop().await;
        let mut workflows = app.workflows("tenant-fail").await;
        let template = workflows
            .list_workflows(wpb::ListWorkflowsRequest { page_size: 1, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows
            .remove(0);
        let create = pb::CreateAgentFromWorkflowRequest { workflow_id: template.id.clone(), ..Default::default() };
        expect_code(agents.create_agent_from_workflow(create.clone()).await, Code::Unavailable);
        assert!(all_agents(&mut agents).await.is_empty());

        // Back up: provisioning completes, every agent with its own flow.
        fake.restart().await;
        let outcome = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
        assert_eq!(outcome.created.len(), 11);
        let mut flows = fake.flows();
        flows.sort();
        let mut linked: Vec<String> = outcome.created.iter().map(|a| a.langflow_workflow_id.clone()).collect();
        linked.sort();
        assert_eq!(flows, linked, "exactly one flow per agent");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_langflow_agents_work_but_flows_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut agents = app.agents("tenant-none").await;
    let outcome = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(outcome.created.len(), 11);
    assert!(outcome.created.iter().all(|a| a.langflow_workflow_id.is_empty()));
    let id = outcome.created[0].id.clone();
    let deployed = agents.deploy_agent(pb::DeployAgentRequest { id: id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(deployed.into_inner().status, pb::AgentStatus::Deployed as i32);
    for status in [
        agents
            .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: id.clone(), ..Default::default() })
            .await
            .map(drop),
        agents
            .link_agent_flow(pb::LinkAgentFlowRequest {
                agent_id: id.clone(),
                flow_id: "abc".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        agents.check_agent_links(pb::CheckAgentLinksRequest::default()).await.map(drop),
    ] {
        let status = expect_code(status, Code::FailedPrecondition);
        assert!(status.message().contains("LANGFLOW_URL"), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_deployments_orphan_flows_are_reconciled_away() {
    let fake = FakeLangflow::start().await;
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let agent = spawn_agent_service(
        &agent_db,
        &workflow.url(),
        &[
            ("LANGFLOW_URL", fake.url()),
            ("LANGFLOW_RECONCILE_INTERVAL_SECS", "1".into()),
            // Not 0: the kept agent's flow is made before the agent is stored, and a pass in
            // between would take it for an orphan.
            ("LANGFLOW_ORPHAN_GRACE_SECS", "3".into()),
            ("LANGFLOW_DEPLOYMENT_ID", "deployment-orphans".into()),
        ],
    )
    .await;
    let app = TestApp { workflow, agent, workflow_db, agent_db };
    let mut workflows = app.workflows("tenant-orphans").await;
    let mut agents = app.agents("tenant-orphans").await;
    let template = workflows
        .list_workflows(wpb::ListWorkflowsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .workflows
        .remove(0);
    let kept = agents
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: template.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // What a crash between "flow made" and "agent stored" leaves behind; a flow another
    // deployment made; one marked before flows named their deployment; somebody else's flow.
    let langflow = RealLangflow::new(fake.url());
    let flow_described = |description: String| {
        let langflow = &langflow;
        async move {
            let mut flow = prompt_flow(&langflow.catalog().await, "orphan", "{input}", &[]);
            flow["description"] = serde_json::json!(description);
            langflow.create_flow(&flow).await
        }
    };
    let marked = |deployment: &str| {
        format!("EnGarde agent {} of tenant tenant-orphans; managed by agent-service{deployment}", uuid::Uuid::now_v7())
    };
    let orphan_id = flow_described(marked(" deployment deployment-orphans")).await;
    let elsewhere_id = flow_described(marked(" deployment another-deployment")).await;
    let legacy_id = flow_described(marked("")).await;
    let foreign_id = flow_described("A flow a person made in the Langflow UI".into()).await;

    eventually(std::time::Duration::from_secs(10), "the orphan flow is deleted", || {
        let exists = fake.flows().contains(&orphan_id);
        async move { !exists }
    })
    .await;
    // A second orphan, made once the first is gone: when it goes too, a whole pass has seen
    // every other flow.
    let second_orphan_id = flow_described(marked(" deployment deployment-orphans")).await;
    eventually(std::time::Duration::from_secs(10), "the second orphan flow is deleted", || {
        let exists = fake.flows().contains(&second_orphan_id);
        async move { !exists }
    })
    .await;
    let flows = fake.flows();
    assert!(flows.contains(&kept.langflow_workflow_id), "a stored agent's flow stays");
    assert!(flows.contains(&elsewhere_id), "another deployment's flows are never touched");
    assert!(flows.contains(&legacy_id), "flows marked without a deployment are never touched");
    assert!(flows.contains(&foreign_id), "flows agent-service did not make are never touched");
}

/// The first template `client`'s tenant sees.
async fn first_template(client: &mut WorkflowClient) -> wpb::WorkflowDefinition {
    client
        .list_workflows(wpb::ListWorkflowsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .workflows
        .remove(0)
}

async fn agent_from(client: &mut AgentClient, template: &wpb::WorkflowDefinition) -> pb::Agent {
    client
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: template.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn agent_without_flow(client: &mut AgentClient, name: &str) -> pb::Agent {
    client
        .create_agent(pb::CreateAgentRequest {
            name: name.into(),
            agent_type: pb::AgentType::CopyGeneration as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn link(agent: &pb::Agent, flow_id: &str, adopt: bool) -> pb::LinkAgentFlowRequest {
    pb::LinkAgentFlowRequest { agent_id: agent.id.clone(), flow_id: flow_id.to_owned(), adopt, ..Default::default() }
}

both_backends!(
    async fn a_tenant_cannot_link_another_tenants_flow_and_a_hand_made_flow_needs_adopt(backend) {
        let langflow = RealLangflow::from_env();
        let app = spawn_app_with_langflow(backend, &real_langflow_url()).await;
        let mut alice = app.agents("tenant-alice").await;
        let mut bob = app.agents("tenant-bob").await;
        let template = first_template(&mut app.workflows("tenant-alice").await).await;
        let alices = agent_from(&mut alice, &template).await;
        let flow = alices.langflow_workflow_id.clone();

        // Bob knows the flow's id: it is as if it did not exist, adopt or not.
        let bobs = agent_without_flow(&mut bob, "Bob's").await;
        for adopt in [false, true] {
            let status = expect_code(bob.link_agent_flow(link(&bobs, &flow, adopt)).await, Code::NotFound);
            let unknown = uuid::Uuid::new_v4().to_string();
            let absent = expect_code(bob.link_agent_flow(link(&bobs, &unknown, adopt)).await, Code::NotFound);
            assert_eq!(status.message(), absent.message().replace(&unknown, &flow), "indistinguishable");
        }
        let bobs_now = bob.get_agent(pb::GetAgentRequest { id: bobs.id.clone() }).await.unwrap().into_inner();
        assert!(bobs_now.langflow_workflow_id.is_empty(), "Bob's agent is unchanged");

        // Alice may link her own flow to another of her agents.
        let alices_other = agent_without_flow(&mut alice, "Alice's other").await;
        let linked = alice.link_agent_flow(link(&alices_other, &flow, false)).await.unwrap().into_inner();
        assert_eq!(linked.langflow_workflow_id, flow);

        // A flow made by hand in Langflow: only with adopt.
        let by_hand = langflow.create_flow(&prompt_flow(&langflow.catalog().await, "by hand", "{input}", &[])).await;
        let status = expect_code(bob.link_agent_flow(link(&bobs, &by_hand, false)).await, Code::FailedPrecondition);
        assert!(status.message().contains("adopt"), "{}", status.message());
        let adopted = bob.link_agent_flow(link(&bobs, &by_hand, true)).await.unwrap().into_inner();
        assert_eq!(
            (adopted.langflow_workflow_id.as_str(), adopted.flow_origin),
            (by_hand.as_str(), pb::FlowOrigin::Linked as i32)
        );
        // Adopted, it is Bob's: another of his agents links it as it is; Alice cannot adopt it.
        let bobs_other = agent_without_flow(&mut bob, "Bob's other").await;
        bob.link_agent_flow(link(&bobs_other, &by_hand, false)).await.expect("Bob's own flow now");
        expect_code(alice.link_agent_flow(link(&alices_other, &by_hand, true)).await, Code::NotFound);

        langflow.delete_flow(&flow).await;
        langflow.delete_flow(&by_hand).await;
    }
);

both_backends!(
    async fn two_deployments_sharing_one_langflow_never_delete_each_others_flows(backend) {
        let langflow = RealLangflow::from_env();
        let workflow_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        // Both reconcile every second, orphans older than 3 s: what took 10 minutes with the
        // defaults. Not 0 s: a flow is made before its agent is stored, and with no grace a
        // pass between the two deletes the flow of an agent being created (CI saw deployment
        // 1's own flow go so). Neither sets LANGFLOW_DEPLOYMENT_ID: each has its database's own.
        let reconciling = [
            ("LANGFLOW_URL", real_langflow_url()),
            ("LANGFLOW_RECONCILE_INTERVAL_SECS", "1".to_owned()),
            ("LANGFLOW_ORPHAN_GRACE_SECS", "3".to_owned()),
        ];
        let db_one = TestDb::new(backend).await;
        let db_two = TestDb::new(backend).await;
        let one = spawn_agent_service(&db_one, &workflow.url(), &reconciling).await;
        let two = spawn_agent_service(&db_two, &workflow.url(), &reconciling).await;
        let identity = "SELECT deployment_id FROM deployment_identity";
        let (id_one, id_two) = (db_one.sql(identity).await, db_two.sql(identity).await);
        assert!(!id_one.is_empty() && id_one != id_two, "{id_one} vs {id_two}");

        let tenant = "tenant-shared";
        let template = first_template(&mut WorkflowServiceClient::with_interceptor(workflow.channel().await, as_tenant(tenant))).await;
        let mut agents_one = AgentServiceClient::with_interceptor(one.channel().await, as_tenant(tenant));
        let mut agents_two = AgentServiceClient::with_interceptor(two.channel().await, as_tenant(tenant));
        let ones = agent_from(&mut agents_one, &template).await;

        // Deployment 2's orphans (its agent's row gone, as after a crash between "flow made" and
        // "agent stored"); the second is made once the first is gone, so that when it goes too,
        // a whole pass of deployment 2's reconciler has had deployment 1's flow in view.
        for round in ["first", "second"] {
            let orphan = agent_from(&mut agents_two, &template).await;
            db_two.sql(&format!("DELETE FROM agents WHERE id = '{}'", orphan.id)).await;
            let langflow = &langflow;
            let flow = orphan.langflow_workflow_id.clone();
            eventually(std::time::Duration::from_secs(60), &format!("the {round} orphan is deleted"), move || {
                let flow = flow.clone();
                async move { !langflow.flow_exists(&flow).await }
            })
            .await;
        }
        assert!(langflow.flow_exists(&ones.langflow_workflow_id).await, "deployment 1's flow is still there");
        let deployed = agents_one
            .deploy_agent(pb::DeployAgentRequest { id: ones.id.clone(), ..Default::default() })
            .await
            .expect("deployment 1's agent still deploys")
            .into_inner();
        assert_eq!(deployed.status, pb::AgentStatus::Deployed as i32);

        // Nor can deployment 2 link it, even for the same tenant name, even adopting it.
        let twos = agent_without_flow(&mut agents_two, "Deployment 2's").await;
        let status = expect_code(
            agents_two.link_agent_flow(link(&twos, &ones.langflow_workflow_id, true)).await,
            Code::FailedPrecondition,
        );
        assert!(status.message().contains("another agent-service deployment"), "{}", status.message());

        langflow.delete_flow(&ones.langflow_workflow_id).await;
    }
);

both_backends!(
    async fn a_deployment_records_the_endpoint_name_the_flow_has_in_langflow(backend) {
        let fake = FakeLangflow::start().await;
        let langflow = RealLangflow::new(fake.url());
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let tenant = "tenant-endpoints";
        let mut agents = app.agents(tenant).await;
        let agent = agent_of_the_blog_template(&app, tenant).await;
        let deploy = |id: &str| pb::DeployAgentRequest { id: id.to_owned(), ..Default::default() };

        // A flow made by hand without an endpoint name: linked and deployed, with none recorded.
        let catalog = crate::langflow_support::catalog_fixture();
        let plain = langflow.create_flow(&prompt_flow(&catalog, "plain", "{input}", &[])).await;
        let link = |flow_id: &str| pb::LinkAgentFlowRequest {
            agent_id: agent.id.clone(),
            flow_id: flow_id.to_owned(),
            adopt: true,
            ..Default::default()
        };
        agents.link_agent_flow(link(&plain)).await.unwrap();
        let deployed = agents.deploy_agent(deploy(&agent.id)).await.unwrap().into_inner();
        assert_eq!(deployed.status, pb::AgentStatus::Deployed as i32);
        assert_eq!(deployed.langflow_deployment_id, "", "no made-up id for a flow without an endpoint name");

        // One that has an endpoint name: that is recorded; relinking forgets the old one.
        let mut named = prompt_flow(&catalog, "named", "{input}", &[]);
        named["endpoint_name"] = "our-spring-launch".into();
        let named = langflow.create_flow(&named).await;
        let relinked = agents.link_agent_flow(link(&named)).await.unwrap().into_inner();
        assert_eq!((relinked.status, relinked.langflow_deployment_id.as_str()), (pb::AgentStatus::Draft as i32, ""));
        let deployed = agents.deploy_agent(deploy(&agent.id)).await.unwrap().into_inner();
        assert_eq!(deployed.langflow_deployment_id, "our-spring-launch");
    }
);

both_backends!(
    async fn a_link_check_keeps_the_idempotency_rules_of_every_mutating_call(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_app_with_langflow(backend, &fake.url()).await;
        let tenant = "tenant-check-keys";
        let mut agents = app.agents(tenant).await;
        let agent = agent_of_the_blog_template(&app, tenant).await;
        let check = |request_id: &str| pb::CheckAgentLinksRequest { request_id: request_id.into() };
        let status_of = |agents: &AgentClient, id: &str| {
            let (mut agents, id) = (agents.clone(), id.to_owned());
            async move { agents.get_agent(pb::GetAgentRequest { id }).await.unwrap().into_inner().status }
        };

        // The flow goes: the check moves the agent to ERROR and reports it.
        assert!(fake.remove_flow(&agent.langflow_workflow_id));
        let first = agents.check_agent_links(check("links-1")).await.unwrap().into_inner();
        assert_eq!((first.checked, first.broken.len()), (1, 1));
        assert_eq!(first.broken[0].agent_id, agent.id);
        assert_eq!(status_of(&agents, &agent.id).await, pb::AgentStatus::Error as i32);

        // Repaired, then its flow goes again: a replay, any number of times, answers the first
        // report and checks (and moves) nothing.
        let repaired = agents
            .regenerate_agent_flow(pb::RegenerateAgentFlowRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(repaired.status, pb::AgentStatus::Draft as i32);
        assert!(fake.remove_flow(&repaired.langflow_workflow_id));
        for _ in 0..2 {
            let replayed = agents.check_agent_links(check("links-1")).await.unwrap().into_inner();
            assert_eq!(replayed, first);
        }
        assert_eq!(status_of(&agents, &agent.id).await, pb::AgentStatus::Draft as i32, "not checked again");

        // The same id on another call, or another call's id on a check, is ALREADY_EXISTS, as for
        // every mutating call; the check then runs nothing.
        let deploy = pb::DeployAgentRequest { id: agent.id.clone(), request_id: "links-1".into(), ..Default::default() };
        let reused = expect_code(agents.deploy_agent(deploy).await, Code::AlreadyExists);
        assert!(reused.message().contains("links-1"), "{}", reused.message());
        let create = pb::CreateAgentRequest {
            name: "Keyed".into(),
            agent_type: pb::AgentType::CopyGeneration as i32,
            request_id: "made-1".into(),
            ..Default::default()
        };
        agents.create_agent(create).await.unwrap();
        expect_code(agents.check_agent_links(check("made-1")).await, Code::AlreadyExists);
        assert_eq!(status_of(&agents, &agent.id).await, pb::AgentStatus::Draft as i32, "no check ran");

        // Keys are the tenant's: another tenant's "links-1" is its own check.
        let mut other = app.agents("tenant-check-keys-2").await;
        let theirs = other.check_agent_links(check("links-1")).await.unwrap().into_inner();
        assert_eq!((theirs.checked, theirs.broken.len()), (0, 0));

        // A new key checks again, and finds the flow gone.
        let fresh = agents.check_agent_links(check("links-2")).await.unwrap().into_inner();
        assert_eq!((fresh.checked, fresh.broken.len()), (1, 1));
        assert_eq!(status_of(&agents, &agent.id).await, pb::AgentStatus::Error as i32);
    }
);
