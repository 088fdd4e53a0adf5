//! Exclusive claims: an AKS cluster, an application or a role assignment is held by one object at a time. A
//! second object that names the same thing gets a Conflict that names the holder and changes nothing in
//! Azure, so two objects never take turns rewriting it.
//!
//! Who holds a thing is decided in memory from the controllers' stores, the same way by every reconcile of
//! every claimant: the oldest object holds it (ties broken by kind, namespace and name). Nothing is written
//! to record a claim, so there is nothing to go stale; when the holder is deleted, the next claimant takes
//! over. What another cluster holds is seen in Azure instead (ownership tags, deterministic names, an AKS
//! cluster's current client id), by the controller that asks.

use std::{fmt, sync::Arc};

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt, runtime::reflector::Store};

use crate::api::{CredentialRotation, RoleDelegation, ServicePrincipal};

/// One object claiming something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub created: Option<Timestamp>,
}

impl Claimant {
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Claimant {
        Claimant {
            kind: leak_kind::<K>(),
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
            created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
        }
    }

    /// The order in which claims are honoured: oldest first, then by kind, namespace and name.
    fn rank(&self) -> (Option<Timestamp>, &str, &str, &str) {
        // None (not yet created, as in a unit test) sorts last: a stored object always has a timestamp.
        (
            self.created.or(Some(Timestamp::MAX)),
            self.kind,
            &self.namespace,
            &self.name,
        )
    }

    fn same_object(&self, other: &Claimant) -> bool {
        self.kind == other.kind && self.namespace == other.namespace && self.name == other.name
    }
}

impl fmt::Display for Claimant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

fn leak_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "ServicePrincipal" => "ServicePrincipal",
        "CredentialRotation" => "CredentialRotation",
        "RoleDelegation" => "RoleDelegation",
        _ => "object",
    }
}

/// Whether `me` may act on what every one of `claimants` (me among them or not) also claims: Err names the
/// object that holds it instead.
pub fn check(me: &Claimant, claimants: &[Claimant]) -> Result<(), Claimant> {
    match claimants
        .iter()
        .filter(|c| !c.same_object(me))
        .min_by(|a, b| a.rank().cmp(&b.rank()))
    {
        Some(first) if first.rank() < me.rank() => Err(first.clone()),
        _ => Ok(()),
    }
}

/// The controllers' stores, so that a reconcile can see every object that claims what it is about to touch.
/// Filled in as the controllers start (one store per watched namespace, or one for all).
#[derive(Default)]
pub struct Registry {
    service_principals: std::sync::RwLock<Vec<Store<ServicePrincipal>>>,
    rotations: std::sync::RwLock<Vec<Store<CredentialRotation>>>,
    delegations: std::sync::RwLock<Vec<Store<RoleDelegation>>>,
}

impl Registry {
    pub fn add_service_principals(&self, store: Store<ServicePrincipal>) {
        self.service_principals
            .write()
            .expect("claims lock")
            .push(store);
    }

    pub fn add_rotations(&self, store: Store<CredentialRotation>) {
        self.rotations.write().expect("claims lock").push(store);
    }

    pub fn add_delegations(&self, store: Store<RoleDelegation>) {
        self.delegations.write().expect("claims lock").push(store);
    }

    pub fn service_principals(&self) -> Vec<Arc<ServicePrincipal>> {
        all(&self.service_principals)
    }

    pub fn rotations(&self) -> Vec<Arc<CredentialRotation>> {
        all(&self.rotations)
    }

    pub fn delegations(&self) -> Vec<Arc<RoleDelegation>> {
        all(&self.delegations)
    }

    /// The ServicePrincipal `name` in `ns`, as the watch last saw it: for a reader that its watch brings
    /// back when the ServicePrincipal changes, so that it needs no fresher copy than the store's.
    pub fn service_principal(&self, ns: &str, name: &str) -> Option<Arc<ServicePrincipal>> {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(ns);
        self.service_principals
            .read()
            .expect("claims lock")
            .iter()
            .find_map(|store| store.get(&key))
    }
}

fn all<K: Resource<DynamicType = ()> + Clone>(
    stores: &std::sync::RwLock<Vec<Store<K>>>,
) -> Vec<Arc<K>> {
    stores
        .read()
        .expect("claims lock")
        .iter()
        .flat_map(|s| s.state())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant(kind: &'static str, ns: &str, name: &str, created: i64) -> Claimant {
        Claimant {
            kind,
            namespace: ns.into(),
            name: name.into(),
            created: Some(Timestamp::from_second(created).unwrap()),
        }
    }

    #[test]
    fn the_oldest_claimant_holds_and_every_other_is_told_who() {
        let first = claimant("CredentialRotation", "b", "prod", 100);
        let second = claimant("CredentialRotation", "a", "prod", 200);
        let all = [first.clone(), second.clone()];
        assert_eq!(check(&first, &all), Ok(()));
        assert_eq!(check(&second, &all), Err(first.clone()));
        // The same answer whichever order the store lists them in: no tug of war.
        assert_eq!(check(&second, &[second.clone(), first.clone()]), Err(first));
        assert_eq!(
            check(&second, std::slice::from_ref(&second)),
            Ok(()),
            "alone"
        );
    }

    #[test]
    fn ties_are_broken_by_kind_namespace_and_name() {
        let a = claimant("CredentialRotation", "a", "x", 100);
        let b = claimant("CredentialRotation", "b", "x", 100);
        assert_eq!(check(&b, &[a.clone(), b.clone()]), Err(a.clone()));
        assert_eq!(check(&a, &[a.clone(), b]), Ok(()));
        let sp = claimant("ServicePrincipal", "a", "x", 100);
        assert_eq!(check(&sp, &[a.clone(), sp.clone()]), Err(a));
    }

    #[test]
    fn an_object_not_yet_created_never_holds_against_a_stored_one() {
        let stored = claimant("ServicePrincipal", "a", "x", 100);
        let new = Claimant {
            created: None,
            ..claimant("ServicePrincipal", "b", "y", 0)
        };
        assert_eq!(check(&new, std::slice::from_ref(&stored)), Err(stored));
    }
}
