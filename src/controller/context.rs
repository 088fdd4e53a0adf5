//! What every reconcile needs: the clients, the caches and the settings, shared by all kinds. Nothing in it
//! belongs to one kind, so every kind can depend on it and it on none of them.

use std::sync::Arc;

use kube::{Client, runtime::reflector::Store};

use super::{absences, claims, drift, events, reconcile};
use crate::{
    api,
    azure::{
        Cloud, arm::ArmClient, graph::GraphClient, keyvault::KeyVaultClient, role_cache::RoleCache,
    },
    telemetry::metrics::Metrics,
};

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub graph: GraphClient,
    pub arm: ArmClient,
    /// Key Vault secrets, one service per vault.
    pub key_vault: KeyVaultClient,
    /// The HTTP client behind both (for signing in with a new secret to check it).
    pub http: reqwest::Client,
    /// Role definitions by name, so that delegations of the same role do not list definitions each time.
    pub roles: RoleCache,
    /// Every DelegationPolicy, kept current by a watch.
    pub policies: Store<api::DelegationPolicy>,
    /// How much a new credential must prove before it is published (see `verification`).
    pub verification: super::verification::Policy,
    /// How long a role assignment waits for its principal to replicate before it is reported Stalled.
    pub principal_replication_window: std::time::Duration,
    pub cloud: Cloud,
    pub tenant_id: String,
    pub cluster_id: String,
    pub recorder: events::Events,
    /// How often a converged object is checked against Azure again.
    pub resync: std::time::Duration,
    pub metrics: Arc<Metrics>,
    pub drift: Arc<drift::Drift>,
    /// Deletes waiting out replication before they believe an application is gone.
    pub absences: absences::Absences,
    pub status_writes: reconcile::StatusWrites,
    /// Every object that may claim an AKS cluster, an application or a role assignment (see claims.rs).
    pub claims: claims::Registry,
    /// The object id of the operator's own identity (from its token), never granted a role for a tenant; None
    /// when Entra gave no token at start-up.
    pub operator_principal: Option<String>,
}
