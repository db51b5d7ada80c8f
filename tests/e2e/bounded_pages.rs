//! Answers bounded in bytes: a page of big items stops before the message limit and carries a
//! next_page_token (workflows of megabytes, executions and messages of 128 KB), agent-service
//! pages through workflow-service the same way when it provisions, reports that could grow
//! without bound are capped with a count of what they leave out, and no oversized row ever
//! makes a call fail as a whole.

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use prost::Message as _;
use tonic::Code;

use crate::agents_execution::{active_agent, execute, spawn_with_langflow};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::{active_walker, config, llm, review, spawn_walker_app, start_run};
use crate::workflows_crud::create_request;

/// The services' default message limit (MAX_MESSAGE_BYTES), which tonic clients share.
const MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// A valid workflow of about 2.6 MB: 50 steps of 8,000 four-byte characters each, and a flow
/// export of about 1 MB, all within the field limits.
fn big_workflow(name: &str) -> wpb::CreateWorkflowRequest {
    let mut request = create_request(name);
    let config = request.workflow_config.as_mut().expect("config");
    config.steps = (0..50)
        .map(|i| wpb::Step {
            id: format!("step_{i}"),
            kind: wpb::StepKind::Llm as i32,
            prompt: format!("{{input}} {}", "😀".repeat(7_990)),
            ..Default::default()
        })
        .collect();
    let node = serde_json::json!({"id": "note-1", "data": {"note": "x".repeat(1_000_000)}});
    config.langflow_flow_json = serde_json::json!({"data": {"nodes": [node], "edges": []}}).to_string();
    request
}

/// Every item of a listing, page after page, checking that each answer fits the message limit
/// and that a page cut by bytes still hands on a token.
async fn all_pages<Req, Res, T, F, Fut>(mut request: Req, mut call: F) -> (Vec<T>, usize)
where
    Req: Clone + SetToken,
    Res: prost::Message + IntoPage<T>,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Res>, tonic::Status>>,
{
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let answer = call(request.clone()).await.expect("a page").into_inner();
        assert!(answer.encoded_len() <= MESSAGE_LIMIT, "a page of {} bytes", answer.encoded_len());
        pages += 1;
        assert!(pages <= 100, "the pages never end");
        let (page, token) = answer.into_page();
        items.extend(page);
        if token.is_empty() {
            return (items, pages);
        }
        request.set_token(token);
    }
}

pub trait SetToken {
    fn set_token(&mut self, token: String);
}

pub trait IntoPage<T> {
    fn into_page(self) -> (Vec<T>, String);
}

macro_rules! paged {
    ($req:ty, $res:ty, $item:ty, $field:ident) => {
        impl SetToken for $req {
            fn set_token(&mut self, token: String) {
                self.page_token = token;
            }
        }
        impl IntoPage<$item> for $res {
            fn into_page(self) -> (Vec<$item>, String) {
                (self.$field, self.next_page_token)
            }
        }
    };
}

paged!(wpb::ListWorkflowsRequest, wpb::ListWorkflowsResponse, wpb::WorkflowDefinition, workflows);
paged!(pb::ListAgentsRequest, pb::ListAgentsResponse, pb::Agent, agents);
paged!(pb::ListInstalledAgentsRequest, pb::ListInstalledAgentsResponse, pb::InstalledAgent, installed_agents);
paged!(pb::ListExecutionsRequest, pb::ListExecutionsResponse, pb::Execution, executions);
paged!(pb::ListSessionMessagesRequest, pb::ListSessionMessagesResponse, pb::SessionMessage, messages);
paged!(pb::ListSessionsRequest, pb::ListSessionsResponse, pb::Session, sessions);
paged!(pb::ListFeedbackRequest, pb::ListFeedbackResponse, pb::Feedback, feedback);
paged!(pb::ListRunsRequest, pb::ListRunsResponse, pb::Run, runs);
paged!(pb::ListPendingReviewsRequest, pb::ListPendingReviewsResponse, pb::Review, reviews);

both_backends!(
    async fn workflows_of_megabytes_are_listed_over_pages_and_provisioned(backend) {
        let app = spawn_app(backend).await;
        let mut workflows = app.workflows("tenant-big").await;
        let mut agents = app.agents("tenant-big").await;
        let mut ids = Vec::new();
        for name in ["Big one", "Big three", "Big two"] {
            let created = workflows.create_workflow(big_workflow(name)).await.expect("a valid big workflow");
            ids.push(created.into_inner().id);
        }

        // Three of them are more than one answer may carry: the first page stops early.
        let own = wpb::ListWorkflowsRequest { is_template: Some(false), page_size: 50, ..Default::default() };
        let first = workflows.list_workflows(own.clone()).await.expect("the first page").into_inner();
        assert!(first.workflows.len() < 3, "a page of {} workflows", first.workflows.len());
        assert!(!first.next_page_token.is_empty(), "a page cut short by bytes hands on a token");
        let (listed, pages) = all_pages(own, |r| {
            let mut c = workflows.clone();
            async move { c.list_workflows(r).await }
        })
        .await;
        assert!(pages >= 2);
        let mut listed_ids: Vec<_> = listed.iter().map(|w| w.id.clone()).collect();
        listed_ids.sort();
        ids.sort();
        assert_eq!(listed_ids, ids, "every workflow comes back once, over the pages");

        // agent-service reads them page by page too, and its answer leaves out what does not
        // fit, counted.
        let provisioned = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.expect("provisioned");
        let provisioned = provisioned.into_inner();
        assert!(provisioned.encoded_len() <= MESSAGE_LIMIT);
        let created = provisioned.created.len() + provisioned.omitted_created as usize;
        assert_eq!(created, 3 + 11, "an agent for each workflow and template");
        assert!(provisioned.omitted_created > 0, "three agents with their snapshots do not fit one answer");

        let (all_agents, _) = all_pages(pb::ListAgentsRequest::default(), |r| {
            let mut c = agents.clone();
            async move { c.list_agents(r).await }
        })
        .await;
        assert_eq!(all_agents.len(), created);
        let (installed, _) = all_pages(pb::ListInstalledAgentsRequest::default(), |r| {
            let mut c = agents.clone();
            async move { c.list_installed_agents(r).await }
        })
        .await;
        assert_eq!(installed.len(), created);
        let again = agents.provision_agents(pb::ProvisionAgentsRequest::default()).await.expect("again").into_inner();
        assert_eq!(again.created.len() + again.omitted_created as usize, 0, "nothing left to provision");
    }
);

both_backends!(
    async fn executions_and_messages_of_128_kb_are_listed_over_pages(backend) {
        let langflow = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &langflow.url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-big").await;
        let mut execution_client = app.executions("tenant-big").await;
        // 32,000 four-byte characters: the longest input, and an answer at least as long.
        let input = "😀".repeat(32_000);
        for _ in 0..20 {
            execution_client.execute_agent(execute(&agent.id, &input, "big")).await.expect("executed");
        }

        let request = pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() };
        let (executions, pages) = all_pages(request, |r| {
            let mut c = execution_client.clone();
            async move { c.list_executions(r).await }
        })
        .await;
        assert_eq!(executions.len(), 20);
        assert!(pages >= 2, "20 executions of 256 KB and more do not fit one answer");
        let distinct: std::collections::HashSet<_> = executions.iter().map(|e| e.id.clone()).collect();
        assert_eq!(distinct.len(), 20, "no execution on two pages");

        let request = pb::ListSessionMessagesRequest {
            agent_id: agent.id.clone(),
            session_id: "big".into(),
            ..Default::default()
        };
        let (messages, pages) = all_pages(request, |r| {
            let mut c = execution_client.clone();
            async move { c.list_session_messages(r).await }
        })
        .await;
        assert_eq!(messages.len(), 40, "a question and an answer per execution");
        assert!(pages >= 2);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_report_of_thousands_of_problems_stays_small_and_counts_the_rest() {
    let app = spawn_workflows(Backend::Sqlite).await;
    let mut client = app.client("tenant-a").await;
    // About 150 KB of request: 5,000 steps with bad ids, each of which is a problem.
    let config = wpb::WorkflowConfig {
        steps: (0..5_000)
            .map(|_| wpb::Step { id: "Bad!".into(), kind: wpb::StepKind::Llm as i32, ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let report = client
        .validate_workflow_config(wpb::ValidateWorkflowConfigRequest { workflow_config: Some(config) })
        .await
        .expect("a report")
        .into_inner();
    assert!(!report.valid);
    assert_eq!(report.violations.len(), 100, "the first 100 (MAX_REPORTED_VIOLATIONS)");
    assert!(report.omitted_violations >= 4_900, "the rest counted: {}", report.omitted_violations);
    assert_eq!(report.violations[0].field, "workflow_config.steps", "in field order");
    assert!(report.encoded_len() < 64 * 1024, "{} bytes", report.encoded_len());

    let fine = client
        .validate_workflow_config(wpb::ValidateWorkflowConfigRequest {
            workflow_config: create_request("Fine").workflow_config,
        })
        .await
        .expect("a report")
        .into_inner();
    assert!(fine.valid);
    assert_eq!((fine.violations.len(), fine.omitted_violations), (0, 0));
}

both_backends!(
    async fn max_page_bytes_cuts_pages_and_an_item_over_the_message_limit_is_named(backend) {
        let db = TestDb::new(backend).await;
        let big_id = {
            let service = spawn_workflow_service(&db, &[]).await;
            let mut client = wpb::workflow_service_client::WorkflowServiceClient::with_interceptor(
                service.channel().await,
                as_tenant("tenant-a"),
            )
            .max_decoding_message_size(MESSAGE_LIMIT);
            client.create_workflow(big_workflow("Big")).await.expect("created").into_inner().id
        };

        // A small page budget: the library comes in several pages though page_size allows all.
        let small = spawn_workflow_service(&db, &[("MAX_PAGE_BYTES", "10000".into())]).await;
        let mut client = wpb::workflow_service_client::WorkflowServiceClient::with_interceptor(
            small.channel().await,
            as_tenant("tenant-a"),
        );
        let request = wpb::ListWorkflowsRequest { is_template: Some(true), page_size: 200, ..Default::default() };
        let (templates, pages) = all_pages(request, |r| {
            let mut c = client.clone();
            async move { c.list_workflows(r).await }
        })
        .await;
        assert_eq!(templates.len(), 11);
        assert!(pages >= 2, "{pages} pages of at most 10,000 bytes of workflows");
        // An item larger than the page budget still comes, alone.
        let own = wpb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() };
        let page = client.list_workflows(own.clone()).await.expect("the big one alone").into_inner();
        assert_eq!(page.workflows.len(), 1);
        assert_eq!(page.workflows[0].id, big_id);
        drop(small);

        // Under a message limit smaller than the workflow, it is named, and it is not INTERNAL.
        let tight = spawn_workflow_service(&db, &[("MAX_MESSAGE_BYTES", "1000000".into())]).await;
        let mut client = wpb::workflow_service_client::WorkflowServiceClient::with_interceptor(
            tight.channel().await,
            as_tenant("tenant-a"),
        );
        let status = expect_code(client.list_workflows(own).await, Code::FailedPrecondition);
        assert!(status.message().contains(&big_id), "{}", status.message());
    }
);

both_backends!(
    async fn every_list_pages_oversized_rows_whatever_the_page_size(backend) {
        let langflow = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &langflow.url(), &[]).await;
        let steps = vec![llm("write", "{input}"), review("check")];
        let walker = active_walker(&app, "tenant-big", config(steps, 0, vec![])).await;
        let agents = app.agents("tenant-big").await;
        let mut execution_client = app.executions("tenant-big").await;
        let mut run_client = app.runs("tenant-big").await;
        // Twenty runs of the longest input: each waits for the review of 128 KB of output.
        let input = "😀".repeat(32_000);
        for _ in 0..20 {
            start_run(&mut run_client, &walker.id, &input).await;
        }
        let agent_id = walker.id.clone();
        let waiting = |size| pb::ListPendingReviewsRequest { agent_id: agent_id.clone(), page_size: size, ..Default::default() };
        let review_client = run_client.clone();
        let reviews = |request| {
            let client = review_client.clone();
            all_pages(request, move |r| {
                let mut c = client.clone();
                async move { c.list_pending_reviews(r).await }
            })
        };
        eventually(std::time::Duration::from_secs(180), "20 runs waiting for review", || async {
            reviews(waiting(200)).await.0.len() == 20
        })
        .await;
        // And twenty executions of it, each of 128 KB in and out, with feedback.
        for _ in 0..20 {
            execution_client.execute_agent(execute(&agent_id, &input, "big")).await.expect("executed");
        }
        let executions = {
            let request = pb::ListExecutionsRequest { agent_id: agent_id.clone(), page_size: 200, ..Default::default() };
            all_pages(request, |r| {
                let mut c = execution_client.clone();
                async move { c.list_executions(r).await }
            })
            .await
            .0
        };
        // Forty: the runs' llm steps are executions of the agent too.
        assert_eq!(executions.len(), 40);
        for execution in &executions {
            let comment = "😀".repeat(2_000);
            let request = pb::SubmitFeedbackRequest { execution_id: execution.id.clone(), score: 4, comment, ..Default::default() };
            execution_client.submit_feedback(request).await.expect("feedback");
        }

        // Every listing, at every page size, answers every item over its pages: no call fails
        // (let alone INTERNAL), and no answer exceeds the message limit (checked in all_pages).
        let mut sessions_seen = None;
        for size in [0, 1, 7, 200] {
            assert_eq!(reviews(waiting(size)).await.0.len(), 20);
            let request = pb::ListRunsRequest { agent_id: agent_id.clone(), page_size: size, ..Default::default() };
            let (runs, _) = all_pages(request, |r| {
                let mut c = run_client.clone();
                async move { c.list_runs(r).await }
            })
            .await;
            assert_eq!(runs.len(), 20, "runs at page size {size}");
            let request = pb::ListExecutionsRequest { agent_id: agent_id.clone(), page_size: size, ..Default::default() };
            let (listed, _) = all_pages(request, |r| {
                let mut c = execution_client.clone();
                async move { c.list_executions(r).await }
            })
            .await;
            assert_eq!(listed.len(), 40, "executions at page size {size}");
            let request = pb::ListFeedbackRequest { agent_id: agent_id.clone(), page_size: size, ..Default::default() };
            let (feedback, _) = all_pages(request, |r| {
                let mut c = execution_client.clone();
                async move { c.list_feedback(r).await }
            })
            .await;
            assert_eq!(feedback.len(), 40, "feedback at page size {size}");
            let request = pb::ListSessionsRequest { agent_id: agent_id.clone(), page_size: size, ..Default::default() };
            let (sessions, _) = all_pages(request, |r| {
                let mut c = execution_client.clone();
                async move { c.list_sessions(r).await }
            })
            .await;
            assert!(!sessions.is_empty());
            assert_eq!(*sessions_seen.get_or_insert(sessions.len()), sessions.len(), "sessions at page size {size}");
            for session in sessions.iter().take(2) {
                let request = pb::ListSessionMessagesRequest {
                    agent_id: agent_id.clone(),
                    session_id: session.session_id.clone(),
                    page_size: size,
                    ..Default::default()
                };
                let (messages, _) = all_pages(request, |r| {
                    let mut c = execution_client.clone();
                    async move { c.list_session_messages(r).await }
                })
                .await;
                assert!(!messages.is_empty());
            }
            let request = pb::ListAgentsRequest { page_size: size, ..Default::default() };
            let (all_agents, _) = all_pages(request, |r| {
                let mut c = agents.clone();
                async move { c.list_agents(r).await }
            })
            .await;
            assert_eq!(all_agents.len(), 1);
            let request = pb::ListInstalledAgentsRequest { page_size: size, ..Default::default() };
            let (installed, _) = all_pages(request, |r| {
                let mut c = agents.clone();
                async move { c.list_installed_agents(r).await }
            })
            .await;
            assert_eq!(installed.len(), 1);
        }
    }
);
