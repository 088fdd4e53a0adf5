//! How a RoleDelegation comes back to be reconciled: its own changes, its ServicePrincipal's (from the watch
//! every kind shares), its namespace's labels and any policy change (which decide what it may grant), and
//! drift in Azure.

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    runtime::{
        Controller,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::reconcile;
use crate::{
    api::{RoleDelegation, ServicePrincipal},
    controller::{Context, Scope, drift, reconcile::error_policy, watches},
};

/// The RoleDelegation controller of `scope`.
pub fn controller(ctx: Arc<Context>, scope: &Scope) -> BoxStream<'static, ()> {
    let (store, changes) =
        watches::primary(scope.api::<RoleDelegation>(), watcher::Config::default());
    ctx.claims.add_delegations(store.clone());
    let (principal_of, in_namespace) = (store.clone(), store.clone());
    let namespaces = match &scope.ns {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    Controller::for_stream(changes, store)
        .with_config(scope.config.clone())
        // A delegation waiting for its ServicePrincipal goes on as soon as that one changes (becomes Ready).
        .watches_stream(scope.principal_changes(), move |sp| {
            naming(&principal_of, &sp)
        })
        // Policies select namespaces by label: a relabelled namespace is re-evaluated at once.
        .watches_stream(
            watches::changes_of(Api::<Namespace>::all(ctx.client.clone()), namespaces, |n| {
                watches::hashed(&n.metadata.labels)
            }),
            move |namespace| {
                in_namespace
                    .state()
                    .iter()
                    .filter(|rd| rd.namespace() == namespace.metadata.name)
                    .map(|rd| ObjectRef::from_obj(rd.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Any policy change re-evaluates every delegation.
        .reconcile_all_on(watches::changes(scope.policy_changes.clone()))
        .reconcile_on(scope.drifted(&ctx.drift, |owner| match owner {
            drift::Owner::RoleDelegation(r) => Some(r),
            drift::Owner::ServicePrincipal(_) => None,
        }))
        .run(reconcile, error_policy, ctx)
        .map(|_| ())
        .boxed()
}

/// The delegations that name `sp` as their principal.
fn naming(store: &Store<RoleDelegation>, sp: &ServicePrincipal) -> Vec<ObjectRef<RoleDelegation>> {
    store
        .state()
        .iter()
        .filter(|rd| {
            rd.namespace() == sp.namespace()
                && rd
                    .spec
                    .principal_ref
                    .as_ref()
                    .is_some_and(|r| r.name == sp.name_any())
        })
        .map(|rd| ObjectRef::from_obj(rd.as_ref()))
        .collect()
}
