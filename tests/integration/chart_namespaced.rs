//! The chart with `watchNamespaces`: the operator runs under nothing but what the chart renders for it (a
//! Role in the watched namespace, a ClusterRole for what is cluster-scoped, the leader-election Role), serves
//! the watched namespace fully, and its ServiceAccount can neither read Secrets nor restart workloads in any
//! other namespace.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use entra_operator::api::{CredentialRotation, ServicePrincipal};

use crate::{
    chart::template,
    harness::{all_gone, eventually, object, text, token_status, wait_condition},
    operator_run::{Azure, Operator},
    support::{
        TestNamespace, admin_client, apply_chart_rbac, client_from, install_crds,
        service_account_kubeconfig,
    },
};

fn web_deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}},
    }))
    .unwrap()
}

/// Whether the API server lets `client` do `verb` on `resource` (group `group`) in `namespace` (None: across
/// all namespaces), optionally on one object `name`.
async fn may(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name,
        }},
    }))
    .unwrap();
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

fn forbidden<T: std::fmt::Debug>(result: kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

// Multi-threaded: the emulator runs on this test's runtime while the test blocks reading the operator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespaces_the_operator_needs_only_roles_there() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    // The release's namespace (the ServiceAccount and its Lease), the one namespace it serves, and a
    // bystander it must not reach.
    let home = TestNamespace::new(&admin, "chartns-home").await;
    let tenant = TestNamespace::new(&admin, "chartns-tenant").await;
    let other = TestNamespace::new(&admin, "chartns-other").await;
    let docs = template(
        &home.name,
        &home.name,
        &[
            "--set",
            &format!("watchNamespaces={{{}}}", tenant.name),
            "--set",
            "serviceAccount.name=entra-operator",
        ],
    )
    .unwrap();

    // What is cluster-wide is only what is cluster-scoped, and the namespaces are named.
    let cluster_role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    for rule in cluster_role["rules"].as_array().unwrap() {
        for resource in rule["resources"].as_array().unwrap() {
            match resource.as_str().unwrap() {
                // Cluster-scoped kinds: the guardrail, and expiry watches (read, and their status written).
                "delegationpolicies" | "credentialwatches" | "credentialwatches/status" => {}
                "namespaces" => assert!(
                    rule["resourceNames"].is_array(),
                    "namespaces without resourceNames: {rule}"
                ),
                other => panic!("the ClusterRole grants {other} cluster-wide: {rule}"),
            }
        }
    }
    let roles: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Role")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert!(roles.contains(&tenant.name.as_str()), "{roles:?}");
    assert!(!roles.contains(&other.name.as_str()), "{roles:?}");

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        service_account_kubeconfig(&admin, &home.name, "entra-operator", dir.path()).await;
    let rbac = apply_chart_rbac(&admin, &docs).await;
    let azure = Azure::new(&admin, &home.name).await;
    // The settings as the chart's Deployment passes them; no cluster id, so that the chart's kube-system
    // rule is what lets it start.
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let chart_env: Vec<(String, String)> = deployment["spec"]["template"]["spec"]["containers"][0]
        ["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["name"] == "WATCH_NAMESPACES"
                || e["name"].as_str().unwrap().starts_with("LEADER_ELECTION")
        })
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    assert!(
        chart_env.contains(&("WATCH_NAMESPACES".into(), tenant.name.clone())),
        "{chart_env:?}"
    );
    let mut env: Vec<(String, String)> = azure
        .env
        .iter()
        .filter(|(k, _)| k != "WATCH_NAMESPACES" && k != "ENTRA_OPERATOR_CLUSTER_ID")
        .cloned()
        .collect();
    env.extend(chart_env);
    // (A fieldRef in the chart: the pod's namespace.)
    env.push(("LEADER_ELECTION_NAMESPACE".into(), home.name.clone()));
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));

    // The watched namespace is served: a Secret delivered, a rotation that restarts a Deployment.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &tenant.name);
    deployments
        .create(&PostParams::default(), &web_deployment())
        .await
        .unwrap();
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &tenant.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &tenant.name);
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            "web",
            json!({"displayName": "web", "secret": {"name": "web-credentials"}}),
        ),
    )
    .await
    .unwrap();
    let sp = wait_condition(&sps, "web", "True", "Ready", 60).await;
    let secret = Api::<Secret>::namespaced(admin.clone(), &tenant.name)
        .get("web-credentials")
        .await
        .unwrap();
    let app_id = sp.status.unwrap().app_id.unwrap();
    assert_eq!(text(&secret, "AZURE_CLIENT_ID"), app_id);
    assert_eq!(
        token_status(&azure, &app_id, &text(&secret, "AZURE_CLIENT_SECRET")).await,
        200
    );
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "web",
                json!({"servicePrincipalRef": {"name": "web"}, "renewBefore": "1m", "overlap": "1s", "credentialLifetime": "1h",
                    "targets": {"restartWorkloads": [{"kind": "Deployment", "name": "web"}]}}),
            ),
        )
        .await
        .unwrap();
    wait_condition(&crots, "web", "True", "Ready", 60).await;
    crots
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotationToken": "a"}})),
        )
        .await
        .unwrap();
    let key_id = eventually(60, "rotated and the Deployment restarted", || async {
        let c = crots.get("web").await.map_err(|e| e.to_string())?;
        let s = c.status.clone().unwrap_or_default();
        let key = s
            .current_key_id
            .clone()
            .filter(|_| s.observed_rotation_token.as_deref() == Some("a"))
            .ok_or(format!("not rotated yet: {s:?}"))?;
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        let annotations = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        match annotations.get("entra-operator.io/restarted-for-key") {
            Some(k) if *k == key => Ok(key),
            other => Err(format!("restarted for {other:?}, want {key}")),
        }
    })
    .await;
    let secret = Api::<Secret>::namespaced(admin.clone(), &tenant.name)
        .get("web-credentials")
        .await
        .unwrap();
    assert_eq!(
        token_status(&azure, &app_id, &text(&secret, "AZURE_CLIENT_SECRET")).await,
        200,
        "the Secret holds the rotated credential ({key_id})"
    );
    // Its Events too are written under the Role.
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &tenant.name)
            .list(&ListParams::default())
            .await
            .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("entra-operator")),
        "no Event from the operator in {}",
        tenant.name
    );

    // Elsewhere its ServiceAccount reaches nothing: asked, and tried.
    let sa = client_from(&kubeconfig).await;
    let bystander: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bystander"}, "stringData": {"password": "hunter2"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &other.name)
        .create(&PostParams::default(), &bystander)
        .await
        .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), &other.name)
        .create(&PostParams::default(), &web_deployment())
        .await
        .unwrap();
    let (t, o) = (Some(tenant.name.as_str()), Some(other.name.as_str()));
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(
            may(&sa, verb, "", "secrets", t, None).await,
            "{verb} secrets in the watched namespace"
        );
        assert!(
            !may(&sa, verb, "", "secrets", o, None).await,
            "{verb} secrets in another namespace"
        );
        assert!(
            !may(&sa, verb, "", "secrets", None, None).await,
            "{verb} secrets in every namespace"
        );
    }
    for workloads in ["deployments", "statefulsets", "daemonsets"] {
        assert!(may(&sa, "patch", "apps", workloads, t, Some("web")).await);
        assert!(
            !may(&sa, "patch", "apps", workloads, o, Some("web")).await,
            "patch {workloads} in another namespace"
        );
        assert!(!may(&sa, "patch", "apps", workloads, None, None).await);
    }
    for kind in [
        "serviceprincipals",
        "credentialrotations",
        "roledelegations",
    ] {
        assert!(!may(&sa, "list", "entra-operator.io", kind, o, None).await);
        assert!(!may(&sa, "list", "entra-operator.io", kind, None, None).await);
    }
    assert!(!may(&sa, "create", "events.k8s.io", "events", o, None).await);
    assert!(!may(&sa, "get", "", "namespaces", None, Some(&other.name)).await);
    let secrets_there: Api<Secret> = Api::namespaced(sa.clone(), &other.name);
    assert!(forbidden(secrets_there.get("bystander").await));
    assert!(forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(forbidden(
        Api::<Deployment>::namespaced(sa.clone(), &other.name)
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"template": {"metadata": {"annotations": {"x": "y"}}}}})
                ),
            )
            .await
    ));
    assert_eq!(
        Api::<Deployment>::namespaced(admin.clone(), &other.name)
            .get("web")
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1)
    );
    // The namespace watch works by name (a field selector that resourceNames admits), and only by name.
    let namespaces: Api<Namespace> = Api::all(sa.clone());
    let by_name = |name: &str| ListParams::default().fields(&format!("metadata.name={name}"));
    assert_eq!(
        namespaces
            .list(&by_name(&tenant.name))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(forbidden(namespaces.list(&by_name(&other.name)).await));
    assert!(forbidden(namespaces.list(&ListParams::default()).await));

    crots.delete("web", &DeleteParams::default()).await.unwrap();
    sps.delete("web", &DeleteParams::default()).await.unwrap();
    // The operator's finalizers done.
    all_gone(&sps, 60).await;
    all_gone(&crots, 60).await;
    let log = operator.stop();
    assert!(
        !log.iter().any(|l| l.contains("forbidden")),
        "the operator was refused something:\n{}",
        log.join("\n")
    );
    rbac.delete().await;
    azure.emulator.shutdown().await.unwrap();
    for ns in [home, tenant, other] {
        ns.cleanup().await;
    }
}
