//! Key Vault targets end to end, on the real control plane and the emulator's vault (reached through its
//! proxy by its real host name, as any client reaches it): the ServicePrincipal's secret delivered to a vault
//! with the password's own dates, readable by the service principal through the Key Vault Secrets User
//! grant; rotations that a reader polling the latest version never sees fail, a kill -9 included, each
//! previous version disabled after the overlap; no write without a policy; a secret another object holds
//! left alone; the delete honouring purgeOnDelete.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, RoleDelegation, ServicePrincipal};

use crate::{
    harness::{
        Setup, delete_and_wait, emulator_get, emulator_http, eventually, object, put_policy,
        ready_of, seed, teardown, text, token_status, wait_condition,
    },
    operator_run::{Azure, Operator},
};

const VAULT: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv";
const VAULT_URI: &str = "https://contoso-kv.vault.azure.net";
/// A consumer of the vault that is not the operator: Key Vault Secrets User at the vault, seeded.
const READER_APP: &str = "7e7e7e7e-0000-4000-8000-000000007e7e";
const READER_OBJECT: &str = "7e7e7e7e-0000-4000-8000-00000000a7a7";
const READER_PRINCIPAL: &str = "7e7e7e7e-0000-4000-8000-00000000b7b7";
const READER_SECRET: &str = "kv-reader-secret-value";

/// A consumer of the vault that is not the operator (READER_APP), holding `role` at the vault.
async fn consumer(azure: &Azure, role: &str) {
    let app = json!({
        "displayName": "kv-consumer", "appId": READER_APP, "objectId": READER_OBJECT,
        "servicePrincipalId": READER_PRINCIPAL, "clientSecrets": [READER_SECRET],
    });
    let grant = json!({"scope": VAULT, "role": role, "principalId": READER_PRINCIPAL});
    seed(
        azure,
        json!({"applications": [app], "roleAssignments": [grant]}),
    )
    .await;
}

/// A client that reaches vaults as Microsoft's SDKs do here: the emulator's CA, HTTPS_PROXY for every host but
/// the loopback ones.
fn vault_http(azure: &Azure) -> reqwest::Client {
    let ca = std::fs::read(&azure.emulator.ca_file).unwrap();
    let no_proxy = reqwest::NoProxy::from_string("127.0.0.1,localhost");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .proxy(
            reqwest::Proxy::https(&azure.emulator.proxy_url)
                .unwrap()
                .no_proxy(no_proxy),
        )
        .build()
        .unwrap()
}

/// A Key Vault token for `client_id` signing in with `secret`; None if Entra refuses it.
async fn vault_token(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    secret: &str,
) -> Option<String> {
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    let answer = http
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let body: Value = answer.json().await.ok()?;
    body["access_token"].as_str().map(str::to_string)
}

/// What Microsoft's azure-keyvault-secrets reads of secret `name`, signed in (azure-identity's
/// ClientSecretCredential) as `client_id` with `secret`: the value, its dates as Unix seconds, content type and
/// tags. The SDKs' venv is the contract suite's (installed once, by `emulator/contract/sdk-venv.sh`).
fn sdk_read(azure: &Azure, client_id: &str, secret: &str, name: &str) -> Value {
    const PROGRAM: &str = r#"
import json, os, sys
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
tenant, client_id, secret, name = sys.argv[1:5]
credential = ClientSecretCredential(tenant, client_id, secret, authority=os.environ["EMULATOR_URL"],
                                    disable_instance_discovery=True)
got = SecretClient("https://contoso-kv.vault.azure.net", credential).get_secret(name)
p = got.properties
print(json.dumps({"value": got.value, "expires": int(p.expires_on.timestamp()),
                  "notBefore": int(p.not_before.timestamp()), "contentType": p.content_type, "tags": p.tags}))
"#;
    let python = crate::harness::sdk_python();
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    // Only the emulator's CA and its proxy: as a consumer anywhere reaches the vault, unchanged.
    let out = std::process::Command::new(python)
        .args(["-c", PROGRAM, &tenant, client_id, secret, name])
        .env("EMULATOR_URL", &azure.emulator.base_url)
        .env("REQUESTS_CA_BUNDLE", &azure.emulator.ca_file)
        .env("HTTPS_PROXY", &azure.emulator.proxy_url)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "azure-keyvault-secrets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The latest version of secret `name` as `token`'s holder reads it: (status, body).
async fn read_latest(http: &reqwest::Client, token: &str, name: &str) -> (u16, Value) {
    let answer = http
        .get(format!("{VAULT_URI}/secrets/{name}?api-version=7.4"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The emulator's admin API, for tasks that outlive a borrow of the test's `Azure`.
#[derive(Clone)]
struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn of(azure: &Azure) -> Admin {
        Admin {
            http: emulator_http(azure),
            base: azure.emulator.base_url.clone(),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let answer = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        answer.json().await.unwrap()
    }

    /// The vault's secrets, metadata only.
    async fn vault(&self) -> Value {
        self.get("/_emulator/keyvault/contoso-kv/secrets").await
    }

    /// The key ids of every password on application `app_id`.
    async fn passwords(&self, app_id: &str) -> BTreeSet<String> {
        let world = self.get("/_emulator/state").await;
        world["directory"]["applications"]
            .as_object()
            .unwrap()
            .values()
            .filter(|a| a["appId"] == app_id)
            .flat_map(|a| a["passwordCredentials"].as_array().unwrap().clone())
            .map(|p| p["keyId"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The vault's secrets, metadata only, as the emulator's admin view shows them.
async fn vault_view(azure: &Azure) -> Value {
    emulator_get(azure, "/_emulator/keyvault/contoso-kv/secrets").await
}

/// The versions of secret `name` in the admin view (an empty list when there is none).
fn versions(view: &Value, name: &str) -> Vec<Value> {
    view["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["versions"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// Enabled versions of `name` whose key-id tag names no password of `app_id`'s: none may ever exist.
async fn versions_of_removed_passwords(azure: &Azure, name: &str, app_id: &str) -> Vec<String> {
    let live = Admin::of(azure).passwords(app_id).await;
    versions(&vault_view(azure).await, name)
        .into_iter()
        .filter(|v| v["attributes"]["enabled"] != false)
        .filter(|v| {
            v["tags"]["entra-operator-key-id"]
                .as_str()
                .is_none_or(|k| !live.contains(k))
        })
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect()
}

/// What the vault holds of password `credential` of application `app_id`, whose text is `delivered`: the
/// text, dated as Entra dates the password, marked and typed, as a reader of the vault and Microsoft's SDK
/// (signed in as the service principal itself, through its Key Vault Secrets User grant) both read it.
async fn check_delivered(
    azure: &Azure,
    app_id: &str,
    credential: &entra_operator::api::service_principal::CredentialStatus,
    delivered: &str,
) {
    let (http, base) = (vault_http(azure), azure.emulator.base_url.clone());
    let reader = vault_token(&http, &base, READER_APP, READER_SECRET)
        .await
        .expect("the reader signs in");
    let (code, latest) = read_latest(&http, &reader, "probe-secret").await;
    assert_eq!(code, 200, "{latest}");
    let (exp, nbf) = (
        credential.end_date_time.clone().unwrap().0.as_second(),
        credential.start_date_time.clone().unwrap().0.as_second(),
    );
    assert_eq!(latest["value"], delivered);
    assert_eq!(latest["contentType"], "text/plain");
    assert_eq!(latest["tags"]["team"], "payments");
    assert_eq!(
        latest["tags"]["entra-operator-key-id"],
        credential.key_id.as_str()
    );
    assert_eq!(
        (&latest["attributes"]["exp"], &latest["attributes"]["nbf"]),
        (&json!(exp), &json!(nbf))
    );
    assert_eq!(token_status(azure, app_id, delivered).await, 200);
    let own = vault_token(&http, &base, app_id, delivered)
        .await
        .expect("the service principal signs in");
    assert_eq!(read_latest(&http, &own, "probe-secret").await.0, 200);
    let sdk = sdk_read(azure, app_id, delivered, "probe-secret");
    assert_eq!(sdk["value"], delivered);
    assert_eq!(
        (&sdk["expires"], &sdk["notBefore"]),
        (&json!(exp), &json!(nbf))
    );
    assert_eq!(sdk["contentType"], "text/plain");
    assert_eq!(sdk["tags"]["team"], "payments");
    assert_eq!(
        sdk["tags"]["entra-operator-key-id"],
        credential.key_id.as_str()
    );
}

/// Readers of the vault through rotations. Every 100 ms each reads the latest version of its secret, takes
/// the client secret out of it (from the JSON of `sdk-auth`, else the value itself) and signs in with it; a
/// failure is counted. Every 50 ms a watcher counts enabled versions whose password is gone.
struct Probe {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    orphans: Arc<AtomicU64>,
    /// The key ids read so far.
    keys: Arc<Mutex<BTreeSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    /// Reads `secrets` (name, format) as `reader` (a Key Vault token), for application `app_id`.
    fn start(
        azure: &Azure,
        reader: &str,
        app_id: &str,
        secrets: &[(&'static str, &'static str)],
    ) -> Probe {
        let mut probe = Probe {
            stop: Arc::default(),
            attempts: Arc::default(),
            failures: Arc::default(),
            orphans: Arc::default(),
            keys: Arc::default(),
            tasks: vec![],
        };
        for &(name, format) in secrets {
            let (stop, attempts, failures, keys) = (
                probe.stop.clone(),
                probe.attempts.clone(),
                probe.failures.clone(),
                probe.keys.clone(),
            );
            let (http, base) = (vault_http(azure), azure.emulator.base_url.clone());
            let (reader, app) = (reader.to_string(), app_id.to_string());
            probe.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (code, latest) = read_latest(&http, &reader, name).await;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let text = client_secret(format, latest["value"].as_str().unwrap_or_default());
                    let key = latest["tags"]["entra-operator-key-id"]
                        .as_str()
                        .unwrap_or_default();
                    if code != 200 || vault_token(&http, &base, &app, &text).await.is_none() {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("reader: {name}'s latest version failed ({code}, key {key})");
                    }
                    keys.lock().unwrap().insert(key.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
            let (stop, orphans, admin) =
                (probe.stop.clone(), probe.orphans.clone(), Admin::of(azure));
            let app_id = app_id.to_string();
            probe.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // The passwords before and after the vault: a version enabled in between whose password
                    // is in neither was enabled after that password was gone.
                    let before = admin.passwords(&app_id).await;
                    let view = admin.vault().await;
                    let after = admin.passwords(&app_id).await;
                    for v in versions(&view, name) {
                        let key = v["tags"]["entra-operator-key-id"]
                            .as_str()
                            .unwrap_or_default();
                        let enabled = v["attributes"]["enabled"] != false;
                        if enabled && !before.contains(key) && !after.contains(key) {
                            orphans.fetch_add(1, Ordering::Relaxed);
                            eprintln!(
                                "watch: {name} version {} enabled for removed password {key}",
                                v["version"]
                            );
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        probe
    }

    /// Waits until `n` passwords have been read.
    async fn keys_seen(&self, n: usize) {
        eventually(
            90,
            &format!("{n} passwords read from the vault"),
            || async {
                let count = self.keys.lock().unwrap().len();
                if count >= n {
                    Ok(())
                } else {
                    Err(format!("{count} passwords"))
                }
            },
        )
        .await;
    }

    /// Stops, and asserts what matters: many reads, none failed, no version outlived its password.
    async fn stop_and_check(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let attempts = self.attempts.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        assert!(attempts > 20, "the readers read {attempts} times");
        assert_eq!(
            failures, 0,
            "of {attempts} reads of the latest version, {failures} did not sign in"
        );
        let orphans = self.orphans.load(Ordering::Relaxed);
        assert_eq!(
            orphans, 0,
            "a version stayed enabled for a removed password"
        );
    }
}

/// The client secret in a value of `format`.
fn client_secret(format: &str, value: &str) -> String {
    match format {
        "sdk-auth" => serde_json::from_str::<Value>(value)
            .ok()
            .and_then(|v| v["clientSecret"].as_str().map(str::to_string))
            .unwrap_or_default(),
        _ => value.to_string(),
    }
}

/// A rotation of ServicePrincipal `name` every five seconds, with a two-second overlap.
fn fast_rotation(name: &str) -> CredentialRotation {
    object(
        "CredentialRotation",
        name,
        json!({"servicePrincipalRef": {"name": name}, "rotateEvery": "5s", "overlap": "2s", "credentialLifetime": "2h"}),
    )
}

/// Kills the operator (-9) right after its next rotation wrote a new password to where its text is kept,
/// before anything else, and starts it again.
fn kill_mid_rotation(
    mut operator: Operator,
    kubeconfig: &std::path::Path,
    azure: &Azure,
) -> Operator {
    operator.drain();
    operator.wait_for("rotated the client secret", Duration::from_secs(30));
    operator.signal(Signal::SIGKILL);
    let _ = operator.wait_exit(Duration::from_secs(10));
    let mut operator = Operator::start_with(kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    operator
}

// Four workers: the test blocks one reading the operator's log while the reader and the emulator run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_vault_gets_each_password_with_its_dates_and_a_reader_never_fails_through_rotations_and_a_kill()
 {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("kv-probe").await;
    consumer(&azure, "Key Vault Secrets User").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let policy = put_policy(
        &admin,
        &ns.name,
        "vault",
        json!({"keyVaults": [VAULT], "scopes": [VAULT], "roles": ["Key Vault Secrets User"]}),
    )
    .await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            "probe",
            json!({
                "displayName": "probe",
                "secret": {"name": "probe-credentials"},
                "credentialLifetime": "2h",
                "keyVaultSecrets": [{"vault": VAULT, "name": "probe-secret", "tags": {"team": "payments"}}],
            }),
        ),
    )
    .await
    .unwrap();
    rds.create(
        &PostParams::default(),
        &object(
            "RoleDelegation",
            "probe-reads-the-vault",
            json!({"principalRef": {"name": "probe"}, "role": {"name": "Key Vault Secrets User"}, "scope": VAULT}),
        ),
    )
    .await
    .unwrap();
    let sp = wait_condition(&sps, "probe", "True", "Ready", 60).await;
    let status = sp.status.clone().unwrap();
    let app_id = status.app_id.clone().unwrap();
    let credential = status.credential.clone().unwrap();
    let held = &status.key_vault_secrets[0];
    assert_eq!(
        (held.state.as_str(), held.key_id.as_ref()),
        ("Published", Some(&credential.key_id))
    );

    let delivered = text(
        &secrets.get("probe-credentials").await.unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    // The example's Key Vault Secrets User grant, which lets the service principal read its own secret.
    wait_condition(&rds, "probe-reads-the-vault", "True", "Ready", 60).await;
    check_delivered(&azure, &app_id, &credential, &delivered).await;
    let (http, base) = (vault_http(&azure), azure.emulator.base_url.clone());
    let reader = vault_token(&http, &base, READER_APP, READER_SECRET)
        .await
        .expect("the reader signs in");

    // A reader polls the latest version and signs in with it, through rotations and a kill -9.
    let probe = Probe::start(&azure, &reader, &app_id, &[("probe-secret", "password")]);
    crots
        .create(&PostParams::default(), &fast_rotation("probe"))
        .await
        .unwrap();
    probe.keys_seen(3).await;
    let operator = kill_mid_rotation(operator, &kubeconfig, &azure);
    probe.keys_seen(5).await;
    probe.stop_and_check().await;

    // Once a rotation's overlap has ended, only the newest version is enabled, and it is the current key.
    let crot = eventually(30, "the previous version disabled", || async {
        let crot = crots.get("probe").await.map_err(|e| e.to_string())?;
        let s = crot.status.clone().unwrap_or_default();
        let enabled: Vec<Value> = versions(&vault_view(&azure).await, "probe-secret")
            .into_iter()
            .filter(|v| v["attributes"]["enabled"] != false)
            .collect();
        match (&s.previous_key_id, enabled.as_slice()) {
            (None, [only])
                if only["tags"]["entra-operator-key-id"]
                    == s.current_key_id.as_deref().unwrap_or("-") =>
            {
                Ok(crot)
            }
            _ => Err(format!(
                "previous {:?}, {} enabled",
                s.previous_key_id,
                enabled.len()
            )),
        }
    })
    .await;
    assert!(
        versions_of_removed_passwords(&azure, "probe-secret", &app_id)
            .await
            .is_empty(),
        "after the kill, a version names a removed password"
    );
    let target = crot
        .status
        .unwrap()
        .targets
        .into_iter()
        .find(|t| t.kind == "KeyVaultSecret")
        .unwrap();
    assert_eq!(
        (target.name.as_str(), target.state.as_str()),
        ("contoso-kv/probe-secret", "Published")
    );
    assert!(target.version.is_some());
    delete_and_wait(&crots, "probe", 60, "the rotation").await;
    delete_and_wait(&rds, "probe-reads-the-vault", 60, "the grant").await;
    delete_and_wait(&sps, "probe", 60, "the service principal").await;
    // deletionPolicy Delete: the secret is soft-deleted (no purge asked for).
    let view = vault_view(&azure).await;
    assert!(versions(&view, "probe-secret").is_empty(), "{view}");
    assert!(
        view["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "probe-secret")
    );
    operator.signal(Signal::SIGTERM);
    // Nothing of the secrets reached the operator's log.
    let (_, log) = operator.wait_exit(Duration::from_secs(10));
    assert!(
        !log.iter().any(|l| l.contains(&delivered)),
        "a secret in the log"
    );
    let _ = Api::<entra_operator::api::DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
    teardown(rbac, azure, ns).await;
}

/// Without a policy naming the vault nothing is read or written there; a secret another object holds (or
/// that someone wrote by hand) is left alone; purgeOnDelete purges only what the object wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_writes_need_a_policy_and_never_take_a_secret_over() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("kv-guard").await;
    consumer(&azure, "Key Vault Secrets Officer").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let sp = |name: &str, secret: &str| {
        object::<ServicePrincipal>(
            "ServicePrincipal",
            name,
            json!({
                "displayName": name,
                "secret": {"name": format!("{name}-credentials")},
                "keyVaultSecrets": [{"vault": VAULT, "name": secret, "format": "sdk-auth"}],
                "purgeOnDelete": true,
            }),
        )
    };
    sps.create(&PostParams::default(), &sp("first", "shared"))
        .await
        .unwrap();
    let denied = wait_condition(&sps, "first", "False", "DeniedByPolicy", 60).await;
    let (_, _, message) = ready_of(&denied).unwrap();
    assert!(
        message.contains("spec.keyVaultSecrets[0].vault"),
        "{message}"
    );
    assert!(message.contains("keyVaults"), "{message}");
    assert!(
        versions(&vault_view(&azure).await, "shared").is_empty(),
        "written without a policy"
    );

    let policy = put_policy(
        &admin,
        &ns.name,
        "vault",
        json!({"keyVaults": [VAULT.rsplit_once("/providers").unwrap().0]}),
    )
    .await;
    let first = wait_condition(&sps, "first", "True", "Ready", 60).await;
    let view = vault_view(&azure).await;
    let written = versions(&view, "shared");
    assert_eq!(written.len(), 1, "{view}");
    assert_eq!(written[0]["contentType"], "application/json");
    assert_eq!(written[0]["tags"]["entra-operator-format"], "sdk-auth");
    assert_eq!(
        first.status.unwrap().key_vault_secrets[0]
            .version
            .as_deref(),
        written[0]["version"].as_str()
    );

    // Someone deletes the secret by hand (not purged): the next reconcile recovers it and writes again.
    let http = vault_http(&azure);
    let base = azure.emulator.base_url.clone();
    let officer = vault_token(&http, &base, READER_APP, READER_SECRET)
        .await
        .expect("the officer signs in");
    let deleted = http
        .delete(format!("{VAULT_URI}/secrets/shared?api-version=7.4"))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    sps.patch(
        "first",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
    )
    .await
    .unwrap();
    let key = eventually(
        60,
        "the deleted secret recovered and written again",
        || async {
            let sp = sps.get("first").await.map_err(|e| e.to_string())?;
            let key = sp
                .status
                .and_then(|s| s.credential)
                .map(|c| c.key_id)
                .unwrap_or_default();
            let (code, latest) = read_latest(&http, &officer, "shared").await;
            match (code, latest["tags"]["entra-operator-key-id"].as_str()) {
                (200, Some(k)) if k == key => Ok(key),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(!key.is_empty());
    let held = versions(&vault_view(&azure).await, "shared").len();
    assert_eq!(
        held, 2,
        "the recovered version and the one written after it"
    );

    // A second object naming the same secret is a Conflict naming the first, and writes nothing.
    sps.create(&PostParams::default(), &sp("second", "shared"))
        .await
        .unwrap();
    let conflict = wait_condition(&sps, "second", "False", "Conflict", 60).await;
    let (_, _, message) = ready_of(&conflict).unwrap();
    assert!(
        message.contains(&format!("{}/ServicePrincipal/first", ns.name)),
        "{message}"
    );
    assert_eq!(versions(&vault_view(&azure).await, "shared").len(), held);
    delete_and_wait(&sps, "second", 60, "the second object").await;
    assert_eq!(
        versions(&vault_view(&azure).await, "shared").len(),
        held,
        "the loser's delete took the secret"
    );

    // Deleted with purgeOnDelete: gone from the vault and from its deleted secrets.
    delete_and_wait(&sps, "first", 60, "the first object").await;
    let view = vault_view(&azure).await;
    assert!(versions(&view, "shared").is_empty(), "{view}");
    assert!(
        !view["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "shared"),
        "{view}"
    );
    operator.signal(Signal::SIGTERM);
    let _ = Api::<entra_operator::api::DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
    teardown(rbac, azure, ns).await;
}

/// A ServicePrincipal without a Kubernetes Secret: the vaults alone hold its client secret (the first one is
/// where the operator reads it back from). Nothing reaches a Kubernetes Secret; a target added later gets
/// the same password; a rotation moves every vault with no failed read, and no version outlives its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_secret_the_vaults_alone_hold_the_password_through_rotations() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("kv-only").await;
    consumer(&azure, "Key Vault Secrets User").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let policy = put_policy(&admin, &ns.name, "vault", json!({"keyVaults": [VAULT]})).await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let target = |name: &str, format: &str| json!({"vault": VAULT, "name": name, "format": format});
    let mut spec = json!({
        "displayName": "vaulted",
        "credentialLifetime": "2h",
        "keyVaultSecrets": [target("vaulted-home", "sdk-auth"), target("vaulted-plain", "password")],
    });
    sps.create(
        &PostParams::default(),
        &object("ServicePrincipal", "vaulted", spec.clone()),
    )
    .await
    .unwrap();
    let sp = wait_condition(&sps, "vaulted", "True", "Ready", 60).await;
    let status = sp.status.unwrap();
    let (app_id, key) = (status.app_id.unwrap(), status.credential.unwrap().key_id);
    assert_eq!(status.secret_name, None);
    let all: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let written: Vec<String> = all
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"))
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert!(written.is_empty(), "Secrets written: {written:?}");
    let (http, base) = (vault_http(&azure), azure.emulator.base_url.clone());
    let reader = vault_token(&http, &base, READER_APP, READER_SECRET)
        .await
        .unwrap();
    let (_, plain) = read_latest(&http, &reader, "vaulted-plain").await;
    let (_, home) = read_latest(&http, &reader, "vaulted-home").await;
    let text = plain["value"].as_str().unwrap().to_string();
    let sdk_auth: Value = serde_json::from_str(home["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        sdk_auth["clientSecret"],
        text.as_str(),
        "both vaults hold the one password"
    );
    assert_eq!(plain["tags"]["entra-operator-key-id"], key.as_str());
    assert_eq!(token_status(&azure, &app_id, &text).await, 200);

    // A target added later gets the same password, its text read back from the first vault.
    spec["keyVaultSecrets"]
        .as_array_mut()
        .unwrap()
        .push(target("vaulted-env", "env"));
    sps.patch(
        "vaulted",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": spec})),
    )
    .await
    .unwrap();
    let env = eventually(60, "the added target written", || async {
        let (code, latest) = read_latest(&http, &reader, "vaulted-env").await;
        match code {
            200 => Ok(latest),
            other => Err(format!("{other}")),
        }
    })
    .await;
    let env: Value = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
    assert_eq!(env["AZURE_CLIENT_SECRET"], text.as_str());

    // Rotations: every vault moves on, and a reader of each never fails to sign in, a kill -9 included
    // (right after a new password reached the first vault, its only home).
    let probe = Probe::start(
        &azure,
        &reader,
        &app_id,
        &[("vaulted-home", "sdk-auth"), ("vaulted-plain", "password")],
    );
    crots
        .create(&PostParams::default(), &fast_rotation("vaulted"))
        .await
        .unwrap();
    probe.keys_seen(3).await;
    let operator = kill_mid_rotation(operator, &kubeconfig, &azure);
    probe.keys_seen(5).await;
    probe.stop_and_check().await;
    for name in ["vaulted-home", "vaulted-plain", "vaulted-env"] {
        eventually(
            30,
            &format!("{name}: no enabled version of a removed password"),
            || async {
                match versions_of_removed_passwords(&azure, name, &app_id)
                    .await
                    .as_slice()
                {
                    [] => Ok(()),
                    left => Err(format!("{left:?}")),
                }
            },
        )
        .await;
    }
    let secrets_now = all.list(&Default::default()).await.unwrap().items;
    assert!(
        secrets_now
            .iter()
            .all(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token")),
        "a rotation wrote a Kubernetes Secret"
    );
    operator.signal(Signal::SIGTERM);
    let _ = Api::<entra_operator::api::DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
    teardown(rbac, azure, ns).await;
}
