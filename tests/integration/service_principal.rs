//! The ServicePrincipal controller end to end: the operator binary, under its own ServiceAccount and RBAC,
//! signed in to the emulator with workload identity, turns objects into applications, service principals
//! and Secrets that authenticate, repairs a lost Secret, refuses to overwrite a foreign one, and cleans up.

use std::time::Duration;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::api::ServicePrincipal;

use crate::{
    harness::{
        Setup, all_gone, delete_and_wait, emulator_http, eventually, graph_as_operator, knobs,
        put_policy, ready_of, ready_reason, state, teardown, text, token_status,
    },
    operator_run::Operator,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_principals_converge_heal_and_clean_up() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("sp").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let endpoints = operator.wait_for(
        "serving /metrics, /healthz and /readyz",
        Duration::from_secs(30),
    )["address"]
        .as_str()
        .unwrap()
        .to_string();

    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let sp: ServicePrincipal = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "payroll"},
        "spec": {"displayName": "payroll", "secret": {"name": "payroll-credentials"}, "tags": ["team:payroll"]},
    }))
    .unwrap();
    sps.create(&PostParams::default(), &sp).await.unwrap();

    let ready = eventually(60, "payroll Ready", || async {
        let sp = sps.get("payroll").await.map_err(|e| e.to_string())?;
        match ready_reason(&sp) {
            Some((s, _)) if s == "True" => Ok(sp),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = ready.status.clone().unwrap();
    let app_id = status.app_id.clone().unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("payroll-credentials"));
    assert_eq!(status.observed_generation, ready.metadata.generation);
    let key_id = status.credential.as_ref().unwrap().key_id.clone();

    // The Secret authenticates, as a consumer would use it.
    let secret = secrets.get("payroll-credentials").await.unwrap();
    assert_eq!(text(&secret, "AZURE_CLIENT_ID"), app_id);
    let client_secret = text(&secret, "AZURE_CLIENT_SECRET");
    assert_eq!(token_status(&azure, &app_id, &client_secret).await, 200);
    assert_eq!(secret.annotations()["entra-operator.io/key-id"], key_id);
    assert_eq!(
        secret.metadata.owner_references.as_ref().unwrap()[0].uid,
        ready.metadata.uid.clone().unwrap()
    );
    let world = state(&azure).await;
    let apps: Vec<&Value> = world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["appId"] == app_id.as_str())
        .collect();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["passwordCredentials"].as_array().unwrap().len(), 1);
    assert!(
        apps[0]["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("team:payroll"))
    );

    // What Prometheus sees: the credential's expiry, the Graph calls made, the reconciliations.
    let metrics = reqwest::get(format!("http://{endpoints}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry = status
        .credential
        .as_ref()
        .unwrap()
        .end_date_time
        .as_ref()
        .unwrap()
        .0
        .as_second();
    assert!(
        metrics.contains(&format!(
            "entra_operator_credential_expiry_timestamp_seconds{{kind=\"ServicePrincipal\",namespace=\"{}\",name=\"payroll\"}} {expiry}",
            ns.name
        )),
        "{metrics}"
    );
    assert!(metrics.contains(r#"entra_operator_azure_requests_total{service="graph",operation="addPassword",status="200"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"entra_operator_reconciliations_total{kind="ServicePrincipal",result="ok"}"#
        ),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("http://{endpoints}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(!metrics.contains(&text(&secret, "AZURE_CLIENT_SECRET")));

    // A format change re-renders the same password.
    sps.patch(
        "payroll",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secret": {"format": "az"}}})),
    )
    .await
    .unwrap();
    let az = eventually(30, "Secret in az format", || async {
        let s = secrets
            .get("payroll-credentials")
            .await
            .map_err(|e| e.to_string())?;
        if s.data.as_ref().is_some_and(|d| d.contains_key("password")) {
            Ok(s)
        } else {
            Err("no password key yet".into())
        }
    })
    .await;
    assert_eq!(
        text(&az, "password"),
        client_secret,
        "no new password for a format change"
    );
    assert_eq!(az.annotations()["entra-operator.io/key-id"], key_id);

    // A lost Secret means a new password (the old text is gone) and the old password's removal.
    secrets
        .delete("payroll-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let renewed = eventually(30, "Secret recreated", || async {
        match secrets
            .get_opt("payroll-credentials")
            .await
            .map_err(|e| e.to_string())?
        {
            Some(s) if s.annotations().get("entra-operator.io/key-id") != Some(&key_id) => Ok(s),
            _ => Err("not yet".into()),
        }
    })
    .await;
    let new_secret = text(&renewed, "password");
    assert_eq!(token_status(&azure, &app_id, &new_secret).await, 200);
    eventually(30, "old password removed", || async {
        if token_status(&azure, &app_id, &client_secret).await == 401 {
            Ok(())
        } else {
            Err("old secret still works".into())
        }
    })
    .await;

    // A Secret that belongs to someone else is never overwritten.
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        data: Some([("mine".to_string(), ByteString(b"keep".to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let clash: ServicePrincipal = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "clash"}, "spec": {"displayName": "clash", "secret": {"name": "taken"}},
    }))
    .unwrap();
    sps.create(&PostParams::default(), &clash).await.unwrap();
    eventually(30, "SecretConflict", || async {
        let sp = sps.get("clash").await.map_err(|e| e.to_string())?;
        match ready_reason(&sp) {
            Some((s, r)) if s == "False" && r == "SecretConflict" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let clash_conditions = sps.get("clash").await.unwrap().status.unwrap().conditions;
    assert!(
        entra_operator::api::conditions::is_true(&clash_conditions, "Stalled"),
        "kstatus: stuck until the Secret changes"
    );
    let untouched = secrets.get("taken").await.unwrap();
    assert_eq!(untouched.data.unwrap().keys().collect::<Vec<_>>(), ["mine"]);

    // Deleting with the default policy removes the application (its SP and passwords go with it).
    sps.delete("payroll", &DeleteParams::default())
        .await
        .unwrap();
    sps.delete("clash", &DeleteParams::default()).await.unwrap();
    all_gone(&sps, 30).await;
    let world = state(&azure).await;
    assert!(
        !world["directory"]["applications"]
            .as_object()
            .unwrap()
            .values()
            .any(|a| a["appId"] == app_id.as_str()),
        "the application is deleted"
    );
    assert!(
        secrets
            .get_opt("payroll-credentials")
            .await
            .unwrap()
            .is_none()
    );

    operator.signal(Signal::SIGTERM);
    let (status, lines) = operator.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let log = lines.join("\n");
    assert!(
        !log.contains(&client_secret) && !log.contains(&new_secret),
        "no secret text in the operator's log"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"CredentialIssued".to_string())
            && reasons.contains(&"SecretConflict".to_string()),
        "{reasons:?}"
    );
    let notes = serde_json::to_string(&events.items).unwrap();
    assert!(
        !notes.contains(&client_secret) && !notes.contains(&new_secret),
        "no secret text in Events"
    );

    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_azure_and_in_the_secret_is_repaired() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        mut azure,
        rbac,
        _dir,
    } = Setup::new("sp-drift").await;
    // Resyncs read nothing while the drift feed vouches for an object: the repairs below are the feed's.
    azure.env.push(("RESYNC_INTERVAL".into(), "1s".into()));
    azure.env.push(("DRIFT_INTERVAL".into(), "1s".into()));
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));

    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let sp: ServicePrincipal = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "drifty"}, "spec": {"displayName": "drifty", "secret": {"name": "drifty"}},
    }))
    .unwrap();
    sps.create(&PostParams::default(), &sp).await.unwrap();
    let delivered = |secret: Secret| {
        (
            text(&secret, "AZURE_CLIENT_ID"),
            text(&secret, "AZURE_CLIENT_SECRET"),
        )
    };
    let working = |not: Option<(String, String)>| {
        let secrets = secrets.clone();
        let azure = &azure;
        async move {
            eventually(30, "a working credential in the Secret", || {
                let not = not.clone();
                let secrets = secrets.clone();
                async move {
                    let s = secrets
                        .get_opt("drifty")
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("no Secret")?;
                    let pair = delivered(s);
                    if Some(&pair) == not.as_ref() {
                        return Err("still the old credential".into());
                    }
                    match token_status(azure, &pair.0, &pair.1).await {
                        200 => Ok(pair),
                        s => Err(format!("token: {s}")),
                    }
                }
            })
            .await
        }
    };
    let first = working(None).await;

    // Someone edits the Secret: the operator notices (it owns and watches it) and issues a fresh password.
    let mut edited = secrets.get("drifty").await.unwrap();
    edited.data.as_mut().unwrap().insert(
        "AZURE_CLIENT_SECRET".into(),
        ByteString(b"tampered".to_vec()),
    );
    secrets
        .replace("drifty", &PostParams::default(), &edited)
        .await
        .unwrap();
    let second = working(Some(first.clone())).await;
    assert_eq!(second.0, first.0, "same application");

    // The password is removed in Azure: found at the next resync, replaced.
    let app = state(&azure).await["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .find(|a| a["appId"] == first.0.as_str())
        .cloned()
        .unwrap();
    let object_id = app["id"].as_str().unwrap().to_string();
    let key_id = app["passwordCredentials"][0]["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = graph_as_operator(
        &azure,
        reqwest::Method::POST,
        &format!("/applications/{object_id}/removePassword"),
        Some(json!({"keyId": key_id})),
    )
    .await;
    assert_eq!(removed, 204);
    let third = working(Some(second.clone())).await;

    // The application is deleted in Azure: a new one is made and the Secret follows it.
    assert_eq!(
        graph_as_operator(
            &azure,
            reqwest::Method::DELETE,
            &format!("/applications/{object_id}"),
            None
        )
        .await,
        204
    );
    let fourth = working(Some(third)).await;
    assert_ne!(fourth.0, first.0, "a new application");
    let status = sps.get("drifty").await.unwrap().status.unwrap();
    assert_eq!(status.app_id.as_deref(), Some(fourth.0.as_str()));
    let world = state(&azure).await;
    let ours: Vec<&Value> = world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["displayName"] == "drifty")
        .collect();
    assert_eq!(ours.len(), 1, "one live application");
    assert_eq!(
        ours[0]["passwordCredentials"].as_array().unwrap().len(),
        1,
        "one password"
    );

    // Deleted while the operator runs, so that its finalizer is honoured and nothing is left behind.
    delete_and_wait(&sps, "drifty", 30, "drifty gone").await;
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}

async fn wait_reason(sps: &Api<ServicePrincipal>, name: &str, want: (&str, &str), secs: u64) {
    eventually(secs, &format!("{name} {want:?}"), || async {
        let sp = sps.get(name).await.map_err(|e| e.to_string())?;
        match ready_reason(&sp) {
            Some((s, r)) if s == want.0 && r == want.1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn sp_object(name: &str, extra: Value) -> ServicePrincipal {
    let mut spec = json!({"displayName": name, "secret": {"name": name}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal", "metadata": {"name": name}, "spec": spec}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_leave_no_second_application_and_no_orphan_password() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("sp-crash").await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);

    // A crash right after addPassword, before the Secret was written: the password exists in Azure and its
    // text is lost. Staged by hand: the object exists, its application has a password of this object's name.
    let created = sps
        .create(&PostParams::default(), &sp_object("orphaned", json!({})))
        .await
        .unwrap();
    let cluster_id = azure.cluster_id();
    let unique = entra_operator::controller::naming::unique_name(
        &cluster_id,
        &ns.name,
        "orphaned",
        &created.uid().unwrap(),
    );
    assert_eq!(
        graph_as_operator(
            &azure,
            reqwest::Method::POST,
            "/applications",
            Some(json!({"displayName": "orphaned", "uniqueName": unique}))
        )
        .await,
        201
    );
    let password_name = entra_operator::controller::naming::password_name(&ns.name, "orphaned", 1);
    let added = graph_as_operator(
        &azure,
        reqwest::Method::POST,
        &format!("/applications(uniqueName='{unique}')/addPassword"),
        Some(json!({"passwordCredential": {"displayName": password_name}})),
    )
    .await;
    assert_eq!(added, 200);

    // kill -9 at different points of a create: after each kill another operator takes over.
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    for (i, delay) in [20u64, 60, 120, 250, 400].into_iter().enumerate() {
        sps.create(
            &PostParams::default(),
            &sp_object(&format!("crash-{i}"), json!({})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        operator.signal(Signal::SIGKILL);
        let _ = operator.wait_exit(Duration::from_secs(10));
        operator = Operator::start_with(&kubeconfig, &azure.env);
        operator.wait_for("operator ready", Duration::from_secs(30));
    }
    let names: Vec<String> = std::iter::once("orphaned".to_string())
        .chain((0..5).map(|i| format!("crash-{i}")))
        .collect();
    for name in &names {
        wait_reason(&sps, name, ("True", "Ready"), 60).await;
    }
    let world = state(&azure).await;
    let apps: Vec<&Value> = world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    for name in &names {
        let mine: Vec<&&Value> = apps
            .iter()
            .filter(|a| a["displayName"] == name.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{name}: exactly one application");
        let passwords = mine[0]["passwordCredentials"].as_array().unwrap();
        assert_eq!(
            passwords.len(),
            1,
            "{name}: exactly one password: {passwords:?}"
        );
        let app_id = mine[0]["appId"].as_str().unwrap();
        let sp_count = world["directory"]["servicePrincipals"]
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s["appId"] == app_id)
            .count();
        assert_eq!(sp_count, 1, "{name}: exactly one service principal");
        let secret = secrets.get(name).await.unwrap();
        assert_eq!(
            token_status(&azure, app_id, &text(&secret, "AZURE_CLIENT_SECRET")).await,
            200,
            "{name}"
        );
    }
    // The undelivered password (serial 1) was removed and a new one issued (2, or later if a kill also hit
    // this object's reconcile after its addPassword).
    let orphaned = apps
        .iter()
        .find(|a| a["displayName"] == "orphaned")
        .unwrap();
    let kept = orphaned["passwordCredentials"][0]["displayName"]
        .as_str()
        .unwrap();
    let serial =
        entra_operator::controller::naming::password_serial(kept, &ns.name, "orphaned").unwrap();
    assert!(serial >= 2, "{kept}");

    // Orphan leaves Azure untouched; throttling shows as a condition and passes.
    sps.patch(
        "crash-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
    )
    .await
    .unwrap();
    let kept = sps
        .get("crash-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .app_id
        .unwrap();
    knobs(
        &azure,
        json!({"throttling": {"enabled": true, "scale": 0.0001}}),
    )
    .await;
    sps.create(&PostParams::default(), &sp_object("throttled", json!({})))
        .await
        .unwrap();
    wait_reason(&sps, "throttled", ("False", "Throttled"), 60).await;
    knobs(&azure, json!({"throttling": {"enabled": false}})).await;
    for name in names
        .iter()
        .chain(std::iter::once(&"throttled".to_string()))
    {
        sps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_gone(&sps, 60).await;
    let world = state(&azure).await;
    let live: Vec<&Value> = world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    assert!(
        live.iter().any(|a| a["appId"] == kept.as_str()),
        "Orphan kept its application"
    );
    assert_eq!(
        live.iter()
            .filter(|a| a["displayName"]
                .as_str()
                .is_some_and(|d| d.starts_with("crash-") || d == "orphaned"))
            .count(),
        1,
        "the others were deleted"
    );

    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_needs_a_policy_is_limited_to_owned_apps_and_never_deletes_them() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("sp-adopt").await;
    // An application someone else owns, beside the one the operator owns in the emulator's seed.
    let http = emulator_http(&azure);
    let foreign = json!({"applications": [{"displayName": "finance-legacy", "appId": "f1f1f1f1-0000-4000-8000-00000000f1f1",
        "objectId": "f1f1f1f1-0000-4000-8000-00000000a1a1", "servicePrincipalId": "f1f1f1f1-0000-4000-8000-00000000b1b1"}]});
    http.post(format!("{}/_emulator/seed", azure.emulator.base_url))
        .json(&foreign)
        .send()
        .await
        .unwrap();
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);

    let owned = "5a5a5a5a-0000-4000-8000-000000005a5a";
    sps.create(
        &PostParams::default(),
        &sp_object("legacy", json!({"adopt": {"appId": owned}})),
    )
    .await
    .unwrap();
    sps.create(
        &PostParams::default(),
        &sp_object(
            "finance",
            json!({"adopt": {"appId": "f1f1f1f1-0000-4000-8000-00000000f1f1"}}),
        ),
    )
    .await
    .unwrap();
    sps.create(
        &PostParams::default(),
        &sp_object("purged", json!({"purgeOnDelete": true})),
    )
    .await
    .unwrap();
    // Owned by the operator's identity is no ground: it owns every application it made for any namespace.
    // Without a policy that lists them, neither is touched, and neither learns whether it exists.
    wait_reason(&sps, "legacy", ("False", "DeniedByPolicy"), 30).await;
    wait_reason(&sps, "finance", ("False", "DeniedByPolicy"), 30).await;
    let untouched = state(&azure).await["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .find(|a| a["appId"] == owned)
        .cloned()
        .unwrap();
    assert_eq!(untouched["passwordCredentials"], json!([]));
    assert_eq!(untouched["tags"], json!([]));
    assert!(secrets.get_opt("legacy").await.unwrap().is_none());
    let message = ready_of(&sps.get("legacy").await.unwrap()).unwrap().2;
    assert!(
        message.contains("spec.adopt.appId") && message.contains("applications"),
        "{message}"
    );

    // A policy lists both: the owned one is adopted, the other still refused by Graph.
    put_policy(
        &admin,
        &ns.name,
        "adopt",
        json!({"applications": [owned, "f1f1f1f1-0000-4000-8000-00000000f1f1"]}),
    )
    .await;
    for name in ["legacy", "finance"] {
        sps.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/policy": "added"}}})),
        )
        .await
        .unwrap();
    }
    wait_reason(&sps, "legacy", ("True", "Ready"), 30).await;
    wait_reason(&sps, "finance", ("False", "AdoptionDenied"), 30).await;
    wait_reason(&sps, "purged", ("True", "Ready"), 30).await;

    let legacy = sps.get("legacy").await.unwrap().status.unwrap();
    assert_eq!(
        legacy.app_id.as_deref(),
        Some(owned),
        "the existing application, not a new one"
    );
    let secret = secrets.get("legacy").await.unwrap();
    assert_eq!(
        token_status(&azure, owned, &text(&secret, "AZURE_CLIENT_SECRET")).await,
        200
    );
    let finance = sps.get("finance").await.unwrap();
    let message = &finance.status.unwrap().conditions[0].message;
    assert!(
        message.contains("spec.adopt.appId") && message.contains("Authorization_RequestDenied"),
        "{message}"
    );
    let purged_app = sps
        .get("purged")
        .await
        .unwrap()
        .status
        .unwrap()
        .object_id
        .unwrap();

    for name in ["legacy", "finance", "purged"] {
        sps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_gone(&sps, 30).await;
    let world = state(&azure).await;
    let apps = world["directory"]["applications"].as_object().unwrap();
    let legacy_app = apps
        .values()
        .find(|a| a["appId"] == owned)
        .expect("an adopted application is never deleted");
    assert_eq!(
        legacy_app["passwordCredentials"],
        json!([]),
        "only the password the operator added is gone"
    );
    assert!(
        apps.values()
            .any(|a| a["appId"] == "f1f1f1f1-0000-4000-8000-00000000f1f1"),
        "the foreign one is untouched"
    );
    assert!(
        world["directory"]["deleted"].get(&purged_app).is_none(),
        "purged from deleted items"
    );
    assert!(!apps.contains_key(&purged_app));

    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_signs_in_and_spec_changes_apply_in_place() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("sp-formats").await;
    // New objects stay invisible for a moment after they are created, as on a lagging Graph replica.
    knobs(&azure, json!({"replication": {"graphNotFoundMs": 1500}})).await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);

    let template = json!({"name": "f-template", "format": "template", "templates": {"connection": "client={{ clientId }};secret={{ clientSecret }}"}});
    let fic = json!([{"name": "ci", "issuer": "https://token.actions.example", "subject": "repo:org/app:ref:refs/heads/main"}]);
    for (name, secret) in [
        ("f-env", json!({"name": "f-env", "format": "env"})),
        ("f-az", json!({"name": "f-az", "format": "az"})),
        ("f-sdk", json!({"name": "f-sdk", "format": "sdk-auth"})),
        ("f-aks", json!({"name": "f-aks", "format": "azure.json"})),
        ("f-template", template.clone()),
    ] {
        let extra = if name == "f-env" {
            json!({"secret": secret, "federatedCredentials": fic})
        } else {
            json!({"secret": secret})
        };
        sps.create(&PostParams::default(), &sp_object(name, extra))
            .await
            .unwrap();
    }
    wait_reason(&sps, "f-env", ("False", "WaitingForReplication"), 30).await;
    let parse = |s: &Secret, key: &str| serde_json::from_str::<Value>(&text(s, key)).unwrap();
    for name in ["f-env", "f-az", "f-sdk", "f-aks", "f-template"] {
        wait_reason(&sps, name, ("True", "Ready"), 60).await;
        let s = secrets.get(name).await.unwrap();
        let (client, secret) = match name {
            "f-env" => (text(&s, "AZURE_CLIENT_ID"), text(&s, "AZURE_CLIENT_SECRET")),
            "f-az" => (text(&s, "appId"), text(&s, "password")),
            "f-sdk" => {
                let doc = parse(&s, "sdk-auth.json");
                (
                    doc["clientId"].as_str().unwrap().into(),
                    doc["clientSecret"].as_str().unwrap().into(),
                )
            }
            "f-aks" => {
                let doc = parse(&s, "azure.json");
                (
                    doc["aadClientId"].as_str().unwrap().into(),
                    doc["aadClientSecret"].as_str().unwrap().into(),
                )
            }
            _ => {
                let conn = text(&s, "connection");
                let (c, sec) = conn
                    .strip_prefix("client=")
                    .unwrap()
                    .split_once(";secret=")
                    .unwrap();
                (c.to_string(), sec.to_string())
            }
        };
        assert_eq!(token_status(&azure, &client, &secret).await, 200, "{name}");
    }

    // Reconciles that change nothing issue nothing: the template Secret (whose secret cannot be read back)
    // keeps its password.
    let key = |s: Secret| s.annotations()["entra-operator.io/key-id"].clone();
    let before = key(secrets.get("f-template").await.unwrap());
    sps.patch(
        "f-template",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(key(secrets.get("f-template").await.unwrap()), before);

    // Spec changes apply in place: the federated credential goes, tags and the display name follow.
    let app_id = sps
        .get("f-env")
        .await
        .unwrap()
        .status
        .unwrap()
        .app_id
        .unwrap();
    let app = |world: Value| {
        world["directory"]["applications"]
            .as_object()
            .unwrap()
            .values()
            .find(|a| a["appId"] == app_id.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(
        app(state(&azure).await)["federatedIdentityCredentials"][0]["subject"],
        "repo:org/app:ref:refs/heads/main"
    );
    sps.patch("f-env", &PatchParams::default(), &Patch::Merge(json!({"spec": {"federatedCredentials": null, "displayName": "renamed", "tags": ["team:x"]}})))
        .await
        .unwrap();
    eventually(30, "spec applied in Azure", || async {
        let a = app(state(&azure).await);
        let done = a["displayName"] == "renamed"
            && a["federatedIdentityCredentials"] == json!([])
            && a["tags"].as_array().unwrap().contains(&json!("team:x"));
        if done { Ok(()) } else { Err(a.to_string()) }
    })
    .await;
    assert_eq!(
        app(state(&azure).await)["appId"],
        app_id.as_str(),
        "the same application"
    );

    // A template with an unknown placeholder is a spec error naming the field.
    sps.patch(
        "f-template",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secret": {"templates": {"connection": "{{ password }}"}}}})),
    )
    .await
    .unwrap();
    wait_reason(&sps, "f-template", ("False", "InvalidSpec"), 30).await;
    let message = sps
        .get("f-template")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions[0]
        .message
        .clone();
    assert!(
        message.contains("spec.secret.templates[connection]"),
        "{message}"
    );

    for name in ["f-env", "f-az", "f-sdk", "f-aks", "f-template"] {
        sps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_gone(&sps, 30).await;
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}
