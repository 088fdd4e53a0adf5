//! The Helm chart: its CRDs are the generated ones, its values are checked by values.schema.json, and what it
//! renders is accepted by the API server and hardened as promised. (The other tests run the operator under the
//! chart's rendered RBAC.)

use std::process::Command;

use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    discovery::{ApiCapabilities, ApiResource, Discovery, Scope},
};
use serde_json::Value;

use crate::support::{MANIFEST_DIR, TestNamespace, admin_client, install_crds};

fn helm() -> String {
    std::env::var("HELM")
        .expect("HELM is set by `make test` (the helm binary built by `make chart`)")
}

const VALUES: [&str; 6] = [
    // testenv's version (helm template would otherwise assume an old default).
    "--kube-version",
    "1.37.2",
    "--set",
    "azure.tenantId=72f988bf-0000-4000-8000-000000000001",
    "--set",
    "azure.clientId=0e0e0e0e-0000-4000-8000-00000000e0e0",
];

/// `helm template` of the chart with the test values, one JSON document per object (or helm's error).
pub(crate) fn template(release: &str, ns: &str, extra: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm())
        .args([
            "template",
            release,
            &format!("{MANIFEST_DIR}/charts/entra-operator"),
        ])
        .args(["--namespace", ns])
        .args(VALUES)
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(
        serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap())
            .unwrap()
            .into_iter()
            .filter(|d| !d.is_null())
            .collect(),
    )
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    for entry in std::fs::read_dir(format!("{MANIFEST_DIR}/crds")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let chart =
            std::fs::read_to_string(format!("{MANIFEST_DIR}/charts/entra-operator/crds/{name}"))
                .unwrap_or_else(|_| {
                    panic!("charts/entra-operator/crds/{name} is missing: run `make crds`")
                });
        assert_eq!(
            chart,
            std::fs::read_to_string(&path).unwrap(),
            "charts/entra-operator/crds/{name} differs from crds/: run `make crds`"
        );
    }
}

#[test]
fn the_values_schema_refuses_what_the_operator_would() {
    for (set, why) in [
        ("replicaCount=0", "/replicaCount"),
        ("azure.cloud=mars", "/azure/cloud"),
        ("azure.tenantId=not-a-guid", "/azure/tenantId"),
        ("resyncInterval=1 hour", "/resyncInterval"),
        ("unknownKey=1", "unknownKey"),
        // One Role per watched namespace: a namespace twice would render two objects of one name.
        ("watchNamespaces={a,a}", "/watchNamespaces"),
        // Two replicas would both reconcile.
        (
            "leaderElection.enabled=false",
            "needs leaderElection.enabled",
        ),
    ] {
        let err = template("x", "default", &["--set", set]).expect_err(set);
        assert!(err.contains(why), "{set}: {err}");
    }
}

#[tokio::test]
async fn what_the_chart_renders_applies_server_side_and_is_hardened() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "chart").await;
    let release = ns.name.clone();
    let docs = template(
        &release,
        &ns.name,
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "azure.caConfigMap=azure-ca",
        ],
    )
    .unwrap();

    let discovery = Discovery::new(admin.clone()).run().await.unwrap();
    let resolve = |doc: &Value| -> (ApiResource, ApiCapabilities) {
        let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, doc["kind"].as_str().unwrap());
        discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{gvk:?} is not served"))
    };
    let pp = PatchParams::apply("entra-operator-chart-test").force();
    let mut cluster_scoped = vec![];
    for doc in &docs {
        let (ar, caps) = resolve(doc);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => {
                cluster_scoped.push((ar.clone(), obj.name_any()));
                Api::all_with(admin.clone(), &ar)
            }
            Scope::Namespaced => Api::namespaced_with(admin.clone(), &ns.name, &ar),
        };
        api.patch(&obj.name_any(), &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| {
                panic!("the API server refused {} {}: {e}", ar.kind, obj.name_any())
            });
    }
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.contains(&kind),
            "the chart renders a {kind}: {kinds:?}"
        );
    }

    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let env: Vec<(&str, &Value)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e["value"].clone())
    };
    assert_eq!(value("LEADER_ELECTION"), Some("true".into()));
    assert_eq!(
        value("AZURE_CA_FILE"),
        Some("/etc/entra-operator/ca/ca.crt".into())
    );
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "0e0e0e0e-0000-4000-8000-00000000e0e0"
    );

    // Every flag the chart sets is one the binary knows (its --help lists the variable).
    let help = Command::new(env!("CARGO_BIN_EXE_entra-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    // (--help wraps its lines: compared without white space.)
    let help: String = String::from_utf8(help.stdout)
        .unwrap()
        .split_whitespace()
        .collect();
    for (name, _) in &env {
        assert!(
            help.contains(&format!("[env:{name}=")),
            "{name} is not a flag of `run`"
        );
    }

    for (ar, name) in cluster_scoped {
        let _ = Api::<DynamicObject>::all_with(admin.clone(), &ar)
            .delete(&name, &Default::default())
            .await;
    }
    ns.cleanup().await;
}
