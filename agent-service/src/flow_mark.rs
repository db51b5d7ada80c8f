//! Whose a Langflow flow is. Langflow has no tenants and may be shared by several agent-service
//! deployments (staging and production, say), so every flow agent-service makes carries a mark
//! in its description: the agent it was made for, that agent's tenant, and the deployment that
//! made it. The mark decides two things:
//! - the orphan reconciler deletes only flows with its own deployment's mark (never a flow of
//!   another deployment, an unmarked one, or one marked before deployments were: "legacy");
//! - LinkAgentFlow links a flow only if it is the caller's (see [`check_link`]).
//!
//! A flow made by hand in Langflow carries no mark; a tenant that adopts it (LinkAgentFlow with
//! `adopt`) has an adoption mark appended to its description, so that from then on it is that
//! tenant's like a flow made for it (no other tenant can adopt it in turn). The adoption mark is
//! not the made-by mark: the reconciler never deletes an adopted flow.
//!
//! Description, not tags: verified against Langflow 1.13, the description survives create,
//! read and the light listing (`header_flows=true`) the reconciler reads, and operators see it
//! in the UI.

use engarde::kit::auth::Tenant;
use engarde::kit::error::{ServiceError, ServiceResult};
use uuid::Uuid;

const MANAGED_PREFIX: &str = "EnGarde agent ";
const TENANT_PART: &str = " of tenant ";
const MANAGED_PART: &str = "; managed by agent-service";
const DEPLOYMENT_PART: &str = " deployment ";
const ADOPTED_PREFIX: &str = "[adopted by EnGarde tenant ";
const ADOPTED_DEPLOYMENT_PART: &str = " in agent-service deployment ";

/// The identity of one agent-service deployment: the replicas that share one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// 1-64 letters, digits, `-`, `_` or `.` (it is one word of a flow's description).
    pub fn parse(id: &str) -> Result<Self, String> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(format!("deployment id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mark of a flow agent-service made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMark {
    /// The agent the flow was made for.
    pub agent_id: Uuid,
    /// That agent's tenant.
    pub tenant: String,
    /// The deployment that made it; `None` for flows marked before deployments were (legacy).
    pub deployment: Option<DeploymentId>,
}

impl FlowMark {
    /// The description of a flow made for `agent_id` of `tenant` by `deployment`.
    pub fn description(agent_id: Uuid, tenant: &str, deployment: &DeploymentId) -> String {
        format!("{MANAGED_PREFIX}{agent_id}{TENANT_PART}{tenant}{MANAGED_PART}{DEPLOYMENT_PART}{deployment}")
    }

    /// The mark a flow's description carries, if it carries one whole (a description edited
    /// by hand into something else is unmarked).
    pub fn parse(description: &str) -> Option<Self> {
        let rest = description.strip_prefix(MANAGED_PREFIX)?;
        let (agent, rest) = rest.split_once(TENANT_PART)?;
        let agent_id = Uuid::parse_str(agent).ok()?;
        let (tenant, rest) = rest.split_once(MANAGED_PART)?;
        let tenant = Tenant::parse(tenant).ok()?.as_str().to_owned();
        let deployment = match rest.strip_prefix(DEPLOYMENT_PART) {
            Some(id) => Some(DeploymentId::parse(id).ok()?),
            None if rest.is_empty() => None,
            None => return None,
        };
        Some(Self { agent_id, tenant, deployment })
    }

    /// Whether this deployment made the flow (and so its reconciler may delete it).
    pub fn made_by(&self, deployment: &DeploymentId) -> bool {
        self.deployment.as_ref() == Some(deployment)
    }
}

/// A hand-made flow's description once `tenant` of `deployment` adopted it: the original
/// description, then the adoption mark.
pub fn adopted_description(original: &str, tenant: &str, deployment: &DeploymentId) -> String {
    let mark = format!("{ADOPTED_PREFIX}{tenant}{ADOPTED_DEPLOYMENT_PART}{deployment}]");
    if original.is_empty() { mark } else { format!("{original} {mark}") }
}

/// The tenant and deployment that adopted a flow, from the mark at the end of its description.
fn adoption(description: &str) -> Option<(String, DeploymentId)> {
    let start = description.rfind(ADOPTED_PREFIX)?;
    let mark = description[start + ADOPTED_PREFIX.len()..].strip_suffix(']')?;
    let (tenant, deployment) = mark.split_once(ADOPTED_DEPLOYMENT_PART)?;
    let tenant = Tenant::parse(tenant).ok()?.as_str().to_owned();
    Some((tenant, DeploymentId::parse(deployment).ok()?))
}

/// What linking a flow takes, once allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCheck {
    /// The flow is the caller's already: link it as it is.
    Allowed,
    /// A hand-made flow the caller adopts: mark it as the caller's, then link it.
    Adopt,
}

/// Whether `tenant` may link the flow `flow_id` whose description is `description`:
/// - made (or adopted) in this deployment (or with a legacy mark) for the caller's tenant: yes;
/// - made or adopted for another tenant: NOT_FOUND, exactly as a flow that does not exist;
/// - made or adopted by another deployment: FAILED_PRECONDITION, never adoptable (its
///   deployment may delete it at any time, and it is another environment's data);
/// - not made by agent-service at all (made by hand in Langflow): only when the caller
///   `adopt`s it, else FAILED_PRECONDITION saying so.
pub fn check_link(
    flow_id: &str,
    description: &str,
    deployment: &DeploymentId,
    tenant: &str,
    adopt: bool,
) -> ServiceResult<LinkCheck> {
    let (owner, made_in) = match FlowMark::parse(description) {
        Some(mark) => (mark.tenant, mark.deployment),
        None => match adoption(description) {
            Some((owner, adopted_in)) => (owner, Some(adopted_in)),
            None if adopt => return Ok(LinkCheck::Adopt),
            None => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "Langflow flow {flow_id} was not made by agent-service: set adopt to link it anyway \
                     (it is then marked as your tenant's; agent-service never deletes a flow it did not make)"
                )));
            }
        },
    };
    if made_in.is_some_and(|d| d != *deployment) {
        return Err(ServiceError::FailedPrecondition(format!(
            "Langflow flow {flow_id} belongs to another agent-service deployment: it cannot be linked or adopted here"
        )));
    }
    if owner != tenant {
        return Err(flow_not_found(flow_id));
    }
    Ok(LinkCheck::Allowed)
}

/// The answer for a flow that does not exist, or is another tenant's.
pub fn flow_not_found(flow_id: &str) -> ServiceError {
    ServiceError::not_found(format!("Langflow flow {flow_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn deployment(id: &str) -> DeploymentId {
        DeploymentId::parse(id).unwrap()
    }

    fn code(result: ServiceResult<LinkCheck>) -> Option<Code> {
        result.err().map(|e| tonic::Status::from(e).code())
    }

    #[test]
    fn a_mark_names_agent_tenant_and_deployment() {
        let id = Uuid::now_v7();
        let mark = FlowMark::parse(&FlowMark::description(id, "t1", &deployment("d1"))).unwrap();
        assert_eq!(mark, FlowMark { agent_id: id, tenant: "t1".into(), deployment: Some(deployment("d1")) });
        assert!(mark.made_by(&deployment("d1")));
        assert!(!mark.made_by(&deployment("d2")));
    }

    #[test]
    fn legacy_and_foreign_descriptions_are_told_apart() {
        let id = Uuid::now_v7();
        let legacy = FlowMark::parse(&format!("EnGarde agent {id} of tenant t1; managed by agent-service")).unwrap();
        assert_eq!(legacy.deployment, None);
        assert!(!legacy.made_by(&deployment("d1")), "nobody's reconciler deletes a legacy flow");
        for unmarked in [
            "A flow somebody made".to_owned(),
            "EnGarde agent not-a-uuid of tenant x; managed by agent-service".to_owned(),
            format!("EnGarde agent {id} of tenant t1; managed by agent-service, edited by hand"),
            format!("EnGarde agent {id} of tenant bad tenant; managed by agent-service deployment d1"),
            format!("EnGarde agent {id} of tenant t1; managed by agent-service deployment d 1"),
        ] {
            assert_eq!(FlowMark::parse(&unmarked), None, "{unmarked}");
        }
    }

    #[test]
    fn only_the_callers_flows_link_and_unmarked_ones_need_adopting() {
        let ours = deployment("d1");
        let id = Uuid::now_v7();
        let mine = FlowMark::description(id, "tA", &ours);
        let theirs = FlowMark::description(id, "tB", &ours);
        let elsewhere = FlowMark::description(id, "tA", &deployment("d2"));
        let legacy = format!("EnGarde agent {id} of tenant tA; managed by agent-service");
        let by_hand = "made in the Langflow UI";
        let check = |description: &str, tenant: &str, adopt: bool| check_link("f", description, &ours, tenant, adopt);
        assert_eq!(code(check(&mine, "tA", false)), None);
        assert_eq!(check(&mine, "tA", true).unwrap(), LinkCheck::Allowed, "nothing to adopt");
        assert_eq!(code(check(&legacy, "tA", false)), None);
        assert_eq!(code(check(&theirs, "tA", false)), Some(Code::NotFound));
        assert_eq!(code(check(&theirs, "tA", true)), Some(Code::NotFound), "adopt is no way in");
        assert_eq!(code(check(&legacy, "tB", true)), Some(Code::NotFound));
        assert_eq!(code(check(&elsewhere, "tA", true)), Some(Code::FailedPrecondition));
        assert_eq!(code(check(by_hand, "tA", false)), Some(Code::FailedPrecondition));
        assert_eq!(check(by_hand, "tA", true).unwrap(), LinkCheck::Adopt);
    }

    #[test]
    fn an_adopted_flow_is_its_adopters() {
        let ours = deployment("d1");
        let check = |description: &str, tenant: &str| check_link("f", description, &ours, tenant, true);
        let adopted = adopted_description("made in the Langflow UI", "tA", &ours);
        assert!(adopted.starts_with("made in the Langflow UI ["), "{adopted}");
        assert_eq!(check(&adopted, "tA").unwrap(), LinkCheck::Allowed);
        assert_eq!(code(check(&adopted, "tB")), Some(Code::NotFound));
        let elsewhere = adopted_description("", "tA", &deployment("d2"));
        assert_eq!(code(check(&elsewhere, "tA")), Some(Code::FailedPrecondition));
        assert_eq!(FlowMark::parse(&adopted), None, "an adopted flow is never the reconciler's");
    }

    #[test]
    fn deployment_ids_are_one_word() {
        assert!(DeploymentId::parse("staging-eu.1").is_ok());
        for bad in ["", "two words", "semi;colon", &"x".repeat(65)] {
            assert!(DeploymentId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
