//! RecordExecution: agent-service reports each execution at least once; each is counted once,
//! for the tenant whose execution it was: statistics are per tenant, a template's included.

use engarde::proto::workflow::v1 as pb;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;
use pb::workflow_service_client::WorkflowServiceClient;

fn report(workflow_id: &str, execution_id: &str, succeeded: bool) -> pb::RecordExecutionRequest {
    pb::RecordExecutionRequest { workflow_id: workflow_id.into(), execution_id: execution_id.into(), succeeded }
}

async fn first_template(client: &mut WorkflowClient) -> pb::WorkflowDefinition {
    let request = pb::ListWorkflowsRequest { is_template: Some(true), page_size: 1, ..Default::default() };
    client.list_workflows(request).await.unwrap().into_inner().workflows.remove(0)
}

type Statistics = (i64, i64, f64);

/// (execution_count, success_count, success_rate) of `id` as `client`'s tenant reads it, by
/// GetWorkflow and by ListWorkflows.
async fn read_statistics(client: &mut WorkflowClient, id: &str) -> (Statistics, Statistics) {
    let got = client.get_workflow(pb::GetWorkflowRequest { id: id.into() }).await.unwrap().into_inner();
    let request = pb::ListWorkflowsRequest { page_size: 200, ..Default::default() };
    let listed = client.list_workflows(request).await.unwrap().into_inner().workflows;
    let listed = listed.into_iter().find(|w| w.id == id).expect("listed");
    let counts = |w: &pb::WorkflowDefinition| (w.execution_count, w.success_count, w.success_rate);
    (counts(&got), counts(&listed))
}

/// The statistics of `id` as `client`'s tenant reads them, where GetWorkflow and ListWorkflows
/// must agree (no change on its way to the replica meanwhile).
async fn statistics(client: &mut WorkflowClient, id: &str) -> Statistics {
    let (got, listed) = read_statistics(client, id).await;
    assert_eq!(got, listed, "GetWorkflow and ListWorkflows agree");
    got
}

both_backends!(
    async fn concurrent_duplicate_reports_are_counted_exactly_once(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        let workflow = client.create_workflow(create_request("Counted")).await.unwrap().into_inner();

        // 30 executions (every third one failed), each reported 4 times, all at once.
        let mut tasks = Vec::new();
        for n in 0..30 {
            for _ in 0..4 {
                let mut c = client.clone();
                let request = pb::RecordExecutionRequest {
                    workflow_id: workflow.id.clone(),
                    execution_id: format!("exec-{n}"),
                    succeeded: n % 3 != 0,
                };
                tasks.push(tokio::spawn(async move { c.record_execution(request).await }));
            }
        }
        let mut counted = 0;
        for task in tasks {
            if task.await.unwrap().expect("recorded").into_inner().counted {
                counted += 1;
            }
        }
        assert_eq!(counted, 30, "each execution counted by exactly one of its reports");
        let after = client.get_workflow(pb::GetWorkflowRequest { id: workflow.id.clone() }).await.unwrap().into_inner();
        assert_eq!((after.execution_count, after.success_count), (30, 20));
        assert!((after.success_rate - 20.0 / 30.0).abs() < 1e-9);
        assert_eq!(after.version, workflow.version, "statistics are not a new version of the definition");

        let again = client
            .record_execution(pb::RecordExecutionRequest { workflow_id: workflow.id.clone(), execution_id: "exec-1".into(), succeeded: false })
            .await
            .unwrap()
            .into_inner();
        assert!(!again.counted);
        assert_eq!(again.execution_count, 30);

        // One execution id belongs to one workflow.
        let other = client.create_workflow(create_request("Other")).await.unwrap().into_inner();
        expect_code(
            client.record_execution(pb::RecordExecutionRequest { workflow_id: other.id, execution_id: "exec-1".into(), succeeded: true }).await,
            Code::AlreadyExists,
        );
        let status = expect_code(
            client.record_execution(pb::RecordExecutionRequest { workflow_id: workflow.id.clone(), execution_id: String::new(), succeeded: true }).await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "execution_id");

        // Another tenant cannot count on it: NOT_FOUND, and nothing counted.
        let mut bob = app.client("tenant-b").await;
        expect_code(
            bob.record_execution(pb::RecordExecutionRequest { workflow_id: workflow.id.clone(), execution_id: "forged-1".into(), succeeded: true }).await,
            Code::NotFound,
        );
        let after_forgery = client.get_workflow(pb::GetWorkflowRequest { id: workflow.id.clone() }).await.unwrap().into_inner();
        assert_eq!((after_forgery.execution_count, after_forgery.success_count), (30, 20));
    }
);

both_backends!(
    async fn each_tenant_reads_its_own_statistics_of_a_shared_template(backend) {
        let app = spawn_workflows(backend).await;
        let mut alice = app.client("tenant-a").await;
        let mut bob = app.client("tenant-b").await;
        let mut carol = app.client("tenant-c").await;
        let template = first_template(&mut alice).await;
        let id = template.id.as_str();

        // Alice: 3 executions, 2 succeeded; Bob: 1, failed. Each answer is the reporter's own.
        for (n, succeeded) in [(1, true), (2, true), (3, false)] {
            let recorded = alice.record_execution(report(id, &format!("alice-{n}"), succeeded)).await.unwrap().into_inner();
            assert_eq!((recorded.counted, recorded.execution_count), (true, n));
        }
        let bobs = bob.record_execution(report(id, "bob-1", false)).await.unwrap().into_inner();
        assert_eq!((bobs.counted, bobs.execution_count, bobs.success_rate), (true, 1, 0.0), "Bob's own, not 4");

        assert_eq!(statistics(&mut alice, id).await, (3, 2, 2.0 / 3.0));
        assert_eq!(statistics(&mut bob, id).await, (1, 0, 0.0));
        assert_eq!(statistics(&mut carol, id).await, (0, 0, 0.0), "no executions of its own");

        // A retry counts nothing, and Bob cannot count Alice's execution as his.
        let again = alice.record_execution(report(id, "alice-1", true)).await.unwrap().into_inner();
        assert_eq!((again.counted, again.execution_count), (false, 3));
        expect_code(bob.record_execution(report(id, "alice-2", true)).await, Code::AlreadyExists);
        assert_eq!(statistics(&mut bob, id).await, (1, 0, 0.0));

        // A clone is the tenant's own workflow: it starts from nothing and counts its own.
        let clone = alice
            .clone_workflow(pb::CloneWorkflowRequest { source_id: template.id.clone(), name: "Alice's copy".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((clone.execution_count, clone.success_count), (0, 0));
        alice.record_execution(report(&clone.id, "alice-clone-1", true)).await.unwrap();
        assert_eq!(statistics(&mut alice, &clone.id).await, (1, 1, 1.0));
        assert_eq!(statistics(&mut alice, id).await, (3, 2, 2.0 / 3.0), "the template's are apart");
        expect_code(bob.record_execution(report(&clone.id, "bob-2", true)).await, Code::NotFound);
        assert_eq!(statistics(&mut alice, &clone.id).await, (1, 1, 1.0), "Bob's attempt counted nothing");
    }
);

/// With the cache on (PostgreSQL), a record on a template through one replica reaches the
/// reporting tenant's reads on another replica, which had them cached, and no other tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_second_replica_reads_the_reporting_tenants_new_statistics_only() {
    let db = TestDb::new(Backend::Postgres).await;
    let metrics = free_port();
    let one = spawn_workflow_service(&db, &[]).await;
    let two = spawn_workflow_service(&db, &[("METRICS_ADDR", format!("127.0.0.1:{metrics}"))]).await;
    let mut alice_on_one = WorkflowServiceClient::with_interceptor(one.channel().await, as_tenant("tenant-a"));
    let mut alice_on_two = WorkflowServiceClient::with_interceptor(two.channel().await, as_tenant("tenant-a"));
    let mut bob_on_two = WorkflowServiceClient::with_interceptor(two.channel().await, as_tenant("tenant-b"));
    let template = first_template(&mut alice_on_one).await;
    let id = template.id.as_str();
    // Replica two reads both tenants' figures, until it answers them from its cache.
    let hits = || async {
        metric_sum(&scrape(metrics).await, "workflow_cache_lookups_total", &[r#"kind="get""#, r#"result="hit""#])
    };
    eventually(std::time::Duration::from_secs(5), "replica two's reads served from its cache", || {
        let (mut alice, mut bob) = (alice_on_two.clone(), bob_on_two.clone());
        async move {
            let before = hits().await;
            assert_eq!(statistics(&mut alice, id).await, (0, 0, 0.0));
            assert_eq!(statistics(&mut bob, id).await, (0, 0, 0.0));
            hits().await >= before + 2.0
        }
    })
    .await;

    alice_on_one.record_execution(report(id, "alice-1", true)).await.unwrap();
    eventually(std::time::Duration::from_secs(5), "Alice's count read on replica two", || {
        let mut client = alice_on_two.clone();
        async move { read_statistics(&mut client, id).await == ((1, 1, 1.0), (1, 1, 1.0)) }
    })
    .await;
    assert_eq!(statistics(&mut bob_on_two, id).await, (0, 0, 0.0), "Bob never reads Alice's");

    // And the other way: Bob's record on replica two, read by Bob on replica one.
    let mut bob_on_one = WorkflowServiceClient::with_interceptor(one.channel().await, as_tenant("tenant-b"));
    assert_eq!(statistics(&mut bob_on_one, id).await, (0, 0, 0.0));
    bob_on_two.record_execution(report(id, "bob-1", false)).await.unwrap();
    eventually(std::time::Duration::from_secs(5), "Bob's count read on replica one", || {
        let mut client = bob_on_one.clone();
        async move { read_statistics(&mut client, id).await == ((1, 0, 0.0), (1, 0, 0.0)) }
    })
    .await;
    assert_eq!(statistics(&mut alice_on_one, id).await, (1, 1, 1.0));
    assert_eq!(statistics(&mut alice_on_two, id).await, (1, 1, 1.0));
}

both_backends!(
    async fn agents_of_two_tenants_count_on_their_own_statistics_of_one_template(backend) {
        use crate::agents_execution::{run_agent, spawn_with_langflow, workflow_counts_reach};
        use crate::langflow_support::FakeLangflow;
        use engarde::proto::agent::v1 as apb;

        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let template = first_template(&mut app.workflows("tenant-a").await).await;
        // Through agent-service's outbox, as the service identity naming the agent's tenant.
        let mut runs = Vec::new();
        for (tenant, executions) in [("tenant-a", 2), ("tenant-b", 1)] {
            let mut agents = app.agents(tenant).await;
            let made = apb::CreateAgentFromWorkflowRequest { workflow_id: template.id.clone(), ..Default::default() };
            let agent = agents.create_agent_from_workflow(made).await.unwrap().into_inner();
            agents.deploy_agent(apb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
            agents.activate_agent(apb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
            let mut client = app.executions(tenant).await;
            for n in 0..executions {
                let execution = run_agent(&mut client, &agent.id, &format!("topic {n}"), "").await;
                assert_eq!(execution.status, apb::ExecutionStatus::Succeeded as i32);
            }
            runs.push((tenant, executions));
        }
        for (tenant, executions) in runs {
            workflow_counts_reach(&app, tenant, &template.id, (executions, executions)).await;
        }
        assert_eq!(statistics(&mut app.workflows("tenant-a").await, &template.id).await, (2, 2, 1.0));
        assert_eq!(statistics(&mut app.workflows("tenant-b").await, &template.id).await, (1, 1, 1.0));
        assert_eq!(statistics(&mut app.workflows("tenant-c").await, &template.id).await, (0, 0, 0.0));
    }
);
