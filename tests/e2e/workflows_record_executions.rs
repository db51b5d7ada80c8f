//! RecordExecutions: agent-service's outbox reports many executions in one call, as its own
//! service identity; each entry is recorded as RecordExecution would, answered in order.

use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use pb::record_execution_result::Result as Outcome;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::service_identity::{TENANT_SECRET, signed, tenant_token};
use crate::workflows_crud::create_request;

fn report(workflow_id: &str, execution_id: &str, succeeded: bool) -> pb::RecordExecutionRequest {
    pb::RecordExecutionRequest { workflow_id: workflow_id.into(), execution_id: execution_id.into(), succeeded }
}

fn batch(executions: Vec<pb::RecordExecutionRequest>) -> pb::RecordExecutionsRequest {
    pb::RecordExecutionsRequest { executions }
}

/// An entry's answer: (counted, execution_count, success_rate), or the error's code.
fn outcome(result: &pb::RecordExecutionResult) -> Result<(bool, i64, f64), Code> {
    match &result.result {
        Some(Outcome::Recorded(r)) => Ok((r.counted, r.execution_count, r.success_rate)),
        Some(Outcome::Error(e)) => Err(Code::from_i32(e.code)),
        None => panic!("an entry without a result"),
    }
}

both_backends!(
    async fn a_batch_of_reports_is_counted_exactly_and_only_for_the_service(backend) {
        let auth_env = [("AUTH_MODE", "jwt".to_owned()), ("JWT_HS256_SECRET", TENANT_SECRET.to_owned())];
        let db = TestDb::new(backend).await;
        let service_process = spawn_workflow_service(&db, &auth_env).await;
        let mut client = WorkflowServiceClient::new(service_process.channel().await);
        let service = service_bearer("agent-service", SERVICE_SECRET);
        let (alice, bob) = (tenant_token("tenant-a", 600), tenant_token("tenant-b", 600));
        let own = client.create_workflow(signed(create_request("Alice's own"), &alice, None)).await.unwrap().into_inner();
        let bobs = client.create_workflow(signed(create_request("Bob's"), &bob, None)).await.unwrap().into_inner();
        let unknown = uuid::Uuid::now_v7().to_string();
        let as_service = |request: pb::RecordExecutionsRequest| signed(request, &service, Some("tenant-a"));

        // Nothing: nothing to answer.
        let empty = client.record_executions(as_service(batch(vec![]))).await.unwrap().into_inner();
        assert!(empty.results.is_empty());

        // Each entry answered in order: counted, a duplicate within the batch, a workflow the
        // tenant cannot read (unknown, or another tenant's) NOT_FOUND; the rest still counted.
        let first = client
            .record_executions(as_service(batch(vec![
                report(&own.id, "e-1", true),
                report(&own.id, "e-2", false),
                report(&unknown, "e-3", true),
                report(&own.id, "e-1", true),
                report(&bobs.id, "e-4", true),
                report(&own.id, "e-5", true),
            ])))
            .await
            .expect("the service records a batch")
            .into_inner();
        let answered: Vec<_> = first.results.iter().map(outcome).collect();
        let after = (3, 2.0 / 3.0);
        assert_eq!(
            answered,
            vec![
                Ok((true, after.0, after.1)),
                Ok((true, after.0, after.1)),
                Err(Code::NotFound),
                Ok((false, after.0, after.1)),
                Err(Code::NotFound),
                Ok((true, after.0, after.1)),
            ]
        );
        // A later batch: a repeat is not counted again; an execution recorded for another
        // workflow is ALREADY_EXISTS.
        let other = client.create_workflow(signed(create_request("Other"), &alice, None)).await.unwrap().into_inner();
        let second = client
            .record_executions(as_service(batch(vec![
                report(&own.id, "e-2", false),
                report(&other.id, "e-1", true),
                report(&other.id, "e-6", false),
            ])))
            .await
            .unwrap()
            .into_inner();
        let answered: Vec<_> = second.results.iter().map(outcome).collect();
        assert_eq!(answered, vec![Ok((false, 3, 2.0 / 3.0)), Err(Code::AlreadyExists), Ok((true, 1, 0.0))]);
        let message = match &second.results[1].result {
            Some(Outcome::Error(e)) => e.message.clone(),
            other => panic!("{other:?}"),
        };
        assert!(message.contains("e-1"), "{message}");

        // The statistics are exact, as each tenant reads them.
        let read = |id: &str, who: &str| signed(pb::GetWorkflowRequest { id: id.into() }, who, None);
        let own_read = client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner();
        assert_eq!((own_read.execution_count, own_read.success_count), (3, 2));
        let other_read = client.get_workflow(read(&other.id, &alice)).await.unwrap().into_inner();
        assert_eq!((other_read.execution_count, other_read.success_count), (1, 0));
        let bobs_read = client.get_workflow(read(&bobs.id, &bob)).await.unwrap().into_inner();
        assert_eq!(bobs_read.execution_count, 0, "nothing counted on another tenant's workflow");

        // A tenant's token may not call it, and nothing is counted.
        let status = expect_code(
            client.record_executions(signed(batch(vec![report(&own.id, "forged-1", true)]), &alice, None)).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("service"), "{}", status.message());
        assert_eq!(client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner().execution_count, 3);

        // More than 500 entries: INVALID_ARGUMENT naming the list, and nothing is counted.
        let many = (0..501).map(|n| report(&own.id, &format!("many-{n}"), true)).collect();
        let status = expect_code(client.record_executions(as_service(batch(many))).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "executions", "{status:?}");
        // A malformed entry is named by its index, and the batch records nothing.
        let status = expect_code(
            client
                .record_executions(as_service(batch(vec![
                    report(&own.id, "fine-1", true),
                    report("not-a-uuid", "fine-2", true),
                    report(&own.id, "", true),
                ])))
                .await,
            Code::InvalidArgument,
        );
        let fields: Vec<String> = field_violations(&status).into_iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["executions[1].workflow_id", "executions[2].execution_id"]);
        assert_eq!(client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner().execution_count, 3);
    }
);
