//! Key Vault secrets as clients meet them: the challenge and the token audience, the secrets life cycle
//! (versions, attributes, soft delete, recover, purge), Key Vault's RBAC model, and the CONNECT proxy that
//! makes `https://{vault}.vault.azure.net` reachable.

use std::time::Duration;

use azure_emulator::{Options, Running, config::Config, start};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR_APP: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const SECRET: &str = "operator-test-secret-0123456789";
const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const VAULT_ID: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv";
const VAULT: &str = "https://contoso-kv.vault.azure.net";
const USER_APP: &str = "3c3c3c3c-0000-4000-8000-000000003c3c";
const OWNER_APP: &str = "4d4d4d4d-0000-4000-8000-000000004d4d";
const RG_OFFICER_APP: &str = "5e5e5e5e-0000-4000-8000-000000005e5e";

/// The built-in configuration plus three identities: a Secrets User at the vault, an Owner of the
/// subscription, and a Secrets Officer at the vault's resource group.
fn config() -> Config {
    let mut config = Config::default_seed();
    config.seed.applications[0].client_secrets = vec![SECRET.into()];
    for (app, n, scope, role) in [
        (
            USER_APP,
            "3c",
            VAULT_ID.to_string(),
            "Key Vault Secrets User",
        ),
        (OWNER_APP, "4d", SUB.to_string(), "Owner"),
        (
            RG_OFFICER_APP,
            "5e",
            format!("{SUB}/resourceGroups/rg-shared"),
            "Key Vault Secrets Officer",
        ),
    ] {
        let sp = format!("{n}{n}{n}{n}-0000-4000-8000-0000000000{n}");
        config.seed.applications.push(
            serde_json::from_value(json!({
                "displayName": format!("kv-{n}"), "appId": app, "objectId": format!("{n}{n}{n}{n}-0000-4000-8000-00000000a0{n}"),
                "servicePrincipalId": sp, "clientSecrets": [SECRET],
            }))
            .unwrap(),
        );
        config.seed.role_assignments.push(
            serde_json::from_value(json!({"scope": scope, "role": role, "principalId": sp}))
                .unwrap(),
        );
    }
    config
}

struct Emu {
    running: Running,
    /// Reaches vault hosts through the emulator's CONNECT proxy.
    vault: Client,
    /// Reaches the main listener directly.
    direct: Client,
    _dir: Option<tempfile::TempDir>,
}

impl Emu {
    async fn new() -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let running = start(Options {
            config: config(),
            state_dir: dir.path().to_path_buf(),
            persist: false,
            listen: "127.0.0.1:0".parse().unwrap(),
            hostnames: vec![],
        })
        .await
        .unwrap();
        Emu {
            _dir: Some(dir),
            ..Emu::with(running)
        }
    }

    /// Clients for a running emulator (whose state directory the caller keeps).
    fn with(running: Running) -> Emu {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&running.ca_file).unwrap()).unwrap();
        let builder = || {
            Client::builder()
                .add_root_certificate(ca.clone())
                .timeout(Duration::from_secs(10))
        };
        let vault = builder()
            .proxy(reqwest::Proxy::https(&running.proxy_url).unwrap())
            .build()
            .unwrap();
        let direct = builder().no_proxy().build().unwrap();
        Emu {
            running,
            vault,
            direct,
            _dir: None,
        }
    }

    async fn token(&self, app: &str, scope: &str) -> String {
        let tenant = Config::default_seed().seed.tenant_id;
        let resp: Value = self
            .direct
            .post(format!(
                "{}/{tenant}/oauth2/v2.0/token",
                self.running.base_url
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", app),
                ("client_secret", SECRET),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["access_token"].as_str().expect("a token").to_string()
    }

    async fn kv_token(&self, app: &str) -> String {
        self.token(app, "https://vault.azure.net/.default").await
    }

    /// A vault call through the proxy; `path` carries its own query, api-version 7.5 is added.
    async fn kv(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = if path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{VAULT}{path}{sep}api-version=7.5")
        };
        let mut req = self.vault.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn the_challenge_names_the_authority_and_only_vault_tokens_pass() {
    let emu = Emu::new().await;
    let (status, headers, body) = emu.kv(None, Method::GET, "/secrets/x", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer authorization=\"{}/72f988bf-0000-4000-8000-000000000001\", resource=\"https://vault.azure.net\"",
            emu.running.base_url
        )
    );
    // An ARM or Graph token is for another audience: 401, with the challenge again.
    for scope in [
        "https://management.azure.com/.default",
        "https://graph.microsoft.com/.default",
    ] {
        let token = emu.token(OPERATOR_APP, scope).await;
        let (status, headers, body) = emu.kv(Some(&token), Method::GET, "/secrets/x", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{scope}");
        assert!(headers.contains_key("www-authenticate"));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "AKV10022: Invalid audience. Expected https://vault.azure.net, found: https://"
            ),
            "{message}"
        );
    }
    let token = emu.kv_token(OPERATOR_APP).await;
    let claims = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64_decode(claims)).unwrap();
    assert_eq!(claims["aud"], "https://vault.azure.net");
    let (status, _, body) = emu.kv(Some(&token), Method::GET, "/secrets/x", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "SecretNotFound");
    // An unknown or missing api-version.
    let (status, _, body) = emu
        .kv(
            Some(&token),
            Method::GET,
            &format!("{VAULT}/secrets?api-version=7.9"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "BadParameter");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The specified version (7.9) is not recognized.")
    );
    let (status, _, _) = emu
        .kv(Some(&token), Method::GET, &format!("{VAULT}/secrets"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    emu.running.shutdown().await.unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn secrets_have_versions_and_attributes() {
    let emu = Emu::new().await;
    let token = emu.kv_token(OPERATOR_APP).await;
    let t = Some(token.as_str());
    let body = json!({"value": "s3cret-1", "contentType": "text/plain", "tags": {"owner": "team-a"},
                      "attributes": {"enabled": true, "nbf": 1_700_000_000, "exp": 4_100_000_000i64}});
    let (status, _, v1) = emu
        .kv(t, Method::PUT, "/secrets/db-password", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["value"], "s3cret-1");
    let id1 = v1["id"].as_str().unwrap().to_string();
    let version1 = id1
        .strip_prefix(&format!("{VAULT}/secrets/db-password/"))
        .unwrap()
        .to_string();
    assert!(
        version1.len() == 32
            && version1
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(v1["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    assert_eq!(v1["attributes"]["recoverableDays"], 90);
    assert_eq!(v1["attributes"]["nbf"], 1_700_000_000);
    assert_eq!(v1["tags"]["owner"], "team-a");
    let (_, _, v2) = emu
        .kv(
            t,
            Method::PUT,
            "/secrets/db-password",
            Some(json!({"value": "s3cret-2"})),
        )
        .await;
    let (status, _, latest) = emu.kv(t, Method::GET, "/secrets/db-password", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (latest["value"].clone(), latest["id"].clone()),
        (json!("s3cret-2"), v2["id"].clone())
    );
    // Versions, one per page, by nextLink.
    let (_, _, page) = emu
        .kv(
            t,
            Method::GET,
            "/secrets/db-password/versions?maxresults=1",
            None,
        )
        .await;
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
    assert!(
        page["value"][0].get("value").is_none(),
        "lists carry no values"
    );
    let next = page["nextLink"].as_str().unwrap().to_string();
    let (_, _, page2) = emu.kv(t, Method::GET, &next, None).await;
    assert_eq!(page2["value"].as_array().unwrap().len(), 1);
    assert!(page2["nextLink"].is_null());
    // Disable version 1: reading it is refused, the latest still reads.
    let (status, _, updated) = emu
        .kv(
            t,
            Method::PATCH,
            &format!("/secrets/db-password/{version1}"),
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["attributes"]["enabled"], false);
    assert!(updated.get("value").is_none());
    let (status, _, err) = emu
        .kv(
            t,
            Method::GET,
            &format!("/secrets/db-password/{version1}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["error"]["innererror"]["code"], "SecretDisabled");
    assert_eq!(
        err["error"]["message"],
        "Operation get is not allowed on a disabled secret."
    );
    let (_, _, list) = emu.kv(t, Method::GET, "/secrets", None).await;
    assert_eq!(
        list["value"][0]["id"],
        format!("{VAULT}/secrets/db-password")
    );
    emu.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleted_secrets_are_recoverable_until_purged() {
    let emu = Emu::new().await;
    let token = emu.kv_token(OPERATOR_APP).await;
    let t = Some(token.as_str());
    emu.kv(
        t,
        Method::PUT,
        "/secrets/db-password",
        Some(json!({"value": "s3cret-1"})),
    )
    .await;
    let (_, _, v2) = emu
        .kv(
            t,
            Method::PUT,
            "/secrets/db-password",
            Some(json!({"value": "s3cret-2"})),
        )
        .await;
    // Soft delete, conflict on reuse, recover, delete again, purge.
    let (status, _, deleted) = emu
        .kv(t, Method::DELETE, "/secrets/db-password", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted["recoveryId"],
        format!("{VAULT}/deletedsecrets/db-password")
    );
    assert_eq!(
        deleted["scheduledPurgeDate"].as_i64().unwrap() - deleted["deletedDate"].as_i64().unwrap(),
        90 * 86400
    );
    assert_eq!(
        emu.kv(t, Method::GET, "/secrets/db-password", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, err) = emu
        .kv(
            t,
            Method::PUT,
            "/secrets/db-password",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"]["code"], "Conflict");
    assert_eq!(
        emu.kv(t, Method::GET, "/deletedsecrets/db-password", None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, recovered) = emu
        .kv(t, Method::POST, "/deletedsecrets/db-password/recover", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(recovered["id"], v2["id"]);
    assert_eq!(
        emu.kv(t, Method::GET, "/secrets/db-password", None).await.2["value"],
        "s3cret-2"
    );
    emu.kv(t, Method::DELETE, "/secrets/db-password", None)
        .await;
    assert_eq!(
        emu.kv(t, Method::DELETE, "/deletedsecrets/db-password", None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (status, _, err) = emu
        .kv(t, Method::GET, "/deletedsecrets/db-password", None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("SecretNotFound"))
    );
    // Names and bodies are checked.
    assert_eq!(
        emu.kv(
            t,
            Method::PUT,
            "/secrets/bad_name",
            Some(json!({"value": "x"}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let resp = emu
        .vault
        .put(format!("{VAULT}/secrets/ok?api-version=7.5"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    emu.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn rbac_data_actions_decide_and_owner_reads_no_secrets() {
    let emu = Emu::new().await;
    let officer = emu.kv_token(OPERATOR_APP).await;
    emu.kv(
        Some(&officer),
        Method::PUT,
        "/secrets/shared",
        Some(json!({"value": "v"})),
    )
    .await;
    let user = emu.kv_token(USER_APP).await;
    assert_eq!(
        emu.kv(Some(&user), Method::GET, "/secrets/shared", None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, err) = emu
        .kv(
            Some(&user),
            Method::PUT,
            "/secrets/shared",
            Some(json!({"value": "w"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["error"]["code"], "Forbidden");
    assert_eq!(err["error"]["innererror"]["code"], "ForbiddenByRbac");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Action: 'Microsoft.KeyVault/vaults/secrets/setSecret/action'"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "Resource: '{}/secrets/shared'",
            VAULT_ID.to_ascii_lowercase()
        )),
        "{message}"
    );
    let owner = emu.kv_token(OWNER_APP).await;
    let (status, _, err) = emu
        .kv(Some(&owner), Method::GET, "/secrets/shared", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an Owner has no data actions: {err}"
    );
    let rg_officer = emu.kv_token(RG_OFFICER_APP).await;
    assert_eq!(
        emu.kv(
            Some(&rg_officer),
            Method::PUT,
            "/secrets/from-rg",
            Some(json!({"value": "v"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    // The admin view shows versions without values.
    let view: Value = emu
        .direct
        .get(format!(
            "{}/_emulator/keyvault/contoso-kv/secrets",
            emu.running.base_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["secrets"].as_array().unwrap().len(), 2);
    assert!(!view.to_string().contains("\"value\""), "{view}");
    let state: Value = emu
        .direct
        .get(format!("{}/_emulator/state", emu.running.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!state["vaults"].to_string().contains("\"value\""));
    emu.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn arm_shows_the_vault_and_a_host_header_reaches_it_directly() {
    let emu = Emu::new().await;
    let arm = emu
        .token(OPERATOR_APP, "https://management.azure.com/.default")
        .await;
    let vault: Value = emu
        .direct
        .get(format!(
            "{}{VAULT_ID}?api-version=2023-07-01",
            emu.running.base_url
        ))
        .bearer_auth(&arm)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        vault["properties"]["vaultUri"],
        "https://contoso-kv.vault.azure.net/"
    );
    assert_eq!(vault["properties"]["enableRbacAuthorization"], true);
    assert_eq!(vault["type"], "Microsoft.KeyVault/vaults");
    // As if /etc/hosts mapped the vault's name to the emulator.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&emu.running.ca_file).unwrap()).unwrap();
    let mapped = Client::builder()
        .add_root_certificate(ca)
        .no_proxy()
        .resolve("contoso-kv.vault.azure.net", emu.running.addr)
        .build()
        .unwrap();
    let resp = mapped
        .get(format!(
            "https://contoso-kv.vault.azure.net:{}/secrets?api-version=7.5",
            emu.running.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    // A sovereign cloud's suffix: its own resource in the challenge.
    let resp = emu
        .vault
        .get("https://contoso-kv.vault.azure.cn/secrets?api-version=7.5")
        .send()
        .await
        .unwrap();
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.ends_with("resource=\"https://vault.azure.cn\""),
        "{challenge}"
    );
    emu.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn fault_knobs_apply_to_vault_routes() {
    let emu = Emu::new().await;
    let token = emu.kv_token(OPERATOR_APP).await;
    let knobs = json!({"faults": [{"pathContains": "/secrets/flaky", "rate": 1.0, "status": 429}]});
    let resp = emu
        .direct
        .patch(format!("{}/_emulator/knobs", emu.running.base_url))
        .json(&knobs)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, headers, body) = emu
        .kv(Some(&token), Method::GET, "/secrets/flaky", None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "Throttled");
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = emu
        .kv(Some(&token), Method::GET, "/secrets/steady", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    emu.running.shutdown().await.unwrap();
}

/// Sends a raw request to the proxy and returns its status line.
async fn proxy_answer(emu: &Emu, request: &str) -> String {
    let addr = emu.running.proxy_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_proxy_tunnels_only_to_known_vaults() {
    let emu = Emu::new().await;
    let line = |host: &str| format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(
        proxy_answer(&emu, &line("CONTOSO-KV.vault.azure.net:443")).await,
        "HTTP/1.1 200 Connection established"
    );
    assert_eq!(
        proxy_answer(&emu, &line("example.com:443")).await,
        "HTTP/1.1 403 Forbidden"
    );
    assert_eq!(
        proxy_answer(&emu, &line("nope.vault.azure.net:443")).await,
        "HTTP/1.1 502 Bad Gateway"
    );
    assert_eq!(
        proxy_answer(&emu, "GET http://example.com/ HTTP/1.1\r\n\r\n").await,
        "HTTP/1.1 405 Method Not Allowed"
    );
    // A reqwest client through the proxy to a non-vault host fails rather than reaching anything.
    assert!(emu.vault.get("https://example.com/").send().await.is_err());
    emu.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn secrets_survive_a_restart_with_persist() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        config: config(),
        state_dir: dir.path().to_path_buf(),
        persist: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec![],
    };
    let first = Emu::with(start(opts()).await.unwrap());
    let token = first.kv_token(OPERATOR_APP).await;
    let (status, _, _) = first
        .kv(
            Some(&token),
            Method::PUT,
            "/secrets/kept",
            Some(json!({"value": "across-restarts"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    first.running.shutdown().await.unwrap();
    let second = Emu::with(start(opts()).await.unwrap());
    let token = second.kv_token(OPERATOR_APP).await;
    let (status, _, body) = second
        .kv(Some(&token), Method::GET, "/secrets/kept", None)
        .await;
    assert_eq!(
        (status, body["value"].clone()),
        (StatusCode::OK, json!("across-restarts"))
    );
    second.running.shutdown().await.unwrap();
}

#[test]
fn vault_names_are_globally_unique_in_a_seed() {
    let mut seed = config().seed;
    seed.resources.push(format!("{SUB}/resourceGroups/rg-aks"));
    seed.resources.push(format!(
        "{SUB}/resourceGroups/rg-aks/providers/Microsoft.KeyVault/vaults/CONTOSO-KV"
    ));
    let err = azure_emulator::state::World::from_seed(&seed).unwrap_err();
    assert!(err.to_string().contains("two vaults are named"), "{err}");
}
