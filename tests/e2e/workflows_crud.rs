//! A tenant's own workflows: create, read, update with etags, the lifecycle, delete,
//! validation, idempotent retries and tenant isolation.

use engarde::proto::workflow::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;

pub fn llm_step(id: &str, prompt: &str) -> pb::Step {
    pb::Step { id: id.into(), kind: pb::StepKind::Llm as i32, prompt: prompt.into(), ..Default::default() }
}

pub fn sample_config() -> pb::WorkflowConfig {
    pb::WorkflowConfig {
        steps: vec![
            llm_step("draft_post", "Write a post about {input}"),
            pb::Step { id: "review".into(), kind: pb::StepKind::Review as i32, ..Default::default() },
            pb::Step { id: "publish".into(), kind: pb::StepKind::Output as i32, ..Default::default() },
        ],
        triggers: vec![
            pb::Trigger { r#type: pb::TriggerType::Manual as i32, ..Default::default() },
            pb::Trigger {
                r#type: pb::TriggerType::Scheduled as i32,
                cron: "0 9 * * MON".into(),
                timezone: "Europe/Paris".into(),
            },
        ],
        rules: Some(pb::Rules { approval_required: true, max_retries: 2, ..Default::default() }),
        langflow_flow_json: String::new(),
        extra_rules: None,
    }
}

pub fn create_request(name: &str) -> pb::CreateWorkflowRequest {
    pb::CreateWorkflowRequest {
        name: name.into(),
        description: "Weekly posts".into(),
        category: pb::WorkflowCategory::ContentGeneration as i32,
        workflow_config: Some(sample_config()),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

both_backends!(
    async fn a_workflow_goes_from_draft_to_active_to_archived_to_deleted(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;

        let created = client.create_workflow(create_request("Posts")).await.unwrap().into_inner();
        assert_eq!(created.status, pb::WorkflowStatus::Draft as i32);
        assert_eq!((created.tenant_id.as_str(), created.version, created.is_template), ("tenant-a", 1, false));
        assert_eq!(created.workflow_config, Some(sample_config()).map(|mut c| {
            // Steps read back with their name defaulted to their id.
            for s in &mut c.steps {
                s.name = s.id.clone();
            }
            // ...and an unset default action as the safe one it means.
            c.rules.as_mut().unwrap().review_default_action = pb::ReviewDefaultAction::Reject as i32;
            c
        }));
        let fetched = client.get_workflow(pb::GetWorkflowRequest { id: created.id.clone() }).await.unwrap().into_inner();
        assert_eq!(fetched, created);

        // An update with the etag read succeeds and makes a new version; the old etag is stale.
        let mut patch = created.clone();
        patch.name = "Posts v2".into();
        patch.description = "ignored: not in the mask".into();
        let updated = client
            .update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch.clone()), update_mask: mask(&["name"]), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((updated.name.as_str(), updated.description.as_str(), updated.version), ("Posts v2", "Weekly posts", 2));
        assert_ne!(updated.etag, created.etag);
        patch.name = "Lost update".into();
        let stale = client
            .update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch), update_mask: mask(&["name"]), request_id: String::new() })
            .await;
        expect_code(stale, Code::Aborted);

        let active = client
            .activate_workflow(pb::ActivateWorkflowRequest { id: created.id.clone(), etag: updated.etag.clone(), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(active.status, pb::WorkflowStatus::Active as i32);
        expect_code(
            client.activate_workflow(pb::ActivateWorkflowRequest { id: created.id.clone(), ..Default::default() }).await,
            Code::FailedPrecondition,
        );
        // Active: the config may change (a new version), the category may not.
        let mut patch = active.clone();
        patch.category = pb::WorkflowCategory::AbTesting as i32;
        expect_code(
            client.update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch.clone()), update_mask: mask(&["category"]), request_id: String::new() }).await,
            Code::FailedPrecondition,
        );
        patch.workflow_config.as_mut().unwrap().steps[0].prompt = "Write a better post about {input}".into();
        let reconfigured = client
            .update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch), update_mask: mask(&["workflow_config"]), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reconfigured.version, active.version + 1);
        expect_code(
            client.delete_workflow(pb::DeleteWorkflowRequest { id: created.id.clone(), ..Default::default() }).await,
            Code::FailedPrecondition,
        );

        let archived = client
            .archive_workflow(pb::ArchiveWorkflowRequest { id: created.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(archived.status, pb::WorkflowStatus::Archived as i32);
        let mut patch = archived.clone();
        patch.name = "Too late".into();
        expect_code(
            client.update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch), update_mask: mask(&["name"]), request_id: String::new() }).await,
            Code::FailedPrecondition,
        );
        expect_code(
            client.activate_workflow(pb::ActivateWorkflowRequest { id: created.id.clone(), ..Default::default() }).await,
            Code::FailedPrecondition,
        );
        expect_code(
            client.delete_workflow(pb::DeleteWorkflowRequest { id: created.id.clone(), etag: created.etag.clone(), request_id: String::new() }).await,
            Code::Aborted,
        );
        let deleted = client
            .delete_workflow(pb::DeleteWorkflowRequest { id: created.id.clone(), etag: archived.etag.clone(), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.id, created.id);
        expect_code(client.get_workflow(pb::GetWorkflowRequest { id: created.id.clone() }).await, Code::NotFound);
    }
);

both_backends!(
    async fn invalid_workflows_are_refused_field_by_field(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;

        let mut request = create_request("");
        request.category = 0;
        let config = request.workflow_config.as_mut().unwrap();
        config.steps.push(llm_step("draft_post", "again"));
        config.steps.push(pb::Step { id: "odd".into(), kind: 9, ..Default::default() });
        config.steps.push(pb::Step { id: "check".into(), kind: pb::StepKind::Review as i32, reviews_step: "nowhere".into(), ..Default::default() });
        config.triggers[1].cron = "0 25 * * *".into();
        config.triggers.push(pb::Trigger { r#type: 7, ..Default::default() });
        config.rules.as_mut().unwrap().max_retries = 99;
        let status = expect_code(client.create_workflow(request.clone()).await, Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "name",
                "category",
                "workflow_config.steps[4].kind",
                "workflow_config.triggers[2].type",
                "workflow_config.steps[3].id",
                "workflow_config.steps[5].reviews_step",
                "workflow_config.triggers[1].cron",
                "workflow_config.rules.max_retries",
            ]
        );
        assert!(status.message().contains("duplicate step id"), "{}", status.message());

        // The dry run reports the same config problems without storing anything.
        let report = client
            .validate_workflow_config(pb::ValidateWorkflowConfigRequest { workflow_config: request.workflow_config.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(!report.valid);
        assert_eq!(report.violations.len(), 6);
        let ok = client
            .validate_workflow_config(pb::ValidateWorkflowConfigRequest { workflow_config: Some(sample_config()) })
            .await
            .unwrap()
            .into_inner();
        assert!(ok.valid && ok.violations.is_empty());

        let mut no_steps = create_request("Empty");
        no_steps.workflow_config.as_mut().unwrap().steps.clear();
        let status = expect_code(client.create_workflow(no_steps).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.steps");

        let mut bad_zone = create_request("Zone");
        bad_zone.workflow_config.as_mut().unwrap().triggers[1].timezone = "Mars/Base".into();
        let status = expect_code(client.create_workflow(bad_zone).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.triggers[1].timezone");

        expect_code(client.get_workflow(pb::GetWorkflowRequest { id: "not-a-uuid".into() }).await, Code::InvalidArgument);
        expect_code(client.get_workflow(pb::GetWorkflowRequest { id: String::new() }).await, Code::InvalidArgument);
        let update = client
            .update_workflow(pb::UpdateWorkflowRequest {
                workflow: Some(pb::WorkflowDefinition { id: uuid::Uuid::new_v4().to_string(), ..Default::default() }),
                update_mask: mask(&["tenant_id"]),
                request_id: String::new(),
            })
            .await;
        let status = expect_code(update, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "update_mask.paths[0]");
        let listed = client.list_workflows(pb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() }).await.unwrap();
        assert!(listed.into_inner().workflows.is_empty(), "nothing invalid was stored");
    }
);

both_backends!(
    async fn a_retried_request_returns_the_first_answer(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;

        let mut request = create_request("Once");
        request.request_id = "req-create-1".into();
        let first = client.create_workflow(request.clone()).await.unwrap().into_inner();
        let again = client.create_workflow(request.clone()).await.unwrap().into_inner();
        assert_eq!(first, again);

        // Ten concurrent retries of a new request create one workflow.
        let mut concurrent = create_request("Concurrent");
        concurrent.request_id = "req-create-2".into();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let mut c = client.clone();
            let r = concurrent.clone();
            tasks.push(tokio::spawn(async move { c.create_workflow(r).await }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => {
                    ids.insert(w.into_inner().id);
                }
                // A retry that overlaps the first attempt may be told to retry.
                Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
            }
        }
        assert_eq!(ids.len(), 1);

        // The same id with a different request is a conflict, not a silent replay.
        request.name = "Different".into();
        expect_code(client.create_workflow(request).await, Code::AlreadyExists);
        // Keys are per tenant: another tenant may use the same id.
        let mut other = app.client("tenant-b").await;
        let mut theirs = create_request("Theirs");
        theirs.request_id = "req-create-1".into();
        let theirs = other.create_workflow(theirs).await.unwrap().into_inner();
        assert_ne!(theirs.id, first.id);

        let all = client
            .list_workflows(pb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.workflows.len(), 2);

        // Transitions replay too: a retried activation answers the first result, not an error.
        let activate = pb::ActivateWorkflowRequest { id: first.id.clone(), etag: String::new(), request_id: "req-act".into() };
        let a1 = client.activate_workflow(activate.clone()).await.unwrap().into_inner();
        let a2 = client.activate_workflow(activate).await.unwrap().into_inner();
        assert_eq!(a1, a2);
        let bad = pb::ActivateWorkflowRequest { id: first.id.clone(), etag: String::new(), request_id: "x".repeat(129) };
        let status = expect_code(client.activate_workflow(bad).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "request_id");
    }
);

both_backends!(
    async fn a_tenant_never_sees_another_tenants_workflows(backend) {
        let app = spawn_workflows(backend).await;
        let mut alice = app.client("tenant-a").await;
        let mut bob = app.client("tenant-b").await;
        let mine = alice.create_workflow(create_request("Alice's")).await.unwrap().into_inner();

        let id = mine.id.clone();
        expect_code(bob.get_workflow(pb::GetWorkflowRequest { id: id.clone() }).await, Code::NotFound);
        let mut patch = mine.clone();
        patch.name = "Bob was here".into();
        expect_code(
            bob.update_workflow(pb::UpdateWorkflowRequest { workflow: Some(patch), update_mask: mask(&["name"]), request_id: String::new() }).await,
            Code::NotFound,
        );
        expect_code(bob.delete_workflow(pb::DeleteWorkflowRequest { id: id.clone(), ..Default::default() }).await, Code::NotFound);
        expect_code(bob.activate_workflow(pb::ActivateWorkflowRequest { id: id.clone(), ..Default::default() }).await, Code::NotFound);
        expect_code(bob.archive_workflow(pb::ArchiveWorkflowRequest { id: id.clone(), ..Default::default() }).await, Code::NotFound);
        expect_code(
            bob.record_execution(pb::RecordExecutionRequest { workflow_id: id.clone(), execution_id: "e1".into(), succeeded: true }).await,
            Code::NotFound,
        );
        let listed = bob.list_workflows(pb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() }).await.unwrap();
        assert!(listed.into_inner().workflows.is_empty());
        // The same answer as for an id that never existed.
        let never = uuid::Uuid::new_v4().to_string();
        let missing = expect_code(bob.get_workflow(pb::GetWorkflowRequest { id: never.clone() }).await, Code::NotFound);
        let foreign = expect_code(bob.get_workflow(pb::GetWorkflowRequest { id: id.clone() }).await, Code::NotFound);
        assert_eq!(missing.message().replace(&never, "ID"), foreign.message().replace(&id, "ID"));

        let still = alice.get_workflow(pb::GetWorkflowRequest { id }).await.unwrap().into_inner();
        assert_eq!(still, mine);
    }
);

both_backends!(
    async fn a_flow_export_without_nodes_is_a_field_violation(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-export").await;
        let mut config = sample_config();
        config.langflow_flow_json = r#"{"data":{}}"#.into();

        let report = client
            .validate_workflow_config(pb::ValidateWorkflowConfigRequest { workflow_config: Some(config.clone()) })
            .await
            .unwrap()
            .into_inner();
        assert!(!report.valid);
        let found: Vec<(&str, &str)> =
            report.violations.iter().map(|v| (v.field.as_str(), v.description.as_str())).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "workflow_config.langflow_flow_json");
        assert!(found[0].1.contains("no nodes"), "{found:?}");

        let mut request = create_request("Nodeless");
        request.workflow_config = Some(config);
        let status = expect_code(client.create_workflow(request).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "workflow_config.langflow_flow_json");
    }
);
