//! For the clients' tests: an in-process emulator, and the operator's credential and cloud pointed at it
//! (a client secret, the simplest of the credentials; workload identity has its own end-to-end tests).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;

use super::{Cloud, credential};
use crate::cli::{AzureArgs, CloudName, CredentialKind, Redacted};

pub struct TestAzure {
    pub emulator: azure_emulator::Running,
    pub cloud: Cloud,
    pub http: reqwest::Client,
    pub credential: Arc<dyn TokenCredential>,
    /// The emulator's tenant, which the credential signs in to.
    pub tenant_id: String,
    _dir: tempfile::TempDir,
}

impl TestAzure {
    pub async fn start() -> TestAzure {
        const SECRET: &str = "azure-client-test-secret";
        let dir = tempfile::tempdir().unwrap();
        let mut config = azure_emulator::config::Config::default_seed();
        config.seed.applications[0].client_secrets = vec![SECRET.into()];
        let tenant = config.seed.tenant_id.clone();
        let client_id = config.seed.applications[0].app_id.clone();
        let emulator = azure_emulator::start(azure_emulator::Options {
            config,
            state_dir: dir.path().to_path_buf(),
            persist: false,
            listen: "127.0.0.1:0".parse().unwrap(),
            hostnames: vec![],
        })
        .await
        .unwrap();
        let base = emulator.base_url.clone();
        let args = AzureArgs {
            azure_cloud: CloudName::Custom,
            azure_authority_host: Some(base.clone()),
            azure_graph_endpoint: Some(format!("{base}/v1.0")),
            azure_resource_manager_endpoint: Some(base),
            azure_key_vault_dns_suffix: None,
            azure_ca_file: Some(emulator.ca_file.clone()),
            azure_credential: CredentialKind::ClientSecret,
            azure_client_id: Some(client_id),
            azure_tenant_id: Some(tenant.clone()),
            azure_federated_token_file: None,
            azure_client_secret: Some(Redacted(SECRET.into())),
        };
        let cloud = Cloud::from_args(&args).unwrap();
        // As the operator's environment would set HTTPS_PROXY: vaults through the emulator's proxy, the rest
        // straight to it (an environment variable would be shared by every test in the process).
        let http = credential::http_client_via(&args, Some(&emulator.proxy_url)).unwrap();
        let credential = credential::build(&args, &cloud, &http).unwrap();
        TestAzure {
            emulator,
            cloud,
            http,
            credential,
            tenant_id: tenant,
            _dir: dir,
        }
    }
}
