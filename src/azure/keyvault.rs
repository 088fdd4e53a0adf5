//! The Key Vault secrets data plane, as the operator uses it: new versions, their attributes, soft delete and
//! purge. Each vault is its own host (https://{name}.{cloud's suffix}), with its own throttling limits, so
//! each gets its own `http::Service` (and budget), made on first use. Contract: Key Vault REST 7.4,
//! https://learn.microsoft.com/rest/api/keyvault/secrets/ (secrets.json in azure-rest-api-specs'
//! specification/keyvault/data-plane).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use azure_core::credentials::TokenCredential;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{
    Cloud,
    error::AzureError,
    http::{Service, parse},
};
use crate::telemetry::metrics::Metrics;

/// The newest GA version every Key Vault and SDK of the last years speaks.
const API_VERSION: &str = "7.4";

/// A secret version's attributes; times are Unix seconds, as Key Vault sends them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Attributes {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub created: Option<i64>,
}

/// One version of a secret, without its value (a SecretItem; a set's SecretBundle read the same way).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersion {
    /// https://{vault}/secrets/{name}/{version}
    pub id: String,
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub content_type: Option<String>,
}

impl SecretVersion {
    /// The version: the id's last segment.
    pub fn version(&self) -> &str {
        self.id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.as_ref()?.get(name).map(String::as_str)
    }

    /// Key Vault treats a version without `enabled` as enabled.
    pub fn enabled(&self) -> bool {
        self.attributes.enabled.unwrap_or(true)
    }
}

/// A version to write. Its Debug leaves the value out.
pub struct NewVersion<'a> {
    pub value: &'a str,
    pub content_type: &'a str,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub tags: BTreeMap<String, String>,
}

impl std::fmt::Debug for NewVersion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewVersion")
            .field("content_type", &self.content_type)
            .field("nbf", &self.nbf)
            .field("exp", &self.exp)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    value: Vec<SecretVersion>,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Clone)]
pub struct KeyVaultClient {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    cloud: Cloud,
    metrics: Option<Arc<Metrics>>,
    vaults: Arc<Mutex<HashMap<String, Service>>>,
}

impl KeyVaultClient {
    pub fn new(http: reqwest::Client, credential: Arc<dyn TokenCredential>, cloud: Cloud) -> Self {
        KeyVaultClient {
            http,
            credential,
            cloud,
            metrics: None,
            vaults: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The service of the vault with ARM id `vault_id`.
    fn vault(&self, vault_id: &str) -> Service {
        let uri = self.cloud.vault_uri(vault_id);
        let mut vaults = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        vaults
            .entry(uri.clone())
            .or_insert_with(|| {
                let service = Service::new(
                    self.http.clone(),
                    self.credential.clone(),
                    &uri,
                    &self.cloud.key_vault_scope,
                    "keyvault",
                    "x-ms-request-id",
                );
                match &self.metrics {
                    Some(m) => service.with_metrics(m.clone()),
                    None => service,
                }
            })
            .clone()
    }

    /// Writes a new version of secret `name`; it becomes the secret's current version.
    pub async fn set(
        &self,
        vault_id: &str,
        name: &str,
        new: &NewVersion<'_>,
    ) -> Result<SecretVersion, AzureError> {
        const OP: &str = "keyvault set secret";
        let mut attributes = json!({"enabled": true});
        if let Some(nbf) = new.nbf {
            attributes["nbf"] = nbf.into();
        }
        if let Some(exp) = new.exp {
            attributes["exp"] = exp.into();
        }
        let body = json!({
            "value": new.value,
            "contentType": new.content_type,
            "attributes": attributes,
            "tags": new.tags,
        });
        let path = format!("/secrets/{name}?api-version={API_VERSION}");
        let (_, answer) = self
            .vault(vault_id)
            .send(OP, Method::PUT, &path, Some(&body), &[])
            .await?;
        // The answer carries the value back: only the fields without it are read.
        parse(OP, answer)
    }

    /// The value of one version: the only read of a value the operator makes, for a password whose text lives
    /// in the vault alone (a ServicePrincipal without a Kubernetes Secret). `Secret`'s Debug hides it.
    pub async fn value(
        &self,
        vault_id: &str,
        name: &str,
        version: &str,
    ) -> Result<azure_core::credentials::Secret, AzureError> {
        const OP: &str = "keyvault get secret";
        #[derive(Deserialize)]
        struct Bundle {
            value: String,
        }
        let path = format!("/secrets/{name}/{version}?api-version={API_VERSION}");
        let (_, body) = self
            .vault(vault_id)
            .send(OP, Method::GET, &path, None, &[])
            .await?;
        let bundle: Bundle = parse(OP, body)?;
        Ok(azure_core::credentials::Secret::new(bundle.value))
    }

    /// Every version of secret `name` (empty when there is no such secret).
    pub async fn versions(
        &self,
        vault_id: &str,
        name: &str,
    ) -> Result<Vec<SecretVersion>, AzureError> {
        const OP: &str = "keyvault list versions";
        let service = self.vault(vault_id);
        let mut path = format!("/secrets/{name}/versions?api-version={API_VERSION}&maxresults=25");
        let mut versions = vec![];
        loop {
            let page: Page = match service.send(OP, Method::GET, &path, None, &[]).await {
                Ok((_, body)) => parse(OP, body)?,
                Err(AzureError::Api { status: 404, .. }) => return Ok(versions),
                Err(e) => return Err(e),
            };
            versions.extend(page.value);
            // A next link on another host is never followed: it would be sent the operator's token.
            match page.next_link.as_deref().and_then(|l| service.path_of(l)) {
                Some(next) => path = next.to_string(),
                None => return Ok(versions),
            }
        }
    }

    /// Enables or disables one version.
    pub async fn set_enabled(
        &self,
        vault_id: &str,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), AzureError> {
        const OP: &str = "keyvault update secret";
        let body = json!({"attributes": {"enabled": enabled}});
        let path = format!("/secrets/{name}/{version}?api-version={API_VERSION}");
        self.vault(vault_id)
            .send(OP, Method::PATCH, &path, Some(&body), &[])
            .await
            .map(drop)
    }

    /// Deletes secret `name` with all its versions (soft delete, when the vault has it); false if absent.
    pub async fn delete(&self, vault_id: &str, name: &str) -> Result<bool, AzureError> {
        const OP: &str = "keyvault delete secret";
        let path = format!("/secrets/{name}?api-version={API_VERSION}");
        match self
            .vault(vault_id)
            .send(OP, Method::DELETE, &path, None, &[])
            .await
        {
            Ok(_) => Ok(true),
            Err(AzureError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deleted secret `name` (its latest version's attributes and tags), if the vault holds one.
    pub async fn deleted(
        &self,
        vault_id: &str,
        name: &str,
    ) -> Result<Option<SecretVersion>, AzureError> {
        const OP: &str = "keyvault get deleted secret";
        let path = format!("/deletedsecrets/{name}?api-version={API_VERSION}");
        self.vault(vault_id).get_opt(OP, &path).await
    }

    /// Recovers deleted secret `name` with its versions (Key Vault completes it in the background: a write
    /// right after may still be refused).
    pub async fn recover(&self, vault_id: &str, name: &str) -> Result<(), AzureError> {
        const OP: &str = "keyvault recover secret";
        let path = format!("/deletedsecrets/{name}/recover?api-version={API_VERSION}");
        self.vault(vault_id)
            .send(OP, Method::POST, &path, None, &[])
            .await
            .map(drop)
    }

    /// Purges deleted secret `name` for good. A deletion is not visible among the deleted secrets at once
    /// (Key Vault documents it as asynchronous), so a 404 here is for the caller to retry.
    pub async fn purge(&self, vault_id: &str, name: &str) -> Result<(), AzureError> {
        const OP: &str = "keyvault purge secret";
        let path = format!("/deletedsecrets/{name}?api-version={API_VERSION}");
        self.vault(vault_id)
            .send(OP, Method::DELETE, &path, None, &[])
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::testing::TestAzure;

    const VAULT: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv";

    /// The operator's life cycle of a secret against the emulator, reached by its real host name through the
    /// emulator's proxy: versions with dates and tags, a disable, a delete and a purge.
    #[tokio::test]
    async fn a_secrets_life_cycle() {
        let azure = TestAzure::start().await;
        let kv = KeyVaultClient::new(
            azure.http.clone(),
            azure.credential.clone(),
            azure.cloud.clone(),
        );
        assert_eq!(kv.versions(VAULT, "app-secret").await.unwrap(), vec![]);
        let tags = BTreeMap::from([("owner".to_string(), "me".to_string())]);
        let first = NewVersion {
            value: "first-value",
            content_type: "text/plain",
            nbf: Some(1_700_000_000),
            exp: Some(1_800_000_000),
            tags: tags.clone(),
        };
        let v1 = kv.set(VAULT, "app-secret", &first).await.unwrap();
        assert!(
            v1.id
                .starts_with("https://contoso-kv.vault.azure.net/secrets/app-secret/")
        );
        assert_eq!(v1.attributes.exp, Some(1_800_000_000));
        assert_eq!(v1.attributes.nbf, Some(1_700_000_000));
        assert_eq!(v1.tag("owner"), Some("me"));
        let second = NewVersion {
            value: "second-value",
            ..first
        };
        let v2 = kv.set(VAULT, "app-secret", &second).await.unwrap();
        kv.set_enabled(VAULT, "app-secret", v1.version(), false)
            .await
            .unwrap();
        let mut versions = kv.versions(VAULT, "app-secret").await.unwrap();
        versions.sort_by(|a, b| a.version().cmp(b.version()));
        let enabled: BTreeMap<&str, bool> = versions
            .iter()
            .map(|v| (v.version(), v.enabled()))
            .collect();
        assert_eq!(
            enabled,
            BTreeMap::from([(v1.version(), false), (v2.version(), true)])
        );
        assert_eq!(versions[0].content_type.as_deref(), Some("text/plain"));
        assert!(kv.delete(VAULT, "app-secret").await.unwrap());
        assert!(
            !kv.delete(VAULT, "app-secret").await.unwrap(),
            "already gone"
        );
        let deleted = kv
            .deleted(VAULT, "app-secret")
            .await
            .unwrap()
            .expect("soft-deleted");
        assert_eq!(deleted.tag("owner"), Some("me"));
        kv.purge(VAULT, "app-secret").await.unwrap();
        assert_eq!(kv.deleted(VAULT, "app-secret").await.unwrap(), None);
        assert_eq!(kv.versions(VAULT, "app-secret").await.unwrap(), vec![]);
    }
}
