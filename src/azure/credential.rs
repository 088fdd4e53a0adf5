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
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use super::{Cloud, certificate::Material};
use crate::cli::{AzureArgs, CredentialKind};

/// The HTTP client for everything the operator sends to Azure: rustls, the platform's roots, plus the extra CA.
/// Proxies come from the standard HTTPS_PROXY and NO_PROXY variables.
pub fn http_client(args: &AzureArgs) -> anyhow::Result<reqwest::Client> {
    http_client_via(args, None)
}

/// As [`http_client`], with `proxy` for every host but the loopback ones instead of the environment's.
pub fn http_client_via(args: &AzureArgs, proxy: Option<&str>) -> anyhow::Result<reqwest::Client> {
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
    if let Some(proxy) = proxy {
        let no_proxy = reqwest::NoProxy::from_string("127.0.0.1,localhost");
        builder = builder.proxy(reqwest::Proxy::https(proxy)?.no_proxy(no_proxy));
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
    scope: &str,
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
    token_issued(credential.as_ref(), scope, "the new secret").await
}

/// Whether Entra issues `credential` a token for `scope`. The error names `what` and the kind of failure only:
/// azure_identity's message may quote the request, and with it a secret or an assertion.
async fn token_issued(
    credential: &dyn TokenCredential,
    scope: &str,
    what: &str,
) -> Result<(), String> {
    credential
        .get_token(&[scope], None)
        .await
        .map(|_| ())
        .map_err(|e| format!("Entra refused {what} ({:?})", e.kind()))
}

/// Client assertions signed with a certificate, a fresh one for each token request (each has its own `jti`
/// and a 10-minute life). Debug shows the certificate's thumbprint only.
#[derive(Debug)]
struct CertificateAssertion {
    material: Material,
    client_id: String,
    token_endpoint: String,
}

#[async_trait::async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(
        &self,
        _options: Option<azure_core::http::ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.material
            .client_assertion(
                &self.client_id,
                &self.token_endpoint,
                jiff::Timestamp::now(),
            )
            .map_err(|e| {
                azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e)
            })
    }
}

/// Whether Entra issues a token for an application's certificate: as [`client_secret_signs_in`], for a
/// certificate credential. azure_identity's own ClientCertificateCredential needs OpenSSL and a PKCS#12
/// file; its ClientAssertionCredential with an assertion signed here makes the same request (Microsoft's
/// SDK still builds and sends it). The assertion's audience is the token endpoint that credential posts to:
/// the authority host joined with `/{tenant}/oauth2/v2.0/token`, as azure_identity
/// (`client_assertion_credential.rs`, `new_exclusive`) computes it.
pub async fn client_certificate_signs_in(
    cloud: &Cloud,
    http: &reqwest::Client,
    tenant_id: &str,
    client_id: &str,
    material: &Material,
    scope: &str,
) -> Result<(), String> {
    let token_endpoint = azure_core::http::Url::parse(&cloud.authority_host)
        .and_then(|host| host.join(&format!("/{tenant_id}/oauth2/v2.0/token")))
        .map_err(|e| format!("no token endpoint for the authority host ({e})"))?;
    let assertion = CertificateAssertion {
        material: material.clone(),
        client_id: client_id.to_string(),
        token_endpoint: token_endpoint.to_string(),
    };
    let credential = ClientAssertionCredential::new(
        tenant_id.to_string(),
        client_id.to_string(),
        assertion,
        Some(ClientAssertionCredentialOptions {
            client_options: client_options(cloud, http),
        }),
    )
    .map_err(|e| e.to_string())?;
    token_issued(credential.as_ref(), scope, "the certificate").await
}

/// The object id (`oid` claim) of the principal an Entra access token was issued to: the operator's own
/// identity, which no tenant may be granted a role for. The token is not verified here: it is the operator's
/// own, just issued to it by Entra over TLS, and only read. (No JWT crate is needed for reading one claim of a
/// token the operator trusts already: base64url and JSON are.)
pub fn object_id(access_token: &str) -> Option<String> {
    claims(access_token)?["oid"]
        .as_str()
        .map(str::to_ascii_lowercase)
}

/// The claims of an access token the operator was issued, unverified (see [`object_id`]); None when it is
/// not a JWT.
pub fn claims(access_token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::{client_certificate_signs_in, object_id};
    use crate::azure::{certificate::Material, graph::GraphClient, testing::TestAzure};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registered_certificate_signs_in_and_another_does_not() {
        let azure = TestAzure::start().await;
        let graph = GraphClient::new(azure.http.clone(), azure.credential.clone(), &azure.cloud);
        let (_, id) = graph
            .upsert_application_id("eo-cert-sign-in", &json!({"displayName": "cert sign-in"}))
            .await
            .unwrap();
        let id = id.unwrap();
        let app = graph
            .application_by_unique_name("eo-cert-sign-in")
            .await
            .unwrap()
            .unwrap();
        graph.upsert_service_principal(&app.app_id).await.unwrap();
        let now = jiff::Timestamp::now();
        let cert = || {
            Material::generate(
                "eo-cert-sign-in",
                now - jiff::SignedDuration::from_mins(5),
                now + jiff::SignedDuration::from_hours(1),
            )
            .unwrap()
        };
        let (registered, stranger) = (cert(), cert());
        graph
            .set_key_credentials(
                &id,
                &[],
                Some(crate::azure::graph::NewKey {
                    material: &registered,
                    display_name: "entra-operator/1",
                    end: None,
                    key_id: "0c0c0c0c-0000-4000-8000-000000000001",
                }),
            )
            .await
            .unwrap();
        let signs_in = |m: &Material| {
            let m = m.clone();
            let (azure, app_id) = (&azure, app.app_id.clone());
            async move {
                client_certificate_signs_in(
                    &azure.cloud,
                    &azure.http,
                    &azure.tenant_id,
                    &app_id,
                    &m,
                    &azure.cloud.resource_manager_scope,
                )
                .await
            }
        };
        signs_in(&registered).await.unwrap();
        let refused = signs_in(&stranger).await.unwrap_err();
        assert!(
            refused.starts_with("Entra refused the certificate"),
            "{refused}"
        );
        assert!(!refused.contains("eyJ"), "no JWT in the message: {refused}");
    }

    fn token(claims: serde_json::Value) -> String {
        let part = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.signature",
            part(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
            part(&claims)
        )
    }

    #[test]
    fn the_object_id_is_read_from_the_token() {
        let t =
            token(serde_json::json!({"oid": "ABCDEF01-0000-4000-8000-000000000001", "appid": "x"}));
        assert_eq!(
            object_id(&t).as_deref(),
            Some("abcdef01-0000-4000-8000-000000000001")
        );
        assert_eq!(object_id(&token(serde_json::json!({"appid": "x"}))), None);
        assert_eq!(object_id("not a token"), None);
        assert_eq!(object_id("a.%%%.c"), None);
    }
}
