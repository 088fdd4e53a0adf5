//! The RoleDelegation controller end to end: the operator binary under its own RBAC, against the emulator's
//! ARM. The seed's delegations from examples/ become assignments with the right role, principal and scope;
//! the DelegationPolicy guardrail decides before Azure is asked; replication delay is waited out; bad input
//! and failures get their own reasons; changes replace, drift is repaired, deletion cleans up.

use std::time::Duration;

use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{DelegationPolicy, RoleDelegation, ServicePrincipal};

use crate::{
    harness::{
        Setup, all_gone, arm_as_operator, emulator_get, eventually, knobs, put_policy,
        ready_of as ready, reset_calls, seed, state, teardown, wait_condition as wait_for,
    },
    operator_run::{Azure, Operator},
    support::MANIFEST_DIR,
};

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
const KV_SECRETS_USER: &str = "4633458b-17de-408a-b874-0445c86b69e6";
const NETWORK_CONTRIBUTOR: &str = "4d97b98b-1d4f-4787-a291-c67834d212e7";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const VM_CONTRIBUTOR: &str = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
/// The seeded service principal of an existing AKS cluster: a principal Azure already knows.
const LEGACY_SP: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";

/// The emulator's role assignments.
async fn assignments(azure: &Azure) -> Vec<Value> {
    state(azure).await["arm"]["roleAssignments"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect()
}

fn guid_of(definition_id: &str) -> String {
    definition_id
        .rsplit('/')
        .next()
        .unwrap()
        .to_ascii_lowercase()
}

/// The assignments of `principal` at `scope` (compared case-insensitively), as (role GUID, assignment id).
async fn granted(azure: &Azure, principal: &str, scope: &str) -> Vec<(String, String)> {
    assignments(azure)
        .await
        .iter()
        .filter(|a| {
            a["principalId"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(principal)
                && a["scope"].as_str().unwrap().eq_ignore_ascii_case(scope)
        })
        .map(|a| {
            (
                guid_of(a["roleDefinitionId"].as_str().unwrap()),
                a["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rd(name: &str, spec: Value) -> RoleDelegation {
    serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "RoleDelegation",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

async fn delete_policies(admin: &kube::Client, ns: &str) {
    let api = Api::<DelegationPolicy>::all(admin.clone());
    for p in api.list(&Default::default()).await.unwrap() {
        if p.name_any().starts_with(ns) {
            let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
        }
    }
}

/// Creates every object of an examples/ file in `ns` (a DelegationPolicy is renamed and limited to `ns`).
async fn apply_example(admin: &kube::Client, ns: &str, file: &str) {
    let text = std::fs::read_to_string(format!("{MANIFEST_DIR}/examples/{file}")).unwrap();
    for doc in serde_saphyr::from_multiple::<DynamicObject>(&text).unwrap() {
        let kind = doc.types.as_ref().unwrap().kind.clone();
        match kind.as_str() {
            "DelegationPolicy" => {
                let mut spec = doc.data["spec"].clone();
                // This test's namespace alone, rather than every namespace labelled team=platform.
                spec.as_object_mut().unwrap().remove("namespaceSelector");
                put_policy(admin, ns, &doc.name_any(), spec).await;
            }
            _ => {
                let ar = match kind.as_str() {
                    "ServicePrincipal" => ApiResource::erase::<ServicePrincipal>(&()),
                    "RoleDelegation" => ApiResource::erase::<RoleDelegation>(&()),
                    other => panic!("unexpected kind {other} in {file}"),
                };
                Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &ar)
                    .create(&PostParams::default(), &doc)
                    .await
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}

/// How many requests the emulator answered for each operation ("arm PUT {scope}/...") since the last reset.
async fn calls(azure: &Azure) -> Vec<(String, u64)> {
    emulator_get(azure, "/_emulator/calls")
        .await
        .as_object()
        .unwrap()
        .iter()
        .map(|(op, by_status)| {
            let n = by_status
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            (op.clone(), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_delegations_are_granted_replaced_and_removed() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rd-seed").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));

    for file in [
        "00-delegation-policy.yaml",
        "01-service-principal.yaml",
        "02-role-delegation-acr.yaml",
        "03-role-delegation-keyvault.yaml",
        "04-role-delegation-subnet.yaml",
        "05-role-delegation-disks.yaml",
        "06-role-delegation-aci.yaml",
    ] {
        apply_example(&admin, &ns.name, file).await;
    }
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    let sp = eventually(60, "aks-cluster-sp Ready", || async {
        let sp = Api::<ServicePrincipal>::namespaced(admin.clone(), &ns.name)
            .get("aks-cluster-sp")
            .await
            .map_err(|e| e.to_string())?;
        sp.status
            .as_ref()
            .and_then(|s| s.service_principal_id.clone())
            .ok_or("no service principal yet".to_string())
    })
    .await;

    let kv =
        format!("{SUB}/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv");
    let acr = format!(
        "{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr"
    );
    let subnet = format!(
        "{SUB}/resourceGroups/rg-network/providers/Microsoft.Network/virtualNetworks/vnet-prod/subnets/aks-nodes"
    );
    let disks = format!("{SUB}/resourceGroups/rg-disks");
    let aci = format!("{SUB}/resourceGroups/rg-aci");
    let expected = [
        ("aks-cluster-sp-acrpull", acr.as_str(), ACR_PULL),
        ("aks-cluster-sp-keyvault", kv.as_str(), KV_SECRETS_USER),
        (
            "aks-cluster-sp-subnet",
            subnet.as_str(),
            NETWORK_CONTRIBUTOR,
        ),
        ("aks-cluster-sp-aci", aci.as_str(), CONTRIBUTOR),
    ];
    for (name, scope, role) in expected {
        let done = wait_for(&rds, name, "True", "Ready", 60).await;
        let status = done.status.unwrap();
        assert_eq!(status.principal_id.as_deref(), Some(sp.as_str()));
        assert_eq!(guid_of(status.role_definition_id.as_deref().unwrap()), role);
        let found = granted(&azure, &sp, scope).await;
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert_eq!(found[0].0, role, "{name}: the role in Azure");
        assert!(
            found[0]
                .1
                .eq_ignore_ascii_case(status.role_assignment_id.as_deref().unwrap()),
            "{name}: status names the assignment"
        );
    }

    // The custom role: defined with exactly the disk actions, assignable at the resource group, and assigned.
    let custom = wait_for(&rds, "aks-cluster-sp-disks", "True", "Ready", 60).await;
    let custom_guid = guid_of(
        custom
            .status
            .as_ref()
            .unwrap()
            .role_definition_id
            .as_deref()
            .unwrap(),
    );
    let world = state(&azure).await;
    let definition = &world["arm"]["customRoles"][&custom_guid];
    assert_eq!(
        definition["roleName"],
        "AKS disk access (entra-operator example)"
    );
    assert_eq!(
        definition["permissions"][0]["actions"],
        json!([
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/write"
        ])
    );
    assert_eq!(definition["assignableScopes"], json!([disks]));
    assert_eq!(granted(&azure, &sp, &disks).await[0].0, custom_guid);

    // The alternative: Virtual Machine Contributor. The new assignment replaces the old one, and the custom
    // role, used by nothing else, goes.
    rds.patch(
        "aks-cluster-sp-disks",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"role": {"custom": null, "name": "Virtual Machine Contributor"}}}),
        ),
    )
    .await
    .unwrap();
    eventually(60, "disks delegation replaced", || async {
        let found = granted(&azure, &sp, &disks).await;
        let roles = state(&azure).await["arm"]["customRoles"].clone();
        match (found.as_slice(), roles.get(&custom_guid)) {
            ([(role, _)], None) if role == VM_CONTRIBUTOR => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Deleting removes every assignment the delegations made.
    rds.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    all_gone(&rds, 60).await;
    for scope in [&acr, &kv, &subnet, &disks, &aci] {
        assert_eq!(granted(&azure, &sp, scope).await, vec![], "{scope}");
    }

    operator.stop();
    delete_policies(&admin, &ns.name).await;
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_before_azure_is_asked_and_revokes_when_told() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rd-policy").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    let rg = format!("{SUB}/resourceGroups/rg-shared");

    // No policy selects the namespace: denied, and ARM never sees an assignment request.
    reset_calls(&azure).await;
    rds.create(
        &PostParams::default(),
        &rd(
            "reader",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": rg}),
        ),
    )
    .await
    .unwrap();
    let denied = wait_for(&rds, "reader", "False", "DeniedByPolicy", 30).await;
    assert!(
        ready(&denied)
            .unwrap()
            .2
            .contains("no DelegationPolicy selects namespace"),
        "{denied:?}"
    );
    assert!(
        denied
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True"),
        "a denial is Stalled until a policy changes"
    );

    // Owner is privileged: a wildcard does not allow it, even where Reader is allowed.
    let policy = put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [rg], "roles": ["*"], "principals": [LEGACY_SP], "violations": "Revoke"}),
    )
    .await;
    let reader = wait_for(&rds, "reader", "True", "Ready", 30).await;
    assert_eq!(
        reader.status.as_ref().unwrap().policy.as_deref(),
        Some(policy.as_str())
    );
    rds.create(
        &PostParams::default(),
        &rd(
            "owner",
            json!({"principalId": LEGACY_SP, "role": {"name": "Owner"}, "scope": rg}),
        ),
    )
    .await
    .unwrap();
    let owner = wait_for(&rds, "owner", "False", "DeniedByPolicy", 30).await;
    assert!(ready(&owner).unwrap().2.contains("privileged"), "{owner:?}");
    // Outside the policy's scopes.
    rds.create(
        &PostParams::default(),
        &rd(
            "elsewhere",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": format!("{SUB}/resourceGroups/rg-network")}),
        ),
    )
    .await
    .unwrap();
    let elsewhere = wait_for(&rds, "elsewhere", "False", "DeniedByPolicy", 30).await;
    assert!(
        ready(&elsewhere).unwrap().2.contains("spec.scope"),
        "{elsewhere:?}"
    );
    let puts: u64 = calls(&azure)
        .await
        .into_iter()
        .filter(|(op, _)| op.starts_with("arm PUT") && op.contains("roleAssignments"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(puts, 1, "only the allowed delegation reached ARM");
    assert_eq!(granted(&azure, LEGACY_SP, &rg).await.len(), 1);

    // Naming Owner allows it; then narrowing the policy to Owner alone revokes Reader's assignment.
    put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [rg], "roles": ["Owner"], "principals": [LEGACY_SP], "violations": "Revoke"}),
    )
    .await;
    wait_for(&rds, "owner", "True", "Ready", 30).await;
    let revoked = wait_for(&rds, "reader", "False", "DeniedByPolicy", 30).await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Revoked")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reader")),
        "a Revoked Event on reader"
    );
    assert_eq!(revoked.status.as_ref().unwrap().role_assignment_id, None);
    let left: Vec<String> = granted(&azure, LEGACY_SP, &rg)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        left,
        vec!["8e3af657-a8ff-443c-a75c-2fe8c4bcb635".to_string()],
        "only Owner remains"
    );

    // Report keeps what exists and says so.
    put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [rg], "roles": ["Reader"], "principals": [LEGACY_SP]}),
    )
    .await;
    let kept = wait_for(&rds, "owner", "False", "DeniedByPolicy", 30).await;
    assert!(ready(&kept).unwrap().2.contains("is kept"), "{kept:?}");
    assert_eq!(
        granted(&azure, LEGACY_SP, &rg).await.len(),
        2,
        "owner kept, reader granted again"
    );

    // Policies select namespaces by label: labelling the namespace brings in a policy at once.
    let label = format!("grant-owner-{}", ns.name);
    put_policy(
        &admin,
        &ns.name,
        "labelled",
        json!({"namespaceSelector": {"matchLabels": {label.clone(): "yes"}}, "scopes": [rg], "roles": ["Owner"], "principals": [LEGACY_SP]}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ready(&rds.get("owner").await.unwrap()).unwrap().1,
        "DeniedByPolicy",
        "not before the label"
    );
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: "yes"}}})),
        )
        .await
        .unwrap();
    wait_for(&rds, "owner", "True", "Ready", 20).await;

    rds.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    all_gone(&rds, 30).await;
    assert_eq!(granted(&azure, LEGACY_SP, &rg).await, vec![]);
    operator.stop();
    delete_policies(&admin, &ns.name).await;
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_delay_is_waited_out_then_reported_stalled() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rd-replication").await;
    let mut env = azure.env.clone();
    env.push(("PRINCIPAL_REPLICATION_WINDOW".into(), "25s".into()));
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let rg = format!("{SUB}/resourceGroups/rg-shared");
    put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [rg], "roles": ["Reader"]}),
    )
    .await;
    // ARM does not know a new principal for 8 s, even with principalType.
    knobs(
        &azure,
        json!({"replication": {"principalNotFoundWithTypeMs": 8000}}),
    )
    .await;

    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    // The delegation comes first, as GitOps may apply it: it waits for its ServicePrincipal.
    rds.create(
        &PostParams::default(),
        &rd(
            "fresh",
            json!({"principalRef": {"name": "fresh"}, "role": {"name": "Reader"}, "scope": rg}),
        ),
    )
    .await
    .unwrap();
    let waiting = wait_for(&rds, "fresh", "False", "ServicePrincipalNotFound", 30).await;
    assert!(
        ready(&waiting)
            .unwrap()
            .2
            .contains("spec.principalRef.name")
    );
    let sp = |name: &str| -> ServicePrincipal {
        serde_json::from_value(
            json!({"apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": name}, "spec": {"displayName": name}}),
        )
        .unwrap()
    };
    sps.create(&PostParams::default(), &sp("fresh"))
        .await
        .unwrap();
    // The ServicePrincipal's watch brings the delegation back (its retry is minutes away); Azure then says
    // the principal does not exist yet.
    let replicating = wait_for(&rds, "fresh", "False", "WaitingForPrincipalReplication", 30).await;
    assert!(
        replicating
            .status
            .as_ref()
            .unwrap()
            .waiting_for_principal_since
            .is_some()
    );
    let done = wait_for(&rds, "fresh", "True", "Ready", 40).await;
    assert_eq!(
        done.status.as_ref().unwrap().waiting_for_principal_since,
        None
    );
    assert_eq!(
        granted(
            &azure,
            done.status
                .as_ref()
                .unwrap()
                .principal_id
                .as_deref()
                .unwrap(),
            &rg
        )
        .await[0]
            .0,
        READER
    );

    // A principal that never replicates: waiting, then Stalled once the window is over.
    knobs(
        &azure,
        json!({"replication": {"principalNotFoundWithTypeMs": 600000}}),
    )
    .await;
    sps.create(&PostParams::default(), &sp("never"))
        .await
        .unwrap();
    rds.create(
        &PostParams::default(),
        &rd(
            "never",
            json!({"principalRef": {"name": "never"}, "role": {"name": "Reader"}, "scope": rg}),
        ),
    )
    .await
    .unwrap();
    wait_for(&rds, "never", "False", "WaitingForPrincipalReplication", 40).await;
    let stalled = wait_for(&rds, "never", "False", "PrincipalNotFound", 60).await;
    assert!(
        stalled
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );

    knobs(
        &azure,
        json!({"replication": {"principalNotFoundWithTypeMs": 0}}),
    )
    .await;
    rds.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    all_gone(&rds, 30).await;
    sps.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    operator.stop();
    delete_policies(&admin, &ns.name).await;
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_failures_get_their_own_reasons() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rd-failures").await;
    let mut env = azure.env.clone();
    // Drift is looked for every second here (resyncs read nothing while the feed vouches).
    env.push(("RESYNC_INTERVAL".into(), "3s".into()));
    env.push(("DRIFT_INTERVAL".into(), "1s".into()));
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    // A subscription where the operator holds no role.
    let foreign = "/subscriptions/99999999-2222-3333-4444-555555555555";
    seed(
        &azure,
        json!({"resources": [foreign, format!("{foreign}/resourceGroups/rg-other")]}),
    )
    .await;
    put_policy(
        &admin,
        &ns.name,
        "team",
        json!({"scopes": [SUB, foreign], "roles": ["*"], "principals": [LEGACY_SP], "customRoles": {"allowedActions": ["Microsoft.Compute/disks/*"]}}),
    )
    .await;
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    let shared = format!("{SUB}/resourceGroups/rg-shared");
    let disks = format!("{SUB}/resourceGroups/rg-disks");

    let cases = [
        (
            "unknown-role",
            json!({"principalId": LEGACY_SP, "role": {"name": "Chief Everything Officer"}, "scope": shared}),
            "RoleNotFound",
            "spec.role.name",
        ),
        (
            "missing-scope",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": format!("{SUB}/resourceGroups/rg-missing")}),
            "ScopeNotFound",
            "spec.scope",
        ),
        (
            "not-authorized",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": format!("{foreign}/resourceGroups/rg-other")}),
            "AuthorizationFailed",
            "spec.scope",
        ),
        (
            "missing-principal",
            json!({"principalRef": {"name": "nobody"}, "role": {"name": "Reader"}, "scope": shared}),
            "ServicePrincipalNotFound",
            "spec.principalRef.name",
        ),
    ];
    for (name, spec, _, _) in &cases {
        rds.create(&PostParams::default(), &rd(name, spec.clone()))
            .await
            .unwrap();
    }
    for (name, _, reason, field) in &cases {
        let got = wait_for(&rds, name, "False", reason, 40).await;
        let message = ready(&got).unwrap().2;
        assert!(message.contains(field), "{name}: {message}");
    }

    // A custom role defined at rg-disks cannot be assigned, by its id, at rg-shared.
    rds.create(
        &PostParams::default(),
        &rd(
            "custom",
            json!({"principalId": LEGACY_SP, "scope": disks,
                "role": {"custom": {"roleName": "disk reader (failures test)", "actions": ["Microsoft.Compute/disks/read"]}}}),
        ),
    )
    .await
    .unwrap();
    let custom = wait_for(&rds, "custom", "True", "Ready", 40).await;
    let custom_id = custom.status.unwrap().role_definition_id.unwrap();
    rds.create(
        &PostParams::default(),
        &rd(
            "not-assignable",
            json!({"principalId": LEGACY_SP, "role": {"id": guid_of(&custom_id)}, "scope": shared}),
        ),
    )
    .await
    .unwrap();
    let got = wait_for(
        &rds,
        "not-assignable",
        "False",
        "RoleNotAssignableAtScope",
        40,
    )
    .await;
    assert!(ready(&got).unwrap().2.contains("spec.scope"), "{got:?}");

    // Throttling and 5xx are retried: the delegation gets there once ARM answers again.
    knobs(
        &azure,
        json!({"faults": [{"method": "PUT", "pathContains": "roleAssignments", "rate": 1.0, "status": 429}]}),
    )
    .await;
    rds.create(
        &PostParams::default(),
        &rd(
            "throttled",
            json!({"principalId": LEGACY_SP, "role": {"name": "AcrPull"}, "scope": shared}),
        ),
    )
    .await
    .unwrap();
    wait_for(&rds, "throttled", "False", "Throttled", 60).await;
    knobs(
        &azure,
        json!({"faults": [{"method": "PUT", "pathContains": "roleAssignments", "rate": 1.0, "status": 503}]}),
    )
    .await;
    wait_for(&rds, "throttled", "False", "AzureUnavailable", 40).await;
    knobs(&azure, json!({"faults": []})).await;
    let throttled = wait_for(&rds, "throttled", "True", "Ready", 40).await;

    // Drift: the assignment deleted behind the operator's back is back at the next resync.
    let id = throttled.status.unwrap().role_assignment_id.unwrap();
    let (status, _) = arm_as_operator(
        &azure,
        reqwest::Method::DELETE,
        &format!("{id}?api-version=2022-04-01"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(30, "assignment recreated", || async {
        let found = granted(&azure, LEGACY_SP, &shared).await;
        if found.iter().any(|(r, _)| r == ACR_PULL) {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;

    // Someone else's assignment of the same grant: recorded as pre-existing, never removed.
    seed(
        &azure,
        json!({"roleAssignments": [{"scope": disks, "role": "Reader", "principalId": LEGACY_SP}]}),
    )
    .await;
    rds.create(
        &PostParams::default(),
        &rd(
            "theirs",
            json!({"principalId": LEGACY_SP, "role": {"name": "Reader"}, "scope": disks}),
        ),
    )
    .await
    .unwrap();
    let theirs = wait_for(&rds, "theirs", "True", "Ready", 30).await;
    assert_eq!(theirs.status.as_ref().unwrap().pre_existing, Some(true));

    // Orphan leaves the assignment; Delete removes the operator's own, and the custom role with it.
    rds.patch(
        "throttled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
    )
    .await
    .unwrap();
    rds.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    all_gone(&rds, 60).await;
    let left: Vec<String> = granted(&azure, LEGACY_SP, &shared)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        left,
        vec![ACR_PULL.to_string()],
        "the orphaned assignment stays"
    );
    let left: Vec<String> = granted(&azure, LEGACY_SP, &disks)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        left,
        vec![READER.to_string()],
        "the pre-existing assignment stays, ours is gone"
    );
    assert!(
        state(&azure).await["arm"]["customRoles"]
            .as_object()
            .unwrap()
            .is_empty(),
        "the custom role is removed with its last delegation"
    );

    operator.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, lines) = operator.wait_exit(Duration::from_secs(10));
    let recreated: Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["reason"] == "RoleAssignmentRecreated")
        .expect("the log says the assignment was recreated");
    // Each reconcile's lines carry its object and a trace id.
    let span = &recreated["span"];
    assert_eq!(span["kind"], "RoleDelegation", "{recreated}");
    assert_eq!(span["object"], format!("{}/throttled", ns.name));
    assert!(
        span["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit())),
        "{recreated}"
    );
    delete_policies(&admin, &ns.name).await;
    teardown(rbac, azure, ns).await;
}

/// The operations the emulator answered since the last reset whose name contains `part`, summed.
async fn count_of(azure: &Azure, part: &str) -> u64 {
    calls(azure)
        .await
        .iter()
        .filter(|(op, _)| op.contains(part))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_read_nothing_while_the_drift_feeds_vouch_and_read_again_when_they_cannot() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("rd-steady").await;
    let mut env = azure.env.clone();
    // A resync every second: each would read Azure for every object, were it not for the feeds.
    env.push(("RESYNC_INTERVAL".into(), "1s".into()));
    env.push(("DRIFT_INTERVAL".into(), "1s".into()));
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let registry = format!(
        "{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr"
    );
    put_policy(
        &admin,
        &ns.name,
        "acr",
        json!({"scopes": [registry], "roles": ["AcrPull"]}),
    )
    .await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let rds: Api<RoleDelegation> = Api::namespaced(admin.clone(), &ns.name);
    const N: usize = 3;
    for i in 0..N {
        let sp: ServicePrincipal = serde_json::from_value(json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": format!("app-{i}")},
            "spec": {"displayName": format!("app-{i}"), "secret": {"name": format!("app-{i}")}},
        }))
        .unwrap();
        sps.create(&PostParams::default(), &sp).await.unwrap();
        rds.create(
            &PostParams::default(),
            &rd(
                &format!("pull-{i}"),
                json!({"principalRef": {"name": format!("app-{i}")}, "role": {"name": "AcrPull"}, "scope": registry}),
            ),
        )
        .await
        .unwrap();
    }
    for i in 0..N {
        wait_for(&sps, &format!("app-{i}"), "True", "Ready", 60).await;
        wait_for(&rds, &format!("pull-{i}"), "True", "Ready", 60).await;
    }
    // The feeds' next rounds see the operator's own writes once, and those objects are verified again.
    tokio::time::sleep(Duration::from_secs(4)).await;

    reset_calls(&azure).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let per_object = [
        "GET /applications(uniqueName=",
        "GET /servicePrincipals(appId=",
        "/federatedIdentityCredentials",
        "GET {scope}/providers/Microsoft.Authorization/roleAssignments/{name}",
    ];
    for op in per_object {
        assert_eq!(
            count_of(&azure, op).await,
            0,
            "steady state reads nothing per object ({op}): {:?}",
            calls(&azure).await
        );
    }
    // What it does read: a delta page per set and a listing per subscription, about once a second.
    let feed_reads = count_of(&azure, "/delta").await
        + count_of(
            &azure,
            "GET {scope}/providers/Microsoft.Authorization/roleAssignments",
        )
        .await;
    assert!(
        (2..=24).contains(&feed_reads),
        "{feed_reads}: {:?}",
        calls(&azure).await
    );

    // Drift is still found at once: an assignment removed in Azure is back within seconds.
    let id = rds
        .get("pull-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();
    let (status, _) = arm_as_operator(
        &azure,
        reqwest::Method::DELETE,
        &format!("{id}?api-version=2022-04-01"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(15, "assignment recreated by the feed", || async {
        let all = assignments(&azure).await;
        if all.iter().any(|a| {
            a["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&id))
        }) {
            Ok(())
        } else {
            Err("missing".to_string())
        }
    })
    .await;

    // When the feeds fail, nothing vouches any more: resyncs read Azure again (after two intervals and a
    // margin), so drift is never missed for long.
    knobs(
        &azure,
        json!({"faults": [
            {"pathContains": "/delta", "rate": 1.0, "status": 503},
            {"method": "GET", "pathContains": "/roleAssignments?", "rate": 1.0, "status": 503}
        ]}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(34)).await;
    reset_calls(&azure).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        count_of(&azure, "GET /applications(uniqueName=").await >= N as u64,
        "{:?}",
        calls(&azure).await
    );
    knobs(&azure, json!({"faults": []})).await;

    operator.stop();
    delete_policies(&admin, &ns.name).await;
    teardown(rbac, azure, ns).await;
}
