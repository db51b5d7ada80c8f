//! The lifecycle of a workflow: DRAFT -> ACTIVE -> ARCHIVED (a draft may be archived directly),
//! and which fields may change in which state. Illegal moves are FAILED_PRECONDITION; changes to
//! the built-in library are PERMISSION_DENIED (clone a template to change it).

use engarde::kit::error::{ServiceError, ServiceResult};

use super::model::{Status, Workflow};

/// A field an update may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditableField {
    Name,
    Description,
    Category,
    Config,
}

impl EditableField {
    pub fn parse(path: &str) -> Option<Self> {
        match path {
            "name" => Some(Self::Name),
            "description" => Some(Self::Description),
            "category" => Some(Self::Category),
            "workflow_config" => Some(Self::Config),
            _ => None,
        }
    }
}

/// Refuses any change to a template of the built-in library.
pub fn ensure_owned(workflow: &Workflow) -> ServiceResult<()> {
    if workflow.is_template {
        return Err(ServiceError::PermissionDenied(format!(
            "workflow {} is a built-in template and is read-only; clone it to customise it",
            workflow.id
        )));
    }
    Ok(())
}

/// Refuses a change based on a stale read (ABORTED). An empty etag means "whatever the state".
pub fn ensure_fresh(workflow: &Workflow, etag: &str) -> ServiceResult<()> {
    let current = workflow.etag();
    if etag.is_empty() || etag == current {
        return Ok(());
    }
    if !Workflow::is_etag(etag) {
        return Err(ServiceError::invalid("etag", "is not an etag this service issued"));
    }
    Err(ServiceError::Aborted(format!(
        "workflow {} has changed since it was read (etag {etag} is stale, current is {current}); read it again",
        workflow.id
    )))
}

/// Whether `field` may change while the workflow is in `status`.
pub fn ensure_editable(status: Status, field: EditableField) -> ServiceResult<()> {
    let allowed = match status {
        Status::Draft => true,
        Status::Active => field != EditableField::Category,
        Status::Archived => false,
    };
    if allowed {
        return Ok(());
    }
    let reason = match status {
        Status::Archived => "an archived workflow is read-only".to_owned(),
        _ => format!("{field:?} cannot change while the workflow is {}", status.as_str()).to_lowercase(),
    };
    Err(ServiceError::FailedPrecondition(reason))
}

/// DRAFT -> ACTIVE.
pub fn activate(workflow: &Workflow) -> ServiceResult<Status> {
    match workflow.status {
        Status::Draft => Ok(Status::Active),
        other => Err(ServiceError::FailedPrecondition(format!(
            "only a draft can be activated; workflow {} is {}",
            workflow.id,
            other.as_str()
        ))),
    }
}

/// DRAFT or ACTIVE -> ARCHIVED.
pub fn archive(workflow: &Workflow) -> ServiceResult<Status> {
    match workflow.status {
        Status::Draft | Status::Active => Ok(Status::Archived),
        Status::Archived => {
            Err(ServiceError::FailedPrecondition(format!("workflow {} is already archived", workflow.id)))
        }
    }
}

/// Only drafts and archived workflows may be deleted; an active one is archived first.
pub fn ensure_deletable(workflow: &Workflow) -> ServiceResult<()> {
    if workflow.status == Status::Active {
        return Err(ServiceError::FailedPrecondition(format!(
            "workflow {} is active; archive it before deleting it",
            workflow.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_names_the_version_and_the_status() {
        let mut workflow = crate::domain::templates::library(chrono::Utc::now()).remove(0).workflow;
        workflow.status = Status::Active;
        let active = workflow.etag();
        assert!(ensure_fresh(&workflow, &active).is_ok());
        assert!(ensure_fresh(&workflow, "").is_ok());
        // Archiving keeps the version, and still changes the etag.
        workflow.status = Status::Archived;
        assert!(matches!(ensure_fresh(&workflow, &active), Err(ServiceError::Aborted(_))));
        // An earlier release's etag (the bare version) is stale, not invalid.
        assert!(matches!(ensure_fresh(&workflow, "\"1\""), Err(ServiceError::Aborted(_))));
        for junk in ["1", "\"\"", "\"x\"", "\"1-retired\"", "\"-active\"", "\"99999999999999999999\""] {
            assert!(matches!(ensure_fresh(&workflow, junk), Err(ServiceError::InvalidArgument(_))), "{junk}");
        }
    }

    #[test]
    fn what_may_change_in_which_state() {
        assert!(ensure_editable(Status::Draft, EditableField::Category).is_ok());
        assert!(ensure_editable(Status::Active, EditableField::Config).is_ok());
        assert!(ensure_editable(Status::Active, EditableField::Category).is_err());
        assert!(ensure_editable(Status::Archived, EditableField::Name).is_err());
    }
}
