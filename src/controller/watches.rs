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

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        PredicateConfig, WatchStreamExt,
        reflector::{self, ObjectRef, ReflectHandle, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::drift;
use crate::api::{self, ServicePrincipal};

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
    let stream = lean(api, config)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(acted_on, PredicateConfig::default());
    (store, stream)
}

/// A watch of `api` that retries with backoff and drops managedFields before anything caches them.
fn lean<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
}

/// How many changes a shared watch holds for its slowest subscriber before it waits for it.
const SHARED_BUFFER: usize = 1024;

/// A primary kind that other controllers watch too, on one watch for all of them: the store, the stream of
/// objects whose `acted_on` changed (the owning controller's trigger, which drives the watch), and a handle
/// that the other controllers subscribe to (see [`shared_changes_of`]).
///
/// Every handle, this one and its clones, must be polled or dropped before the watch runs: the watch waits
/// for the slowest subscriber once [`SHARED_BUFFER`] changes are queued for it.
pub fn shared_primary<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    ReflectHandle<K>,
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
    let (store, writer) = reflector::store_shared(SHARED_BUFFER);
    let handle = writer
        .subscribe()
        .expect("a shared store always has subscribers");
    let stream = lean(api, config)
        .reflect_shared(writer)
        .applied_objects()
        .predicate_filter(acted_on, PredicateConfig::default());
    (store, stream, handle)
}

/// A shared watch's objects as another controller's triggers, only when `property` of one changed.
///
/// Deletions are not passed on (kube's shared reflector sends applied objects only), as with
/// `applied_objects` on a watch of one's own. kube-runtime 5.0's handle returns Pending without waking when
/// an object is gone from the store by the time it is read; the controller polls its triggers again on its
/// next wake-up (any other trigger, requeue or retry), so such a change is late, never lost.
pub fn shared_changes_of<K>(
    handle: ReflectHandle<K>,
    property: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    handle
        .map(|o| Ok((*o).clone()))
        .predicate_filter(property, PredicateConfig::default())
}

/// What other controllers read from a ServicePrincipal: its identity in Azure, its delivered key, whether it
/// is Ready, and its spec and annotations.
pub fn principal_state(sp: &ServicePrincipal) -> Option<u64> {
    let status = sp.status.as_ref();
    hashed((
        sp.metadata.uid.as_deref(),
        sp.metadata.generation,
        &sp.metadata.annotations,
        sp.metadata.deletion_timestamp.is_some(),
        status.and_then(|s| s.app_id.as_deref()),
        status.and_then(|s| s.service_principal_id.as_deref()),
        status
            .and_then(|s| s.credential.as_ref())
            .map(|c| &c.key_id),
        status.is_some_and(|s| api::conditions::is_true(&s.conditions, api::conditions::READY)),
    ))
}

/// The objects of one kind (in one namespace, or all) whose Azure state the drift feeds saw change.
pub fn drifted<K>(
    drift: &drift::Drift,
    ns: Option<&str>,
    pick: fn(drift::Owner) -> Option<ObjectRef<K>>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + 'static,
{
    let ns = ns.map(str::to_string);
    futures::stream::unfold(drift.triggers(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(owner) => return Some((Some(owner), rx)),
                // Missed triggers only cost reads: those objects are no longer verified.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(move |owner| {
        let found = owner
            .and_then(pick)
            .filter(|r| ns.is_none() || r.namespace == ns);
        futures::future::ready(found)
    })
}

/// On every DelegationPolicy change, the objects of `store` whose actions a policy decides (`asks`): a policy
/// edit must not re-reconcile thousands of objects that no policy concerns.
pub fn on_policy_change<K>(
    policy_changes: &tokio::sync::watch::Receiver<u64>,
    store: Store<K>,
    asks: fn(&K) -> bool,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changes(policy_changes.clone()).flat_map(move |()| {
        futures::stream::iter(
            store
                .state()
                .iter()
                .filter(|o| asks(o))
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>(),
        )
    })
}

/// One item per change seen on `rx` (changes in quick succession coalesce).
pub fn changes(rx: tokio::sync::watch::Receiver<u64>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
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

/// The kubernetes.io/tls Secrets, as metadata (a field selector on their type): a certificate credential
/// taken from one (cert-manager's) follows each renewal of it at once.
pub fn tls_secrets(
    api: Api<PartialObjectMeta<Secret>>,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    watcher(
        api,
        watcher::Config::default().fields("type=kubernetes.io/tls"),
    )
    .default_backoff()
    .touched_objects()
}

/// Whether `sp` takes its certificate from the TLS Secret `secret`.
pub fn takes_certificate_from(sp: &ServicePrincipal, secret: &PartialObjectMeta<Secret>) -> bool {
    use kube::ResourceExt;
    sp.namespace() == secret.namespace()
        && sp
            .spec
            .certificate
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .is_some_and(|r| r.name == secret.name_any())
}

/// Hashes any value: the building block of the properties passed to `changes_of`.
pub fn hashed(value: impl Hash) -> Option<u64> {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    Some(h.finish())
}

/// What the controllers of one watched scope (a namespace, or the whole cluster) share.
pub struct Scope {
    client: Client,
    /// The namespace watched; None for all.
    pub ns: Option<String>,
    pub config: kube::runtime::controller::Config,
    /// Counts DelegationPolicy changes (see [`watch_policies`]).
    pub policy_changes: tokio::sync::watch::Receiver<u64>,
    /// The scope's ServicePrincipals, from the one watch all three kinds share.
    pub service_principals: Store<api::ServicePrincipal>,
    principals: ReflectHandle<api::ServicePrincipal>,
}

/// The ServicePrincipals whose `acted_on` changed: the ServicePrincipal controller's trigger, which drives
/// the watch the other kinds subscribe to.
pub type ServicePrincipalChanges = futures::stream::BoxStream<
    'static,
    Result<api::ServicePrincipal, kube::runtime::watcher::Error>,
>;

impl Scope {
    /// The scope of `ns`, with its ServicePrincipal watch (the stream that drives it is returned beside).
    pub fn new(
        client: &Client,
        ns: Option<&str>,
        config: kube::runtime::controller::Config,
        policy_changes: tokio::sync::watch::Receiver<u64>,
    ) -> (Scope, ServicePrincipalChanges) {
        let (service_principals, changes, principals) =
            shared_primary(namespaced(client, ns), watcher::Config::default());
        let scope = Scope {
            client: client.clone(),
            ns: ns.map(str::to_string),
            config,
            policy_changes,
            service_principals,
            principals,
        };
        (scope, changes.boxed())
    }

    /// An Api for the scope's objects of kind `K`.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        namespaced(&self.client, self.ns.as_deref())
    }

    /// ServicePrincipals as triggers for another kind, when what it reads of one changed
    /// ([`principal_state`]).
    pub fn principal_changes(
        &self,
    ) -> impl futures::Stream<Item = Result<api::ServicePrincipal, kube::runtime::watcher::Error>>
    + Send
    + 'static {
        shared_changes_of(self.principals.clone(), principal_state)
    }

    /// Objects of one kind in this scope whose Azure state the drift feeds saw change.
    pub fn drifted<K>(
        &self,
        drift: &drift::Drift,
        pick: fn(drift::Owner) -> Option<ObjectRef<K>>,
    ) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        drifted(drift, self.ns.as_deref(), pick)
    }
}

/// An Api for one namespace, or for all.
pub fn namespaced<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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
