//! What every adapter does first and last: who is calling, and the error turned into a status.

use engarde::kit::auth::{Subject, Tenant};
use engarde::kit::error::ServiceResult;
use tonic::{Request, Response, Status};

use crate::workflows::Credentials;

/// Who is calling: the authenticated tenant, the subject within it (for records of who changed
/// what), and the credentials to forward to workflow-service.
pub(super) struct Caller {
    pub(super) tenant: Tenant,
    pub(super) subject: Subject,
    pub(super) credentials: Credentials,
}

/// Runs a handler body for the caller, turning its error into a status.
pub(super) async fn handle<Req, Res, F, Fut>(request: Request<Req>, body: F) -> Result<Response<Res>, Status>
where
    F: FnOnce(Caller, Req) -> Fut,
    Fut: Future<Output = ServiceResult<Res>>,
{
    let tenant = Tenant::of(&request)?;
    let subject = Subject::of(&request);
    let credentials = Credentials::of(&request, &tenant);
    body(Caller { tenant, subject, credentials }, request.into_inner()).await.map(Response::new).map_err(Status::from)
}
