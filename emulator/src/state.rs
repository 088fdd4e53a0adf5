//! Everything the emulator knows: the directory (applications, service principals, deleted items, the
//! delta log) and the ARM side (resources, custom roles, role assignments, AKS clusters, long-running
//! operations). Secrets are kept only as SHA-256 hashes. One lock guards it all: every request holds it for
//! microseconds, and one consistent view is what makes the emulator simple to reason about.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Seed;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct World {
    pub tenant_id: String,
    /// The identity the managed identity endpoint hands out, if any.
    #[serde(default)]
    pub managed_identity: Option<crate::config::ManagedIdentity>,
    pub directory: Directory,
    pub arm: Arm,
    /// Key Vault secrets by lowercase vault name (the vault itself is an ARM resource in `arm.resources`).
    #[serde(default)]
    pub vaults: BTreeMap<String, crate::keyvault::VaultSecrets>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    pub applications: BTreeMap<String, Application>,
    pub service_principals: BTreeMap<String, ServicePrincipal>,
    /// Soft-deleted objects, restorable until purged.
    pub deleted: BTreeMap<String, Deleted>,
    /// Every change, in order, for delta queries.
    pub changes: Vec<Change>,
    /// Alternate keys, rebuilt from the maps on load.
    #[serde(skip)]
    pub index: Index,
}

#[derive(Clone, Debug, Default)]
pub struct Index {
    pub app_by_app_id: std::collections::HashMap<String, String>,
    pub app_by_unique_name: std::collections::HashMap<String, String>,
    pub sp_by_app_id: std::collections::HashMap<String, String>,
}

impl Directory {
    pub fn rebuild_index(&mut self) {
        let mut index = Index::default();
        for app in self.applications.values() {
            index
                .app_by_app_id
                .insert(app.app_id.to_ascii_lowercase(), app.id.clone());
            if let Some(u) = &app.unique_name {
                index
                    .app_by_unique_name
                    .insert(u.to_ascii_lowercase(), app.id.clone());
            }
        }
        for sp in self.service_principals.values() {
            index
                .sp_by_app_id
                .insert(sp.app_id.to_ascii_lowercase(), sp.id.clone());
        }
        self.index = index;
    }

    pub fn insert_app(&mut self, app: Application) {
        self.index
            .app_by_app_id
            .insert(app.app_id.to_ascii_lowercase(), app.id.clone());
        if let Some(u) = &app.unique_name {
            self.index
                .app_by_unique_name
                .insert(u.to_ascii_lowercase(), app.id.clone());
        }
        self.applications.insert(app.id.clone(), app);
    }

    pub fn remove_app(&mut self, id: &str) -> Option<Application> {
        let app = self.applications.remove(id)?;
        self.index
            .app_by_app_id
            .remove(&app.app_id.to_ascii_lowercase());
        if let Some(u) = &app.unique_name {
            self.index
                .app_by_unique_name
                .remove(&u.to_ascii_lowercase());
        }
        Some(app)
    }

    pub fn insert_sp(&mut self, sp: ServicePrincipal) {
        self.index
            .sp_by_app_id
            .insert(sp.app_id.to_ascii_lowercase(), sp.id.clone());
        self.service_principals.insert(sp.id.clone(), sp);
    }

    pub fn remove_sp(&mut self, id: &str) -> Option<ServicePrincipal> {
        let sp = self.service_principals.remove(id)?;
        self.index
            .sp_by_app_id
            .remove(&sp.app_id.to_ascii_lowercase());
        Some(sp)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub sign_in_audience: String,
    pub created_date_time: Timestamp,
    #[serde(default)]
    pub password_credentials: Vec<Password>,
    #[serde(default)]
    pub federated_identity_credentials: Vec<FederatedCredential>,
    /// Certificates whose keys sign client assertions for it.
    #[serde(default)]
    pub key_credentials: Vec<KeyCredential>,
    /// Object ids of the owners (service principals or users).
    #[serde(default)]
    pub owners: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Password {
    pub key_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub hint: String,
    pub start_date_time: Timestamp,
    pub end_date_time: Timestamp,
    /// SHA-256 of the secret text, hex. The text itself is only ever in addPassword's response.
    pub secret_sha256: String,
    /// When Graph created it, from which it replicates to the token endpoint's regions (`replication`);
    /// None for a seeded credential, which counts as replicated long ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicating_since: Option<Timestamp>,
}

/// Graph's keyCredential for an X.509 certificate (see `certs`). Only the public certificate is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyCredential {
    pub key_id: String,
    /// Base64 of the certificate's SHA-1 thumbprint.
    pub custom_key_identifier: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// AsymmetricX509Cert.
    pub r#type: String,
    /// Verify.
    pub usage: String,
    /// Base64 of the certificate's DER.
    pub key: String,
    pub start_date_time: Timestamp,
    pub end_date_time: Timestamp,
    /// When Graph added it (addKey, PATCH keyCredentials), as for `Password::replicating_since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicating_since: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    pub id: String,
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    pub app_owner_organization_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_date_time: Timestamp,
    /// Microsoft Graph application permissions consented for it (its tokens' `roles`).
    #[serde(default)]
    pub graph_permissions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum DeletedObject {
    Application(Application),
    ServicePrincipal(ServicePrincipal),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub object: DeletedObject,
    pub deleted_date_time: Timestamp,
}

/// What a delta query reports for one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    /// Created or updated: the current object is reported.
    Updated,
    /// Soft-deleted: `@removed: {reason: changed}`.
    SoftDeleted,
    /// Gone for good: `@removed: {reason: deleted}`.
    Purged,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub seq: u64,
    /// "application" or "servicePrincipal".
    pub entity: String,
    pub id: String,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arm {
    /// Existing resources by lowercase ARM id.
    pub resources: BTreeSet<String>,
    /// Custom role definitions by lowercase GUID.
    pub custom_roles: BTreeMap<String, RoleDefinition>,
    /// Role assignments by lowercase ARM id.
    pub role_assignments: BTreeMap<String, RoleAssignment>,
    /// AKS clusters by lowercase ARM id.
    pub aks_clusters: BTreeMap<String, AksCluster>,
    /// Long-running operations by id.
    pub operations: BTreeMap<String, Operation>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// The GUID.
    pub name: String,
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    /// BuiltInRole or CustomRole.
    pub role_type: String,
    pub permissions: Vec<Permission>,
    pub assignable_scopes: Vec<String>,
    /// The scope it was created at (custom roles), for its id.
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub created_on: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    /// As created (casing of the request's scope).
    pub id: String,
    pub name: String,
    pub scope: String,
    /// Normalised to /providers/Microsoft.Authorization/roleDefinitions/{guid}.
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub condition_version: Option<String>,
    pub created_on: Timestamp,
    pub updated_on: Timestamp,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AksCluster {
    pub id: String,
    pub name: String,
    pub location: String,
    pub client_id: String,
    /// SHA-256 of the secret the cluster holds, if the emulator has seen it set.
    #[serde(default)]
    pub secret_sha256: Option<String>,
    pub provisioning_state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub id: String,
    pub cluster_id: String,
    pub location: String,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub fails: bool,
    pub client_id: String,
    pub secret_sha256: String,
    /// Applied to the cluster once, when first seen finished.
    #[serde(default)]
    pub applied: bool,
}

pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl World {
    /// A world as the seed describes it. Seed role names are resolved against the built-in catalogue.
    pub fn from_seed(seed: &Seed) -> anyhow::Result<World> {
        let mut world = World {
            tenant_id: seed.tenant_id.clone(),
            ..Default::default()
        };
        let now = Timestamp::now();
        world.add_seed(seed, now)?;
        Ok(world)
    }

    /// Adds what a (partial) seed describes; used at start and by `POST /_emulator/seed`.
    pub fn add_seed(&mut self, seed: &Seed, now: Timestamp) -> anyhow::Result<()> {
        if seed.managed_identity.is_some() {
            self.managed_identity = seed.managed_identity.clone();
        }
        for app in &seed.applications {
            self.add_seed_application(app, now)?;
        }
        self.directory.rebuild_index();
        self.check_vault_names(&seed.resources)?;
        for resource in &seed.resources {
            self.arm.resources.insert(resource.to_ascii_lowercase());
        }
        for cluster in &seed.aks_clusters {
            let id = cluster.id.to_ascii_lowercase();
            self.arm.resources.insert(id.clone());
            self.arm.aks_clusters.insert(
                id,
                AksCluster {
                    id: cluster.id.clone(),
                    name: cluster
                        .id
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    location: cluster.location.clone(),
                    client_id: cluster.client_id.clone(),
                    secret_sha256: None,
                    provisioning_state: "Succeeded".into(),
                },
            );
        }
        for ra in &seed.role_assignments {
            let role = crate::arm::roles::builtin_by_name(&ra.role)
                .or_else(|| crate::arm::roles::builtin_by_guid(&ra.role))
                .ok_or_else(|| {
                    anyhow::anyhow!("seed role assignment: unknown built-in role {:?}", ra.role)
                })?;
            let name = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!(
                    "{}|{}|{}",
                    ra.scope.to_ascii_lowercase(),
                    role.name,
                    ra.principal_id
                )
                .as_bytes(),
            )
            .to_string();
            let id = format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
                ra.scope
            );
            self.arm.role_assignments.insert(
                id.to_ascii_lowercase(),
                RoleAssignment {
                    id,
                    name,
                    scope: ra.scope.clone(),
                    role_definition_id: crate::arm::roles::assignment_definition_id(&role.name),
                    principal_id: ra.principal_id.clone(),
                    principal_type: "ServicePrincipal".into(),
                    description: Some("seed".into()),
                    condition: ra.condition.clone(),
                    condition_version: ra.condition.as_ref().map(|_| "2.0".to_string()),
                    created_on: now,
                    updated_on: now,
                    created_by: "seed".into(),
                },
            );
        }
        Ok(())
    }

    /// One seeded application with its service principal; seeding an existing one adds to it.
    fn add_seed_application(
        &mut self,
        app: &crate::config::SeedApplication,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let passwords: Vec<Password> = app
            .client_secrets
            .iter()
            .map(|secret| Password {
                key_id: new_id(),
                display_name: Some("seed".into()),
                hint: secret.chars().take(3).collect(),
                start_date_time: now,
                end_date_time: now + jiff::SignedDuration::from_hours(2 * 365 * 24),
                secret_sha256: sha256_hex(secret),
                replicating_since: None,
            })
            .collect();
        let fics: Vec<FederatedCredential> = app
            .federated_credentials
            .iter()
            .map(|f| FederatedCredential {
                id: new_id(),
                name: f.name.clone(),
                issuer: f.issuer.clone(),
                subject: f.subject.clone(),
                audiences: f.audiences.clone(),
                description: None,
            })
            .collect();
        // Seeding an existing object again adds to it (e.g. a federated credential for a new cluster).
        let entry = self
            .directory
            .applications
            .entry(app.object_id.clone())
            .or_insert_with(|| Application {
                id: app.object_id.clone(),
                app_id: app.app_id.clone(),
                display_name: app.display_name.clone(),
                unique_name: None,
                description: None,
                notes: None,
                tags: vec![],
                sign_in_audience: "AzureADMyOrg".into(),
                created_date_time: now - jiff::SignedDuration::from_hours(24),
                password_credentials: vec![],
                federated_identity_credentials: vec![],
                key_credentials: vec![],
                owners: vec![],
            });
        entry.password_credentials.extend(passwords);
        for seed_key in &app.key_credentials {
            let key = crate::certs::key_credential_from_pem(
                &seed_key.certificate_pem,
                seed_key.key_id.clone(),
                seed_key.display_name.clone(),
            )
            .map_err(|e| anyhow::anyhow!("seed application {}: keyCredentials: {e}", app.app_id))?;
            // Seeding the same key again replaces it, as re-seeding a federated credential does.
            entry.key_credentials.retain(|k| {
                k.key_id != key.key_id && k.custom_key_identifier != key.custom_key_identifier
            });
            entry.key_credentials.push(key);
        }
        for fic in fics {
            entry
                .federated_identity_credentials
                .retain(|f: &FederatedCredential| f.name != fic.name);
            entry.federated_identity_credentials.push(fic);
        }
        for owner in &app.owners {
            if !entry.owners.contains(owner) {
                entry.owners.push(owner.clone());
            }
        }
        let sp = self
            .directory
            .service_principals
            .entry(app.service_principal_id.clone())
            .or_insert_with(|| ServicePrincipal {
                id: app.service_principal_id.clone(),
                app_id: app.app_id.clone(),
                display_name: app.display_name.clone(),
                app_owner_organization_id: self.tenant_id.clone(),
                tags: vec![],
                created_date_time: now - jiff::SignedDuration::from_hours(24),
                graph_permissions: vec![],
            });
        for p in &app.graph_permissions {
            if !sp.graph_permissions.contains(p) {
                sp.graph_permissions.push(p.clone());
            }
        }
        Ok(())
    }

    /// Vault names are globally unique in Azure (they are DNS names): a seed may not hold two vaults of one
    /// name, nor add one whose name another vault already has.
    fn check_vault_names(&self, resources: &[String]) -> anyhow::Result<()> {
        let mut seen: BTreeMap<String, String> = crate::keyvault::vaults(self)
            .map(|(name, id)| (name.to_string(), id.to_string()))
            .collect();
        for id in resources {
            let Some(name) = crate::keyvault::vault_name_of(id) else {
                continue;
            };
            let id = id.to_ascii_lowercase();
            if let Some(other) = seen.insert(name.to_ascii_lowercase(), id.clone())
                && other != id
            {
                anyhow::bail!(
                    "seed resources: two vaults are named {name:?} ({other} and {id}); vault names are globally unique"
                );
            }
        }
        Ok(())
    }

    /// Records a change for delta queries.
    pub fn record(&mut self, entity: &str, id: &str, kind: ChangeKind) {
        let seq = self.directory.changes.last().map_or(1, |c| c.seq + 1);
        self.directory.changes.push(Change {
            seq,
            entity: entity.into(),
            id: id.into(),
            kind,
        });
    }

    pub fn app_by_app_id(&self, app_id: &str) -> Option<&Application> {
        let id = self
            .directory
            .index
            .app_by_app_id
            .get(&app_id.to_ascii_lowercase())?;
        self.directory.applications.get(id)
    }

    pub fn app_by_unique_name(&self, unique_name: &str) -> Option<&Application> {
        let id = self
            .directory
            .index
            .app_by_unique_name
            .get(&unique_name.to_ascii_lowercase())?;
        self.directory.applications.get(id)
    }

    pub fn sp_by_app_id(&self, app_id: &str) -> Option<&ServicePrincipal> {
        let id = self
            .directory
            .index
            .sp_by_app_id
            .get(&app_id.to_ascii_lowercase())?;
        self.directory.service_principals.get(id)
    }

    /// Whether an ARM scope is in the registry of existing resources.
    pub fn scope_exists(&self, scope: &str) -> bool {
        self.arm.resources.contains(&scope.to_ascii_lowercase())
    }
}
