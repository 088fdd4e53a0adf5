//! Azure Key Vault as a place a client secret is delivered to: the target a ServicePrincipal or a
//! CredentialRotation names, and what status says of it. One home for both kinds, so that they cannot
//! describe a vault two ways.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The ARM id of a key vault. Vault names: 3 to 24 letters, digits and hyphens, starting with a letter,
/// ending with a letter or digit (https://learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates#vault-name-and-object-name).
pub const KEY_VAULT_PATTERN: &str = concat!(
    "(?i)^/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "/resourcegroups/[-a-zA-Z0-9_.()]{1,90}",
    "/providers/microsoft[.]keyvault/vaults/[a-zA-Z][-a-zA-Z0-9]{1,22}[a-zA-Z0-9]$"
);

/// A Key Vault secret name (same source as the vault name).
pub const KEY_VAULT_SECRET_NAME_PATTERN: &str = "^[0-9a-zA-Z-]{1,127}$";

/// Prefix of the tags the operator sets on each secret version (its ownership marks); a spec's own tags may
/// not use it.
pub const TAG_PREFIX: &str = "entra-operator-";

/// A secret in an Azure key vault that receives each new client secret as a new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultSecretTarget {
    /// ARM id of the vault: /subscriptions/{id}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}.
    /// Its URI follows from the name and the cloud (https://{name}.vault.azure.net in the public cloud). A
    /// DelegationPolicy selecting the namespace must list it (or a scope containing it) in keyVaults. The
    /// vault must use the Azure RBAC permission model and the operator's identity hold Key Vault Secrets
    /// Officer on it.
    #[schemars(length(max = 512), regex(pattern = KEY_VAULT_PATTERN))]
    pub vault: String,

    /// Name of the secret in the vault: letters, digits and '-', at most 127. A secret that exists and was not
    /// written for this object is never overwritten (condition KeyVaultConflict).
    #[schemars(regex(pattern = KEY_VAULT_SECRET_NAME_PATTERN))]
    pub name: String,

    /// What the secret's value holds: password (the client secret alone, the default), or the JSON of one of
    /// the Secret formats: env (an object of the AZURE_* variables), azure.json, sdk-auth or az.
    #[serde(default)]
    pub format: KeyVaultValueFormat,

    /// The secret's content type. Default text/plain for password, application/json otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub content_type: Option<String>,

    /// Tags set on every version, besides the operator's own (whose names begin with "entra-operator-").
    /// Key Vault allows 15 tags on a secret; the operator uses three.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 12))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('entra-operator-') && k.size() <= 512 && self[k].size() <= 256)")
        .message("tag names may not begin with 'entra-operator-' (the operator's own tags) and are at most 512 characters, values at most 256"))]
    pub tags: BTreeMap<String, String>,
}

impl KeyVaultSecretTarget {
    /// The vault's name: the last segment of its id.
    pub fn vault_name(&self) -> &str {
        self.vault.rsplit('/').next().unwrap_or_default()
    }

    /// How status and Events name the target: vault names are unique across Azure.
    pub fn display(&self) -> String {
        format!("{}/{}", self.vault_name(), self.name)
    }

    /// The content type each version gets.
    pub fn content_type(&self) -> &str {
        match (&self.content_type, self.format) {
            (Some(c), _) => c,
            (None, KeyVaultValueFormat::Password) => "text/plain",
            (None, _) => "application/json",
        }
    }
}

/// What a Key Vault secret's value holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyVaultValueFormat {
    /// The client secret alone.
    #[default]
    #[serde(rename = "password")]
    Password,
    /// A JSON object with AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID (and AZURE_AUTHORITY_HOST
    /// outside the public cloud).
    #[serde(rename = "env")]
    Env,
    /// The azure.json cloud-provider configuration.
    #[serde(rename = "azure.json")]
    AzureJson,
    /// The JSON of `az ad sp create-for-rbac --sdk-auth`.
    #[serde(rename = "sdk-auth")]
    SdkAuth,
    /// The JSON `az ad sp create-for-rbac` prints (appId, displayName, password, tenant).
    #[serde(rename = "az")]
    Az,
}

impl KeyVaultValueFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyVaultValueFormat::Password => "password",
            KeyVaultValueFormat::Env => "env",
            KeyVaultValueFormat::AzureJson => "azure.json",
            KeyVaultValueFormat::SdkAuth => "sdk-auth",
            KeyVaultValueFormat::Az => "az",
        }
    }
}

/// What a Key Vault target holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultSecretStatus {
    /// The vault's ARM id, as the spec names it.
    pub vault: String,
    /// The secret's name.
    pub name: String,
    /// The secret version holding the current client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Entra key id of the client secret that version holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Published, Pending or Failed.
    pub state: String,
    /// Why, when Pending or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}
