//! The operator's own Azure identity, through azure_identity: workload identity (the default: a projected
//! ServiceAccount token exchanged for an Entra token), a client secret, or a managed identity. Every
//! credential uses the operator's HTTP client, so an extra CA (the emulator's) is trusted the same way
//! for token requests as for Graph and ARM calls.

use std::sync::Arc;

use anyhow::Context as _;
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::TokenCredential,
    http::{ClientOptions, Transport},
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use super::Cloud;
use crate::cli::{AzureArgs, CredentialKind};

/// The HTTP client for everything the operator sends to Azure: rustls, the platform's roots, plus the extra CA.
pub fn http_client(args: &AzureArgs) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(path) = &args.azure_ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("--azure-ca-file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--azure-ca-file {}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

fn client_options(cloud: &Cloud, http: &reqwest::Client) -> ClientOptions {
    // Always a custom configuration: the authority host comes from the resolved cloud (flags included), not
    // from azure_identity's own reading of AZURE_AUTHORITY_HOST.
    let mut custom = CustomConfiguration::default();
    custom.authority_host = cloud.authority_host.clone();
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
        ..Default::default()
    }
}

/// Builds the credential the flags ask for. Values not given as flags come from the standard environment
/// variables (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_SECRET).
pub fn build(
    args: &AzureArgs,
    cloud: &Cloud,
    http: &reqwest::Client,
) -> anyhow::Result<Arc<dyn TokenCredential>> {
    let options = client_options(cloud, http);
    Ok(match args.azure_credential {
        CredentialKind::WorkloadIdentity => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options: options },
            client_id: args.azure_client_id.clone(),
            tenant_id: args.azure_tenant_id.clone(),
            token_file_path: args.azure_federated_token_file.clone(),
        }))
        .context("workload identity needs AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE")?,
        CredentialKind::ClientSecret => {
            let tenant = args.azure_tenant_id.clone().context("--azure-credential client-secret needs AZURE_TENANT_ID")?;
            let client = args.azure_client_id.clone().context("--azure-credential client-secret needs AZURE_CLIENT_ID")?;
            let secret = args.azure_client_secret.clone().context("--azure-credential client-secret needs AZURE_CLIENT_SECRET")?;
            ClientSecretCredential::new(&tenant, client, secret.0.into(), Some(ClientSecretCredentialOptions { client_options: options }))?
        }
        CredentialKind::ManagedIdentity => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: args.azure_client_id.clone().map(UserAssignedId::ClientId),
            client_options: options,
        }))?,
    })
}

/// Whether Entra issues a token for an application's client secret: how a rotation proves the new secret works
/// before the previous one goes. A failure means "not yet" (a new password takes a moment to be accepted)
/// as much as "never"; the caller retries.
pub async fn client_secret_signs_in(
    cloud: &Cloud,
    http: &reqwest::Client,
    tenant_id: &str,
    client_id: &str,
    secret: &str,
) -> Result<(), String> {
    let credential = ClientSecretCredential::new(
        tenant_id,
        client_id.to_string(),
        secret.to_string().into(),
        Some(ClientSecretCredentialOptions {
            client_options: client_options(cloud, http),
        }),
    )
    .map_err(|e| e.to_string())?;
    credential
        .get_token(&[cloud.resource_manager_scope.as_str()], None)
        .await
        .map(|_| ())
        // Only the kind of failure: azure_identity's message may quote the request.
        .map_err(|e| format!("Entra refused the new secret ({:?})", e.kind()))
}
