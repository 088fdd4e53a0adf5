//! The CRDs on the real API server: what admission accepts, what it defaults, and what it rejects, with a
//! message that names the offending field.

use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{
    CredentialRotation, CredentialWatch, DelegationPolicy, RoleDelegation, ServicePrincipal,
    delegation_policy::ViolationAction,
};

use crate::support::{TestNamespace, admin_client, install_crds};

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const GUID: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";

fn resource(kind: &str) -> ApiResource {
    match kind {
        "ServicePrincipal" => ApiResource::erase::<ServicePrincipal>(&()),
        "RoleDelegation" => ApiResource::erase::<RoleDelegation>(&()),
        "CredentialRotation" => ApiResource::erase::<CredentialRotation>(&()),
        "DelegationPolicy" => ApiResource::erase::<DelegationPolicy>(&()),
        "CredentialWatch" => ApiResource::erase::<CredentialWatch>(&()),
        _ => unreachable!("{kind}"),
    }
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    match kind {
        "DelegationPolicy" | "CredentialWatch" => Api::all_with(client.clone(), &resource(kind)),
        _ => Api::namespaced_with(client.clone(), ns, &resource(kind)),
    }
}

/// The message of a 422, or a description of what came instead.
async fn rejection(api: &Api<DynamicObject>, obj: &DynamicObject) -> Result<String, String> {
    match api.create(&PostParams::default(), obj).await {
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(status.message),
        Err(e) => Err(format!("failed with something other than 422: {e}")),
        Ok(_) => Err("was accepted".into()),
    }
}

fn valid_sp() -> Value {
    json!({"displayName": "app", "secret": {"name": "app-credentials"}})
}

fn valid_rd() -> Value {
    json!({"principalId": GUID, "role": {"name": "AcrPull"}, "scope": format!("{SUB}/resourceGroups/rg")})
}

fn valid_crot() -> Value {
    json!({"servicePrincipalRef": {"name": "app"}, "rotateEvery": "720h"})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission").await;

    let fics = |n: usize| -> Value {
        (0..n).map(|i| json!({"name": format!("f{i}"), "issuer": "https://issuer.example", "subject": format!("s{i}")})).collect()
    };
    // (kind, spec, the field the message must name, what it must say)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "ServicePrincipal",
            json!({"secret": {"name": "x"}}),
            "spec.displayName",
            "Required value",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "format": "template"}}),
            ),
            "spec.secret.templates",
            "templates must be set",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"certificate": {}, "secret": null})),
            "spec.certificate",
            "a certificate credential needs spec.secret",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"certificate": {}, "keyVaultSecrets": [{"vault": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1", "name": "web"}]}),
            ),
            "spec.keyVaultSecrets",
            "deliver client secrets only",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"certificate": {}, "secret": {"name": "x", "format": "sdk-auth"}}),
            ),
            "spec.secret.format",
            "sdk-auth format carries a client secret only",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "format": "tls"}}),
            ),
            "spec.secret.format",
            "the tls format carries a certificate credential",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"certificate": {}, "secret": {"name": "x", "mountPath": "relative/dir"}}),
            ),
            "spec.secret.mountPath",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"certificate": {"secretRef": {"name": "Not_A_Name"}}}),
            ),
            "spec.certificate.secretRef.name",
            "should match",
        ),
        (
            "CredentialRotation",
            json!({"applicationId": GUID, "rotateEvery": "720h", "targets": {"secret": {"name": "x", "format": "tls"}}}),
            "spec.targets.secret.format",
            "renews a client secret",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "format": "template", "templates": {"k": "{{ clientSecret }}"}},
                       "keyVaultSecrets": [{"vault": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1", "name": "web"}]}),
            ),
            "spec.keyVaultSecrets",
            "cannot be written from a template Secret",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"keyVaultSecrets": [{"vault": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kv1", "name": "web"}]}),
            ),
            "spec.keyVaultSecrets[0].vault",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"keyVaultSecrets": [{"vault": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1", "name": "web_secret"}]}),
            ),
            "spec.keyVaultSecrets[0].name",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"keyVaultSecrets": [{"vault": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1", "name": "web", "tags": {"entra-operator-owner": "me"}}]}),
            ),
            "spec.keyVaultSecrets[0].tags",
            "may not begin with 'entra-operator-'",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "templates": {"k": "v"}}}),
            ),
            "spec.secret.templates",
            "templates must be set",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "format": "yaml"}}),
            ),
            "spec.secret.format",
            "Unsupported value",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"secret": {"name": "Not_A_Name"}})),
            "spec.secret.name",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"secret": {"name": "x", "format": "template", "templates": {"bad key": "v"}}}),
            ),
            "spec.secret.templates",
            "valid Secret key",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"credentialLifetime": "1y"})),
            "spec.credentialLifetime",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"owners": ["not-a-guid"]})),
            "spec.owners[0]",
            "should match",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"deletionPolicy": "Keep"})),
            "spec.deletionPolicy",
            "Unsupported value",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"federatedCredentials": [{"name": "gh", "issuer": "http://token.actions.example", "subject": "repo:x"}]}),
            ),
            "spec.federatedCredentials[0].issuer",
            "must be an https URL",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"federatedCredentials": [
            {"name": "a", "issuer": "https://i.example", "subject": "s1"}, {"name": "a", "issuer": "https://i.example", "subject": "s2"}]}),
            ),
            "spec.federatedCredentials[1]",
            "Duplicate value",
        ),
        (
            "ServicePrincipal",
            with(
                valid_sp(),
                json!({"federatedCredentials": [
            {"name": "a", "issuer": "https://i.example", "subject": "s"}, {"name": "b", "issuer": "https://i.example", "subject": "s"}]}),
            ),
            "spec.federatedCredentials",
            "each issuer and subject pair may appear only once",
        ),
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"federatedCredentials": fics(21)})),
            "spec.federatedCredentials",
            "Too many",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"scope": "/subscriptions/nope"})),
            "spec.scope",
            "must be an ARM scope",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"scope": format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults")}),
            ),
            "spec.scope",
            "must be an ARM scope",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"scope": format!("{SUB}/resourceGroups/rg/providers/Microsoft.Foo/../../../rg-other")}),
            ),
            "spec.scope",
            "must not contain '.' or '..' segments",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"principalRef": {"name": "app"}})),
            "spec.principalRef",
            "exactly one of principalRef and principalId",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"principalId": null})),
            "spec.principalRef",
            "exactly one of principalRef and principalId",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"principalId": "managed-identity"})),
            "spec.principalId",
            "should match",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"role": {"name": "AcrPull", "id": GUID}})),
            "spec.role",
            "exactly one of name, id and custom",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"role": {}})),
            "spec.role",
            "exactly one of name, id and custom",
        ),
        (
            "RoleDelegation",
            with(valid_rd(), json!({"role": {"id": "AcrPull"}})),
            "spec.role.id",
            "must be a role definition GUID",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"role": {"custom": {"roleName": "r", "notActions": ["x"]}}}),
            ),
            "spec.role.custom.actions",
            "at least one action",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"role": {"custom": {"roleName": "r", "actions": ["a"], "assignableScopes": ["/"]}}}),
            ),
            "spec.role.custom.assignableScopes",
            "must be an ARM scope",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"condition": "@Resource[x] StringEquals 'y'"}),
            ),
            "spec.conditionVersion",
            "conditionVersion must be set together with condition",
        ),
        (
            "RoleDelegation",
            with(
                valid_rd(),
                json!({"condition": "c", "conditionVersion": "1.0"}),
            ),
            "spec.conditionVersion",
            "Unsupported value",
        ),
        (
            "CredentialRotation",
            with(valid_crot(), json!({"applicationId": GUID})),
            "spec.servicePrincipalRef",
            "exactly one of servicePrincipalRef and applicationId",
        ),
        (
            "CredentialRotation",
            with(valid_crot(), json!({"rotateEvery": null})),
            "spec.rotateEvery",
            "at least one of rotateEvery and renewBefore",
        ),
        (
            "CredentialRotation",
            with(valid_crot(), json!({"rotateEvery": "30d"})),
            "spec.rotateEvery",
            "should match",
        ),
        (
            "CredentialRotation",
            with(valid_crot(), json!({"rotateEvery": "30m"})),
            "spec.overlap",
            "overlap must be shorter than rotateEvery",
        ),
        (
            "CredentialRotation",
            with(
                valid_crot(),
                json!({"rotateEvery": null, "renewBefore": "1h", "overlap": "48h", "credentialLifetime": "24h"}),
            ),
            "spec.overlap",
            "overlap must be shorter than credentialLifetime",
        ),
        (
            "CredentialRotation",
            with(valid_crot(), json!({"credentialLifetime": "240h"})),
            "spec.rotateEvery",
            "rotateEvery must be shorter than credentialLifetime",
        ),
        (
            "CredentialRotation",
            with(
                valid_crot(),
                json!({"renewBefore": "9000h", "credentialLifetime": "8760h", "rotateEvery": null}),
            ),
            "spec.renewBefore",
            "renewBefore must be shorter than credentialLifetime",
        ),
        (
            "CredentialRotation",
            with(
                valid_crot(),
                json!({"targets": {"aksClusters": [format!("{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/d")]}}),
            ),
            "spec.targets.aksClusters",
            "ARM id of an AKS cluster",
        ),
        (
            "CredentialRotation",
            with(
                valid_crot(),
                json!({"targets": {"restartWorkloads": [{"kind": "Pod", "name": "p"}]}}),
            ),
            "spec.targets.restartWorkloads[0].kind",
            "Unsupported value",
        ),
        (
            "CredentialRotation",
            json!({"applicationId": GUID, "rotateEvery": "720h"}),
            "spec.targets",
            "name at least one target",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "scopes": ["/subscriptions/x"], "roles": ["Reader"]}),
            "spec.scopes",
            "must be an ARM scope",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "applications": ["not-a-guid"]}),
            "spec.applications[0]",
            "should match",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "keyVaults": ["contoso-kv"]}),
            "spec.keyVaults",
            "every keyVaults entry must be the ARM id of a Key Vault",
        ),
        (
            // A resource that is no vault could never contain one: refused rather than allowing nothing.
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "keyVaults": [
                format!("{SUB}/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv"),
                format!("{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st"),
            ]}),
            "spec.keyVaults",
            "every keyVaults entry must be the ARM id of a Key Vault",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "keyVaults": [
                format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/secrets/s"),
            ]}),
            "spec.keyVaults",
            "every keyVaults entry must be the ARM id of a Key Vault",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "keyVaults": ["/providers/Microsoft.Management/managementGroups/root"]}),
            "spec.keyVaults",
            "every keyVaults entry must be the ARM id of a Key Vault",
        ),
        (
            "DelegationPolicy",
            json!({"scopes": [SUB], "roles": ["Reader"]}),
            "spec.namespaceSelector",
            "Required value",
        ),
        (
            "DelegationPolicy",
            json!({"namespaceSelector": {}, "scopes": [SUB], "violations": "Delete"}),
            "spec.violations",
            "Unsupported value",
        ),
        (
            "CredentialWatch",
            json!({"warnBefore": "720h"}),
            "spec.applications",
            "name the applications to watch: applications, filter, or both",
        ),
        (
            "CredentialWatch",
            json!({"applications": ["legacy-billing"]}),
            "spec.applications[0]",
            "should match",
        ),
        (
            "CredentialWatch",
            json!({"filter": "startswith(displayName,'legacy-')", "interval": "30s"}),
            "spec.interval",
            "must be at least 1m",
        ),
        (
            "CredentialWatch",
            json!({"filter": ""}),
            "spec.filter",
            "at least 1 chars long",
        ),
    ];
    assert!(cases.len() >= 12);

    let mut failures = vec![];
    for (i, (kind, spec, field, reason)) in cases.iter().enumerate() {
        let obj = object(kind, &format!("bad-{i}"), spec.clone());
        match rejection(&api(&client, &ns.name, kind), &obj).await {
            Ok(message) if message.contains(&format!("{field}:")) && message.contains(reason) => {}
            Ok(message) => failures.push(format!(
                "case {i} ({kind} {spec}): expected `{field}: ...{reason}...`, got: {message}"
            )),
            Err(what) => failures.push(format!("case {i} ({kind} {spec}): {what}")),
        }
    }
    ns.cleanup().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// What keyVaults admits: a vault (in any casing), a resource group, a subscription.
#[tokio::test]
async fn key_vault_entries_are_admitted() {
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-kv").await;
    let vault =
        format!("{SUB}/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv");
    let entries = vec![
        vault.clone(),
        vault
            .to_uppercase()
            .replace("SUBSCRIPTIONS", "subscriptions"),
        format!("{SUB}/resourcegroups/rg-shared"),
        SUB.to_string(),
    ];
    let name = format!("{}-kv", ns.name);
    // Selects this test's namespace alone: a cluster-scoped policy must not reach other tests' namespaces.
    let spec = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name.clone()}},
        "keyVaults": entries,
    });
    let api = api(&client, &ns.name, "DelegationPolicy");
    let created = api
        .create(
            &PostParams::default(),
            &object("DelegationPolicy", &name, spec),
        )
        .await;
    let _ = api.delete(&name, &Default::default()).await;
    ns.cleanup().await;
    let created = created.unwrap_or_else(|e| panic!("keyVaults {entries:?} was rejected: {e}"));
    assert_eq!(created.data["spec"]["keyVaults"], json!(entries));
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "immutable").await;

    // (kind, spec at creation, spec of the update, field, reason)
    let cases: Vec<(&str, Value, Value, &str, &str)> = vec![
        (
            "ServicePrincipal",
            with(valid_sp(), json!({"adopt": {"appId": GUID}})),
            with(
                valid_sp(),
                json!({"adopt": {"appId": "00000000-0000-0000-0000-000000000001"}}),
            ),
            "spec.adopt.appId",
            "immutable",
        ),
        (
            "ServicePrincipal",
            valid_sp(),
            with(valid_sp(), json!({"adopt": {"appId": GUID}})),
            "spec.adopt",
            "adopt can only be set when the object is created",
        ),
        (
            "CredentialRotation",
            valid_crot(),
            with(
                valid_crot(),
                json!({"servicePrincipalRef": {"name": "other"}}),
            ),
            "spec.servicePrincipalRef",
            "immutable",
        ),
        (
            "CredentialRotation",
            valid_crot(),
            with(
                valid_crot(),
                json!({"servicePrincipalRef": null, "applicationId": GUID, "targets": {"aksClusters": [
                format!("{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c")]}}),
            ),
            "spec.servicePrincipalRef",
            "immutable",
        ),
    ];

    let mut failures = vec![];
    for (i, (kind, before, after, field, reason)) in cases.iter().enumerate() {
        let api = api(&client, &ns.name, kind);
        let name = format!("imm-{i}");
        let created = api
            .create(&PostParams::default(), &object(kind, &name, before.clone()))
            .await
            .unwrap();
        let mut updated = object(kind, &name, after.clone());
        updated.metadata.resource_version = created.metadata.resource_version;
        match api.replace(&name, &PostParams::default(), &updated).await {
            Err(kube::Error::Api(s))
                if s.code == 422
                    && s.message.contains(&format!("{field}:"))
                    && s.message.contains(reason) => {}
            Err(e) => failures.push(format!(
                "case {i}: expected `{field}: ...{reason}...`, got: {e}"
            )),
            Ok(_) => failures.push(format!(
                "case {i}: update from {before} to {after} was accepted"
            )),
        }
    }
    ns.cleanup().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The example CredentialWatch as admitted (its interval defaulted), then removed: it is cluster-scoped.
async fn defaulted_watch(client: &Client, name: &str) {
    let watches = Api::<CredentialWatch>::all(client.clone());
    let watch = watches.get(name).await.unwrap();
    assert_eq!(
        watch.spec.interval.as_std(),
        std::time::Duration::from_secs(3600),
        "interval defaulted"
    );
    watches.delete(name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn examples_are_accepted_and_defaulted() {
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;

    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut policy_name = String::new();
    let mut watch_name = String::new();
    let mut dir: Vec<_> =
        std::fs::read_dir(std::path::Path::new(crate::support::MANIFEST_DIR).join("examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    dir.sort();
    for path in dir {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_saphyr::from_multiple::<DynamicObject>(&text).unwrap() {
            let kind = doc.types.as_ref().unwrap().kind.clone();
            let mut doc = doc.clone();
            if kind == "DelegationPolicy" {
                // Cluster-scoped: created under a name of this test's own, and removed below.
                policy_name = format!("{}-{}", ns.name, doc.name_any());
                doc.metadata.name = Some(policy_name.clone());
            }
            if kind == "CredentialWatch" {
                // Cluster-scoped as well.
                watch_name = format!("{}-{}", ns.name, doc.name_any());
                doc.metadata.name = Some(watch_name.clone());
            }
            api(&client, &ns.name, &kind)
                .create(&PostParams::default(), &doc)
                .await
                .unwrap_or_else(|e| panic!("{} was rejected: {e}", path.display()));
            *kinds.entry(kind).or_default() += 1;
        }
    }
    assert_eq!(kinds.len(), 5, "examples cover every kind: {kinds:?}");
    defaulted_watch(&client, &watch_name).await;
    let policies = Api::<DelegationPolicy>::all(client.clone());
    let policy = policies.get(&policy_name).await.unwrap();
    assert_eq!(policy.spec.violations, ViolationAction::Revoke);
    assert_eq!(
        policy.spec.key_vaults,
        vec![format!(
            "{SUB}/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv"
        )]
    );
    policies
        .delete(&policy_name, &Default::default())
        .await
        .unwrap();

    // What admission fills in is what the controllers will read.
    let sp = Api::<ServicePrincipal>::namespaced(client.clone(), &ns.name)
        .get("aks-cluster-sp")
        .await
        .unwrap();
    assert_eq!(
        sp.spec.deletion_policy,
        entra_operator::api::DeletionPolicy::Delete
    );
    let crot = Api::<CredentialRotation>::namespaced(client.clone(), &ns.name)
        .get("aks-cluster-sp")
        .await
        .unwrap();
    assert_eq!(
        crot.spec.overlap.as_std(),
        std::time::Duration::from_secs(24 * 3600)
    );

    let defaulted = api(&client, &ns.name, "ServicePrincipal")
        .create(
            &PostParams::default(),
            &object("ServicePrincipal", "defaults", json!({"displayName": "d", "secret": {"name": "d"},
                "federatedCredentials": [{"name": "ci", "issuer": "https://issuer.example", "subject": "s"}]})),
        )
        .await
        .unwrap();
    assert_eq!(defaulted.data["spec"]["secret"]["format"], "env");
    assert_eq!(defaulted.data["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        defaulted.data["spec"]["federatedCredentials"][0]["audiences"],
        json!(["api://AzureADTokenExchange"])
    );
    let defaulted = api(&client, &ns.name, "CredentialRotation")
        .create(
            &PostParams::default(),
            &object("CredentialRotation", "defaults", valid_crot()),
        )
        .await
        .unwrap();
    assert_eq!(defaulted.data["spec"]["overlap"], "1h");
    ns.cleanup().await;
}
