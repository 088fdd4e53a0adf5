//! The tenancy boundary for CredentialRotations (issue 13, attack 2): a namespace that no policy lets reset a
//! cluster cannot take it over by naming it in spec.targets.aksClusters, a cluster is moved to another
//! application only when both the spec and a policy say so, and an AKS cluster or an application is held by
//! one object: a second claimant gets Conflict, and the victim keeps its cluster, its secret and Ready.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{self, CredentialRotation, ServicePrincipal};

use crate::{
    harness::{
        Setup, all_gone, emulator_http, object, put_policy, ready_of as ready, seed, state,
        teardown, text, token_status, wait_condition as wait_reason,
    },
    operator_run::{Azure, Operator},
    support::TestNamespace,
};

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const LEGACY_APP: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";

fn cluster(name: &str) -> String {
    format!(
        "{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/{name}"
    )
}

/// The operator's environment, watching every namespace of the test.
fn watching(azure: &Azure, namespaces: &[&str]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = azure
        .env
        .iter()
        .filter(|(k, _)| k != "WATCH_NAMESPACES")
        .cloned()
        .collect();
    env.push(("WATCH_NAMESPACES".into(), namespaces.join(",")));
    env
}

/// What the emulator's cluster runs as, and whether it holds `secret`.
async fn cluster_check(azure: &Azure, id: &str, secret: &str) -> (String, bool) {
    let answer: Value = emulator_http(azure)
        .post(format!("{}/_emulator/aks/check", azure.emulator.base_url))
        .json(&json!({"clusterId": id, "secret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        answer["clientId"].as_str().unwrap_or_default().to_string(),
        answer["secretMatches"] == true,
    )
}

/// The displayNames of the passwords on application `app_id`.
async fn password_names(azure: &Azure, app_id: &str) -> Vec<String> {
    state(azure).await["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["appId"] == app_id)
        .flat_map(|a| a["passwordCredentials"].as_array().unwrap().clone())
        .map(|p| p["displayName"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A Ready ServicePrincipal `name` in `ns` with a Secret; its appId.
async fn ready_principal(admin: &kube::Client, ns: &str, name: &str) -> String {
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), ns);
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            name,
            json!({"displayName": name, "secret": {"name": format!("{name}-credentials")}}),
        ),
    )
    .await
    .unwrap();
    wait_reason(&sps, name, "True", "Ready", 60)
        .await
        .status
        .unwrap()
        .app_id
        .unwrap()
}

async fn rotate(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Api<CredentialRotation> {
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), ns);
    let mut spec = spec;
    for (k, v) in [
        ("renewBefore", "10m"),
        ("overlap", "2s"),
        ("credentialLifetime", "1h"),
    ] {
        if spec.get(k).is_none() {
            spec[k] = json!(v);
        }
    }
    crots
        .create(
            &PostParams::default(),
            &object("CredentialRotation", name, spec),
        )
        .await
        .unwrap();
    crots
}

/// Makes the operator reconcile the object again (an annotation change is acted on).
async fn poke(crots: &Api<CredentialRotation>, name: &str, n: usize) {
    crots
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tests/poke": n.to_string()}}})),
        )
        .await
        .unwrap();
}

/// Deletes the namespace's rotations and ServicePrincipals while the operator still runs its finalizers.
async fn delete_all(admin: &kube::Client, ns: &str) {
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), ns);
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), ns);
    let _ = crots
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    let _ = sps
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    all_gone(&crots, 60).await;
    all_gone(&sps, 60).await;
}

async fn delete_policy(admin: &kube::Client, name: &str) {
    let _ = Api::<api::DelegationPolicy>::all(admin.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_another_namespaces_cluster_takes_nothing_and_a_second_claimant_gets_conflict() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tcr-victim").await;
    let intruder = TestNamespace::new(&admin, "tcr-intruder").await;
    let other = TestNamespace::new(&admin, "tcr-other").await;
    let mut operator = Operator::start_with(
        &kubeconfig,
        &watching(&azure, &[&ns.name, &intruder.name, &other.name]),
    );
    operator.wait_for("operator ready", Duration::from_secs(30));
    let prod = cluster("prod");

    // The victim: its cluster runs as its ServicePrincipal's application, and its policy lists the cluster.
    let victim_policy = put_policy(&admin, &ns.name, "aks", json!({"aksClusters": [prod]})).await;
    let victim_app = ready_principal(&admin, &ns.name, "app").await;
    seed(
        &azure,
        json!({"aksClusters": [{"id": prod, "clientId": victim_app}]}),
    )
    .await;
    let victim = rotate(
        &admin,
        &ns.name,
        "app",
        json!({"servicePrincipalRef": {"name": "app"}, "targets": {"aksClusters": [prod]}}),
    )
    .await;
    let ready_victim = wait_reason(&victim, "app", "True", "Ready", 60).await;
    let victim_key = ready_victim.status.unwrap().current_key_id.unwrap();
    let victim_secret = text(
        &Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get("app-credentials")
            .await
            .unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    assert_eq!(
        cluster_check(&azure, &prod, &victim_secret).await,
        (victim_app.clone(), true)
    );

    // From a namespace that no policy selects, even asking to move the cluster.
    let intruder_app = ready_principal(&admin, &intruder.name, "mine").await;
    let takeover = rotate(
        &admin,
        &intruder.name,
        "takeover",
        json!({"servicePrincipalRef": {"name": "mine"},
            "targets": {"aksClusters": [prod], "reassignAksClusters": true}}),
    )
    .await;
    let denied = wait_reason(&takeover, "takeover", "False", "DeniedByPolicy", 30).await;
    let message = ready(&denied).unwrap().2;
    assert!(
        message.starts_with("spec.targets.aksClusters[0]")
            && message.contains("aksClusters")
            && message.contains(&intruder.name),
        "{message}"
    );
    // Nothing rotated, nothing reset: no password beyond the ServicePrincipal's own first one.
    assert_eq!(denied.status.unwrap().current_key_id, None);
    assert_eq!(password_names(&azure, &intruder_app).await.len(), 1);

    // From a namespace whose policy lets it reset other clusters (and move them).
    let other_policy = put_policy(
        &admin,
        &other.name,
        "aks",
        json!({"aksClusters": [cluster("dev")], "aksClusterReassignment": true}),
    )
    .await;
    ready_principal(&admin, &other.name, "mine").await;
    let rival = rotate(
        &admin,
        &other.name,
        "takeover",
        json!({"servicePrincipalRef": {"name": "mine"},
            "targets": {"aksClusters": [prod], "reassignAksClusters": true}}),
    )
    .await;
    let denied = wait_reason(&rival, "takeover", "False", "DeniedByPolicy", 30).await;
    let message = ready(&denied).unwrap().2;
    assert!(
        message.starts_with("spec.targets.aksClusters[0]") && message.contains("aksClusters"),
        "{message}"
    );

    // Now its policy allows the cluster too (by its resource group): the cluster is the victim's claim.
    put_policy(
        &admin,
        &other.name,
        "aks",
        json!({"aksClusters": [format!("{SUB}/resourceGroups/rg-aks")], "aksClusterReassignment": true}),
    )
    .await;
    poke(&rival, "takeover", 0).await;
    let conflict = wait_reason(&rival, "takeover", "False", "Conflict", 30).await;
    let message = ready(&conflict).unwrap().2;
    assert!(
        message.starts_with("spec.targets.aksClusters[0]")
            && message.contains(&format!("CredentialRotation {}/app", ns.name)),
        "{message}"
    );
    // Stable: every reconcile of either gives the same answer.
    for n in 1..=4 {
        poke(&rival, "takeover", n).await;
        poke(&victim, "app", n).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = ready(&rival.get("takeover").await.unwrap()).unwrap();
        let v = ready(&victim.get("app").await.unwrap()).unwrap();
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            ("False", "Conflict"),
            "round {n}"
        );
        assert_eq!((v.0.as_str(), v.1.as_str()), ("True", "Ready"), "round {n}");
    }

    // The victim keeps its cluster, its secret and its key.
    assert_eq!(
        cluster_check(&azure, &prod, &victim_secret).await,
        (victim_app.clone(), true)
    );
    assert_eq!(token_status(&azure, &victim_app, &victim_secret).await, 200);
    let victim_now = victim.get("app").await.unwrap();
    assert_eq!(victim_now.status.unwrap().current_key_id, Some(victim_key));
    assert_eq!(
        rival
            .get("takeover")
            .await
            .unwrap()
            .status
            .unwrap()
            .current_key_id,
        None,
        "the second claimant rotated nothing"
    );

    for n in [&intruder.name, &other.name, &ns.name] {
        delete_all(&admin, n).await;
    }
    operator.stop();
    delete_policy(&admin, &victim_policy).await;
    delete_policy(&admin, &other_policy).await;
    intruder.cleanup().await;
    other.cleanup().await;
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_moves_to_another_application_only_when_the_spec_and_a_policy_both_say_so() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tcr-move").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let staging = cluster("staging");
    seed(
        &azure,
        json!({"aksClusters": [{"id": staging, "clientId": LEGACY_APP}]}),
    )
    .await;
    let policy = put_policy(&admin, &ns.name, "aks", json!({"aksClusters": [staging]})).await;
    let app = ready_principal(&admin, &ns.name, "mover").await;
    let crots = rotate(
        &admin,
        &ns.name,
        "mover",
        json!({"servicePrincipalRef": {"name": "mover"}, "targets": {"aksClusters": [staging]}}),
    )
    .await;
    let unchanged = || async { cluster_check(&azure, &staging, "none").await.0 };
    let set_reassign = |on: bool| {
        let crots = crots.clone();
        async move {
            crots
                .patch(
                    "mover",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"targets": {"reassignAksClusters": on}}})),
                )
                .await
                .unwrap();
        }
    };

    // The cluster runs as another application and the spec does not ask to move it.
    let refused = wait_reason(
        &crots,
        "mover",
        "False",
        "AKSClusterNotUsingApplication",
        30,
    )
    .await;
    let message = ready(&refused).unwrap().2;
    assert!(
        message.starts_with("spec.targets.aksClusters[0]")
            && message.contains(LEGACY_APP)
            && message.contains(&app)
            && message.contains("spec.targets.reassignAksClusters"),
        "{message}"
    );
    assert_eq!(
        refused.status.unwrap().current_key_id,
        None,
        "nothing rotated"
    );
    assert_eq!(unchanged().await, LEGACY_APP);

    // The spec asks, the policy does not allow it.
    set_reassign(true).await;
    let denied = wait_reason(&crots, "mover", "False", "DeniedByPolicy", 30).await;
    let message = ready(&denied).unwrap().2;
    assert!(
        message.starts_with("spec.targets.reassignAksClusters")
            && message.contains("aksClusterReassignment"),
        "{message}"
    );
    assert_eq!(unchanged().await, LEGACY_APP);

    // The policy allows it, the spec does not ask. The spec first: a policy change is acted on at once, and
    // with the spec still asking, the move would then be allowed.
    set_reassign(false).await;
    wait_reason(
        &crots,
        "mover",
        "False",
        "AKSClusterNotUsingApplication",
        30,
    )
    .await;
    put_policy(
        &admin,
        &ns.name,
        "aks",
        json!({"aksClusters": [staging], "aksClusterReassignment": true}),
    )
    .await;
    // Given time to act on the policy change: it must still refuse.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_reason(
        &crots,
        "mover",
        "False",
        "AKSClusterNotUsingApplication",
        30,
    )
    .await;
    assert_eq!(unchanged().await, LEGACY_APP);

    // Both: the cluster now runs as the rotated application, with its secret.
    set_reassign(true).await;
    wait_reason(&crots, "mover", "True", "Ready", 60).await;
    let secret = text(
        &Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get("mover-credentials")
            .await
            .unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    assert_eq!(cluster_check(&azure, &staging, &secret).await, (app, true));

    delete_all(&admin, &ns.name).await;
    operator.stop();
    delete_policy(&admin, &policy).await;
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_is_rotated_by_one_object_only() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tcr-app").await;
    let second = TestNamespace::new(&admin, "tcr-app2").await;
    let mut operator =
        Operator::start_with(&kubeconfig, &watching(&azure, &[&ns.name, &second.name]));
    operator.wait_for("operator ready", Duration::from_secs(30));
    let mine = put_policy(
        &admin,
        &ns.name,
        "apps",
        json!({"applications": [LEGACY_APP]}),
    )
    .await;
    let theirs = put_policy(
        &admin,
        &second.name,
        "apps",
        json!({"applications": [LEGACY_APP]}),
    )
    .await;
    let by_id = |name: &str| json!({"applicationId": LEGACY_APP, "targets": {"secret": {"name": format!("{name}-credential")}}});
    let crots = rotate(&admin, &ns.name, "first", by_id("first")).await;
    let first = wait_reason(&crots, "first", "True", "Ready", 60).await;
    let first_key = first.status.unwrap().current_key_id.unwrap();
    // Creation times have whole seconds: the holder is older than the claimants that follow.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first_secret = text(
        &Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get("first-credential")
            .await
            .unwrap(),
        "AZURE_CLIENT_SECRET",
    );

    // A second rotation of the same application, from another namespace and from the same one.
    let rivals = rotate(&admin, &second.name, "second", by_id("second")).await;
    let again = rotate(&admin, &ns.name, "again", by_id("again")).await;
    for (api, name) in [(&rivals, "second"), (&again, "again")] {
        let conflict = wait_reason(api, name, "False", "Conflict", 30).await;
        let message = ready(&conflict).unwrap().2;
        assert!(
            message.starts_with("spec.applicationId")
                && message.contains(&format!("CredentialRotation {}/first", ns.name)),
            "{message}"
        );
    }
    for n in 1..=3 {
        poke(&rivals, "second", n).await;
        poke(&crots, "first", n).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            ready(&rivals.get("second").await.unwrap()).unwrap().1,
            "Conflict"
        );
        assert_eq!(
            ready(&crots.get("first").await.unwrap()).unwrap().1,
            "Ready"
        );
    }
    let names = password_names(&azure, LEGACY_APP).await;
    assert!(
        names
            .iter()
            .all(|n| !n.contains("/second:") && !n.contains("/again:")),
        "only the holder adds passwords: {names:?}"
    );

    // An application a ServicePrincipal of this cluster owns, even where a policy lists it.
    let owned = ready_principal(&admin, &ns.name, "owned").await;
    put_policy(
        &admin,
        &ns.name,
        "apps",
        json!({"applications": [LEGACY_APP, owned]}),
    )
    .await;
    let byid = rotate(
        &admin,
        &ns.name,
        "byid",
        json!({"applicationId": owned, "targets": {"secret": {"name": "byid-credential"}}}),
    )
    .await;
    let conflict = wait_reason(&byid, "byid", "False", "Conflict", 30).await;
    let message = ready(&conflict).unwrap().2;
    assert!(
        message.starts_with("spec.applicationId")
            && message.contains(&format!("ServicePrincipal {}/owned", ns.name))
            && message.contains("servicePrincipalRef"),
        "{message}"
    );
    assert_eq!(
        password_names(&azure, &owned).await.len(),
        1,
        "the ServicePrincipal's own only"
    );

    // The holder is untouched.
    let first = crots.get("first").await.unwrap();
    assert_eq!(ready(&first).unwrap().1, "Ready");
    assert_eq!(first.status.unwrap().current_key_id, Some(first_key));
    assert_eq!(token_status(&azure, LEGACY_APP, &first_secret).await, 200);

    delete_all(&admin, &second.name).await;
    delete_all(&admin, &ns.name).await;
    operator.stop();
    delete_policy(&admin, &mine).await;
    delete_policy(&admin, &theirs).await;
    second.cleanup().await;
    teardown(rbac, azure, ns).await;
}
