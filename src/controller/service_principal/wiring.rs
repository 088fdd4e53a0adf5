//! How a ServicePrincipal comes back to be reconciled: its own changes (from the watch every kind shares),
//! its Secret, a policy change for an adoption or a Key Vault target, and drift in Azure.

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    core::PartialObjectMeta,
    runtime::{Controller, reflector::ObjectRef},
};

use super::{OWNER_LABEL, reconcile};
use crate::controller::{
    Context, Scope, ServicePrincipalChanges, drift, reconcile::error_policy, watches,
};

/// The ServicePrincipal controller of `scope`, driven by `changes`, the scope's shared ServicePrincipal
/// watch.
pub fn controller(
    ctx: Arc<Context>,
    scope: &Scope,
    changes: ServicePrincipalChanges,
) -> BoxStream<'static, ()> {
    let store = scope.service_principals.clone();
    let sources = store.clone();
    ctx.claims.add_service_principals(store.clone());
    Controller::for_stream(changes, store.clone())
        .with_config(scope.config.clone())
        .owns_stream(watches::owned_secrets(
            scope.api::<PartialObjectMeta<Secret>>(),
            OWNER_LABEL,
        ))
        // An adoption or a Key Vault target that a policy (no longer) lists is decided again at once;
        // nothing else a ServicePrincipal does depends on a policy, so the others are left alone.
        .reconcile_on(watches::on_policy_change(
            &scope.policy_changes,
            store,
            |sp| sp.spec.adopt.is_some() || !sp.spec.key_vault_secrets.is_empty(),
        ))
        // A certificate's TLS Secret written or renewed (cert-manager): followed at once.
        .watches_stream(
            watches::tls_secrets(scope.api::<PartialObjectMeta<Secret>>()),
            move |secret| {
                sources
                    .state()
                    .iter()
                    .filter(|sp| watches::takes_certificate_from(sp, &secret))
                    .map(|sp| ObjectRef::from_obj(sp.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Azure changed under it (found by the drift feeds).
        .reconcile_on(scope.drifted(&ctx.drift, |owner| match owner {
            drift::Owner::ServicePrincipal(r) => Some(r),
            drift::Owner::RoleDelegation(_) => None,
        }))
        .run(reconcile, error_policy, ctx)
        .map(|_| ())
        .boxed()
}
