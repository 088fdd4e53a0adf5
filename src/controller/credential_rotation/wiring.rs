//! How a CredentialRotation comes back to be reconciled: its own changes, a policy change when a policy
//! decides what it may touch, its own Secret, and its ServicePrincipal's changes (from the watch every kind
//! shares).

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    core::PartialObjectMeta,
    runtime::{Controller, reflector::ObjectRef, watcher},
};

use super::{OWNER_LABEL, reconcile};
use crate::{
    api::CredentialRotation,
    controller::{Context, Scope, reconcile::error_policy, watches},
};

/// The CredentialRotation controller of `scope`.
pub fn controller(ctx: Arc<Context>, scope: &Scope) -> BoxStream<'static, ()> {
    let (store, changes) = watches::primary(
        scope.api::<CredentialRotation>(),
        watcher::Config::default(),
    );
    ctx.claims.add_rotations(store.clone());
    let rotating = store.clone();
    let renewing = store.clone();
    let principals = scope.service_principals.clone();
    Controller::for_stream(changes, store.clone())
        .with_config(scope.config.clone())
        // Which applications, AKS clusters and vaults a rotation may touch is a policy's to say; a rotation
        // of its own namespace's ServicePrincipal that publishes to no cluster or vault of its own asks no
        // policy (the ServicePrincipal's vaults are woken through it).
        .reconcile_on(watches::on_policy_change(
            &scope.policy_changes,
            store,
            |c| {
                c.spec.application_id.is_some()
                    || !c.spec.targets.aks_clusters.is_empty()
                    || !c.spec.targets.key_vault_secrets.is_empty()
            },
        ))
        // A Secret of its own (with applicationId) that is lost or edited is repaired at once.
        .owns_stream(watches::owned_secrets(
            scope.api::<PartialObjectMeta<Secret>>(),
            OWNER_LABEL,
        ))
        // A rotation waiting for its ServicePrincipal, or whose Secret it re-issued, goes on at once.
        .watches_stream(scope.principal_changes(), move |sp| {
            rotating
                .state()
                .iter()
                .filter(|c| {
                    c.namespace() == sp.namespace()
                        && c.spec
                            .service_principal_ref
                            .as_ref()
                            .is_some_and(|r| r.name == sp.name_any())
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        // A renewal of the TLS Secret its ServicePrincipal's certificate comes from is the next rotation.
        .watches_stream(
            watches::tls_secrets(scope.api::<PartialObjectMeta<Secret>>()),
            move |secret| {
                let takers: Vec<String> = principals
                    .state()
                    .iter()
                    .filter(|sp| watches::takes_certificate_from(sp, &secret))
                    .map(|sp| sp.name_any())
                    .collect();
                renewing
                    .state()
                    .iter()
                    .filter(|c| {
                        c.namespace() == secret.namespace()
                            && c.spec
                                .service_principal_ref
                                .as_ref()
                                .is_some_and(|r| takers.contains(&r.name))
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx)
        .map(|_| ())
        .boxed()
}
