//! What a failed reconcile tells the user, the same way for every kind: one trait each controller's error
//! implements, one table from Azure's failures to condition reasons, and one path from a failure to the
//! Ready condition, the status write and a Warning Event.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, runtime::events::EventType};

use super::{Context, clock, reconcile};
use crate::{
    api::conditions,
    azure::error::{AzureError, ErrorClass},
};

/// What a controller's error tells the shared plumbing.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// The condition reason (and metrics result) it shows as.
    fn reason(&self) -> &'static str;
    /// How long until the next try.
    fn retry_after(&self) -> Duration;
    /// Whether only a change from outside (a spec, a policy, a grant, another object) can help: the object
    /// is then Stalled rather than retrying.
    fn stalled(&self) -> bool;
    /// Whether a new failure of this kind is announced with a Warning Event. Waiting for something that
    /// comes on its own (an overlap's end, a sign-in to replicate) is not news.
    fn announced(&self) -> bool {
        true
    }

    /// Records the failure as the Ready condition (and Stalled or Reconciling); whether the reason is new.
    fn record(&self, conditions: &mut Vec<Condition>, generation: Option<i64>) -> bool {
        conditions::record_failure(
            conditions,
            self.reason(),
            &self.to_string(),
            self.stalled(),
            generation,
            clock::now_time(),
        )
    }
}

/// Announces `err` on `object` with a Warning Event, if it is news (`changed`, from [`Failure::record`]).
/// Called after the status write, so that whoever reads the Event finds the condition already there.
pub async fn announce<K: Resource<DynamicType = ()>, E: Failure>(
    ctx: &Context,
    object: &K,
    err: &E,
    changed: bool,
) {
    if changed && err.announced() {
        super::publish(
            ctx,
            object,
            EventType::Warning,
            err.reason(),
            &err.to_string(),
        )
        .await;
    }
}

/// The one path from a failed reconcile to what the user sees: `err` recorded in `status`'s conditions, the
/// status written, then (if the reason is new) a Warning Event. Whether the reason is new.
pub async fn report<K, E>(
    ctx: &Context,
    object: &K,
    mut status: K::Status,
    err: &E,
) -> kube::Result<bool>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + kube::core::object::HasStatus
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::Status: reconcile::Status,
    E: Failure,
{
    use reconcile::Status as _;
    let changed = err.record(status.conditions_mut(), object.meta().generation);
    reconcile::write_status(ctx, object, &status).await?;
    announce(ctx, object, err, changed).await;
    Ok(changed)
}

/// The reasons Azure's failures show as, per kind of call: the Graph calls that manage applications and the
/// ARM calls that manage role assignments need different grants, so a refusal names the one to make.
pub struct AzureReasons {
    /// A 403: the operator's identity lacks a grant.
    pub forbidden: &'static str,
    /// A 404 that is not the object's absence: for Graph, an object just created that has not replicated.
    pub not_found: &'static str,
}

/// Graph's applications and service principals (ServicePrincipal, CredentialRotation): a refusal means the
/// operator lacks `Application.ReadWrite.OwnedBy` or ownership of the application.
pub const APPLICATIONS: AzureReasons = AzureReasons {
    forbidden: "AzurePermissionDenied",
    not_found: "WaitingForReplication",
};

/// ARM's role assignments and definitions (RoleDelegation): a refusal means the operator may not write role
/// assignments at the scope.
pub const ROLE_ASSIGNMENTS: AzureReasons = AzureReasons {
    forbidden: "AuthorizationFailed",
    not_found: "AzureUnavailable",
};

/// The condition reason an Azure failure shows as.
pub fn azure_reason(e: &AzureError, reasons: &AzureReasons) -> &'static str {
    match e.class() {
        ErrorClass::Throttled(_) => "Throttled",
        ErrorClass::Forbidden => reasons.forbidden,
        ErrorClass::Invalid => "AzureRejected",
        ErrorClass::NotFound => reasons.not_found,
        ErrorClass::Transient | ErrorClass::Conflict => "AzureUnavailable",
    }
}

/// When to try again after an Azure failure: as told when throttled, soon when it may pass, rarely when only
/// a grant or a spec change can help.
pub fn azure_retry(e: &AzureError) -> Duration {
    match e.class() {
        ErrorClass::Throttled(d) => d,
        ErrorClass::Forbidden | ErrorClass::Invalid => Duration::from_secs(300),
        _ => Duration::from_secs(5),
    }
}

/// Whether only a grant or a spec change can help.
pub fn azure_stalled(e: &AzureError) -> bool {
    matches!(e.class(), ErrorClass::Forbidden | ErrorClass::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> AzureError {
        AzureError::Api {
            operation: "test",
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn each_kind_of_call_names_the_grant_it_lacks() {
        let forbidden = api(403, "Authorization_RequestDenied");
        assert_eq!(
            azure_reason(&forbidden, &APPLICATIONS),
            "AzurePermissionDenied"
        );
        assert_eq!(
            azure_reason(&forbidden, &ROLE_ASSIGNMENTS),
            "AuthorizationFailed"
        );
        let missing = api(404, "Request_ResourceNotFound");
        assert_eq!(
            azure_reason(&missing, &APPLICATIONS),
            "WaitingForReplication"
        );
        assert_eq!(
            azure_reason(&missing, &ROLE_ASSIGNMENTS),
            "AzureUnavailable"
        );
        let busy = api(503, "ServiceUnavailable");
        assert_eq!(azure_reason(&busy, &APPLICATIONS), "AzureUnavailable");
        assert!(azure_stalled(&forbidden) && !azure_stalled(&busy));
        assert_eq!(azure_retry(&forbidden), Duration::from_secs(300));
    }
}
