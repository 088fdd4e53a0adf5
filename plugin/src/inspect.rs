//! `kubectl entra inspect secret NAME [--sign-in]`: what a Secret the operator wrote holds (its format and the
//! key id of its credential, from the annotations), whose it is, and that credential's hint or thumbprint and
//! expiry from the owner's status; with --sign-in, whether Entra accepts it. The secret text is read only to
//! sign in with, and never printed: no field of the output comes from the Secret's data but the client id,
//! tenant and authority host.

use std::collections::BTreeMap;

use anyhow::Context;
use entra_operator::{
    api::{
        CredentialRotation, SecretFormat, ServicePrincipal,
        protocol::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION},
    },
    azure::cloud::Cloud,
    cli::CloudName,
    controller::{credentials::Kind, secret_format, verification},
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::{cli::InspectSecretArgs, cluster::Cluster, render};

/// What the plugin says about a Secret.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub name: String,
    pub format: Option<String>,
    pub key_id: Option<String>,
    /// "ServicePrincipal/NAME" or "CredentialRotation/NAME": the Secret's controller.
    pub owner: Option<String>,
    /// Whether the owner's status names the same key id as the Secret (None when there is no owner status).
    pub current: Option<bool>,
    pub hint: Option<String>,
    pub thumbprint: Option<String>,
    pub expires: Option<Timestamp>,
    /// "signed in", or the kind of failure; None without --sign-in.
    pub sign_in: Option<String>,
}

/// Where and as whom to sign in, as the Secret's data says in its format.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
}

/// The client id, tenant and authority host a Secret in `format` carries (field names from
/// `entra_operator::controller::secret_format::render`); a template's are unknown.
pub fn params(format: SecretFormat, data: &BTreeMap<String, Vec<u8>>) -> Params {
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
    };
    let json =
        |key: &str| text(key).and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let field = |doc: &Option<serde_json::Value>, f: &str| {
        doc.as_ref().and_then(|d| d[f].as_str().map(str::to_string))
    };
    match format {
        SecretFormat::Env => Params {
            client_id: text("AZURE_CLIENT_ID"),
            tenant_id: text("AZURE_TENANT_ID"),
            authority_host: text("AZURE_AUTHORITY_HOST"),
        },
        SecretFormat::Az => Params {
            client_id: text("appId"),
            tenant_id: text("tenant"),
            authority_host: None,
        },
        SecretFormat::SdkAuth => {
            let doc = json("sdk-auth.json");
            Params {
                client_id: field(&doc, "clientId"),
                tenant_id: field(&doc, "tenantId"),
                authority_host: field(&doc, "activeDirectoryEndpointUrl"),
            }
        }
        SecretFormat::AzureJson => {
            let doc = json("azure.json");
            Params {
                client_id: field(&doc, "aadClientId"),
                tenant_id: field(&doc, "tenantId"),
                authority_host: None,
            }
        }
        SecretFormat::Template | SecretFormat::Tls => Params::default(),
    }
}

/// The Secret's controller, as (kind, name).
fn owner(secret: &Secret) -> Option<(String, String)> {
    secret
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// Fills in what the owner's status says of the credential; returns the owner's app and tenant ids.
async fn from_owner(
    cluster: &Cluster,
    ns: &str,
    report: &mut Report,
    secret: &Secret,
) -> anyhow::Result<Params> {
    let Some((kind, name)) = owner(secret) else {
        return Ok(Params::default());
    };
    report.owner = Some(format!("{kind}/{name}"));
    let client = cluster.client.clone();
    match kind.as_str() {
        "ServicePrincipal" => {
            let sp = Api::<ServicePrincipal>::namespaced(client, ns)
                .get(&name)
                .await?;
            let status = sp.status.unwrap_or_default();
            if let Some(c) = &status.credential {
                report.current = Some(report.key_id.as_ref() == Some(&c.key_id));
                report.hint = c.hint.clone();
                report.thumbprint = c.thumbprint.clone();
                report.expires = c.end_date_time.as_ref().map(|t| t.0);
            }
            Ok(Params {
                client_id: status.app_id,
                tenant_id: status.tenant_id,
                authority_host: None,
            })
        }
        "CredentialRotation" => {
            let crot = Api::<CredentialRotation>::namespaced(client, ns)
                .get(&name)
                .await?;
            let status = crot.status.unwrap_or_default();
            if let Some(current) = &status.current_key_id {
                report.current = Some(report.key_id.as_ref() == Some(current));
                report.expires = status.expires_at.as_ref().map(|t| t.0);
            }
            Ok(Params {
                client_id: crot.spec.application_id,
                ..Params::default()
            })
        }
        _ => Ok(Params::default()),
    }
}

pub async fn run(
    cluster: &Cluster,
    args: &InspectSecretArgs,
    format: crate::cli::Format,
) -> anyhow::Result<bool> {
    let ns = cluster.one_namespace()?;
    let secret = Api::<Secret>::namespaced(cluster.client.clone(), ns)
        .get(&args.name)
        .await
        .with_context(|| format!("Secret {ns}/{}", args.name))?;
    let annotation = |key: &str| secret.annotations().get(key).cloned();
    let mut report = Report {
        namespace: ns.to_string(),
        name: args.name.clone(),
        format: annotation(FORMAT_ANNOTATION),
        key_id: annotation(KEY_ID_ANNOTATION),
        ..Report::default()
    };
    let owner_params = from_owner(cluster, ns, &mut report, &secret).await?;
    if args.sign_in {
        report.sign_in = Some(
            match sign_in(&secret, report.format.as_deref(), args, owner_params).await {
                Ok(()) => "signed in".to_string(),
                Err(e) => e,
            },
        );
    }
    let now = Timestamp::now();
    render::emit(format, &report, || text(&report, now))?;
    Ok(report.sign_in.as_deref().is_some_and(|s| s != "signed in"))
}

/// Signs in with the credential the Secret holds, as the operator verifies one (a Graph and an ARM token).
/// The error says what failed, never the credential (verification::round's errors name the failure's kind).
async fn sign_in(
    secret: &Secret,
    format: Option<&str>,
    args: &InspectSecretArgs,
    owner: Params,
) -> Result<(), String> {
    let format: SecretFormat = serde_json::from_value(serde_json::json!(format)).map_err(|_| {
        "the Secret has no entra-operator.io/format annotation the plugin knows".to_string()
    })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let certificate = format == SecretFormat::Tls || data.contains_key("certificate.pem");
    let text = secret_format::extract_secret(format, &data, certificate)
        .ok_or_else(|| format!("no credential can be read back from a {format:?} Secret"))?;
    let held = params(format, &data);
    let client_id = held
        .client_id
        .or(owner.client_id)
        .ok_or("no client id in the Secret or its owner")?;
    let tenant = args
        .tenant
        .clone()
        .or(held.tenant_id)
        .or(owner.tenant_id)
        .ok_or("no tenant: give --tenant")?;
    let authority = args.authority_host.clone().or(held.authority_host);
    let cloud = cloud(authority.as_deref());
    let http = http(args).map_err(|e| format!("{e:#}"))?;
    let kind = if certificate {
        Kind::Certificate
    } else {
        Kind::Password
    };
    verification::round(&cloud, &http, &tenant, &client_id, kind, &text).await
}

/// The public cloud's scopes (which the emulator, like Azure Stack, accepts) at the authority host given.
fn cloud(authority_host: Option<&str>) -> Cloud {
    Cloud {
        name: CloudName::Custom,
        authority_host: authority_host
            .unwrap_or("https://login.microsoftonline.com")
            .trim_end_matches('/')
            .to_string(),
        graph_endpoint: "https://graph.microsoft.com/v1.0".into(),
        graph_scope: "https://graph.microsoft.com/.default".into(),
        resource_manager_endpoint: "https://management.azure.com".into(),
        resource_manager_scope: "https://management.azure.com/.default".into(),
        key_vault_dns_suffix: "vault.azure.net".into(),
        key_vault_scope: "https://vault.azure.net/.default".into(),
    }
}

fn http(args: &InspectSecretArgs) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

pub fn text(r: &Report, now: Timestamp) -> String {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let current = match r.current {
        Some(true) => " (the owner's current credential)",
        Some(false) => " (NOT the owner's current credential)",
        None => "",
    };
    let mut out = format!(
        "Secret:      {}/{}\nFormat:      {}\nKey id:      {}{current}\nOwner:       {}\n",
        r.namespace,
        r.name,
        or(&r.format),
        or(&r.key_id),
        or(&r.owner)
    );
    if r.thumbprint.is_some() {
        out.push_str(&format!("Thumbprint:  {}\n", or(&r.thumbprint)));
    } else {
        out.push_str(&format!("Hint:        {}\n", or(&r.hint)));
    }
    out.push_str(&format!(
        "Expires:     {}\n",
        render::maybe_when(r.expires, now)
    ));
    if let Some(s) = &r.sign_in {
        out.push_str(&format!("Sign-in:     {s}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn each_format_says_where_and_as_whom_to_sign_in() {
        let env = data(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_AUTHORITY_HOST", "https://a"),
            ("AZURE_CLIENT_SECRET", "s"),
        ]);
        let want = |c: &str, t: &str, a: Option<&str>| Params {
            client_id: Some(c.into()),
            tenant_id: Some(t.into()),
            authority_host: a.map(str::to_string),
        };
        assert_eq!(
            params(SecretFormat::Env, &env),
            want("c", "t", Some("https://a"))
        );
        let az = data(&[("appId", "c"), ("tenant", "t"), ("password", "s")]);
        assert_eq!(params(SecretFormat::Az, &az), want("c", "t", None));
        let sdk = data(&[(
            "sdk-auth.json",
            r#"{"clientId":"c","tenantId":"t","activeDirectoryEndpointUrl":"https://a","clientSecret":"s"}"#,
        )]);
        assert_eq!(
            params(SecretFormat::SdkAuth, &sdk),
            want("c", "t", Some("https://a"))
        );
        let aj = data(&[(
            "azure.json",
            r#"{"aadClientId":"c","tenantId":"t","aadClientSecret":"s"}"#,
        )]);
        assert_eq!(params(SecretFormat::AzureJson, &aj), want("c", "t", None));
        assert_eq!(
            params(SecretFormat::Tls, &data(&[("tls.key", "k")])),
            Params::default()
        );
    }

    #[test]
    fn the_report_shows_the_hint_or_thumbprint_and_never_more() {
        let report = Report {
            namespace: "ns".into(),
            name: "creds".into(),
            format: Some("env".into()),
            key_id: Some("k1".into()),
            owner: Some("ServicePrincipal/p".into()),
            current: Some(false),
            hint: Some("abc".into()),
            sign_in: Some("signed in".into()),
            ..Report::default()
        };
        let shown = text(&report, Timestamp::UNIX_EPOCH);
        assert!(
            shown.contains("Key id:      k1 (NOT the owner's current credential)"),
            "{shown}"
        );
        assert!(
            shown.contains("Hint:        abc\n") && shown.contains("Sign-in:     signed in\n"),
            "{shown}"
        );
    }
}
