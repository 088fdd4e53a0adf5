//! Cloud selection: the public cloud by default, US Government, China, or custom endpoints (how the
//! emulator, or any private deployment, is used). Pure: flags in, endpoints out.

use crate::cli::{AzureArgs, CloudName};

/// Where the operator sends its requests, and the scopes it asks tokens for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloud {
    pub name: CloudName,
    /// Entra authority host, e.g. https://login.microsoftonline.com.
    pub authority_host: String,
    /// Microsoft Graph base URL including the version, e.g. https://graph.microsoft.com/v1.0.
    pub graph_endpoint: String,
    pub graph_scope: String,
    /// Azure Resource Manager base URL, e.g. https://management.azure.com.
    pub resource_manager_endpoint: String,
    pub resource_manager_scope: String,
    /// The suffix of every vault's host: a vault named `kv` is https://kv.{suffix}.
    pub key_vault_dns_suffix: String,
    /// The scope of Key Vault tokens (the resource a vault's challenge names).
    pub key_vault_scope: String,
}

impl Cloud {
    /// The URI of the vault with ARM id `vault_id` (its last segment is the vault's name).
    pub fn vault_uri(&self, vault_id: &str) -> String {
        let name = vault_id.rsplit('/').next().unwrap_or_default();
        format!(
            "https://{}.{}",
            name.to_ascii_lowercase(),
            self.key_vault_dns_suffix
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudError {
    #[error("--azure-cloud custom needs {0} (or its environment variable)")]
    Missing(&'static str),
    #[error("{flag} must be an https URL, got {value:?}")]
    NotHttps { flag: &'static str, value: String },
}

struct Preset {
    authority_host: &'static str,
    graph: &'static str,
    graph_scope: &'static str,
    arm: &'static str,
    arm_scope: &'static str,
    vault_suffix: &'static str,
}

// The sovereign clouds' hosts, from Microsoft Graph's national cloud deployments and the SDKs' environment tables;
// the vault suffixes from Key Vault's "About keys, secrets and certificates" (DNS suffixes per cloud).
const PUBLIC: Preset = Preset {
    authority_host: "https://login.microsoftonline.com",
    graph: "https://graph.microsoft.com/v1.0",
    graph_scope: "https://graph.microsoft.com/.default",
    arm: "https://management.azure.com",
    arm_scope: "https://management.azure.com/.default",
    vault_suffix: "vault.azure.net",
};
const US_GOVERNMENT: Preset = Preset {
    authority_host: "https://login.microsoftonline.us",
    graph: "https://graph.microsoft.us/v1.0",
    graph_scope: "https://graph.microsoft.us/.default",
    arm: "https://management.usgovcloudapi.net",
    arm_scope: "https://management.usgovcloudapi.net/.default",
    vault_suffix: "vault.usgovcloudapi.net",
};
const CHINA: Preset = Preset {
    authority_host: "https://login.chinacloudapi.cn",
    graph: "https://microsoftgraph.chinacloudapi.cn/v1.0",
    graph_scope: "https://microsoftgraph.chinacloudapi.cn/.default",
    arm: "https://management.chinacloudapi.cn",
    arm_scope: "https://management.chinacloudapi.cn/.default",
    vault_suffix: "vault.azure.cn",
};

impl Cloud {
    /// Resolves the cloud from the flags: a named cloud's endpoints, each overridable; a custom cloud must name
    /// all three endpoints, and asks for public-cloud scopes (what the emulator, like Azure Stack, accepts).
    pub fn from_args(args: &AzureArgs) -> Result<Cloud, CloudError> {
        let preset = match args.azure_cloud {
            CloudName::Public | CloudName::Custom => &PUBLIC,
            CloudName::UsGovernment => &US_GOVERNMENT,
            CloudName::China => &CHINA,
        };
        let pick = |value: &Option<String>,
                    default: &str,
                    flag: &'static str|
         -> Result<String, CloudError> {
            let chosen = match (value, args.azure_cloud) {
                (Some(v), _) => v.trim_end_matches('/').to_string(),
                (None, CloudName::Custom) => return Err(CloudError::Missing(flag)),
                (None, _) => default.to_string(),
            };
            if !chosen.starts_with("https://") {
                return Err(CloudError::NotHttps {
                    flag,
                    value: chosen,
                });
            }
            Ok(chosen)
        };
        let vault_suffix = match &args.azure_key_vault_dns_suffix {
            Some(suffix) => suffix.trim_matches('.').to_ascii_lowercase(),
            None => preset.vault_suffix.to_string(),
        };
        Ok(Cloud {
            name: args.azure_cloud,
            authority_host: pick(
                &args.azure_authority_host,
                preset.authority_host,
                "--azure-authority-host",
            )?,
            graph_endpoint: pick(
                &args.azure_graph_endpoint,
                preset.graph,
                "--azure-graph-endpoint",
            )?,
            graph_scope: preset.graph_scope.to_string(),
            resource_manager_endpoint: pick(
                &args.azure_resource_manager_endpoint,
                preset.arm,
                "--azure-resource-manager-endpoint",
            )?,
            resource_manager_scope: preset.arm_scope.to_string(),
            // A vault's challenge names https://{suffix} as its resource; the token is asked for that.
            key_vault_scope: format!("https://{vault_suffix}/.default"),
            key_vault_dns_suffix: vault_suffix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cloud: CloudName, endpoints: [Option<&str>; 3]) -> AzureArgs {
        AzureArgs {
            azure_cloud: cloud,
            azure_authority_host: endpoints[0].map(str::to_string),
            azure_graph_endpoint: endpoints[1].map(str::to_string),
            azure_resource_manager_endpoint: endpoints[2].map(str::to_string),
            ..AzureArgs::default()
        }
    }

    #[test]
    fn public_cloud_is_the_default() {
        let cloud = Cloud::from_args(&args(CloudName::Public, [None; 3])).unwrap();
        assert_eq!(cloud.authority_host, "https://login.microsoftonline.com");
        assert_eq!(
            cloud.vault_uri(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/contoso-kv"
            ),
            "https://contoso-kv.vault.azure.net"
        );
        assert_eq!(cloud.key_vault_scope, "https://vault.azure.net/.default");
        assert_eq!(cloud.graph_endpoint, "https://graph.microsoft.com/v1.0");
        assert_eq!(
            cloud.resource_manager_scope,
            "https://management.azure.com/.default"
        );
    }

    #[test]
    fn sovereign_clouds_use_their_own_hosts_and_scopes() {
        let gov = Cloud::from_args(&args(CloudName::UsGovernment, [None; 3])).unwrap();
        assert_eq!(gov.graph_scope, "https://graph.microsoft.us/.default");
        assert_eq!(gov.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            gov.vault_uri(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/KV1"
            ),
            "https://kv1.vault.usgovcloudapi.net"
        );
        assert_eq!(
            gov.key_vault_scope,
            "https://vault.usgovcloudapi.net/.default"
        );
        let china = Cloud::from_args(&args(CloudName::China, [None; 3])).unwrap();
        assert_eq!(
            china.resource_manager_endpoint,
            "https://management.chinacloudapi.cn"
        );
    }

    #[test]
    fn custom_cloud_needs_every_endpoint_over_https() {
        assert_eq!(
            Cloud::from_args(&args(
                CloudName::Custom,
                [Some("https://127.0.0.1:8443"), None, None]
            )),
            Err(CloudError::Missing("--azure-graph-endpoint"))
        );
        let emulator = Cloud::from_args(&args(
            CloudName::Custom,
            [
                Some("https://127.0.0.1:8443/"),
                Some("https://127.0.0.1:8443/v1.0"),
                Some("https://127.0.0.1:8443"),
            ],
        ))
        .unwrap();
        assert_eq!(emulator.authority_host, "https://127.0.0.1:8443");
        assert_eq!(emulator.graph_scope, "https://graph.microsoft.com/.default");
        assert!(matches!(
            Cloud::from_args(&args(
                CloudName::Public,
                [Some("http://login.example"), None, None]
            )),
            Err(CloudError::NotHttps { .. })
        ));
    }
}
