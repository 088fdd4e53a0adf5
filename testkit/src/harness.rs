//! What the end-to-end tests share: a namespace with the operator's ServiceAccount and exactly its RBAC, an
//! emulator that trusts it, and ways to wait for and inspect what the operator did.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use entra_operator::api::{DelegationPolicy, ServicePrincipal};

use crate::support::{
    AUDIENCE, TestNamespace, admin_client, emulator_trusting_testenv, grant_operator_rbac,
    install_crds, operator_azure_env, sa_token, service_account_kubeconfig,
};

/// Polls until `check` returns Some, or fails after `secs` with what was last seen.
/// One of the operator's custom resources, of `kind`, named `name`, with `spec`.
pub fn object<K: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} not reached within {secs}s; last: {last}");
}

/// Waits until every object of `api` is gone (the operator's finalizers done).
pub async fn all_gone<K>(api: &Api<K>, secs: u64)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    eventually(secs, &format!("every {kind} deleted"), || async {
        let left = api
            .list_metadata(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await
}

/// Deletes the object `name` and waits until it is gone (the operator's finalizer done); fails after `secs`
/// saying `what` was not reached.
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str, secs: u64, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(secs, what, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await
}

pub fn ready_reason(sp: &ServicePrincipal) -> Option<(String, String)> {
    let c = sp
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

pub async fn state(azure: &Azure) -> Value {
    emulator_get(azure, "/_emulator/state").await
}

/// Sets the emulator's call counts back to zero, so that `/_emulator/calls` counts from now on.
pub async fn reset_calls(azure: &Azure) {
    emulator_http(azure)
        .delete(format!("{}/_emulator/calls", azure.emulator.base_url))
        .send()
        .await
        .unwrap();
}

/// One of the emulator's own endpoints (`/_emulator/...`), as JSON.
pub async fn emulator_get(azure: &Azure, path: &str) -> Value {
    emulator_http(azure)
        .get(format!("{}{path}", azure.emulator.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn token_status(azure: &Azure, client_id: &str, secret: &str) -> u16 {
    let http = emulator_http(azure);
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    http.post(format!(
        "{}/{tenant}/oauth2/v2.0/token",
        azure.emulator.base_url
    ))
    .form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", "https://management.azure.com/.default"),
    ])
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

pub fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// An emulator that trusts `ns`'s entra-operator ServiceAccount, and the environment pointing the operator at it.
pub struct Azure {
    pub emulator: azure_emulator::Running,
    pub env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Azure {
    pub async fn new(admin: &kube::Client, ns: &str) -> Azure {
        let dir = tempfile::tempdir().unwrap();
        let emulator = emulator_trusting_testenv(ns, "entra-operator", dir.path()).await;
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(
            &token_file,
            sa_token(admin, ns, "entra-operator", AUDIENCE).await,
        )
        .unwrap();
        let mut env = operator_azure_env(&emulator, &token_file);
        env.push(("ENTRA_OPERATOR_CLUSTER_ID".into(), format!("testenv-{ns}")));
        // Only this test's namespace: other tests' objects are not this operator's business.
        env.push(("WATCH_NAMESPACES".into(), ns.to_string()));
        // Tests run side by side: each operator takes a free port for its endpoints.
        env.push(("METRICS_ADDR".into(), "127.0.0.1:0".into()));
        Azure {
            emulator,
            env,
            _dir: dir,
        }
    }

    /// The cluster id the operator is given (ENTRA_OPERATOR_CLUSTER_ID), which names what it makes in Azure.
    pub fn cluster_id(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "ENTRA_OPERATOR_CLUSTER_ID")
            .unwrap()
            .1
            .clone()
    }
}

/// What every test here starts from: a namespace, the operator's ServiceAccount with exactly its RBAC, and an
/// emulator that trusts that account through workload identity.
pub struct Setup {
    pub admin: kube::Client,
    pub ns: TestNamespace,
    pub kubeconfig: std::path::PathBuf,
    pub azure: Azure,
    pub rbac: (
        Api<k8s_openapi::api::rbac::v1::ClusterRole>,
        Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
        String,
    ),
    pub _dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new(prefix: &str) -> Setup {
        let admin = admin_client().await;
        install_crds(&admin).await;
        let ns = TestNamespace::new(&admin, prefix).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig =
            service_account_kubeconfig(&admin, &ns.name, "entra-operator", dir.path()).await;
        let rbac = grant_operator_rbac(&admin, &ns.name, "entra-operator").await;
        let azure = Azure::new(&admin, &ns.name).await;
        Setup {
            admin,
            ns,
            kubeconfig,
            azure,
            rbac,
            _dir: dir,
        }
    }
}

pub async fn teardown(
    rbac: (
        Api<k8s_openapi::api::rbac::v1::ClusterRole>,
        Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
        String,
    ),
    azure: Azure,
    ns: TestNamespace,
) {
    let (roles, bindings, name) = rbac;
    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = roles.delete(&name, &DeleteParams::default()).await;
    azure.emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}

/// The emulator's CA-trusting HTTP client.
pub fn emulator_http(azure: &Azure) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&azure.emulator.ca_file).unwrap())
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// Changes the emulator's knobs (merge patch).
pub async fn knobs(azure: &Azure, patch: Value) {
    let resp = emulator_http(azure)
        .patch(format!("{}/_emulator/knobs", azure.emulator.base_url))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

/// Adds to the emulator's world (resources, role assignments, applications).
pub async fn seed(azure: &Azure, seed: Value) {
    let resp = emulator_http(azure)
        .post(format!("{}/_emulator/seed", azure.emulator.base_url))
        .json(&seed)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

/// Calls Graph as the operator's identity (given a client secret for the test), to change things behind
/// the operator's back.
pub async fn graph_as_operator(
    azure: &Azure,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> u16 {
    as_operator(
        azure,
        "https://graph.microsoft.com",
        "/v1.0",
        method,
        path,
        body,
    )
    .await
    .0
}

/// Calls ARM as the operator's identity; returns the status and the body.
pub async fn arm_as_operator(
    azure: &Azure,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    as_operator(
        azure,
        "https://management.azure.com",
        "",
        method,
        path,
        body,
    )
    .await
}

async fn as_operator(
    azure: &Azure,
    audience: &str,
    prefix: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = emulator_http(azure);
    let base = &azure.emulator.base_url;
    seed(
        azure,
        json!({"applications": [{"displayName": "entra-operator", "appId": "0e0e0e0e-0000-4000-8000-00000000e0e0",
            "objectId": "0e0e0e0e-0000-4000-8000-00000000a0a0", "servicePrincipalId": "0e0e0e0e-0000-4000-8000-00000000b0b0",
            "clientSecrets": ["drift-test-secret"]}]}),
    )
    .await;
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    let token: Value = http
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "0e0e0e0e-0000-4000-8000-00000000e0e0"),
            ("client_secret", "drift-test-secret"),
            ("scope", &format!("{audience}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut req = http
        .request(method, format!("{base}{prefix}{path}"))
        .bearer_auth(token["access_token"].as_str().unwrap());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The Ready condition (status, reason, message) of any of the operator's kinds.
pub fn ready_of<K: serde::Serialize>(object: &K) -> Option<(String, String, String)> {
    let value = serde_json::to_value(object).ok()?;
    let c = value["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Waits until the object's Ready condition has `status` and `reason`; returns the object.
pub async fn wait_condition<K>(api: &Api<K>, name: &str, status: &str, reason: &str, secs: u64) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(secs, &format!("{name} Ready={status} {reason}"), || async {
        let object = api.get(name).await.map_err(|e| e.to_string())?;
        match ready_of(&object) {
            Some((s, r, _)) if s == status && r == reason => Ok(object),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// A policy selecting only `ns` (by the name label every namespace has, unless the spec has a selector), so
/// that tests running side by side never allow each other anything.
pub async fn put_policy(admin: &kube::Client, ns: &str, suffix: &str, spec: Value) -> String {
    let name = format!("{ns}-{suffix}");
    let mut spec = spec;
    if spec.get("namespaceSelector").is_none() {
        spec["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    }
    let policy: DelegationPolicy = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "DelegationPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<DelegationPolicy>::all(admin.clone())
        .patch(
            &name,
            &PatchParams::apply("entra-operator-tests").force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap();
    name
}

/// The Events in namespace `ns`, each as "reason: note": what a user reads with `kubectl events`.
pub async fn events_of(client: &kube::Client, ns: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// The token endpoint's answer to a sign-in (0: none). A request that got no answer at all (a pooled
/// connection the server closed) is sent again, as every Azure SDK does: only Entra's answer says whether the
/// credential works.
pub async fn sign_in(http: &(reqwest::Client, String), client_id: &str, secret: &str) -> u16 {
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    for _ in 0..3 {
        let sent = http
            .0
            .post(format!("{}/{tenant}/oauth2/v2.0/token", http.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await;
        if let Ok(answer) = sent {
            return answer.status().as_u16();
        }
    }
    0
}

/// The Python of the contract suite's venv, with Microsoft's Azure SDKs installed (once, by
/// `emulator/contract/sdk-venv.sh`): how the tests run those SDKs against the emulator.
pub fn sdk_python() -> String {
    let script = crate::repo_root().join("emulator/contract/sdk-venv.sh");
    let venv = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    assert!(
        venv.status.success(),
        "{}",
        String::from_utf8_lossy(&venv.stderr)
    );
    String::from_utf8(venv.stdout).unwrap().trim().to_string()
}
