//! The emulator's configuration: the seed (tenant, identities, their grants, the resources that exist) and
//! the realism knobs (replication delay, throttling, faults, AKS timing). The knobs can also be changed at
//! runtime through `/_emulator/knobs`.

use serde::{Deserialize, Serialize};

/// The configuration file (YAML or JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub seed: Seed,
    #[serde(default)]
    pub knobs: Knobs,
    /// Port of the CONNECT proxy for vault hosts, on the main listener's address (`--proxy-listen`); 0, the
    /// default, takes a free one.
    #[serde(default)]
    pub proxy_listen: u16,
}

impl Config {
    /// The configuration used without `--config`: the tenant, operator identity and resources that the
    /// project's examples and demo refer to.
    pub fn default_seed() -> Config {
        serde_saphyr::from_str(include_str!("../default-config.yaml"))
            .expect("the built-in config parses")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// The directory (tenant) id.
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// Applications that exist before anything runs, such as the operator's own identity.
    #[serde(default)]
    pub applications: Vec<SeedApplication>,
    /// Azure resources that exist, by ARM id (subscriptions, resource groups, vaults, registries, subnets ...).
    /// A scope below a subscription that is not listed, and not below a listed resource, does not exist.
    #[serde(default)]
    pub resources: Vec<String>,
    /// AKS clusters, which also exist as resources.
    #[serde(default)]
    pub aks_clusters: Vec<SeedAksCluster>,
    /// Role assignments that exist from the start, e.g. the operator's own grants.
    #[serde(default)]
    pub role_assignments: Vec<SeedRoleAssignment>,
    /// Issuers whose tokens may be exchanged for Entra tokens (workload identity), with how to get their keys.
    #[serde(default)]
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Serve a managed identity at `/msi/token`, App Service style (IDENTITY_ENDPOINT + IDENTITY_HEADER).
    #[serde(default)]
    pub managed_identity: Option<ManagedIdentity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedIdentity {
    /// The application whose tokens the endpoint issues when no client_id is asked for.
    pub app_id: String,
    /// The secret callers must send as X-IDENTITY-HEADER.
    pub identity_header: String,
}

fn default_tenant() -> String {
    "72f988bf-0000-4000-8000-000000000001".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedApplication {
    pub display_name: String,
    pub app_id: String,
    /// Object id of the application.
    pub object_id: String,
    /// Object id of its service principal (created with it).
    pub service_principal_id: String,
    /// Microsoft Graph application permissions granted to the service principal (admin consent given),
    /// e.g. Application.ReadWrite.OwnedBy. They appear in its Graph tokens' `roles` claim.
    #[serde(default)]
    pub graph_permissions: Vec<String>,
    /// Client secrets the application accepts (plain text here; only hashes are kept in state).
    #[serde(default)]
    pub client_secrets: Vec<String>,
    /// Federated identity credentials.
    #[serde(default)]
    pub federated_credentials: Vec<SeedFederatedCredential>,
    /// Certificates the application accepts client assertions from (public certificates only).
    #[serde(default)]
    pub key_credentials: Vec<SeedKeyCredential>,
    /// Object ids of owners.
    #[serde(default)]
    pub owners: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedKeyCredential {
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`; other blocks such as a key are ignored).
    pub certificate_pem: String,
    /// Its keyId; a new GUID when absent.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Its displayName; the certificate's subject when absent.
    #[serde(default)]
    pub display_name: Option<String>,
}

fn default_audiences() -> Vec<String> {
    vec!["api://AzureADTokenExchange".into()]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedAksCluster {
    /// ARM id of the managed cluster.
    pub id: String,
    #[serde(default = "default_location")]
    pub location: String,
    /// Application id of the cluster's service principal, or "msi" for a managed-identity cluster.
    pub client_id: String,
}

fn default_location() -> String {
    "westeurope".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRoleAssignment {
    pub scope: String,
    /// A built-in role name, or a role definition GUID.
    pub role: String,
    pub principal_id: String,
    #[serde(default)]
    pub condition: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` claim, e.g. a cluster's service-account issuer URL.
    pub issuer: String,
    /// Fetch OIDC discovery and JWKS from the issuer, trusting this CA bundle (PEM) besides the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Or verify with this public key (PEM) instead of fetching.
    #[serde(default)]
    pub public_key_file: Option<String>,
}

/// How real the emulator behaves. Every field has a default that matches Azure's documented behaviour where
/// there is one, and that costs tests nothing where there is none.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Knobs {
    pub replication: Replication,
    pub throttling: Throttling,
    /// Injected failures and latency, per route.
    pub faults: Vec<FaultRule>,
    pub aks: AksKnobs,
    /// Lifetime of issued access tokens, in seconds (Entra: about an hour).
    pub token_lifetime_seconds: u64,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Seed of the random numbers behind fault rates, so that a run can be repeated.
    pub random_seed: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            replication: Replication::default(),
            throttling: Throttling::default(),
            faults: vec![],
            aks: AksKnobs::default(),
            token_lifetime_seconds: 3599,
            max_body_bytes: 4 * 1024 * 1024,
            random_seed: 1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Replication {
    /// For this long after an application or service principal is created, reads and writes that address it
    /// by id get 404 Request_ResourceNotFound, as on a replica that has not seen it yet.
    pub graph_not_found_ms: u64,
    /// For this long after a service principal is created, a role assignment naming it fails with
    /// PrincipalNotFound when the request does not say principalType.
    pub principal_not_found_ms: u64,
    /// The same when principalType is sent (Azure then tolerates most of the delay).
    pub principal_not_found_with_type_ms: u64,
    /// For up to this long after a client secret or certificate is added through Graph, a sign-in with it
    /// fails as with an unknown credential in the regions that have not seen it yet (see `replication`);
    /// 0 turns this off.
    pub credential_ms: u64,
    /// How many regions answer token requests, each picked at random per request; 0 or 1 is one region,
    /// which then sees a new credential only after the whole `credential_ms`.
    pub credential_regions: u32,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            graph_not_found_ms: 0,
            principal_not_found_ms: 0,
            principal_not_found_with_type_ms: 0,
            credential_ms: 0,
            credential_regions: 4,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Throttling {
    pub enabled: bool,
    /// Multiplies every limit: 1.0 is Azure's documented limits, 0.01 makes them a hundred times tighter.
    pub scale: f64,
    /// Tenant size for Graph's resource-unit limit: S, M or L.
    pub tenant_size: String,
}

impl Default for Throttling {
    fn default() -> Self {
        Throttling {
            enabled: true,
            scale: 1.0,
            tenant_size: "S".into(),
        }
    }
}

/// A failure to inject.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FaultRule {
    /// HTTP method to match; empty matches any.
    pub method: String,
    /// Substring of the path to match (case-insensitive); empty matches any path.
    pub path_contains: String,
    /// Fraction of matching requests affected, 0.0 to 1.0.
    pub rate: f64,
    /// Status to answer with (e.g. 500, 503, 429); 0 lets the request through (latency only).
    pub status: u16,
    /// Delay before answering, in milliseconds.
    pub latency_ms: u64,
    /// Hang this long and then drop the connection without an answer, as a timed-out gateway does.
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AksKnobs {
    /// How long resetServicePrincipalProfile runs before it completes.
    pub reset_duration_ms: u64,
    /// Fraction of resets whose long-running operation ends Failed.
    pub reset_failure_rate: f64,
}

impl Default for AksKnobs {
    fn default() -> Self {
        AksKnobs {
            reset_duration_ms: 1000,
            reset_failure_rate: 0.0,
        }
    }
}
