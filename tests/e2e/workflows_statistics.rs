//! RecordExecution: agent-service reports each execution at least once; each is counted once.

use engarde::proto::workflow::v1 as pb;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;

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

        // Templates count executions of agents made from them, whoever's they are.
        let template = client
            .list_workflows(pb::ListWorkflowsRequest { page_size: 1, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows
            .remove(0);
        let mut bob = app.client("tenant-b").await;
        let recorded = bob
            .record_execution(pb::RecordExecutionRequest { workflow_id: template.id.clone(), execution_id: "bob-1".into(), succeeded: true })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((recorded.counted, recorded.execution_count, recorded.success_rate), (true, 1, 1.0));
    }
);
