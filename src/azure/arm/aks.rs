//! Microsoft.ContainerService managed clusters (2025-01-01), for the CredentialRotation controller: a cluster's
//! GET (which identity it runs as), `resetServicePrincipalProfile`, and the long-running operation it starts.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::ArmClient;
use crate::azure::error::AzureError;

const AKS_API_VERSION: &str = "2025-01-01";

/// Where a long-running operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    InProgress,
    Succeeded,
    Failed(String),
}

/// What a managed cluster's GET says about the identity it runs as.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCluster {
    #[serde(default)]
    pub properties: ManagedClusterProperties,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterProperties {
    /// Absent on a cluster that runs with a managed identity (ARM then reports clientId "msi").
    #[serde(default)]
    pub service_principal_profile: Option<ServicePrincipalProfile>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipalProfile {
    #[serde(default)]
    pub client_id: String,
}

impl ArmClient {
    /// The cluster, as GET managedClusters returns it (never with a secret); None if it does not exist.
    pub async fn managed_cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<ManagedCluster>, AzureError> {
        let path = format!(
            "{}?api-version={AKS_API_VERSION}",
            cluster_id.trim_end_matches('/')
        );
        self.service.get_opt("arm get managedCluster", &path).await
    }

    /// Starts `resetServicePrincipalProfile` on an AKS cluster (`az aks update-credentials
    /// --reset-service-principal`). Returns the URL to poll, or None when ARM finished it at once (200).
    pub async fn reset_service_principal_profile(
        &self,
        cluster_id: &str,
        client_id: &str,
        secret: &str,
    ) -> Result<Option<String>, AzureError> {
        const OP: &str = "arm post resetServicePrincipalProfile";
        let path = format!(
            "{}/resetServicePrincipalProfile?api-version={AKS_API_VERSION}",
            cluster_id.trim_end_matches('/')
        );
        let body = json!({"clientId": client_id, "secret": secret});
        let (status, headers, _) = self
            .service
            .send_full(OP, Method::POST, &path, Some(&body), &[])
            .await?;
        if status == reqwest::StatusCode::OK {
            return Ok(None);
        }
        // The spec declares Location; other AKS operations send Azure-AsyncOperation too: either will do.
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        header("azure-asyncoperation")
            .or_else(|| header("location"))
            .map(Some)
            .ok_or(AzureError::Unexpected {
                operation: OP,
                detail: "202 without Location or Azure-AsyncOperation".into(),
            })
    }

    /// Polls a long-running operation by the URL ARM gave.
    pub async fn operation(&self, url: &str) -> Result<Operation, AzureError> {
        const OP: &str = "arm get operation";
        let path = self.service.path_of(url).ok_or(AzureError::Unexpected {
            operation: OP,
            detail: format!("operation URL {url} is not on the Resource Manager endpoint"),
        })?;
        match self.service.send(OP, Method::GET, path, None, &[]).await {
            // An Azure-AsyncOperation answer carries the status in its body.
            Ok((_, Some(body))) if body.get("status").is_some() => {
                Ok(match body["status"].as_str().unwrap_or_default() {
                    "Succeeded" => Operation::Succeeded,
                    "Failed" | "Canceled" => Operation::Failed(
                        body["error"]["message"]
                            .as_str()
                            .unwrap_or("the operation failed")
                            .to_string(),
                    ),
                    _ => Operation::InProgress,
                })
            }
            // A Location answer: 202 while running, 200 or 204 when done.
            Ok((reqwest::StatusCode::ACCEPTED, _)) => Ok(Operation::InProgress),
            Ok(_) => Ok(Operation::Succeeded),
            Err(AzureError::Api {
                status, message, ..
            }) if status >= 500 && !message.is_empty() => Ok(Operation::Failed(message)),
            Err(e) => Err(e),
        }
    }
}
