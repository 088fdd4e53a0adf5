//! The Secret's contents in each format consumers use, and the way back: finding the client secret in a
//! Secret written earlier, so that a format change re-renders without issuing a new password. Pure.

use std::collections::BTreeMap;

use serde_json::json;

use crate::{api::SecretFormat, azure::Cloud, cli::CloudName};

/// What goes into the Secret.
pub struct Credential<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub tenant_id: &'a str,
    pub display_name: &'a str,
    pub cloud: &'a Cloud,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "spec.secret.templates[{key}]: unknown placeholder {{{{ {placeholder} }}}}; known: {known}"
    )]
    UnknownPlaceholder {
        key: String,
        placeholder: String,
        known: &'static str,
    },
    #[error("spec.secret.templates[{key}]: unclosed {{{{")]
    Unclosed { key: String },
}

const KNOWN: &str =
    "clientId, clientSecret, tenantId, authorityHost, graphEndpoint, resourceManagerEndpoint";

/// The cloud's name as the Azure SDKs' environment files spell it.
fn cloud_name(cloud: &Cloud) -> &'static str {
    match cloud.name {
        CloudName::Public | CloudName::Custom => "AzurePublicCloud",
        CloudName::UsGovernment => "AzureUSGovernmentCloud",
        CloudName::China => "AzureChinaCloud",
    }
}

pub fn render(
    format: SecretFormat,
    templates: Option<&BTreeMap<String, String>>,
    c: &Credential,
) -> Result<BTreeMap<String, String>, FormatError> {
    let mut data = BTreeMap::new();
    match format {
        SecretFormat::Env => {
            data.insert("AZURE_CLIENT_ID".into(), c.client_id.into());
            data.insert("AZURE_CLIENT_SECRET".into(), c.client_secret.into());
            data.insert("AZURE_TENANT_ID".into(), c.tenant_id.into());
            // The SDKs default to the public cloud; elsewhere they need to be told where Entra is.
            if c.cloud.name != CloudName::Public {
                data.insert(
                    "AZURE_AUTHORITY_HOST".into(),
                    c.cloud.authority_host.clone(),
                );
            }
        }
        SecretFormat::Az => {
            data.insert("appId".into(), c.client_id.into());
            data.insert("displayName".into(), c.display_name.into());
            data.insert("password".into(), c.client_secret.into());
            data.insert("tenant".into(), c.tenant_id.into());
        }
        SecretFormat::SdkAuth => {
            let doc = json!({
                "clientId": c.client_id,
                "clientSecret": c.client_secret,
                "tenantId": c.tenant_id,
                "activeDirectoryEndpointUrl": c.cloud.authority_host,
                "resourceManagerEndpointUrl": format!("{}/", c.cloud.resource_manager_endpoint),
                "activeDirectoryGraphResourceId": c.cloud.graph_endpoint.trim_end_matches("/v1.0"),
                "managementEndpointUrl": format!("{}/", c.cloud.resource_manager_endpoint),
            });
            data.insert(
                "sdk-auth.json".into(),
                serde_json::to_string_pretty(&doc).expect("serializable"),
            );
        }
        SecretFormat::AzureJson => {
            let doc = json!({
                "cloud": cloud_name(c.cloud),
                "tenantId": c.tenant_id,
                "aadClientId": c.client_id,
                "aadClientSecret": c.client_secret,
                "useManagedIdentityExtension": false,
            });
            data.insert(
                "azure.json".into(),
                serde_json::to_string_pretty(&doc).expect("serializable"),
            );
        }
        SecretFormat::Template => {
            for (key, template) in templates.into_iter().flatten() {
                data.insert(key.clone(), fill(key, template, c)?);
            }
        }
    }
    Ok(data)
}

/// Replaces `{{ name }}` placeholders. Written by hand: the placeholders are a fixed set, and an unknown one
/// must be an error naming the key, which a general template engine would render as empty text instead.
fn fill(key: &str, template: &str, c: &Credential) -> Result<String, FormatError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| FormatError::Unclosed { key: key.into() })?;
        let value = match after[..end].trim() {
            "clientId" => c.client_id.to_string(),
            "clientSecret" => c.client_secret.to_string(),
            "tenantId" => c.tenant_id.to_string(),
            "authorityHost" => c.cloud.authority_host.clone(),
            "graphEndpoint" => c.cloud.graph_endpoint.clone(),
            "resourceManagerEndpoint" => c.cloud.resource_manager_endpoint.clone(),
            other => {
                return Err(FormatError::UnknownPlaceholder {
                    key: key.into(),
                    placeholder: other.into(),
                    known: KNOWN,
                });
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The client secret held by a Secret written in `format`, if it can be found there (not for templates,
/// which may embed it anywhere).
pub fn extract_secret(format: SecretFormat, data: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
    };
    let field = |key: &str, field: &str| {
        text(key)
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v[field].as_str().map(str::to_string))
    };
    match format {
        SecretFormat::Env => text("AZURE_CLIENT_SECRET"),
        SecretFormat::Az => text("password"),
        SecretFormat::SdkAuth => field("sdk-auth.json", "clientSecret"),
        SecretFormat::AzureJson => field("azure.json", "aadClientSecret"),
        SecretFormat::Template => None,
    }
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::AzureArgs;

    fn cloud(name: CloudName) -> Cloud {
        let custom = name == CloudName::Custom;
        let e = |u: &str| custom.then(|| u.to_string());
        Cloud::from_args(&AzureArgs {
            azure_cloud: name,
            azure_authority_host: e("https://127.0.0.1:8443"),
            azure_graph_endpoint: e("https://127.0.0.1:8443/v1.0"),
            azure_resource_manager_endpoint: e("https://127.0.0.1:8443"),
            ..Default::default()
        })
        .unwrap()
    }

    fn bytes(data: BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
        data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
    }

    #[test]
    fn every_format_carries_the_credential_and_gives_it_back() {
        let public = cloud(CloudName::Public);
        let c = Credential {
            client_id: "app",
            client_secret: "s3cr~t",
            tenant_id: "tenant",
            display_name: "payroll",
            cloud: &public,
        };
        let env = render(SecretFormat::Env, None, &c).unwrap();
        assert_eq!(
            env.keys().collect::<Vec<_>>(),
            ["AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"]
        );
        let az = render(SecretFormat::Az, None, &c).unwrap();
        assert_eq!(
            (
                az["appId"].as_str(),
                az["password"].as_str(),
                az["tenant"].as_str()
            ),
            ("app", "s3cr~t", "tenant")
        );
        let sdk: serde_json::Value = serde_json::from_str(
            &render(SecretFormat::SdkAuth, None, &c).unwrap()["sdk-auth.json"],
        )
        .unwrap();
        assert_eq!(
            sdk["activeDirectoryEndpointUrl"],
            "https://login.microsoftonline.com"
        );
        assert_eq!(
            sdk["resourceManagerEndpointUrl"],
            "https://management.azure.com/"
        );
        let aks: serde_json::Value =
            serde_json::from_str(&render(SecretFormat::AzureJson, None, &c).unwrap()["azure.json"])
                .unwrap();
        assert_eq!(
            (aks["cloud"].as_str(), aks["aadClientId"].as_str()),
            (Some("AzurePublicCloud"), Some("app"))
        );
        for format in [
            SecretFormat::Env,
            SecretFormat::Az,
            SecretFormat::SdkAuth,
            SecretFormat::AzureJson,
        ] {
            let data = bytes(render(format, None, &c).unwrap());
            assert_eq!(
                extract_secret(format, &data).as_deref(),
                Some("s3cr~t"),
                "{format:?}"
            );
        }
    }

    #[test]
    fn other_clouds_tell_the_sdks_where_entra_is() {
        let emulator = cloud(CloudName::Custom);
        let c = Credential {
            client_id: "a",
            client_secret: "s",
            tenant_id: "t",
            display_name: "d",
            cloud: &emulator,
        };
        assert_eq!(
            render(SecretFormat::Env, None, &c).unwrap()["AZURE_AUTHORITY_HOST"],
            "https://127.0.0.1:8443"
        );
        let gov = cloud(CloudName::UsGovernment);
        let c = Credential { cloud: &gov, ..c };
        let aks: serde_json::Value =
            serde_json::from_str(&render(SecretFormat::AzureJson, None, &c).unwrap()["azure.json"])
                .unwrap();
        assert_eq!(aks["cloud"], "AzureUSGovernmentCloud");
    }

    #[test]
    fn templates_fill_known_placeholders_and_name_unknown_ones() {
        let public = cloud(CloudName::Public);
        let c = Credential {
            client_id: "app",
            client_secret: "pw",
            tenant_id: "t",
            display_name: "d",
            cloud: &public,
        };
        let templates = BTreeMap::from([
            (
                "url".to_string(),
                "{{authorityHost}}/{{ tenantId }}".to_string(),
            ),
            (
                "creds".to_string(),
                "id={{ clientId }};secret={{clientSecret}}".to_string(),
            ),
        ]);
        let out = render(SecretFormat::Template, Some(&templates), &c).unwrap();
        assert_eq!(out["url"], "https://login.microsoftonline.com/t");
        assert_eq!(out["creds"], "id=app;secret=pw");
        assert_eq!(extract_secret(SecretFormat::Template, &bytes(out)), None);

        let bad = BTreeMap::from([("k".to_string(), "{{ password }}".to_string())]);
        let err = render(SecretFormat::Template, Some(&bad), &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "spec.secret.templates[k]: unknown placeholder {{{{ password }}}}; known: {KNOWN}"
            )
        );
        let open = BTreeMap::from([("k".to_string(), "x {{ clientId".to_string())]);
        assert_eq!(
            render(SecretFormat::Template, Some(&open), &c).unwrap_err(),
            FormatError::Unclosed { key: "k".into() }
        );
    }
}
