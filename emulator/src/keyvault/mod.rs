//! Azure Key Vault's data plane for secrets, in the RBAC permission model. A vault is an ARM resource of type
//! `Microsoft.KeyVault/vaults` in the registry; it is reached as its own host (`https://{name}.vault.azure.net`
//! and the sovereign suffixes), through the CONNECT proxy (`proxy.rs`) or a Host header on the main listener.
//!
//! Order of checks, as Key Vault answers: the bearer token first (401 with the `WWW-Authenticate` challenge
//! the SDKs' challenge policies read), then the api-version (400 `BadParameter`), then the data action (403
//! `ForbiddenByRbac`), then the operation. Sources: Learn *Authentication, requests and responses* (the
//! challenge and the error shape), the REST reference *Secrets* and azure-rest-api-specs
//! `specification/keyvault/data-plane/Microsoft.KeyVault/stable/7.5/secrets.json` (paths, bodies);
//! error texts as Key Vault sends them where an issue or page records them (see the README).

pub mod proxy;
pub mod rbac;
pub mod secrets;

use std::{collections::HashMap, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderValue, Method, StatusCode, request::Parts},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    auth::authenticate,
    http::{RequestIds, json_response},
    jwt::{Api, TokenProblem},
    server::Ctx,
    state::World,
};

pub use secrets::{DeletedSecret, Secret, SecretVersion, VaultSecrets};

/// The api-versions Key Vault's secrets accept: those azure-keyvault-secrets 4.12 lists (`ApiVersion` in
/// `_shared/client_base.py`, its default 2026-04-01) and the specs' stable folders.
pub const API_VERSIONS: &[&str] = &[
    "2016-10-01",
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

/// Vault DNS suffixes and the resource (token audience) of their cloud: public, US Government, China
/// (Learn *Azure Key Vault security: DNS suffixes*; the clouds' `keyvault` endpoints).
pub const DNS_SUFFIXES: &[(&str, &str)] = &[
    (".vault.azure.net", "https://vault.azure.net"),
    (
        ".vault.usgovcloudapi.net",
        "https://vault.usgovcloudapi.net",
    ),
    (".vault.azure.cn", "https://vault.azure.cn"),
];

/// A vault's host as a client named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultHost {
    /// The vault's name, lowercase.
    pub name: String,
    /// `{name}{suffix}`, lowercase, without a port: what ids in responses start with.
    pub host: String,
    /// The resource of the vault's cloud, e.g. `https://vault.azure.net`.
    pub resource: &'static str,
}

/// The vault a host (with or without `:port`) names, if it ends in a vault DNS suffix (case-insensitive).
pub fn parse_host(host: &str) -> Option<VaultHost> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host,
    };
    DNS_SUFFIXES.iter().find_map(|(suffix, resource)| {
        let name = host.strip_suffix(suffix)?;
        (!name.is_empty() && !name.contains('.')).then(|| VaultHost {
            name: name.to_string(),
            host: host.clone(),
            resource,
        })
    })
}

/// The registry's vaults: (lowercase name, lowercase ARM id).
pub fn vaults(world: &World) -> impl Iterator<Item = (&str, &str)> {
    world
        .arm
        .resources
        .iter()
        .filter_map(|id| vault_name_of(id).map(|name| (name, id.as_str())))
}

/// The vault name in an ARM id of type Microsoft.KeyVault/vaults (and nothing below it).
pub fn vault_name_of(id: &str) -> Option<&str> {
    let segs: Vec<&str> = id.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [s, _, g, _, p, ns, t, name]
            if s.eq_ignore_ascii_case("subscriptions")
                && g.eq_ignore_ascii_case("resourceGroups")
                && p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.KeyVault")
                && t.eq_ignore_ascii_case("vaults") =>
        {
            Some(name)
        }
        _ => None,
    }
}

/// The ARM id of the vault named `name`, if the registry holds one.
pub fn vault_id(world: &World, name: &str) -> Option<String> {
    vaults(world)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, id)| id.to_string())
}

/// Where a vault is: the registry keeps ids only, so the resource groups' default.
pub const VAULT_LOCATION: &str = crate::arm::resources::DEFAULT_LOCATION;

/// Key Vault's error: `{"error":{"code","message","innererror"?:{"code"}}}` (KeyVaultError in the specs).
pub fn kv_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    json_response(status, &json!({"error": error}))
}

/// A failed operation, turned into Key Vault's error shape at the edge.
#[derive(Debug)]
pub struct KvError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub inner: Option<&'static str>,
}

impl KvError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        KvError {
            status,
            code,
            message: message.into(),
            inner: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    fn into_response(self) -> Response {
        kv_error(self.status, self.code, &self.message, self.inner)
    }
}

/// The 401 Key Vault answers without a valid token: the challenge names the authority (this emulator, with
/// the tenant as its path, which the SDKs take the tenant from) and the vault's resource.
fn challenge(ctx: &Ctx, vault: &VaultHost, tenant: &str, message: &str) -> Response {
    let mut resp = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"{}/{tenant}\", resource=\"{}\"",
        ctx.base_url, vault.resource
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert("www-authenticate", v);
    }
    resp
}

/// Serves one vault request (the host has already been recognised as a vault's).
pub async fn handle(ctx: &Ctx, parts: &Parts, body: Bytes, vault: VaultHost) -> Response {
    let ids = RequestIds::new(&parts.headers);
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .to_string();
    let route = secrets::Route::parse(&parts.method, &path);
    let template = route
        .as_ref()
        .map_or("keyvault unknown route".to_string(), |r| {
            format!("keyvault {} {}", parts.method, r.template())
        });
    let mut resp = serve(ctx, parts, body, &vault, route, &path).await;
    if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
        resp.headers_mut().insert("x-ms-request-id", v);
    }
    ctx.count(&template, resp.status());
    resp
}

async fn serve(
    ctx: &Ctx,
    parts: &Parts,
    body: Bytes,
    vault: &VaultHost,
    route: Option<secrets::Route>,
    path: &str,
) -> Response {
    let (tenant, vault_id) = {
        let world = ctx.world.lock();
        (world.tenant_id.clone(), vault_id(&world, &vault.name))
    };
    let Some(vault_id) = vault_id else {
        // Only reachable through a Host header: the proxy refuses unknown vaults, and DNS would not resolve.
        return kv_error(
            StatusCode::NOT_FOUND,
            "VaultNotFound",
            &format!("No vault named {} exists in this emulator.", vault.name),
            None,
        );
    };
    let caller = match authenticate(ctx, &parts.headers, Api::KeyVault, vault.resource) {
        Ok(c) => c,
        Err(problem) => {
            let message = match problem {
                // The texts Key Vault sends (azure-docs#109562, crossplane-contrib/provider-azure#346).
                TokenProblem::Missing => {
                    "AKV10000: Request is missing a Bearer or PoP token.".to_string()
                }
                TokenProblem::WrongAudience => format!(
                    "AKV10022: Invalid audience. Expected {}, found: {}.",
                    vault.resource,
                    token_audience(ctx, &parts.headers).unwrap_or_default()
                ),
                // No recorded Key Vault text for these: the emulator's own, without an AKV code.
                TokenProblem::Expired => "The access token has expired.".to_string(),
                TokenProblem::Invalid => "The access token is not valid.".to_string(),
            };
            return challenge(ctx, vault, &tenant, &message);
        }
    };
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    if let Err(e) = check_api_version(query.get("api-version").map(String::as_str)) {
        return e.into_response();
    }
    if let Some(resp) = inject_faults(ctx, &parts.method, path).await {
        return resp;
    }
    let Some(route) = route else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "The requested URI {} {path} is not supported by this emulator.",
                parts.method
            ),
            None,
        );
    };
    let op = secrets::Op {
        ctx,
        vault,
        vault_id: &vault_id,
        caller: &caller,
        query: &query,
        body: &body,
    };
    match op.run(&route) {
        Ok((status, value)) => json_response(status, &value),
        Err(e) => e.into_response(),
    }
}

/// The audience of the request's (validly signed) bearer token, for the AKV10022 message.
fn token_audience(ctx: &Ctx, headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let token = value.get(7..)?.trim();
    ctx.keys.verify(token).ok().map(|c| c.aud)
}

/// Key Vault refuses an unknown or missing api-version with 400 BadParameter (azure-sdk-for-python#28595,
/// azure-sdk-for-net#14789 quote the text).
fn check_api_version(version: Option<&str>) -> Result<(), KvError> {
    let latest = API_VERSIONS[API_VERSIONS.len() - 1];
    match version {
        Some(v) if API_VERSIONS.contains(&v) => Ok(()),
        Some(v) => Err(KvError::bad(format!(
            "The specified version ({v}) is not recognized. Consider using the latest supported version ({latest})."
        ))),
        None => Err(KvError::bad(format!(
            "The api-version parameter is missing. Consider using the latest supported version ({latest})."
        ))),
    }
}

/// The `faults` knob, as ARM and Graph apply it: latency, an injected status, or a hang.
async fn inject_faults(ctx: &Ctx, method: &Method, path: &str) -> Option<Response> {
    let injected = {
        let knobs = ctx.knobs.read();
        ctx.faults.lock().pick(&knobs.faults, method.as_str(), path)
    };
    if injected.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(injected.latency_ms)).await;
    }
    if let Some(ms) = injected.timeout_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Some(kv_error(
            StatusCode::GATEWAY_TIMEOUT,
            "GatewayTimeout",
            "The gateway did not receive a response within the specified time period.",
            None,
        ));
    }
    let status = injected.status?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = match status.as_u16() {
        // Key Vault's throttling answer (Learn *Azure Key Vault throttling guidance*).
        429 => (
            "Throttled",
            "Request was not processed because too many requests were received. Reason: A large number of requests from the caller were received in a short period of time.",
        ),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        _ => ("InternalServerError", "An internal server error occurred."),
    };
    let mut resp = kv_error(status, code, message, None);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    Some(resp)
}

/// Every vault's secrets as metadata (no values), for `GET /_emulator/keyvault/{vault}/secrets`.
pub fn admin_view(world: &World, name: &str) -> Option<Value> {
    vault_id(world, name)?;
    let empty = VaultSecrets::default();
    let secrets = world
        .vaults
        .get(&name.to_ascii_lowercase())
        .unwrap_or(&empty);
    Some(secrets::admin_json(secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_hosts_are_recognised_in_every_cloud() {
        let h = parse_host("Contoso-KV.vault.azure.net:443").unwrap();
        assert_eq!(h.name, "contoso-kv");
        assert_eq!(h.host, "contoso-kv.vault.azure.net");
        assert_eq!(h.resource, "https://vault.azure.net");
        assert_eq!(
            parse_host("kv.VAULT.usgovcloudapi.net").unwrap().resource,
            "https://vault.usgovcloudapi.net"
        );
        assert_eq!(
            parse_host("kv.vault.azure.cn").unwrap().resource,
            "https://vault.azure.cn"
        );
        assert!(parse_host("vault.azure.net").is_none());
        assert!(parse_host("a.b.vault.azure.net").is_none());
        assert!(parse_host("example.com").is_none());
        assert!(parse_host("127.0.0.1:8443").is_none());
    }

    #[test]
    fn vault_ids_are_recognised() {
        assert_eq!(
            vault_name_of(
                "/subscriptions/s/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv"
            ),
            Some("kv")
        );
        assert_eq!(
            vault_name_of(
                "/subscriptions/s/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv/secrets/x"
            ),
            None
        );
    }

    #[test]
    fn api_versions_are_checked() {
        assert!(check_api_version(Some("7.5")).is_ok());
        assert!(check_api_version(Some("2026-04-01")).is_ok());
        let e = check_api_version(Some("7.9")).unwrap_err();
        assert_eq!(e.code, "BadParameter");
        assert!(
            e.message
                .starts_with("The specified version (7.9) is not recognized.")
        );
        assert!(check_api_version(None).is_err());
    }
}
