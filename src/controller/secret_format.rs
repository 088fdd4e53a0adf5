//! The Secret's contents in each format consumers use, and the way back: finding the client secret (or the
//! certificate credential's private key and certificate) in a Secret written earlier, so that a format change
//! re-renders without issuing a new credential. Pure.

use std::collections::BTreeMap;

use serde_json::json;

use crate::{
    api::{SecretFormat, common::CERTIFICATE_FILE},
    azure::Cloud,
    cli::CloudName,
};

/// What signs in.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// A client secret's text.
    Password(&'a str),
    /// A certificate credential: its private key and certificate(s) as PEM, together (as az's
    /// fileWithCertAndPrivateKey), and the path consumers who mount the Secret find that file at.
    Certificate { pem: &'a str, path: &'a str },
}

/// What goes into the Secret.
pub struct Credential<'a> {
    pub client_id: &'a str,
    pub secret: Secret<'a>,
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
    /// A format that cannot carry this kind of credential (admission refuses the spec; a stored object may
    /// predate the rule).
    #[error("spec.secret.format: {format} cannot carry a {kind}")]
    Unsupported {
        format: &'static str,
        kind: &'static str,
    },
    /// The certificate credential's PEM lacks its key or its certificate (never quoted).
    #[error("the certificate credential holds no {0}")]
    Incomplete(&'static str),
}

const KNOWN: &str =
    "clientId, clientSecret, tenantId, authorityHost, graphEndpoint, resourceManagerEndpoint";
const KNOWN_FOR_CERTIFICATES: &str = "clientId, certificate, privateKey, certificatePath, tenantId, authorityHost, \
     graphEndpoint, resourceManagerEndpoint";

/// The cloud's name as the Azure SDKs' environment files spell it.
fn cloud_name(cloud: &Cloud) -> &'static str {
    match cloud.name {
        CloudName::Public | CloudName::Custom => "AzurePublicCloud",
        CloudName::UsGovernment => "AzureUSGovernmentCloud",
        CloudName::China => "AzureChinaCloud",
    }
}

/// The private key block and the certificate blocks of a PEM bundle, each byte for byte as written. Split by
/// hand rather than with a PEM crate: re-encoding would change line endings or wrapping, and a Secret rendered
/// from the blocks must read back exactly as it was written (see `extract_secret`).
pub fn pem_parts(pem: &str) -> Result<(String, String), FormatError> {
    let (mut key, mut certs) = (String::new(), String::new());
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..]
            .find("-----")
            .ok_or(FormatError::Incomplete("PEM block"))?
            + 11;
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or(FormatError::Incomplete("PEM block end"))?
            + end_marker.len();
        let text = format!("{}\n", &block[..end]);
        if label.ends_with("PRIVATE KEY") {
            key.push_str(&text);
        } else if label == "CERTIFICATE" {
            certs.push_str(&text);
        }
        rest = &block[end..];
    }
    match (key.is_empty(), certs.is_empty()) {
        (true, _) => Err(FormatError::Incomplete("private key")),
        (_, true) => Err(FormatError::Incomplete("certificate")),
        _ => Ok((key, certs)),
    }
}

pub fn render(
    format: SecretFormat,
    templates: Option<&BTreeMap<String, String>>,
    c: &Credential,
) -> Result<BTreeMap<String, String>, FormatError> {
    let client_secret = match c.secret {
        Secret::Password(text) => text,
        Secret::Certificate { pem, path } => {
            return render_certificate(format, templates, c, pem, path);
        }
    };
    let mut data = BTreeMap::new();
    match format {
        SecretFormat::Env => {
            data.insert("AZURE_CLIENT_ID".into(), c.client_id.into());
            data.insert("AZURE_CLIENT_SECRET".into(), client_secret.into());
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
            data.insert("password".into(), client_secret.into());
            data.insert("tenant".into(), c.tenant_id.into());
        }
        SecretFormat::SdkAuth => {
            let doc = json!({
                "clientId": c.client_id,
                "clientSecret": client_secret,
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
                "aadClientSecret": client_secret,
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
        SecretFormat::Tls => {
            return Err(FormatError::Unsupported {
                format: "tls",
                kind: "client secret",
            });
        }
    }
    Ok(data)
}

/// A certificate credential's Secret. Every layout but tls and template carries the PEM file itself
/// (certificate.pem) beside the fields that name where it is mounted: what Microsoft's clients read.
/// - env: EnvironmentCredential reads AZURE_CLIENT_CERTIFICATE_PATH, a PEM (or PKCS#12) file holding the
///   private key and the certificate (azure-identity `_credentials/environment.py`; Azure.Identity's
///   EnvironmentCredential; azidentity `NewEnvironmentCredential`).
/// - az: `az ad sp create-for-rbac --create-cert` prints fileWithCertAndPrivateKey, the PEM file it wrote
///   (azure-cli `role/custom.py`, `create_service_principal_for_rbac`), and no password.
/// - azure.json: cloud-provider-azure reads aadClientCertPath (and aadClientCertPassword, empty for PEM).
fn render_certificate(
    format: SecretFormat,
    templates: Option<&BTreeMap<String, String>>,
    c: &Credential,
    pem: &str,
    path: &str,
) -> Result<BTreeMap<String, String>, FormatError> {
    let (key, certificate) = pem_parts(pem)?;
    let mut data = BTreeMap::new();
    let file = || (CERTIFICATE_FILE.to_string(), pem.to_string());
    match format {
        SecretFormat::Env => {
            data.insert("AZURE_CLIENT_ID".into(), c.client_id.into());
            data.insert("AZURE_CLIENT_CERTIFICATE_PATH".into(), path.into());
            data.insert("AZURE_TENANT_ID".into(), c.tenant_id.into());
            if c.cloud.name != CloudName::Public {
                data.insert(
                    "AZURE_AUTHORITY_HOST".into(),
                    c.cloud.authority_host.clone(),
                );
            }
            data.extend([file()]);
        }
        SecretFormat::Az => {
            data.insert("appId".into(), c.client_id.into());
            data.insert("displayName".into(), c.display_name.into());
            data.insert("fileWithCertAndPrivateKey".into(), path.into());
            data.insert("tenant".into(), c.tenant_id.into());
            data.extend([file()]);
        }
        SecretFormat::AzureJson => {
            let doc = json!({
                "cloud": cloud_name(c.cloud),
                "tenantId": c.tenant_id,
                "aadClientId": c.client_id,
                "aadClientCertPath": path,
                "aadClientCertPassword": "",
                "useManagedIdentityExtension": false,
            });
            data.insert(
                "azure.json".into(),
                serde_json::to_string_pretty(&doc).expect("serializable"),
            );
            data.extend([file()]);
        }
        SecretFormat::Tls => {
            data.insert("tls.crt".into(), certificate);
            data.insert("tls.key".into(), key);
        }
        SecretFormat::Template => {
            for (name, template) in templates.into_iter().flatten() {
                data.insert(name.clone(), fill(name, template, c)?);
            }
        }
        SecretFormat::SdkAuth => {
            return Err(FormatError::Unsupported {
                format: "sdk-auth",
                kind: "certificate",
            });
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
        let placeholder = after[..end].trim();
        let value = match (placeholder, c.secret) {
            ("clientId", _) => c.client_id.to_string(),
            ("clientSecret", Secret::Password(text)) => text.to_string(),
            ("certificate", Secret::Certificate { pem, .. }) => pem_parts(pem)?.1,
            ("privateKey", Secret::Certificate { pem, .. }) => pem_parts(pem)?.0,
            ("certificatePath", Secret::Certificate { path, .. }) => path.to_string(),
            ("tenantId", _) => c.tenant_id.to_string(),
            ("authorityHost", _) => c.cloud.authority_host.clone(),
            ("graphEndpoint", _) => c.cloud.graph_endpoint.clone(),
            ("resourceManagerEndpoint", _) => c.cloud.resource_manager_endpoint.clone(),
            (other, secret) => {
                return Err(FormatError::UnknownPlaceholder {
                    key: key.into(),
                    placeholder: other.into(),
                    known: match secret {
                        Secret::Password(_) => KNOWN,
                        Secret::Certificate { .. } => KNOWN_FOR_CERTIFICATES,
                    },
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
/// which may embed it anywhere); with `certificate`, the credential's PEM (private key and certificate)
/// instead.
pub fn extract_secret(
    format: SecretFormat,
    data: &BTreeMap<String, Vec<u8>>,
    certificate: bool,
) -> Option<String> {
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
    };
    let field = |key: &str, field: &str| {
        text(key)
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v[field].as_str().map(str::to_string))
    };
    if certificate {
        return match format {
            SecretFormat::Env | SecretFormat::Az | SecretFormat::AzureJson => {
                text(CERTIFICATE_FILE)
            }
            // The blocks as render wrote them, key first: what certificate.pem holds in the other formats.
            SecretFormat::Tls => Some(text("tls.key")? + &text("tls.crt")?),
            SecretFormat::SdkAuth | SecretFormat::Template => None,
        }
        .filter(|pem| pem_parts(pem).is_ok());
    }
    match format {
        SecretFormat::Env => text("AZURE_CLIENT_SECRET"),
        SecretFormat::Az => text("password"),
        SecretFormat::SdkAuth => field("sdk-auth.json", "clientSecret"),
        SecretFormat::AzureJson => field("azure.json", "aadClientSecret"),
        SecretFormat::Template | SecretFormat::Tls => None,
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
            secret: Secret::Password("s3cr~t"),
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
                extract_secret(format, &data, false).as_deref(),
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
            secret: Secret::Password("s"),
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
            secret: Secret::Password("pw"),
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
        assert_eq!(
            extract_secret(SecretFormat::Template, &bytes(out), false),
            None
        );

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

    /// A bundle of the shape the operator writes (key, then a chain of two); the bodies need not be real here.
    const BUNDLE: &str = "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n\
                          -----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n\
                          -----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";

    fn certificate<'a>(cloud: &'a Cloud) -> Credential<'a> {
        Credential {
            client_id: "app",
            secret: Secret::Certificate {
                pem: BUNDLE,
                path: "/var/run/secrets/azure/certificate.pem",
            },
            tenant_id: "tenant",
            display_name: "payroll",
            cloud,
        }
    }

    #[test]
    fn a_certificate_is_delivered_where_each_client_reads_it_and_given_back() {
        let public = cloud(CloudName::Public);
        let c = certificate(&public);
        let path = "/var/run/secrets/azure/certificate.pem";
        let env = render(SecretFormat::Env, None, &c).unwrap();
        assert_eq!(env["AZURE_CLIENT_CERTIFICATE_PATH"], path);
        assert_eq!(env[CERTIFICATE_FILE], BUNDLE);
        assert!(!env.contains_key("AZURE_CLIENT_SECRET"));
        let az = render(SecretFormat::Az, None, &c).unwrap();
        assert_eq!(az["fileWithCertAndPrivateKey"], path);
        assert!(!az.contains_key("password"));
        let json: serde_json::Value =
            serde_json::from_str(&render(SecretFormat::AzureJson, None, &c).unwrap()["azure.json"])
                .unwrap();
        assert_eq!(json["aadClientCertPath"], path);
        assert!(json.get("aadClientSecret").is_none());
        let tls = render(SecretFormat::Tls, None, &c).unwrap();
        assert_eq!(
            tls["tls.key"],
            "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n"
        );
        assert!(tls["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----\nTEVBRg=="));
        assert_eq!(
            tls["tls.crt"].matches("BEGIN CERTIFICATE").count(),
            2,
            "the chain"
        );
        for format in [
            SecretFormat::Env,
            SecretFormat::Az,
            SecretFormat::AzureJson,
            SecretFormat::Tls,
        ] {
            let data = bytes(render(format, None, &c).unwrap());
            assert_eq!(
                extract_secret(format, &data, true).as_deref(),
                Some(BUNDLE),
                "{format:?}"
            );
            assert_eq!(extract_secret(format, &data, false), None, "{format:?}");
        }
    }

    #[test]
    fn formats_that_cannot_carry_a_credential_say_so() {
        let public = cloud(CloudName::Public);
        assert_eq!(
            render(SecretFormat::SdkAuth, None, &certificate(&public)).unwrap_err(),
            FormatError::Unsupported {
                format: "sdk-auth",
                kind: "certificate"
            }
        );
        let password = Credential {
            secret: Secret::Password("pw"),
            ..certificate(&public)
        };
        assert!(render(SecretFormat::Tls, None, &password).is_err());
        let keyless = Credential {
            secret: Secret::Certificate {
                pem: "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n",
                path: "/p",
            },
            ..certificate(&public)
        };
        let err = render(SecretFormat::Env, None, &keyless).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the certificate credential holds no private key"
        );
    }

    #[test]
    fn certificate_templates_have_their_own_placeholders() {
        let public = cloud(CloudName::Public);
        let templates = BTreeMap::from([(
            "config".to_string(),
            "path={{ certificatePath }}\n{{ privateKey }}{{ certificate }}".to_string(),
        )]);
        let out = render(
            SecretFormat::Template,
            Some(&templates),
            &certificate(&public),
        )
        .unwrap();
        assert!(
            out["config"]
                .starts_with("path=/var/run/secrets/azure/certificate.pem\n-----BEGIN PRIVATE KEY")
        );
        let secret = BTreeMap::from([("k".to_string(), "{{ clientSecret }}".to_string())]);
        let err = render(SecretFormat::Template, Some(&secret), &certificate(&public)).unwrap_err();
        assert!(
            matches!(&err, FormatError::UnknownPlaceholder { known, .. } if *known == KNOWN_FOR_CERTIFICATES),
            "{err}"
        );
    }
}
