//! What every integration test needs: a client for the testenv control plane (as admin or as any
//! ServiceAccount), the CRDs installed, and a namespace of its own.

use std::path::{Path, PathBuf};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig, NamedAuthInfo},
    runtime::wait::{await_condition, conditions},
};

/// The admin kubeconfig that `make testenv-up` writes.
pub fn admin_kubeconfig() -> PathBuf {
    let path = std::env::var_os("TESTENV_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/testenv/kubeconfig"));
    assert!(
        path.exists(),
        "no testenv kubeconfig at {}: start the control plane with `make testenv-up` (or run `make test`)",
        path.display()
    );
    path
}

/// Where `make testenv-bin` put kubectl and the control-plane binaries.
pub fn testenv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TESTENV_BIN_DIR").expect("TESTENV_BIN_DIR is set by `make test`");
    Path::new(&dir).join(name)
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub async fn admin_client() -> Client {
    client_from(&admin_kubeconfig()).await
}

/// Installs the committed CRDs (what users apply) and waits until the API server serves them.
pub async fn install_crds(client: &Client) {
    apply_crds(client, committed_crds(), |name| format!("crds/{name}.yaml")).await;
}

/// Applies CRDs and waits until the API server serves each; `origin` says where a CRD came from when the API
/// server rejects it.
pub async fn apply_crds(
    client: &Client,
    crds: Vec<CustomResourceDefinition>,
    origin: impl Fn(&str) -> String,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("entra-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server rejected {}: {e}", origin(&name)));
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} not Established within 30s"))
        .unwrap();
    }
}

/// The CRDs as committed under crds/.
pub fn committed_crds() -> Vec<CustomResourceDefinition> {
    let mut files: Vec<_> = std::fs::read_dir(crate::repo_root().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            serde_saphyr::from_str(&std::fs::read_to_string(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// A namespace of the test's own, so tests can run in parallel. Deleted by `cleanup`.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

/// Creates the ServiceAccount if needed and writes a kubeconfig that authenticates as it with a bound token
/// from the TokenRequest API, as a pod's projected token would. The operator binary can be run with it.
pub async fn service_account_kubeconfig(
    admin: &Client,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("TokenRequest returns a status")
        .token;

    let mut kubeconfig = Kubeconfig::read_from(admin_kubeconfig()).unwrap();
    let user = format!("system:serviceaccount:{namespace}:{name}");
    kubeconfig.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        }),
        other: Default::default(),
    }];
    for context in &mut kubeconfig.contexts {
        if let Some(c) = context.context.as_mut() {
            c.user = Some(user.clone());
            c.namespace = Some(namespace.into());
        }
    }
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, serde_saphyr::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// The operator's application in the emulator's built-in configuration.
pub const OPERATOR_APP: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
/// The audience of tokens exchanged for Entra tokens.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";

/// A token for a ServiceAccount (created if needed) with the given audience, as kubelet projects it.
pub async fn sa_token(client: &Client, ns: &str, name: &str, audience: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = sas.create(&PostParams::default(), &sa).await;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// An in-process emulator whose operator application trusts testenv's service-account issuer for
/// `system:serviceaccount:{ns}:{sa}`, fetching the issuer's keys through its discovery document.
pub async fn emulator_trusting_testenv(ns: &str, sa: &str, dir: &Path) -> azure_emulator::Running {
    use base64::Engine;
    let kubeconfig = Kubeconfig::read_from(admin_kubeconfig()).unwrap();
    let cluster = kubeconfig.clusters[0].cluster.clone().unwrap();
    let issuer = cluster.server.clone().unwrap();
    let ca_file = dir.join("testenv-ca.crt");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster.certificate_authority_data.as_deref().unwrap())
        .unwrap();
    std::fs::write(&ca_file, ca).unwrap();

    let mut config = azure_emulator::config::Config::default_seed();
    config.seed.trusted_issuers = vec![azure_emulator::config::TrustedIssuer {
        issuer: issuer.clone(),
        ca_file: Some(ca_file.display().to_string()),
        public_key_file: None,
    }];
    config.seed.applications[0].federated_credentials =
        vec![azure_emulator::config::SeedFederatedCredential {
            name: "testenv".into(),
            issuer,
            subject: format!("system:serviceaccount:{ns}:{sa}"),
            audiences: vec![AUDIENCE.into()],
        }];
    azure_emulator::start(azure_emulator::Options {
        config,
        state_dir: dir.join("emulator"),
        persist: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec![],
    })
    .await
    .unwrap()
}

/// What points the operator at an emulator, whichever credential it signs in with: the custom cloud's
/// endpoints, the emulator's CA, its vault proxy and its tenant.
pub fn emulator_endpoints(emulator: &azure_emulator::Running) -> Vec<(String, String)> {
    let base = &emulator.base_url;
    [
        ("AZURE_CLOUD", "custom".to_string()),
        ("AZURE_AUTHORITY_HOST", base.clone()),
        ("AZURE_GRAPH_ENDPOINT", format!("{base}/v1.0")),
        ("AZURE_RESOURCE_MANAGER_ENDPOINT", base.clone()),
        ("AZURE_CA_FILE", emulator.ca_file.display().to_string()),
        // Key vaults keep their real host names (https://{vault}.vault.azure.net); the emulator's CONNECT
        // proxy serves them, as any client reaches them: through the standard proxy variables.
        ("HTTPS_PROXY", emulator.proxy_url.clone()),
        ("NO_PROXY", "127.0.0.1,localhost".to_string()),
        (
            "AZURE_TENANT_ID",
            azure_emulator::config::Config::default_seed()
                .seed
                .tenant_id,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The environment that points the operator at an emulator with workload identity.
pub fn operator_azure_env(
    emulator: &azure_emulator::Running,
    token_file: &Path,
) -> Vec<(String, String)> {
    let mut env = emulator_endpoints(emulator);
    env.push(("AZURE_CLIENT_ID".into(), OPERATOR_APP.to_string()));
    env.push((
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        token_file.display().to_string(),
    ));
    // The emulator accepts a new credential at once unless its replication knob is on, so the verification
    // window is compressed here, as the tests compress the other intervals; the tests of verification itself
    // set their own.
    env.push(("VERIFY_SIGN_INS".into(), "2".into()));
    env.push(("VERIFY_WINDOW".into(), "1s".into()));
    env
}

/// The Helm chart as `make chart` rendered it (`helm template`), one document per object.
pub fn rendered_chart() -> Vec<serde_json::Value> {
    let path = std::env::var_os("CHART_RENDERED")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/chart/rendered.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no rendered chart at {} ({e}): run `make chart` (or `make test`)",
            path.display()
        )
    });
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The rules of the chart's object of `kind` (the operator's ClusterRole, or its leader-election Role: with
/// watchNamespaces the chart renders other Roles too, so a Role is picked by its name).
pub fn chart_rules(kind: &str) -> serde_json::Value {
    rendered_chart()
        .into_iter()
        .find(|d| {
            d["kind"] == kind
                && (kind != "Role"
                    || d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with("-leader-election")))
        })
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))["rules"]
        .clone()
}

/// The RBAC objects of a `helm template` output, applied exactly as rendered (their subjects are the chart's
/// ServiceAccount). Namespaced ones go with their namespaces; `delete` removes the cluster-scoped ones.
pub struct ChartRbac {
    admin: Client,
    cluster_roles: Vec<String>,
    cluster_role_bindings: Vec<String>,
}

pub async fn apply_chart_rbac(admin: &Client, docs: &[serde_json::Value]) -> ChartRbac {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let pp = PatchParams::apply("entra-operator-tests").force();
    let mut applied = ChartRbac {
        admin: admin.clone(),
        cluster_roles: vec![],
        cluster_role_bindings: vec![],
    };
    for doc in docs {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or_default();
        let object = doc.clone();
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                let role: ClusterRole = serde_json::from_value(object).unwrap();
                Api::<ClusterRole>::all(admin.clone())
                    .patch(&name, &pp, &Patch::Apply(&role))
                    .await
                    .unwrap();
                applied.cluster_roles.push(name);
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = serde_json::from_value(object).unwrap();
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .patch(&name, &pp, &Patch::Apply(&binding))
                    .await
                    .unwrap();
                applied.cluster_role_bindings.push(name);
            }
            Some("Role") => {
                let role: Role = serde_json::from_value(object).unwrap();
                Api::<Role>::namespaced(admin.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&role))
                    .await
                    .unwrap();
            }
            Some("RoleBinding") => {
                let binding: RoleBinding = serde_json::from_value(object).unwrap();
                Api::<RoleBinding>::namespaced(admin.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&binding))
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    applied
}

impl ChartRbac {
    pub async fn delete(self) {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        for name in &self.cluster_role_bindings {
            let _ = Api::<ClusterRoleBinding>::all(self.admin.clone())
                .delete(name, &DeleteParams::default())
                .await;
        }
        for name in &self.cluster_roles {
            let _ = Api::<ClusterRole>::all(self.admin.clone())
                .delete(name, &DeleteParams::default())
                .await;
        }
    }
}

/// The rules the operator runs under in every test: exactly the chart's ClusterRole, so that a verb the
/// chart lacks fails a test.
pub fn operator_rules() -> serde_json::Value {
    chart_rules("ClusterRole")
}

/// Binds `operator_rules()` to the ServiceAccount; returns what to delete afterwards.
pub async fn grant_operator_rbac(
    admin: &Client,
    ns: &str,
    sa: &str,
) -> (
    Api<k8s_openapi::api::rbac::v1::ClusterRole>,
    Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
    String,
) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let name = format!("{ns}-{sa}");
    let role: ClusterRole = serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "rules": operator_rules()}),
    )
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }))
    .unwrap();
    let pp = PatchParams::apply("entra-operator-tests");
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    roles.patch(&name, &pp, &Patch::Apply(&role)).await.unwrap();
    bindings
        .patch(&name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
    (roles, bindings, name)
}
