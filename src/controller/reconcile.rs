//! What every controller's reconcile shares: a span with a trace id, a check that the spec can be used at all,
//! kube's finalizer helper, the reconciliation metrics, and the retry delay each failure asks for.

use std::{
    collections::HashMap,
    fmt::Debug,
    future::Future,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, CustomResourceExt, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::object::HasStatus,
    runtime::{
        controller::Action,
        finalizer::{Error as FinalizerError, Event, finalizer},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tracing::{Instrument, warn};

use super::Context;
use crate::api::{Duration as SpecDuration, common::DURATION_PATTERN, conditions};

/// The finalizer every kind carries while it has something in Azure to clean up.
pub const FINALIZER: &str = "entra-operator.io/cleanup";

pub use super::failure::Failure;

/// Runs one reconcile of `object` through the finalizer (`step` gets Apply or Cleanup), in its span, and
/// counts it by result. A spec that cannot be used (see [`spec_problems`]) is reported InvalidSpec on the
/// object and goes no further: no finalizer, nothing in Azure. Deletion still runs the cleanup.
pub async fn run<K, E, F, Fut>(
    kind: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    step: F,
) -> Result<Action, FinalizerError<E>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + CustomResourceExt
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
        let object = match fresh(&api, object, &ctx).await {
            Ok(object) => object,
            Err(action) => return Ok(action),
        };
        if let Some(action) = refuse_invalid(kind, &api, object.as_ref(), &ctx).await {
            ctx.metrics
                .reconciled(kind, INVALID_SPEC, started.elapsed().as_secs_f64());
            return Ok(action);
        }
        let reconciled = guarded(finalizer(&api, FINALIZER, object.clone(), |event| {
            step(event, ctx.clone())
        }))
        .await;
        let result = match reconciled {
            Ok(result) => result,
            Err(panic) => {
                // A bug met on this object: kube's controller would unwind through every other object's
                // reconcile and stop the operator. Reported on the object and retried rarely instead.
                tracing::error!(panic = %panic, "reconcile panicked");
                let action = report(
                    &api,
                    object.as_ref(),
                    &ctx,
                    RECONCILE_PANICKED,
                    "the operator failed on this object (a bug, see its log); retrying every 5 minutes",
                    Action::requeue(Duration::from_secs(300)),
                )
                .await;
                ctx.metrics
                    .reconciled(kind, RECONCILE_PANICKED, started.elapsed().as_secs_f64());
                return Ok(action);
            }
        };
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

/// The condition reason of a spec the operator cannot use.
const INVALID_SPEC: &str = "InvalidSpec";

/// `object`, or the API server's copy of it when the watch cache has not caught up with this operator's last
/// status write to it (see [`StatusWrites`]); Err with the action to take when
/// there is nothing to reconcile now.
async fn fresh<K>(api: &Api<K>, object: Arc<K>, ctx: &Context) -> Result<Arc<K>, Action>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if !ctx.status_writes.stale(object.as_ref()) {
        return Ok(object);
    }
    match api.get_opt(&object.name_any()).await {
        Ok(Some(fresh)) => {
            ctx.status_writes.read(&fresh);
            Ok(Arc::new(fresh))
        }
        Ok(None) => {
            ctx.status_writes.forget(object.as_ref());
            Err(Action::await_change())
        }
        Err(e) => {
            warn!(error = %e, "cannot read the object afresh; retrying");
            Err(Action::requeue(Duration::from_secs(1)))
        }
    }
}

/// Reports a spec the operator cannot use (see [`spec_problems`]) on `object` and returns what to do next;
/// None when the spec is usable or the object is being deleted (its cleanup still runs).
async fn refuse_invalid<K>(
    kind: &'static str,
    api: &Api<K>,
    object: &K,
    ctx: &Context,
) -> Option<Action>
where
    K: Resource<DynamicType = ()>
        + CustomResourceExt
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize,
{
    if object.meta().deletion_timestamp.is_some() {
        return None;
    }
    let problems = spec_problems(kind, object);
    if problems.is_empty() {
        return None;
    }
    let message = problems.join("; ");
    warn!(reason = INVALID_SPEC, error = %message, "the spec cannot be used");
    Some(
        report(
            api,
            object,
            ctx,
            INVALID_SPEC,
            &message,
            Action::await_change(),
        )
        .await,
    )
}

/// What in `object`'s spec the operator cannot use although admission let it in, each as "spec.field: why".
///
/// Admission bounds every duration now, but objects admitted before the bound (or through a looser CRD) are
/// still stored, and decoding keeps such a value rather than fail the whole watch. Every string field the CRD
/// schema types as a duration is checked, found through the schema (so a duration field added later is
/// covered without listing it here).
pub fn spec_problems<K: CustomResourceExt + Serialize>(
    kind: &'static str,
    object: &K,
) -> Vec<String> {
    static SPEC_SCHEMAS: LazyLock<Mutex<HashMap<&'static str, Arc<Value>>>> =
        LazyLock::new(Default::default);
    let schema = SPEC_SCHEMAS
        .lock()
        .expect("spec schemas lock")
        .entry(kind)
        .or_insert_with(|| {
            let crd = serde_json::to_value(K::crd()).unwrap_or_default();
            Arc::new(
                crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                    .clone(),
            )
        })
        .clone();
    let value = serde_json::to_value(object).unwrap_or_default();
    let mut problems = vec![];
    check_durations(&schema, &value["spec"], "spec", &mut problems);
    problems
}

fn check_durations(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    match value {
        Value::String(text) if schema["pattern"] == DURATION_PATTERN => {
            if let Some(problem) = SpecDuration::lenient(text).problem() {
                problems.push(format!("{path}: {problem}"));
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let sub = match schema["properties"].get(name) {
                    Some(sub) => sub,
                    None => &schema["additionalProperties"],
                };
                check_durations(sub, field, &format!("{path}.{name}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_durations(&schema["items"], item, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// The condition reason of an object whose reconcile panicked.
const RECONCILE_PANICKED: &str = "ReconcilePanicked";

/// Runs `fut`, turning a panic into an error that carries its message.
async fn guarded<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| {
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        })
}

/// Reports `message` on the object with `reason` (Ready False, Stalled), as every controller reports a
/// failure, with a Warning Event when that is news. Then `then`; only a failed write is retried sooner.
async fn report<K>(
    api: &Api<K>,
    object: &K,
    ctx: &Context,
    reason: &str,
    message: &str,
    then: Action,
) -> Action
where
    K: Resource<DynamicType = ()> + Serialize + Clone + Debug + DeserializeOwned,
{
    let value = serde_json::to_value(object).unwrap_or_default();
    let current: Vec<Condition> =
        serde_json::from_value(value["status"]["conditions"].clone()).unwrap_or_default();
    let generation = object.meta().generation;
    let mut updated = current.clone();
    let news = conditions::record_failure(
        &mut updated,
        reason,
        message,
        true,
        generation,
        super::clock::now_time(),
    );
    let observed = value["status"]["observedGeneration"].as_i64();
    if updated != current || observed != generation {
        let patch = serde_json::json!({
            "status": {"conditions": updated, "observedGeneration": generation}
        });
        match api
            .patch_status(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(made) => ctx
                .status_writes
                .wrote(object, made.resource_version().as_deref()),
            Err(e) => {
                warn!(error = %e, reason, "cannot record the failure on the object; retrying");
                return Action::requeue(Duration::from_secs(5));
            }
        }
    }
    if news {
        super::publish(
            ctx,
            object,
            kube::runtime::events::EventType::Warning,
            reason,
            message,
        )
        .await;
    }
    then
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
    let made = Api::<K>::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default())
        .patch_status(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": body })),
        )
        .await?;
    ctx.status_writes
        .wrote(object, made.resource_version().as_deref());
    Ok(())
}

/// What the shared plumbing needs of a kind's status: where its conditions are, and which of its fields a
/// change can clear (those are sent as null, since a merge patch leaves out what it does not name).
pub trait Status: Serialize + PartialEq {
    const CLEARED: &'static [&'static str];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// Writes `status` on `object` (see [`patch_status`]), unless it is what the object has.
pub async fn write_status<K>(ctx: &Context, object: &K, status: &K::Status) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + HasStatus
        + Clone
        + Debug
        + DeserializeOwned,
    K::Status: Status,
{
    patch_status(ctx, object, object.status(), status, K::Status::CLEARED).await
}

/// For each object (by uid) this operator wrote the status of, the resourceVersion that write made (or that
/// a later read afresh returned). A reconcile that starts from any other version started from a watch cache
/// that has not caught up with the write: from the version the write was based on, or from one someone else
/// made in between. Either would compute from the status as it was before the write (forgetting, say, the
/// assignment that write recorded), so the object is read afresh instead. Versions are only compared for
/// equality, as Kubernetes allows; a cache that moved past the write costs one read, then matches again.
#[derive(Default)]
pub struct StatusWrites(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl StatusWrites {
    /// A status write on `object` made version `made` (None: unknown, so the next reconcile reads afresh).
    fn wrote<K: Resource>(&self, object: &K, made: Option<&str>) {
        if let Some(uid) = object.uid() {
            self.0
                .lock()
                .expect("status writes lock")
                .insert(uid, made.unwrap_or_default().to_string());
        }
    }

    /// `object` as just read from the API server: later reconciles may start from its version.
    fn read<K: Resource>(&self, object: &K) {
        if let (Some(uid), Some(version)) = (object.uid(), object.resource_version()) {
            let mut known = self.0.lock().expect("status writes lock");
            if let Some(entry) = known.get_mut(&uid) {
                *entry = version;
            }
        }
    }

    fn stale<K: Resource>(&self, object: &K) -> bool {
        let Some(uid) = object.uid() else {
            return false;
        };
        self.0
            .lock()
            .expect("status writes lock")
            .get(&uid)
            .is_some_and(|made| object.resource_version().as_ref() != Some(made))
    }

    fn forget<K: Resource>(&self, object: &K) {
        if let Some(uid) = object.uid() {
            self.0.lock().expect("status writes lock").remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_version(uid: &str, version: &str) -> ServicePrincipal {
        let mut sp: ServicePrincipal = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": "a", "namespace": "ns"}, "spec": {"displayName": "a"},
        }))
        .unwrap();
        sp.metadata.uid = Some(uid.into());
        sp.metadata.resource_version = Some(version.into());
        sp
    }

    // Found by the chaos soak: a reconcile wrote status (version 100 became 102) while someone else changed
    // the object in between (101). The watch cache then held 101, newer than what the write was based on and
    // older than what it made; a reconcile from it computed from the status before the write and forgot the
    // role assignment that write had recorded.
    #[test]
    fn only_the_version_a_status_write_made_is_fresh_after_it() {
        let writes = StatusWrites::default();
        assert!(
            !writes.stale(&at_version("u", "100")),
            "nothing written yet"
        );
        writes.wrote(&at_version("u", "100"), Some("102"));
        assert!(
            writes.stale(&at_version("u", "100")),
            "the version the write was based on"
        );
        assert!(
            writes.stale(&at_version("u", "101")),
            "a version from between"
        );
        assert!(
            !writes.stale(&at_version("u", "102")),
            "the version the write made"
        );
        assert!(!writes.stale(&at_version("other", "100")), "another object");
        // Read afresh, the newest version is what later reconciles may start from.
        writes.read(&at_version("u", "103"));
        assert!(!writes.stale(&at_version("u", "103")));
        assert!(writes.stale(&at_version("u", "102")));
        writes.forget(&at_version("u", "103"));
        assert!(!writes.stale(&at_version("u", "101")));
    }
    use crate::api::{CredentialRotation, RoleDelegation, ServicePrincipal};

    fn crot(name: &str, spec: Value) -> Value {
        serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotation",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        })
    }

    // A watcher decodes a whole list page: one object that an older schema admitted must not fail the page.
    #[test]
    fn a_list_page_with_an_unusable_duration_decodes() {
        let page = serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotationList", "metadata": {},
            "items": [
                crot("bad", serde_json::json!({"servicePrincipalRef": {"name": "a"}, "renewBefore": "720h",
                    "overlap": "9999999999999999h"})),
                crot("good", serde_json::json!({"servicePrincipalRef": {"name": "b"}, "rotateEvery": "720h"})),
            ],
        });
        let list: kube::api::ObjectList<CredentialRotation> =
            serde_json::from_value(page).expect("the page decodes");
        let problems: Vec<Vec<String>> = list
            .items
            .iter()
            .map(|o| spec_problems("CredentialRotation", o))
            .collect();
        assert_eq!(problems[1], Vec::<String>::new());
        assert_eq!(problems[0].len(), 1, "{problems:?}");
        let problem = &problems[0][0];
        assert!(
            problem.starts_with("spec.overlap: ")
                && problem.contains("9999999999999999h")
                && problem.contains("maximum of 87600h"),
            "{problem}"
        );
        assert_eq!(
            list.items[0].spec.overlap.as_std(),
            crate::api::common::MAX_DURATION,
            "what reads the value anyway stays in range"
        );
    }

    #[test]
    fn every_duration_field_is_checked_by_its_path() {
        let o: CredentialRotation = serde_json::from_value(crot(
            "x",
            serde_json::json!({"applicationId": "7f951dda-4ed3-4680-a7ca-43fe172d538d", "rotateEvery": "1y",
                "renewBefore": "87601h", "credentialLifetime": "87600h", "overlap": "1h",
                "targets": {"secret": {"name": "s"}}}),
        ))
        .unwrap();
        let problems = spec_problems("CredentialRotation", &o);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("spec.renewBefore: invalid duration \"87601h\""));
        assert!(problems[1].starts_with("spec.rotateEvery: invalid duration \"1y\""));

        let sp: ServicePrincipal = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": "sp", "namespace": "ns"},
            "spec": {"displayName": "a", "credentialLifetime": "99999999999999999999h"},
        }))
        .unwrap();
        let problems = spec_problems("ServicePrincipal", &sp);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("spec.credentialLifetime: "));

        let rd: RoleDelegation = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "RoleDelegation",
            "metadata": {"name": "rd", "namespace": "ns"},
            "spec": {"principalId": "7f951dda-4ed3-4680-a7ca-43fe172d538d", "role": {"name": "Reader"},
                "scope": "/subscriptions/7f951dda-4ed3-4680-a7ca-43fe172d538d"},
        }))
        .unwrap();
        assert!(spec_problems("RoleDelegation", &rd).is_empty());
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(guarded(async { 7 }).await, Ok(7));
        let index = 9;
        let panicked = guarded(async move {
            let v: Vec<u8> = vec![];
            v[index]
        })
        .await;
        assert!(
            panicked
                .as_ref()
                .is_err_and(|m| m.contains("index out of bounds")),
            "{panicked:?}"
        );
        assert_eq!(
            guarded(async { panic!("static") }).await,
            Err::<(), _>("static".into())
        );
    }
}
