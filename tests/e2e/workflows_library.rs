//! The built-in template library: seeded once, listed page by page, read-only, clonable.

use std::collections::HashSet;

use engarde::proto::workflow::v1 as pb;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;

async fn list_all(client: &mut WorkflowClient, mut request: pb::ListWorkflowsRequest) -> Vec<pb::WorkflowDefinition> {
    let mut all = Vec::new();
    loop {
        let page = client.list_workflows(request.clone()).await.expect("list").into_inner();
        assert!(page.workflows.len() <= request.page_size.max(1) as usize || request.page_size == 0);
        all.extend(page.workflows);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

both_backends!(
    async fn a_new_tenant_sees_the_eleven_templates_page_by_page(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;

        let all = list_all(&mut client, pb::ListWorkflowsRequest { page_size: 4, ..Default::default() }).await;
        assert_eq!(all.len(), 11, "{:?}", all.iter().map(|w| &w.name).collect::<Vec<_>>());
        let ids: HashSet<_> = all.iter().map(|w| w.id.clone()).collect();
        assert_eq!(ids.len(), 11, "no workflow appears on two pages");
        let names: Vec<_> = all.iter().map(|w| w.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "ordered by name");
        for w in &all {
            assert!(w.is_template);
            assert_eq!(w.tenant_id, "");
            assert_eq!(w.status, pb::WorkflowStatus::Active as i32);
            let config = w.workflow_config.as_ref().expect("config");
            assert!(!config.steps.is_empty());
            assert!(config.steps.iter().any(|s| !s.prompt.is_empty()), "{} has prompts", w.name);
        }
        for name in ["Social Media Content Pipeline", "Campaign Performance Monitor", "Audience Segmentation"] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
        // A bare-string step of the library reads back as an llm step named after its id.
        let blog = all.iter().find(|w| w.name == "Blog Post Generator").expect("blog template");
        let bare = &blog.workflow_config.as_ref().unwrap().steps[2];
        assert_eq!((bare.id.as_str(), bare.kind), ("write_draft", pb::StepKind::Llm as i32));
    }
);

both_backends!(
    async fn filters_narrow_the_listing(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        let by_category = list_all(
            &mut client,
            pb::ListWorkflowsRequest { category: pb::WorkflowCategory::AbTesting as i32, ..Default::default() },
        )
        .await;
        assert_eq!(by_category.len(), 2);
        assert!(by_category.iter().all(|w| w.category == pb::WorkflowCategory::AbTesting as i32));

        let by_name = list_all(
            &mut client,
            pb::ListWorkflowsRequest { name_contains: "ADVISOR".into(), ..Default::default() },
        )
        .await;
        let names: Vec<_> = by_name.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["Bid Optimization Advisor", "Budget Reallocation Advisor"]);

        // Wildcards in the search text are taken literally.
        let literal = list_all(&mut client, pb::ListWorkflowsRequest { name_contains: "%".into(), ..Default::default() }).await;
        assert!(literal.is_empty());

        let own_only =
            list_all(&mut client, pb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() }).await;
        assert!(own_only.is_empty());
        let drafts = list_all(
            &mut client,
            pb::ListWorkflowsRequest { status: pb::WorkflowStatus::Draft as i32, ..Default::default() },
        )
        .await;
        assert!(drafts.is_empty());
    }
);

both_backends!(
    async fn bad_listing_requests_name_the_field(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        let status = expect_code(
            client.list_workflows(pb::ListWorkflowsRequest { page_size: -1, ..Default::default() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "page_size");
        let status = expect_code(
            client.list_workflows(pb::ListWorkflowsRequest { page_token: "not-a-token".into(), ..Default::default() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "page_token");
        let status = expect_code(
            client.list_workflows(pb::ListWorkflowsRequest { category: 42, ..Default::default() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "category");

        // A token is bound to the filters it was issued for.
        let first = client
            .list_workflows(pb::ListWorkflowsRequest { page_size: 2, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let status = expect_code(
            client
                .list_workflows(pb::ListWorkflowsRequest {
                    page_size: 2,
                    page_token: first.next_page_token,
                    category: pb::WorkflowCategory::AbTesting as i32,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&status)[0].0, "page_token");
        // Page sizes beyond the maximum are capped, not refused.
        let big = client
            .list_workflows(pb::ListWorkflowsRequest { page_size: 100_000, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(big.workflows.len(), 11);
        assert!(big.next_page_token.is_empty());
    }
);

both_backends!(
    async fn templates_are_read_only_but_clonable(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        let template = client
            .list_workflows(pb::ListWorkflowsRequest { name_contains: "Social Media".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows
            .remove(0);

        let mut changed = template.clone();
        changed.name = "Mine now".into();
        let update = client
            .update_workflow(pb::UpdateWorkflowRequest {
                workflow: Some(changed),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                request_id: String::new(),
            })
            .await;
        expect_code(update, Code::PermissionDenied);
        let delete = client.delete_workflow(pb::DeleteWorkflowRequest { id: template.id.clone(), ..Default::default() }).await;
        expect_code(delete, Code::PermissionDenied);
        let archive =
            client.archive_workflow(pb::ArchiveWorkflowRequest { id: template.id.clone(), ..Default::default() }).await;
        expect_code(archive, Code::PermissionDenied);

        let clone = client
            .clone_workflow(pb::CloneWorkflowRequest { source_id: template.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(clone.name, "Social Media Content Pipeline (copy)");
        assert_eq!(clone.tenant_id, "tenant-a");
        assert!(!clone.is_template);
        assert_eq!(clone.status, pb::WorkflowStatus::Draft as i32);
        assert_eq!(clone.workflow_config, template.workflow_config);
        assert_eq!((clone.execution_count, clone.version), (0, 1));

        // The clone is the tenant's own: another tenant sees only the library.
        let mut other = app.client("tenant-b").await;
        let status = expect_code(
            other.clone_workflow(pb::CloneWorkflowRequest { source_id: clone.id.clone(), ..Default::default() }).await,
            Code::NotFound,
        );
        assert!(!status.message().contains("tenant-a"));
        let theirs = other
            .list_workflows(pb::ListWorkflowsRequest { page_size: 50, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(theirs.workflows.len(), 11);
        let mine = client
            .list_workflows(pb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.workflows.len(), 1);
    }
);

both_backends!(
    async fn two_processes_starting_at_once_seed_the_library_once(backend) {
        let db = TestDb::new(backend).await;
        let (a, b) = tokio::join!(spawn_workflow_service(&db, &[]), spawn_workflow_service(&db, &[]));
        for service in [&a, &b] {
            let mut client = engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::with_interceptor(
                service.channel().await,
                as_tenant("tenant-a"),
            );
            let page = client
                .list_workflows(pb::ListWorkflowsRequest { page_size: 200, ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.workflows.len(), 11);
        }
        // A restart inserts nothing either.
        drop(a);
        let c = spawn_workflow_service(&db, &[]).await;
        assert!(c.logs().contains("inserted=0") || std::env::var_os("TEST_LOG").is_some(), "{}", c.logs());
    }
);

both_backends!(
    async fn a_tenants_own_workflows_and_the_library_interleave_by_name_page_by_page(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        // Names before, among and after the library's, and one of another tenant's.
        let mine = ["A first", "Blog Post Generator", "Campaign x", "Mine", "Zebra"];
        for name in mine {
            client.create_workflow(crate::workflows_crud::create_request(name)).await.expect("create");
        }
        app.client("tenant-b")
            .await
            .create_workflow(crate::workflows_crud::create_request("Campaign of b"))
            .await
            .expect("create b's");

        for page_size in [1, 3, 50] {
            let all = list_all(&mut client, pb::ListWorkflowsRequest { page_size, ..Default::default() }).await;
            assert_eq!(all.len(), 16, "page size {page_size}: five own and eleven templates");
            let keys: Vec<(String, String)> = all.iter().map(|w| (w.name.clone(), w.id.clone())).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(keys, sorted, "page size {page_size}: by name then id, none twice");
            assert!(all.iter().all(|w| w.tenant_id == "tenant-a" || (w.is_template && w.tenant_id.is_empty())));
            // The own "Blog Post Generator" and the template of that name are both there.
            assert_eq!(all.iter().filter(|w| w.name == "Blog Post Generator").count(), 2);
        }
        let own = list_all(&mut client, pb::ListWorkflowsRequest { page_size: 2, is_template: Some(false), ..Default::default() })
            .await;
        assert_eq!(own.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), mine);
        let library =
            list_all(&mut client, pb::ListWorkflowsRequest { page_size: 2, is_template: Some(true), ..Default::default() })
                .await;
        assert_eq!(library.len(), 11);
        assert!(library.iter().all(|w| w.is_template));
        let campaigns =
            list_all(&mut client, pb::ListWorkflowsRequest { page_size: 1, name_contains: "campaign".into(), ..Default::default() })
                .await;
        assert_eq!(
            campaigns.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["Campaign Performance Monitor", "Campaign x"]
        );
    }
);
