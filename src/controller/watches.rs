//! The watch streams the controllers run on, kept lean: what the operator does not act on does not trigger a
//! reconcile, and what it does not read is not kept in memory.
//!
//! - A primary object comes back only when something a reconcile acts on changed: its spec (generation),
//!   labels, annotations, finalizers or deletion. Its status, which the operator itself writes, does not
//!   bring it straight back (every status write used to cost a second round of Azure reads).
//! - Cached objects lose their managedFields, which are most of their size and never read.
//! - Owned Secrets are watched as metadata only: the owner reference is all a trigger needs, and the
//!   credentials never sit in the operator's memory.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource,
    core::PartialObjectMeta,
    runtime::{PredicateConfig, WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde::de::DeserializeOwned;

/// What a reconcile acts on, hashed: a change of anything else (status above all) is filtered out.
pub fn acted_on<K: Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    let mut h = DefaultHasher::new();
    (
        meta.generation,
        &meta.labels,
        &meta.annotations,
        &meta.finalizers,
        meta.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// The primary objects of a controller: a store of them (without managedFields), and the stream of those
/// whose `acted_on` changed.
pub fn primary<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(acted_on, PredicateConfig::default());
    (store, stream)
}

/// Another kind's objects as triggers, only when `property` of one changed.
pub fn changes_of<K>(
    api: Api<K>,
    config: watcher::Config,
    property: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .applied_objects()
        .predicate_filter(property, PredicateConfig::default())
}

/// The Secrets carrying `label`, as metadata: enough to find their owner.
pub fn owned_secrets(
    api: Api<PartialObjectMeta<Secret>>,
    label: &str,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    watcher(api, watcher::Config::default().labels(label))
        .default_backoff()
        .touched_objects()
}

/// Hashes any value: the building block of the properties passed to `changes_of`.
pub fn hashed(value: impl Hash) -> Option<u64> {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServicePrincipal, ServicePrincipalStatus};

    fn sp() -> ServicePrincipal {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "entra.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": "a", "namespace": "n", "generation": 1},
            "spec": {"displayName": "a"}
        }))
        .unwrap()
    }

    #[test]
    fn status_writes_are_not_acted_on_but_spec_metadata_and_deletion_are() {
        let base = sp();
        let mut status = base.clone();
        status.status = Some(ServicePrincipalStatus {
            app_id: Some("x".into()),
            ..Default::default()
        });
        status.metadata.resource_version = Some("2".into());
        assert_eq!(acted_on(&base), acted_on(&status));

        let mut spec = base.clone();
        spec.metadata.generation = Some(2);
        let mut annotated = base.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("entra-operator.io/rotated-by".into(), "r".into());
        let mut finalized = base.clone();
        finalized.metadata.finalizers = Some(vec!["entra-operator.io/cleanup".into()]);
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        for changed in [spec, annotated, finalized, deleted] {
            assert_ne!(
                acted_on(&base),
                acted_on(&changed),
                "{:?}",
                changed.metadata
            );
        }
    }
}
