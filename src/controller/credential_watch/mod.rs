//! The CredentialWatch controller: observe-only expiry monitoring of Entra applications that nothing here
//! manages. Each reconcile is gather -> plan -> act: `gather` reads the selected applications from Graph,
//! `plan` (pure, table-tested) classifies every password and certificate against warnBefore and now, and
//! act writes the status and the expiry gauge. Nothing is ever written to Azure, so there is no finalizer:
//! a deleted watch's series are dropped when the watch sees it go (see `wiring`).
//!
//! Cluster-scoped, so this controller runs once whatever namespaces the operator watches, and it does not go
//! through [`super::reconcile::run`], which serves the namespaced kinds and their cleanups.

mod gather;
pub mod plan;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use tracing::{Instrument, warn};

use super::{Context, clock, failure, reconcile};
use crate::{
    api::credential_watch::{CredentialWatch, CredentialWatchStatus},
    azure::error::AzureError,
};

/// The kind, as metrics and logs name it.
pub const KIND: &str = "CredentialWatch";

/// The Graph reads a watch makes: a refusal is the missing optional read grant.
const READS: failure::AzureReasons = failure::AzureReasons {
    forbidden: NOT_GRANTED,
    not_found: "AzureUnavailable",
};

/// The reason a watch shows while the operator's identity may not read applications it does not own.
pub const NOT_GRANTED: &str = "ApplicationReadNotGranted";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the operator's identity may not read applications it does not own: grant it the Microsoft Graph \
         application permission Application.Read.All (with admin consent). It is optional and read-only, and only \
         CredentialWatch needs it; see docs/credential-watch.md"
    )]
    NotGranted,
    /// Graph refused spec.filter (400): the message is Graph's.
    #[error("spec.filter: Graph refused the filter: {0}")]
    InvalidFilter(AzureError),
    /// A spec the operator cannot use although admission let it in (see [`reconcile::spec_problems`]).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl failure::Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::NotGranted => NOT_GRANTED,
            Error::InvalidFilter(_) => "InvalidFilter",
            Error::Invalid(_) => "InvalidSpec",
            Error::Azure(e) => failure::azure_reason(e, &READS),
            Error::Kube(_) => "KubernetesError",
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            // A grant is made outside the cluster, and shows in the operator's next token: look now and then.
            Error::NotGranted | Error::InvalidFilter(_) | Error::Invalid(_) => {
                Duration::from_secs(300)
            }
            Error::Azure(e) => failure::azure_retry(e),
            Error::Kube(_) => Duration::from_secs(5),
        }
    }

    fn stalled(&self) -> bool {
        match self {
            Error::NotGranted | Error::InvalidFilter(_) | Error::Invalid(_) => true,
            Error::Azure(e) => failure::azure_stalled(e),
            Error::Kube(_) => false,
        }
    }
}

impl reconcile::Status for CredentialWatchStatus {
    const CLEARED: &'static [&'static str] = &[
        "applications",
        "applicationCount",
        "earliestExpiry",
        "lastCheckTime",
        "conditions",
    ];
    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}

/// One reconcile of `watch`, in its span, counted by result. Only a failed status write is an error (retried
/// by the error policy); a failure to read Azure is reported on the watch and retried from here.
pub async fn reconcile(watch: Arc<CredentialWatch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = crate::telemetry::reconcile_span(KIND, "", &watch.name_any());
    async move {
        let started = std::time::Instant::now();
        let result = check(&watch, &ctx).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => failure::Failure::reason(e),
        };
        let action = match result {
            Ok(action) => Ok(action),
            Err(e) => report(&watch, &ctx, e).await,
        };
        ctx.metrics
            .reconciled(KIND, outcome, started.elapsed().as_secs_f64());
        action
    }
    .instrument(span)
    .await
}

/// Reads, plans and records; the action is the plan's requeue.
async fn check(watch: &CredentialWatch, ctx: &Context) -> Result<Action, Error> {
    let problems = reconcile::spec_problems(KIND, watch);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems.join("; ")));
    }
    let read = gather::gather(&ctx.graph, &watch.spec).await?;
    let settings = plan::Settings {
        warn_before: watch.spec.warn_before.as_std(),
        interval: watch.spec.interval.as_std(),
        generation: watch.metadata.generation,
    };
    let plan = plan::plan(watch.status.as_ref(), &read, &settings, clock::now());
    write_status(ctx, watch, &plan.status).await?;
    ctx.metrics
        .set_watched_credentials(&watch.name_any(), &plan.series);
    Ok(Action::requeue(plan.requeue))
}

/// Records `e` on the watch (Ready False, with Stalled or Reconciling), keeps what it last saw (the gauge
/// too: an alert must not resolve because Graph was briefly unreachable), and announces it if it is news.
async fn report(watch: &CredentialWatch, ctx: &Context, e: Error) -> Result<Action, Error> {
    use failure::Failure as _;
    warn!(error = %e, reason = e.reason(), "credential watch failed");
    if let Error::Kube(_) = e {
        return Err(e);
    }
    let mut status = watch.status.clone().unwrap_or_default();
    let changed = e.record(&mut status.conditions, watch.metadata.generation);
    status.observed_generation = watch.metadata.generation;
    write_status(ctx, watch, &status).await?;
    failure::announce(ctx, watch, &e, changed).await;
    Ok(match e {
        Error::Invalid(_) => Action::await_change(),
        _ => Action::requeue(e.retry_after().min(watch.spec.interval.as_std())),
    })
}

/// Writes `status` with a merge patch unless it is what the watch has; cleared fields are sent as null.
async fn write_status(
    ctx: &Context,
    watch: &CredentialWatch,
    status: &CredentialWatchStatus,
) -> kube::Result<()> {
    use reconcile::Status as _;
    if watch.status.as_ref() == Some(status) {
        return Ok(());
    }
    let mut body = serde_json::to_value(status).unwrap_or_default();
    for key in CredentialWatchStatus::CLEARED {
        if body.get(*key).is_none() {
            body[*key] = serde_json::Value::Null;
        }
    }
    Api::<CredentialWatch>::all(ctx.client.clone())
        .patch_status(
            &watch.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": body })),
        )
        .await?;
    Ok(())
}

/// Retries a failed status write.
pub fn error_policy(_watch: Arc<CredentialWatch>, error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(failure::Failure::retry_after(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use failure::Failure as _;

    fn graph(status: u16, code: &str) -> AzureError {
        AzureError::Api {
            operation: "graph get application",
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_refusal_names_the_optional_grant_and_waits_for_it() {
        // A 403 that gather did not map (a list refused outright) shows as the missing grant too.
        for e in [
            Error::NotGranted,
            Error::Azure(graph(403, "Authorization_RequestDenied")),
        ] {
            assert_eq!(e.reason(), NOT_GRANTED);
            assert!(e.stalled());
            assert_eq!(e.retry_after(), Duration::from_secs(300));
        }
        let busy = Error::Azure(graph(503, "ServiceUnavailable"));
        assert_eq!(busy.reason(), "AzureUnavailable");
        assert!(!busy.stalled());
        assert_eq!(
            Error::InvalidFilter(graph(400, "Request_UnsupportedQuery")).reason(),
            "InvalidFilter"
        );
    }
}
