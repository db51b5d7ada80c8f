//! The built-in template library, shipped in `templates.json` and seeded idempotently: each
//! template has a fixed id, so a restart or a second replica inserts nothing twice.
//!
//! Each template carries a `revision`, raised by hand with every release that changes it. A
//! database holding an older revision is brought up to it at start; one holding the same or a
//! newer revision (written by a newer release, while an older one still runs during a rolling
//! update) is left alone, so that two releases never undo each other's templates.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::model::{Category, Status, Workflow, WorkflowConfig};

const LIBRARY: &str = include_str!("templates.json");

#[derive(Deserialize)]
struct TemplateEntry {
    id: Uuid,
    revision: i64,
    name: String,
    description: String,
    category: Category,
    workflow_config: WorkflowConfig,
}

/// A template of the library at its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The library's revision of this template (1 for its first release).
    pub revision: i64,
    /// The template, as a workflow ready to insert.
    pub workflow: Workflow,
}

/// The library's templates.
pub fn library(now: DateTime<Utc>) -> Vec<Template> {
    // The file is part of the binary and checked by the tests below: it cannot fail at run time.
    let entries: Vec<TemplateEntry> =
        serde_json::from_str(LIBRARY).expect("templates.json is valid (checked by tests)");
    entries
        .into_iter()
        .map(|t| Template {
            revision: t.revision,
            workflow: Workflow {
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
            },
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
        let library = library(Utc::now());
        assert!(library.iter().all(|t| t.revision >= 1));
        let templates: Vec<Workflow> = library.into_iter().map(|t| t.workflow).collect();
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
