//! What every controller's reconcile shares: a span with a trace id, kube's finalizer helper, the
//! reconciliation metrics, and the retry delay each failure asks for.

use std::{fmt::Debug, future::Future, sync::Arc, time::Duration};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Error as FinalizerError, Event, finalizer},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{Instrument, warn};

use super::Context;
use crate::azure::error::{AzureError, ErrorClass};

/// The finalizer every kind carries while it has something in Azure to clean up.
pub const FINALIZER: &str = "entra-operator.io/cleanup";

/// What a controller's error tells the shared plumbing.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// The condition reason (and metrics result) it shows as.
    fn reason(&self) -> &'static str;
    /// How long until the next try.
    fn retry_after(&self) -> Duration;
}

/// Runs one reconcile of `object` through the finalizer (`step` gets Apply or Cleanup), in its span, and
/// counts it by result.
pub async fn run<K, E, F, Fut>(
    kind: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    step: F,
) -> Result<Action, FinalizerError<E>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static,
    E: Failure,
    F: FnOnce(Event<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let ns = object.namespace().unwrap_or_default();
    let span = crate::telemetry::reconcile_span(kind, &ns, &object.name_any());
    async move {
        let started = std::time::Instant::now();
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let object = if ctx.status_writes.stale(object.as_ref()) {
            match api.get_opt(&object.name_any()).await {
                Ok(Some(fresh)) => Arc::new(fresh),
                Ok(None) => {
                    ctx.status_writes.forget(object.as_ref());
                    return Ok(Action::await_change());
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the object afresh; retrying");
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
            }
        } else {
            object
        };
        let result = finalizer(&api, FINALIZER, object.clone(), |event| step(event, ctx.clone())).await;
        if result.is_ok() && object.meta().deletion_timestamp.is_some() {
            ctx.status_writes.forget(object.as_ref());
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => e.reason(),
            Err(_) => "FinalizerError",
        };
        // Logged here, inside the span, so that the line carries the reconcile's trace id.
        if let Err(error) = &result {
            warn!(error = %error, reason = outcome, retry_in = ?retry_after(error), "reconcile failed");
        }
        ctx.metrics
            .reconciled(kind, outcome, started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await
}

/// The controllers' error policy: retry after what the failure asks for (`run` has logged it).
pub fn error_policy<K, E>(_object: Arc<K>, error: &FinalizerError<E>, _ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
    E: Failure,
{
    Action::requeue(retry_after(error))
}

fn retry_after<E: Failure>(error: &FinalizerError<E>) -> Duration {
    match error {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e.retry_after(),
        _ => Duration::from_secs(5),
    }
}

/// The condition reason an Azure failure shows as, the same for every kind.
pub fn azure_reason(e: &AzureError) -> &'static str {
    match e.class() {
        ErrorClass::Throttled(_) => "Throttled",
        ErrorClass::Forbidden => "AzurePermissionDenied",
        ErrorClass::Invalid => "AzureRejected",
        ErrorClass::NotFound => "WaitingForReplication",
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

/// Writes `status` with a merge patch, unless it is what the object has. The fields named in `clear` are sent
/// as null when unset, because a merge patch leaves out what it does not name.
pub async fn patch_status<K, S>(
    ctx: &Context,
    object: &K,
    current: Option<&S>,
    status: &S,
    clear: &[&str],
) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let mut body = serde_json::to_value(status).unwrap_or_default();
    for key in clear {
        if body.get(*key).is_none() {
            body[*key] = serde_json::Value::Null;
        }
    }
    Api::<K>::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default())
        .patch_status(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": body })),
        )
        .await?;
    ctx.status_writes.wrote(object);
    Ok(())
}

/// The resourceVersion each object (by uid) had when a reconcile last wrote its status. A reconcile that
/// starts from that same version started from the watch cache before it saw the write, and would compute
/// from the status as it was before (forgetting, say, the assignment that write recorded): it reads the
/// object afresh instead. Versions are only compared for equality, as Kubernetes allows.
#[derive(Default)]
pub struct StatusWrites(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl StatusWrites {
    fn wrote<K: Resource>(&self, object: &K) {
        if let (Some(uid), Some(version)) = (object.uid(), object.resource_version()) {
            self.0
                .lock()
                .expect("status writes lock")
                .insert(uid, version);
        }
    }

    fn stale<K: Resource>(&self, object: &K) -> bool {
        match (object.uid(), object.resource_version()) {
            (Some(uid), Some(version)) => {
                self.0.lock().expect("status writes lock").get(&uid) == Some(&version)
            }
            _ => false,
        }
    }

    fn forget<K: Resource>(&self, object: &K) {
        if let Some(uid) = object.uid() {
            self.0.lock().expect("status writes lock").remove(&uid);
        }
    }
}
