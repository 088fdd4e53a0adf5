//! The tenancy boundary for RoleDelegations (issue 13, findings 5, 6, 7, 9): a namespace grants only to
//! principals its policy lists, a custom role that can assign roles must be named, one delegation never
//! rewrites or deletes another's assignment (same cluster: Conflict; another cluster: pre-existing), a deleted
//! Revoke policy still revokes, Orphan does not keep what no policy allows, and assignments made under the
//! legacy name keep working after an upgrade. Each attack leaves the victim Ready and its grant unchanged in
//! the emulator.

use std::time::Duration;

use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{self, DelegationPolicy, RoleDelegation};

use crate::{
    harness::{
        self, Setup, all_gone, arm_as_operator, eventually, put_policy, ready_of as ready, state,
        teardown, wait_condition as wait_for,
    },
    operator_run::{Azure, Operator},
    support::TestNamespace,
};

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
/// The seeded service principal of an existing AKS cluster: a principal Azure already knows.
const LEGACY_SP: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";

fn rg(name: &str) -> String {
    format!("{SUB}/resourceGroups/{name}")
}

fn rd(name: &str, spec: Value) -> RoleDelegation {
    serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "RoleDelegation",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The emulator's assignments of `principal` at `scope`, whole.
async fn granted(azure: &Azure, principal: &str, scope: &str) -> Vec<Value> {
    state(azure).await["arm"]["roleAssignments"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| {
            a["principalId"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(principal)
                && a["scope"].as_str().unwrap().eq_ignore_ascii_case(scope)
        })
        .cloned()
        .collect()
}

/// The one assignment of the grant, as the emulator holds it.
async fn the_assignment(azure: &Azure, scope: &str) -> Value {
    let found = granted(azure, LEGACY_SP, scope).await;
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// The environment of an operator for cluster `cluster` watching `namespaces`.
fn operator_env(azure: &Azure, cluster: &str, namespaces: &[&str]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = azure
        .env
        .iter()
        .filter(|(k, _)| k != "WATCH_NAMESPACES" && k != "ENTRA_OPERATOR_CLUSTER_ID")
        .cloned()
        .collect();
    env.push(("WATCH_NAMESPACES".into(), namespaces.join(",")));
    env.push(("ENTRA_OPERATOR_CLUSTER_ID".into(), cluster.into()));
    env
}

async fn events(admin: &kube::Client, ns: &str, object: &str, reason: &str) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// Makes the operator reconcile the object again (an annotation change is acted on).
async fn poke(rds: &Api<RoleDelegation>, name: &str, n: usize) {
    rds.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"tests/poke": n.to_string()}}})),
    )
    .await
    .unwrap();
}

async fn delete_and_wait(rds: &Api<RoleDelegation>, name: &str) {
    harness::delete_and_wait(rds, name, 60, &format!("{name} deleted")).await;
}

async fn delete_policy(admin: &kube::Client, name: &str) {
    let _ = Api::<DelegationPolicy>::all(admin.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Every RoleDelegation of `ns` deleted while the operator still runs its finalizers.
async fn empty(admin: &kube::Client, ns: &str) {
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), ns);
    let _ = rds
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    all_gone(&rds, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_grants_only_what_its_policy_allows_and_never_rewrites_anothers_grant() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rdt-victim").await;
    let intruder = TestNamespace::new(&admin, "rdt-intruder").await;
    let env = operator_env(
        &azure,
        &format!("testenv-{}", ns.name),
        &[&ns.name, &intruder.name],
    );
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let shared = rg("rg-shared");

    // The victim: Reader for a managed identity its policy lists.
    let victim_policy = put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [shared], "roles": ["Reader"], "principals": [LEGACY_SP]}),
    )
    .await;
    let victims: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    victims
        .create(
            &PostParams::default(),
            &rd(
                "reader",
                json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": shared, "description": "the victim's"}),
            ),
        )
        .await
        .unwrap();
    let victim = wait_for(&victims, "reader", "True", "Ready", 60).await;
    let victim_id = victim.status.unwrap().role_assignment_id.unwrap();
    let before = the_assignment(&azure, &shared).await;
    assert!(
        before["id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&victim_id)
    );

    // From a namespace no policy selects: nothing.
    let intruders: Api<RoleDelegation> = Api::namespaced(admin.clone(), &intruder.name);
    intruders
        .create(
            &PostParams::default(),
            &rd(
                "steal",
                json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": shared, "description": "mine now"}),
            ),
        )
        .await
        .unwrap();
    let denied = wait_for(&intruders, "steal", "False", "DeniedByPolicy", 30).await;
    assert!(
        ready(&denied)
            .unwrap()
            .2
            .contains("no DelegationPolicy selects namespace"),
        "{denied:?}"
    );

    // From a namespace whose policy allows other things (any role, any custom action, at the same scope),
    // but lists no principal: principalId is denied (finding 9) ...
    let intruder_policy = put_policy(
        &admin,
        &intruder.name,
        "wide",
        json!({"scopes": [shared], "roles": ["*"], "customRoles": {"allowedActions": ["*"]}}),
    )
    .await;
    let denied = eventually(30, "steal denied for its principal", || async {
        let o = intruders.get("steal").await.map_err(|e| e.to_string())?;
        match ready(&o) {
            Some((s, r, m))
                if s == "False" && r == "DeniedByPolicy" && m.contains("principals") =>
            {
                Ok(m)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        denied.contains(&format!(
            "spec.principalId {LEGACY_SP} is not in its principals"
        )),
        "{denied}"
    );
    // ... and a custom role that can assign roles is denied unless named in roles (finding 5).
    intruders
        .create(
            &PostParams::default(),
            &rd(
                "admin",
                json!({"principalId": LEGACY_SP, "scope": shared,
                       "role": {"custom": {"roleName": "intruder admin", "actions": ["*"]}}}),
            ),
        )
        .await
        .unwrap();
    let admin_rd = wait_for(&intruders, "admin", "False", "DeniedByPolicy", 30).await;
    let message = ready(&admin_rd).unwrap().2;
    assert!(
        message.contains("spec.role.custom 'intruder admin' can assign roles")
            && message.contains("must be named in its roles"),
        "{message}"
    );
    assert!(
        state(&azure).await["arm"]["customRoles"]
            .as_object()
            .unwrap()
            .is_empty(),
        "no role was defined"
    );

    // The administrator lists the principal for the intruder too (two teams granting to one identity): the
    // same grant is the victim's assignment, so the intruder gets a Conflict naming it, and its different
    // description never reaches it (finding 6).
    put_policy(
        &admin,
        &intruder.name,
        "wide",
        json!({"scopes": [shared], "roles": ["*"], "customRoles": {"allowedActions": ["*"]}, "principals": [LEGACY_SP]}),
    )
    .await;
    let conflict = wait_for(&intruders, "steal", "False", "Conflict", 30).await;
    let message = ready(&conflict).unwrap().2;
    assert!(
        message.contains(&format!("RoleDelegation {}/reader", ns.name))
            && message.contains("spec.scope, spec.role and spec.principal"),
        "{message}"
    );
    assert_eq!(
        the_assignment(&azure, &shared).await,
        before,
        "the victim's grant unchanged"
    );
    // Deleting the intruder's delegation leaves the victim's grant.
    delete_and_wait(&intruders, "steal").await;
    assert_eq!(the_assignment(&azure, &shared).await, before);
    poke(&victims, "reader", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ready(&victims.get("reader").await.unwrap()).unwrap().1,
        "Ready"
    );
    assert_eq!(guid(&before["roleDefinitionId"]), READER, "{before}");

    // A deleted Revoke policy still revokes what it allowed (finding 7a).
    let network = rg("rg-network");
    let strict = put_policy(
        &admin,
        &ns.name,
        "strict",
        json!({"scopes": [network], "roles": ["Reader"], "principals": [LEGACY_SP], "violations": "Revoke"}),
    )
    .await;
    victims
        .create(
            &PostParams::default(),
            &rd(
                "net",
                json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": network}),
            ),
        )
        .await
        .unwrap();
    let net = wait_for(&victims, "net", "True", "Ready", 60).await;
    assert_eq!(
        net.status.as_ref().unwrap().policy_violations,
        Some(api::delegation_policy::ViolationAction::Revoke)
    );
    assert_eq!(granted(&azure, LEGACY_SP, &network).await.len(), 1);
    delete_policy(&admin, &strict).await;
    wait_for(&victims, "net", "False", "DeniedByPolicy", 30).await;
    eventually(30, "net's assignment revoked", || async {
        match granted(&azure, LEGACY_SP, &network).await.len() {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    })
    .await;
    assert!(!events(&admin, &ns.name, "net", "Revoked").await.is_empty());

    // Orphan keeps only what a policy still allows (finding 7b): a grant its policy (Report) no longer allows
    // goes with the object anyway.
    let disks = rg("rg-disks");
    let lenient = put_policy(
        &admin,
        &ns.name,
        "lenient",
        json!({"scopes": [disks], "roles": ["Reader"], "principals": [LEGACY_SP]}),
    )
    .await;
    victims
        .create(
            &PostParams::default(),
            &rd(
                "orphan",
                json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": disks}),
            ),
        )
        .await
        .unwrap();
    wait_for(&victims, "orphan", "True", "Ready", 60).await;
    delete_policy(&admin, &lenient).await;
    let kept = wait_for(&victims, "orphan", "False", "DeniedByPolicy", 30).await;
    assert!(ready(&kept).unwrap().2.contains("is kept"), "{kept:?}");
    assert_eq!(
        granted(&azure, LEGACY_SP, &disks).await.len(),
        1,
        "Report keeps it"
    );
    victims
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .unwrap();
    delete_and_wait(&victims, "orphan").await;
    assert_eq!(
        granted(&azure, LEGACY_SP, &disks).await,
        Vec::<Value>::new(),
        "Orphan does not keep a grant no policy allows"
    );
    let why = events(&admin, &ns.name, "orphan", "OrphanRevoked").await;
    assert!(
        why.iter()
            .any(|n| n.contains("no DelegationPolicy allows this grant")),
        "{why:?}"
    );

    // The victim is still Ready with its grant as it was.
    assert_eq!(
        ready(&victims.get("reader").await.unwrap()).unwrap().1,
        "Ready"
    );
    assert_eq!(the_assignment(&azure, &shared).await, before);

    empty(&admin, &intruder.name).await;
    empty(&admin, &ns.name).await;
    operator.stop();
    for p in [victim_policy, intruder_policy] {
        delete_policy(&admin, &p).await;
    }
    intruder.cleanup().await;
    teardown(rbac, azure, ns).await;
}

fn guid(definition_id: &Value) -> String {
    definition_id
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_grant_and_legacy_assignments_are_never_taken_over() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rdt-cluster-a").await;
    let other = TestNamespace::new(&admin, "rdt-cluster-b").await;
    let shared = rg("rg-shared");
    for n in [&ns.name, &other.name] {
        put_policy(
            &admin,
            n,
            "team",
            json!({"scopes": [SUB], "roles": ["Reader"], "principals": [LEGACY_SP]}),
        )
        .await;
    }

    // Before the upgrade: two delegations of one grant shared the assignment under the legacy name, and both
    // statuses record it.
    let legacy = entra_operator::controller::naming::legacy_assignment_name(
        &entra_operator::azure::scope::Scope::parse(&shared).unwrap(),
        READER,
        LEGACY_SP,
    );
    let legacy_id = format!("{shared}/providers/Microsoft.Authorization/roleAssignments/{legacy}");
    let (status, body) = arm_as_operator(
        &azure,
        reqwest::Method::PUT,
        &format!("{legacy_id}?api-version=2022-04-01"),
        Some(json!({"properties": {
            "roleDefinitionId": format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
            "principalId": LEGACY_SP, "principalType": "ServicePrincipal", "description": "made before the upgrade"}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let a: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    for name in ["first", "second"] {
        a.create(
            &PostParams::default(),
            &rd(
                name,
                json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": shared, "description": "made before the upgrade"}),
            ),
        )
        .await
        .unwrap();
        a.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"roleAssignmentId": legacy_id}})),
        )
        .await
        .unwrap();
        // Distinct creation times: the first is the older claimant.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let legacy_before = the_assignment(&azure, &shared).await;

    let cluster_a = operator_env(&azure, "cluster-a", &[&ns.name]);
    let mut operator_a = Operator::start_with(&kubeconfig, &cluster_a);
    operator_a.wait_for("operator ready", Duration::from_secs(30));
    // The older keeps the legacy assignment (no replacement); the other gets a Conflict naming it.
    let first = wait_for(&a, "first", "True", "Ready", 60).await;
    assert!(
        first
            .status
            .unwrap()
            .role_assignment_id
            .unwrap()
            .eq_ignore_ascii_case(&legacy_id)
    );
    let mut n = 0;
    let second = eventually(60, "second in Conflict", || {
        n += 1;
        let a = a.clone();
        async move {
            poke(&a, "second", n).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let o = a.get("second").await.map_err(|e| e.to_string())?;
            match ready(&o) {
                Some((s, r, m)) if s == "False" && r == "Conflict" => Ok(m),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        second.contains(&format!("RoleDelegation {}/first", ns.name)),
        "{second}"
    );
    assert_eq!(
        the_assignment(&azure, &shared).await,
        legacy_before,
        "no churn"
    );
    // Deleting the one that does not hold it leaves it.
    delete_and_wait(&a, "second").await;
    assert_eq!(the_assignment(&azure, &shared).await, legacy_before);

    // Another cluster's operator, same grant, another description: its PUT is refused (409), the assignment
    // is recorded as pre-existing, never rewritten nor deleted.
    let cluster_b = operator_env(&azure, "cluster-b", &[&other.name]);
    let mut operator_b = Operator::start_with(&kubeconfig, &cluster_b);
    operator_b.wait_for("operator ready", Duration::from_secs(30));
    let b: Api<RoleDelegation> = Api::namespaced(admin.clone(), &other.name);
    b.create(
        &PostParams::default(),
        &rd(
            "same-grant",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": shared, "description": "cluster b's"}),
        ),
    )
    .await
    .unwrap();
    let theirs = wait_for(&b, "same-grant", "True", "Ready", 60).await;
    assert_eq!(theirs.status.as_ref().unwrap().pre_existing, Some(true));
    assert_eq!(the_assignment(&azure, &shared).await, legacy_before);
    delete_and_wait(&b, "same-grant").await;
    assert_eq!(the_assignment(&azure, &shared).await, legacy_before);
    poke(&a, "first", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ready(&a.get("first").await.unwrap()).unwrap().1, "Ready");

    // A new grant from cluster b first, then the same from cluster a: each name carries its owner, so
    // cluster a cannot take cluster b's, and deleting cluster a's delegation leaves b's grant.
    let network = rg("rg-network");
    b.create(
        &PostParams::default(),
        &rd(
            "net",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": network}),
        ),
    )
    .await
    .unwrap();
    let b_net = wait_for(&b, "net", "True", "Ready", 60).await;
    let b_id = b_net.status.unwrap().role_assignment_id.unwrap();
    assert!(
        !b_id.to_ascii_lowercase().ends_with(
            &entra_operator::controller::naming::legacy_assignment_name(
                &entra_operator::azure::scope::Scope::parse(&network).unwrap(),
                READER,
                LEGACY_SP
            )
        ),
        "a new assignment is not under the legacy name"
    );
    let b_before = the_assignment(&azure, &network).await;
    a.create(
        &PostParams::default(),
        &rd(
            "net",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": network, "description": "a's"}),
        ),
    )
    .await
    .unwrap();
    let a_net = wait_for(&a, "net", "True", "Ready", 60).await;
    assert_eq!(a_net.status.as_ref().unwrap().pre_existing, Some(true));
    delete_and_wait(&a, "net").await;
    assert_eq!(the_assignment(&azure, &network).await, b_before);
    assert_eq!(ready(&b.get("net").await.unwrap()).unwrap().1, "Ready");

    // Deleting the holder of the legacy assignment removes it, and cluster b's removes its own.
    empty(&admin, &ns.name).await;
    assert_eq!(
        granted(&azure, LEGACY_SP, &shared).await,
        Vec::<Value>::new()
    );
    empty(&admin, &other.name).await;
    assert_eq!(
        granted(&azure, LEGACY_SP, &network).await,
        Vec::<Value>::new()
    );

    operator_a.stop();
    operator_b.stop();
    for n in [&ns.name, &other.name] {
        delete_policy(&admin, &format!("{n}-team")).await;
    }
    other.cleanup().await;
    teardown(rbac, azure, ns).await;
}

/// Finding 9's worst case: the operator's own identity holds every tenant's rights, so no namespace may grant
/// it a role, not even where a policy lists it in principals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_identity_is_never_a_grantee() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rdt-self").await;
    let world = state(&azure).await;
    let operator_principal = world["directory"]["servicePrincipals"]
        .as_object()
        .unwrap()
        .values()
        .find(|s| s["appId"] == crate::support::OPERATOR_APP)
        .and_then(|s| s["id"].as_str())
        .expect("the operator's service principal is seeded")
        .to_string();
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let shared = rg("rg-shared");
    // As wide as a policy gets, and naming the operator's principal.
    let policy = put_policy(
        &admin,
        &ns.name,
        "lists-the-operator",
        json!({"scopes": [SUB], "roles": ["*"], "principals": [operator_principal, LEGACY_SP]}),
    )
    .await;
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    for (name, principal) in [("self", operator_principal.as_str()), ("other", LEGACY_SP)] {
        rds.create(
            &PostParams::default(),
            &rd(
                name,
                json!({"principalId": principal, "role": {"name": "Reader"}, "scope": shared}),
            ),
        )
        .await
        .unwrap();
    }
    let denied = wait_for(&rds, "self", "False", "DeniedByPolicy", 30).await;
    let message = ready(&denied).unwrap().2;
    assert!(
        message.contains(&format!(
            "spec.principalId {operator_principal} is the operator's own identity"
        )),
        "{message}"
    );
    // The same policy grants the other principal it lists: only the operator is refused.
    wait_for(&rds, "other", "True", "Ready", 60).await;
    assert!(
        granted(&azure, &operator_principal, &shared)
            .await
            .is_empty(),
        "nothing granted to the operator"
    );
    assert_eq!(granted(&azure, LEGACY_SP, &shared).await.len(), 1);

    let _ = rds
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    all_gone(&rds, 60).await;
    operator.stop();
    delete_policy(&admin, &policy).await;
    teardown(rbac, azure, ns).await;
}
