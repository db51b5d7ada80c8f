//! The built-in template library, shipped in `templates.json` and seeded idempotently: each
//! template has a fixed id, so a restart or a second replica inserts nothing twice.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::model::{Category, Status, Workflow, WorkflowConfig};

const LIBRARY: &str = include_str!("templates.json");

#[derive(Deserialize)]
struct TemplateEntry {
    id: Uuid,
    name: String,
    description: String,
    category: Category,
    workflow_config: WorkflowConfig,
}

/// The library's templates, as workflows ready to insert.
pub fn library(now: DateTime<Utc>) -> Vec<Workflow> {
    // The file is part of the binary and checked by the tests below: it cannot fail at run time.
    let entries: Vec<TemplateEntry> =
        serde_json::from_str(LIBRARY).expect("templates.json is valid (checked by tests)");
    entries
        .into_iter()
        .map(|t| Workflow {
            id: t.id,
            tenant_id: String::new(),
            name: t.name,
            description: t.description,
            category: t.category,
            config: t.workflow_config,
            status: Status::Active,
            is_template: true,
            execution_count: 0,
            success_count: 0,
            version: 1,
            created_at: now,
            updated_at: now,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::domain::validation;

    #[test]
    fn the_library_has_eleven_valid_templates_two_per_category() {
        let templates = library(Utc::now());
        assert_eq!(templates.len(), 11);
        let mut per_category: HashMap<Category, usize> = HashMap::new();
        for t in &templates {
            let mut out = Vec::new();
            validation::check_name("name", &t.name, &mut out);
            validation::check_description("description", &t.description, &mut out);
            validation::check_config("workflow_config", &t.config, &mut out);
            assert!(out.is_empty(), "{}: {out:?}", t.name);
            *per_category.entry(t.category).or_default() += 1;
        }
        for category in Category::ALL {
            assert!(per_category.get(category).copied().unwrap_or(0) >= 2, "{category:?}");
        }
        let ids: HashSet<Uuid> = templates.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 11);
        for name in ["Social Media Content Pipeline", "Campaign Performance Monitor", "Audience Segmentation"] {
            assert!(templates.iter().any(|t| t.name == name), "{name}");
        }
    }
}
