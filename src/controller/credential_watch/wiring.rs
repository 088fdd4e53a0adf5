//! How a CredentialWatch comes back to be reconciled: its own changes (spec, labels, annotations: annotate it
//! to read again at once) and the requeue its plan asks for, at most its interval. Its watch also drops the
//! gauge's series of a watch that is deleted, since without a finalizer no reconcile sees it go.

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller, PredicateConfig, WatchStreamExt,
        controller::Config,
        reflector::{self, ObjectRef},
        watcher,
    },
};

use super::{error_policy, reconcile};
use crate::{
    api::CredentialWatch,
    controller::{Context, watches},
};

/// The CredentialWatch controller: one for the cluster, whatever namespaces the operator watches, for the
/// watches `selector` selects (a label selector, "" for all).
pub fn controller(ctx: Arc<Context>, config: Config, selector: String) -> BoxStream<'static, ()> {
    let (store, writer) = reflector::store();
    let (metrics, known) = (ctx.metrics.clone(), store.clone());
    let changes = watcher(
        Api::<CredentialWatch>::all(ctx.client.clone()),
        if selector.is_empty() {
            watcher::Config::default()
        } else {
            watcher::Config::default().labels(&selector)
        },
    )
    .default_backoff()
    .modify(|w: &mut CredentialWatch| w.meta_mut().managed_fields = None)
    .reflect(writer)
    .inspect(move |event| match event {
        Ok(watcher::Event::Delete(gone)) => metrics.forget_watch(&gone.name_any()),
        // A relist does not say what went while the watch was down: keep only the series of watches there
        // now (the store holds the new list by the time InitDone passes).
        Ok(watcher::Event::InitDone) => {
            metrics.retain_watches(|name| known.get(&ObjectRef::new(name)).is_some())
        }
        _ => {}
    })
    .applied_objects()
    .predicate_filter(watches::acted_on, PredicateConfig::default());
    Controller::for_stream(changes, store)
        .with_config(config)
        .run(reconcile, error_policy, ctx)
        .map(|_| ())
        .boxed()
}
