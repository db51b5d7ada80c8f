//! A three-step walk with a review in the middle, through a real Langflow (TEST_LANGFLOW_URL):
//! approve with an edit and the edit flows on; reject and the run ends; mismatched review ids are
//! refused; WatchRun replays and resumes from a sequence number without a gap.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use futures::StreamExt;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::{RealLangflow, real_langflow_url};
use crate::walker_support::*;

async fn pending_reviews(runs: &mut RunClient, agent_id: &str) -> Vec<pb::Review> {
    runs.list_pending_reviews(pb::ListPendingReviewsRequest { agent_id: agent_id.into(), ..Default::default() })
        .await
        .expect("list pending reviews")
        .into_inner()
        .reviews
}

/// Waits for the run's pending review.
async fn review_of(runs: &mut RunClient, agent_id: &str, run_id: &str) -> pb::Review {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(review) = pending_reviews(runs, agent_id).await.into_iter().find(|r| r.run_id == run_id) {
            return review;
        }
        assert!(tokio::time::Instant::now() < deadline, "no review came: {:#?}", get_run(runs, run_id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_backends!(
    async fn a_reviewed_walk_carries_the_edit_to_the_next_step(backend) {
        let langflow = RealLangflow::from_env();
        let app = spawn_walker_app(backend, &real_langflow_url(), &[]).await;
        let mut runs = app.runs("tenant-walk").await;
        let steps = vec![llm("draft", "Draft a post about {input}"), review("check"), llm("polish", "Polish this: {input}")];
        let agent = active_walker(&app, "tenant-walk", config(steps, 1, vec![])).await;

        let run = start_run(&mut runs, &agent.id, "our spring sale").await;
        assert_eq!(run.status, pb::RunStatus::Queued as i32);
        assert_eq!(run.steps.len(), 3);
        // A watcher that reads the first two events and goes away.
        let mut first = Vec::new();
        let mut stream =
            runs.watch_run(pb::WatchRunRequest { id: run.id.clone(), from_sequence: 1 }).await.unwrap().into_inner();
        for _ in 0..2 {
            first.push(stream.next().await.expect("an event").expect("ok"));
        }
        drop(stream);

        let pending = review_of(&mut runs, &agent.id, &run.id).await;
        assert_eq!(pending.step_id, "check");
        assert_eq!(pending.status, pb::ReviewStatus::Pending as i32);
        assert_eq!(pending.default_action, "REJECT");
        assert!(pending.output.contains("Draft a post about") && pending.output.contains("our spring sale"), "{}", pending.output);
        let waiting = get_run(&mut runs, &run.id).await;
        assert_eq!(waiting.status, pb::RunStatus::WaitingReview as i32);
        assert_eq!(waiting.steps[0].input, "our spring sale");
        assert_eq!(waiting.steps[1].input, waiting.steps[0].output);
        assert_eq!(step_status(&waiting, 2), pb::StepStatus::Pending);

        // Ids that do not name this review are refused, and change nothing.
        let approve = |run_id: &str, step_id: &str, review_id: &str| pb::ApproveStepRequest {
            run_id: run_id.into(),
            step_id: step_id.into(),
            review_id: review_id.into(),
            edited_output: None,
            request_id: String::new(),
        };
        let status = expect_code(runs.approve_step(approve(&run.id, "draft", &pending.id)).await, Code::FailedPrecondition);
        assert!(status.message().contains("step_id"), "{}", status.message());
        let other_run = start_run(&mut runs, &agent.id, "another run").await;
        let status = expect_code(runs.approve_step(approve(&other_run.id, "check", &pending.id)).await, Code::FailedPrecondition);
        assert!(status.message().contains("run_id"), "{}", status.message());
        let unknown = uuid::Uuid::new_v4().to_string();
        expect_code(runs.approve_step(approve(&run.id, "check", &unknown)).await, Code::NotFound);
        let mut stranger_runs = app.runs("tenant-stranger").await;
        expect_code(stranger_runs.approve_step(approve(&run.id, "check", &pending.id)).await, Code::NotFound);
        assert!(pending_reviews(&mut stranger_runs, "").await.is_empty(), "reviews are the tenant's own");
        expect_code(runs.approve_step(approve(&run.id, "", &pending.id)).await, Code::InvalidArgument);

        // Approve with an edit: the edit is the review step's output and the next step's input.
        let edit = "EDITED: a warmer post about our spring sale".to_string();
        let approved = runs
            .approve_step(pb::ApproveStepRequest { edited_output: Some(edit.clone()), ..approve(&run.id, "check", &pending.id) })
            .await
            .unwrap()
            .into_inner();
        assert_ne!(approved.status, pb::RunStatus::WaitingReview as i32);
        expect_code(runs.approve_step(approve(&run.id, "check", &pending.id)).await, Code::FailedPrecondition);
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(60), status_is(pb::RunStatus::Succeeded)).await;
        assert_eq!(done.steps[1].output, edit);
        assert_eq!(done.steps[2].input, edit);
        assert!(done.steps[2].output.contains("Polish this:") && done.steps[2].output.contains(&edit), "{}", done.steps[2].output);
        assert_eq!(done.output, done.steps[2].output);
        for step in &done.steps {
            assert_eq!(step.status, pb::StepStatus::Succeeded as i32);
            assert!(step.start_time.is_some() && step.finish_time.is_some());
        }
        assert_eq!((done.steps[0].attempts, done.steps[2].attempts), (1, 1));
        // Langflow kept the run's llm steps in the run's session (each an execution of the agent).
        let messages = langflow.session_messages(&run_session(&agent.id, &run.id)).await;
        assert!(messages.iter().any(|(_, text)| text.contains("Polish this:") && text.contains(&edit)), "{messages:?}");
        assert!(messages.iter().any(|(_, text)| text.contains("Draft a post about")), "{messages:?}");

        // The watch: from 1 to the end, gap-free; a reconnect from k+1 gives exactly the rest.
        let all = watch_all(&mut runs, &run.id, 1).await;
        let sequences: Vec<i64> = all.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=all.len() as i64).collect::<Vec<_>>());
        assert_eq!(all.first().map(|e| e.kind.as_str()), Some("run_queued"));
        assert_eq!(all.last().map(|e| e.kind.as_str()), Some("run_succeeded"));
        assert!(all.iter().any(|e| e.kind == "review_requested" && e.step_id == "check"));
        assert!(all.iter().any(|e| e.kind == "review_approved" && e.step_id == "check"));
        assert_eq!(first, all[..2].to_vec());
        let rest = watch_all(&mut runs, &run.id, 3).await;
        assert_eq!(rest, all[2..].to_vec());

        // Reject: the other run ends REJECTED, its last step never runs.
        let pending = review_of(&mut runs, &agent.id, &other_run.id).await;
        let rejected = runs
            .reject_step(pb::RejectStepRequest {
                run_id: other_run.id.clone(),
                step_id: "check".into(),
                review_id: pending.id.clone(),
                reason: "off brand".into(),
                request_id: "reject-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rejected.status, pb::RunStatus::Rejected as i32);
        assert_eq!(rejected.error, "off brand");
        assert_eq!(step_status(&rejected, 1), pb::StepStatus::Rejected);
        assert_eq!(step_status(&rejected, 2), pb::StepStatus::Skipped);
        assert!(pending_reviews(&mut runs, &agent.id).await.is_empty());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let messages = langflow.session_messages(&run_session(&agent.id, &other_run.id)).await;
        assert!(!messages.iter().any(|(_, text)| text.contains("Polish this:")), "no step after a rejection: {messages:?}");
        let events = watch_all(&mut runs, &other_run.id, 1).await;
        assert_eq!(events.last().map(|e| e.kind.as_str()), Some("run_rejected"));

        langflow.delete_flow(&agent.langflow_workflow_id).await;
    }
);

/// A walker agent whose reviews wait `timeout_seconds` and then take `default_action`.
async fn walker_with_review_deadline(
    app: &TestApp,
    tenant: &str,
    default_action: wpb::ReviewDefaultAction,
) -> pb::Agent {
    let steps = vec![llm("draft", "Draft a post about {input}"), review("check"), output("publish")];
    let mut config = config(steps, 0, vec![]);
    let rules = config.rules.as_mut().expect("rules");
    rules.review_timeout_seconds = 1;
    rules.review_default_action = default_action as i32;
    active_walker(app, tenant, config).await
}

both_backends!(
    async fn a_review_nobody_answers_takes_its_default_action_at_the_deadline(backend) {
        let app = spawn_walker_app(backend, &real_langflow_url(), &[]).await;
        // A second replica on the same database: its review janitor races the first one's.
        let _replica = spawn_agent_service(&app.agent_db, &app.workflow.url(), &walker_env(&real_langflow_url(), &[])).await;
        let mut runs = app.runs("tenant-deadline").await;

        // Approve by default: the run goes on past the review and succeeds, with no one acting.
        let approving = walker_with_review_deadline(&app, "tenant-deadline", wpb::ReviewDefaultAction::Approve).await;
        let run = start_run(&mut runs, &approving.id, "autumn launch").await;
        let pending = review_of(&mut runs, &approving.id, &run.id).await;
        assert_eq!(pending.default_action, "APPROVE");
        let deadline = pending.deadline.as_ref().expect("a deadline");
        let created = pending.create_time.as_ref().expect("a creation time");
        assert_eq!(deadline.seconds - created.seconds, 1, "the workflow's review_timeout_seconds");
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(60), |r| r.status != pb::RunStatus::WaitingReview as i32 && r.status != pb::RunStatus::Running as i32).await;
        assert_eq!(done.status, pb::RunStatus::Succeeded as i32, "{done:#?}");
        assert_eq!(step_status(&done, 1), pb::StepStatus::Succeeded);
        assert_eq!(done.output, done.steps[0].output, "the draft is published as it was");
        let events = watch_all(&mut runs, &run.id, 1).await;
        let expired: Vec<_> = events.iter().filter(|e| e.kind == "review_expired").collect();
        assert_eq!(expired.len(), 1, "the default action is taken once, by one of the two processes: {events:#?}");
        assert!(expired[0].detail.contains("approved by default"), "{}", expired[0].detail);
        assert!(pending_reviews(&mut runs, &approving.id).await.is_empty());

        // Reject by default: the run ends rejected at the deadline.
        let rejecting = walker_with_review_deadline(&app, "tenant-deadline", wpb::ReviewDefaultAction::Reject).await;
        let run = start_run(&mut runs, &rejecting.id, "winter sale").await;
        review_of(&mut runs, &rejecting.id, &run.id).await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(60), |r| r.status != pb::RunStatus::WaitingReview as i32 && r.status != pb::RunStatus::Running as i32).await;
        assert_eq!(done.status, pb::RunStatus::Rejected as i32, "{done:#?}");
        assert!(done.error.contains("review deadline passed"), "{}", done.error);
        assert_eq!(step_status(&done, 2), pb::StepStatus::Skipped);
        let events = watch_all(&mut runs, &run.id, 1).await;
        assert_eq!(events.iter().filter(|e| e.kind == "review_expired").count(), 1, "{events:#?}");
    }
);
