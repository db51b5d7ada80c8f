//! Name searches fold case by one rule on both databases (Rust's `str::to_lowercase`, kept in
//! the `name_folded` column), for non-ASCII names too, and rows from before that column are
//! folded at start-up.

use engarde::proto::workflow::v1 as pb;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;

/// The names of the tenant's own workflows whose name contains `text`, as the service folds it.
async fn found(client: &mut WorkflowClient, text: &str) -> Vec<String> {
    let request =
        pb::ListWorkflowsRequest { name_contains: text.into(), is_template: Some(false), ..Default::default() };
    let mut names: Vec<_> = client
        .list_workflows(request)
        .await
        .expect("list")
        .into_inner()
        .workflows
        .into_iter()
        .map(|w| w.name)
        .collect();
    names.sort();
    names
}

both_backends!(
    async fn non_ascii_names_are_found_whatever_their_case(backend) {
        let app = spawn_workflows(backend).await;
        let mut client = app.client("tenant-a").await;
        for name in ["ÄPFEL Kampagne", "İstanbul launch", "Straße Promo", "Strasse Sale", "100% _Sale_"] {
            client.create_workflow(create_request(name)).await.expect("created");
        }

        assert_eq!(found(&mut client, "äpfel").await, ["ÄPFEL Kampagne"]);
        assert_eq!(found(&mut client, "ÄPFEL").await, ["ÄPFEL Kampagne"]);
        assert_eq!(found(&mut client, "Äpfel kAMPAGNE").await, ["ÄPFEL Kampagne"]);
        // "İ" lowercases to "i" + a combining dot above, on both sides of the comparison.
        assert_eq!(found(&mut client, "İstanbul").await, ["İstanbul launch"]);
        assert_eq!(found(&mut client, "i\u{307}stanbul").await, ["İstanbul launch"]);
        assert_eq!(found(&mut client, "İSTANBUL LAUNCH").await, ["İstanbul launch"]);
        // "ß" and its capital "ẞ" are one letter; "ss" is another spelling, not the same letters.
        assert_eq!(found(&mut client, "ß").await, ["Straße Promo"]);
        assert_eq!(found(&mut client, "STRAẞE").await, ["Straße Promo"]);
        assert_eq!(found(&mut client, "STRASSE").await, ["Strasse Sale"]);
        // Wildcards stay literal.
        assert_eq!(found(&mut client, "100% _").await, ["100% _Sale_"]);
        assert!(found(&mut client, "stra_se").await.is_empty());

        // A rename is searched by its new name only.
        let apfel = client
            .list_workflows(pb::ListWorkflowsRequest { name_contains: "äpfel".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows
            .remove(0);
        client
            .update_workflow(pb::UpdateWorkflowRequest {
                workflow: Some(pb::WorkflowDefinition { id: apfel.id, name: "ÖL Kampagne".into(), ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                request_id: String::new(),
            })
            .await
            .expect("renamed");
        assert!(found(&mut client, "äpfel").await.is_empty());
        assert_eq!(found(&mut client, "öl").await, ["ÖL Kampagne"]);
    }
);

both_backends!(
    async fn names_written_before_the_folded_column_are_folded_at_start_up(backend) {
        let db = TestDb::new(backend).await;
        {
            let service = spawn_workflow_service(&db, &[]).await;
            let mut client = pb::workflow_service_client::WorkflowServiceClient::with_interceptor(
                service.channel().await,
                as_tenant("tenant-a"),
            );
            client.create_workflow(create_request("ÄPFEL Kampagne")).await.expect("created");
        }
        // As a database migrated from before the column holds them: templates and own rows alike.
        db.sql("UPDATE workflows SET name_folded = NULL").await;
        assert_eq!(db.sql("SELECT CASE WHEN COUNT(*) = 12 THEN 'all' ELSE 'not all' END FROM workflows WHERE name_folded IS NULL").await, "all");

        let service = spawn_workflow_service(&db, &[]).await;
        let mut client =
            pb::workflow_service_client::WorkflowServiceClient::with_interceptor(service.channel().await, as_tenant("tenant-a"));
        assert_eq!(found(&mut client, "äpfel").await, ["ÄPFEL Kampagne"]);
        let templates = client
            .list_workflows(pb::ListWorkflowsRequest { name_contains: "ADVISOR".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows;
        assert_eq!(templates.len(), 2, "the seeded templates are folded too");
        assert_eq!(db.sql("SELECT CASE WHEN COUNT(*) = 0 THEN 'none' ELSE 'some' END FROM workflows WHERE name_folded IS NULL").await, "none");
    }
);
