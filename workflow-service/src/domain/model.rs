//! The workflow model. Serialised as JSON for the database's config column, the template
//! library file and stored idempotent answers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use engarde::named_enum;

named_enum!(
    /// The marketing discipline of a workflow.
    Category {
        ContentGeneration => "content_generation",
        AbTesting => "ab_testing",
        AudienceIntelligence => "audience_intelligence",
        BudgetOptimization => "budget_optimization",
        AnalyticsAutomation => "analytics_automation",
    }
);

named_enum!(
    /// Lifecycle state; see [`super::lifecycle`].
    Status {
        Draft => "draft",
        Active => "active",
        Archived => "archived",
    }
);

named_enum!(
    /// What a step does.
    StepKind {
        Llm => "llm",
        Review => "review",
        Output => "output",
    }
);

named_enum!(
    /// How runs start.
    TriggerType {
        Manual => "manual",
        Scheduled => "scheduled",
        Api => "api",
    }
);

named_enum!(
    /// What an unanswered review does at its deadline.
    ReviewDefaultAction {
        Approve => "approve",
        Reject => "reject",
    }
);

/// One step. In JSON a bare string is a step of that id, of kind `llm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StepRepr")]
pub struct Step {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviews_step: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StepRepr {
    Bare(String),
    Full {
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default = "default_kind")]
        kind: StepKind,
        #[serde(default)]
        prompt: String,
        #[serde(default)]
        reviews_step: Option<String>,
    },
}

fn default_kind() -> StepKind {
    StepKind::Llm
}

impl From<StepRepr> for Step {
    fn from(repr: StepRepr) -> Self {
        match repr {
            StepRepr::Bare(id) => {
                Step { id, name: String::new(), kind: StepKind::Llm, prompt: String::new(), reviews_step: None }
            }
            StepRepr::Full { id, name, kind, prompt, reviews_step } => Step { id, name, kind, prompt, reviews_step },
        }
    }
}

/// One way runs start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: TriggerType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cron: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
}

/// Rules of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rules {
    pub approval_required: bool,
    pub max_retries: i32,
    pub autonomous: bool,
    pub review_timeout_seconds: i64,
    pub review_default_action: ReviewDefaultAction,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            approval_required: false,
            max_retries: 0,
            autonomous: false,
            review_timeout_seconds: 0,
            review_default_action: ReviewDefaultAction::Reject,
        }
    }
}

/// Steps, triggers and rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WorkflowConfig {
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    #[serde(default)]
    pub rules: Rules,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub langflow_flow_json: String,
    /// Rules kept and answered as they are, not interpreted (e.g. an imported workflow's rules
    /// that have no field in [`Rules`]).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra_rules: serde_json::Map<String, serde_json::Value>,
}

/// A stored workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: Uuid,
    /// Empty for the built-in library.
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub category: Category,
    pub config: WorkflowConfig,
    pub status: Status,
    pub is_template: bool,
    pub execution_count: i64,
    pub success_count: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Workflow {
    /// About how many bytes this workflow holds in memory: its text, the fixed parts aside.
    /// What the read cache weighs workflows by, so that a few of the largest allowed (MBs of
    /// prompts and flow export) cannot fill memory that thousands of ordinary ones fit in.
    pub fn approx_bytes(&self) -> usize {
        let steps: usize = self.config.steps.iter().map(|s| s.id.len() + s.name.len() + s.prompt.len() + 64).sum();
        let triggers: usize = self.config.triggers.iter().map(|t| t.cron.len() + t.timezone.len() + 32).sum();
        std::mem::size_of::<Self>()
            + self.tenant_id.len()
            + self.name.len()
            + self.description.len()
            + self.config.langflow_flow_json.len()
            + if self.config.extra_rules.is_empty() {
                0
            } else {
                serde_json::to_string(&self.config.extra_rules).map_or(0, |j| j.len())
            }
            + steps
            + triggers
    }

    /// The opaque tag of this state: the definition's version and the status. A status change
    /// is no new version of the definition (agents made from it have nothing to upgrade to),
    /// yet it must change the etag; and as the status only moves forward, the pair never
    /// repeats.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.version, self.status.as_str())
    }

    /// Whether `etag` is one this service issues for workflows (this release's, or the bare
    /// version of earlier releases, which is then stale).
    pub fn is_etag(etag: &str) -> bool {
        let Some(inner) = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')) else {
            return false;
        };
        let (version, status) = inner.split_once('-').map_or((inner, None), |(v, s)| (v, Some(s)));
        let numeric = !version.is_empty() && version.len() <= 19 && version.bytes().all(|b| b.is_ascii_digit());
        numeric && status.is_none_or(|s| Status::parse(s).is_some())
    }

    /// Whether `other` differs from this workflow in what makes a new version: its name,
    /// description, category or config (not its status, nor its statistics).
    pub fn definition_differs(&self, other: &Workflow) -> bool {
        (&self.name, &self.description, self.category, &self.config)
            != (&other.name, &other.description, other.category, &other.config)
    }

    pub fn success_rate(&self) -> f64 {
        if self.execution_count == 0 { 0.0 } else { self.success_count as f64 / self.execution_count as f64 }
    }
}

/// The fields of a new workflow a caller chooses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWorkflow {
    pub name: String,
    pub description: String,
    pub category: Category,
    pub config: WorkflowConfig,
}

impl NewWorkflow {
    /// A new draft owned by `tenant`.
    pub fn into_draft(self, tenant: &str, now: DateTime<Utc>) -> Workflow {
        Workflow {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            name: self.name,
            description: self.description,
            category: self.category,
            config: self.config,
            status: Status::Draft,
            is_template: false,
            execution_count: 0,
            success_count: 0,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Filters of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    pub category: Option<Category>,
    pub status: Option<Status>,
    pub is_template: Option<bool>,
    pub name_contains: String,
}

impl WorkflowFilter {
    /// The parts a page token is bound to.
    pub fn fingerprint_parts(&self) -> [String; 4] {
        [
            self.category.map(|c| c.as_str()).unwrap_or("").to_owned(),
            self.status.map(|s| s.as_str()).unwrap_or("").to_owned(),
            format!("{:?}", self.is_template),
            self.name_contains.clone(),
        ]
    }
}

/// The outcome of recording one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedExecution {
    /// False when the execution id had been recorded before.
    pub counted: bool,
    /// The workflow with the reporting tenant's figures after the recording; shared by the
    /// reports of one batch on the same workflow (a definition may be megabytes).
    pub workflow: std::sync::Arc<Workflow>,
}

/// One execution to record: which workflow's, its id (the idempotency key) and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionReport {
    pub workflow_id: Uuid,
    /// 1-128 printable ASCII characters (checked at the edge).
    pub execution_id: String,
    pub succeeded: bool,
}

/// Most executions one RecordExecutions request may carry: one transaction's worth, and an
/// answer well within a message.
pub const MAX_REPORTS_PER_BATCH: usize = 500;
