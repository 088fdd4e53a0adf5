//! The CredentialRotation controller end to end, with lifetimes and overlaps of seconds: a consumer that signs
//! in every 100 ms with whatever the Secret holds never fails through rotations and a kill -9; an AKS cluster
//! gets each new secret and keeps the old one while a reset fails; workloads restart once per rotation; bad
//! input names its field.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, DelegationPolicy, ServicePrincipal};

use crate::{
    harness::{
        Setup, delete_and_wait, emulator_http, eventually, knobs, object, ready_of as ready, seed,
        sign_in, state, teardown, text, token_status, wait_condition as wait_reason,
    },
    operator_run::{Azure, Operator},
};

const LEGACY_APP: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";
const CLUSTER: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/prod";

/// The key ids of the operator's passwords (displayName `entra-operator:...`) on the application `app_id`.
async fn operator_passwords(azure: &Azure, app_id: &str) -> Vec<String> {
    let world = state(azure).await;
    world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["appId"] == app_id)
        .flat_map(|a| a["passwordCredentials"].as_array().unwrap().clone())
        .filter(|p| {
            p["displayName"]
                .as_str()
                .is_some_and(|d| d.starts_with("entra-operator:"))
        })
        .map(|p| p["keyId"].as_str().unwrap().to_string())
        .collect()
}

/// Whether the emulator's cluster holds `secret` as its service principal's secret.
async fn cluster_holds(azure: &Azure, secret: &str) -> bool {
    cluster_holds_with(
        &(emulator_http(azure), azure.emulator.base_url.clone()),
        secret,
    )
    .await
}

async fn cluster_holds_with(http: &(reqwest::Client, String), secret: &str) -> bool {
    let answer: Value = http
        .0
        .post(format!("{}/_emulator/aks/check", http.1))
        .json(&json!({"clusterId": CLUSTER, "secret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["secretMatches"] == true
}

/// A policy letting the namespace rotate the legacy application and reset the clusters of rg-aks.
async fn allow_application(admin: &kube::Client, ns: &str) -> String {
    crate::harness::put_policy(
        admin,
        ns,
        "rotation",
        json!({"applications": [LEGACY_APP], "aksClusters": [CLUSTER.replace("/providers/Microsoft.ContainerService/managedClusters/prod", "")]}),
    )
    .await
}

// Four workers: the test blocks one reading the operator's log while the probe and the emulator run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_and_a_cluster_never_fail_through_rotations_and_a_kill() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("crot-probe").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    // Each reset takes a moment, as on a real cluster.
    knobs(&azure, json!({"aks": {"resetDurationMs": 300}})).await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let policy = allow_application(&admin, &ns.name).await;
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            "probe",
            json!({"displayName": "probe", "secret": {"name": "probe-credentials"}}),
        ),
    )
    .await
    .unwrap();
    // The cluster runs as the ServicePrincipal's application (as `az aks create --service-principal` sets it
    // up): only such a cluster is reset with its secrets.
    let probe_sp = wait_reason(&sps, "probe", "True", "Ready", 60).await;
    seed(
        &azure,
        json!({"aksClusters": [{"id": CLUSTER, "clientId": probe_sp.status.unwrap().app_id.unwrap()}]}),
    )
    .await;
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "probe",
                json!({"servicePrincipalRef": {"name": "probe"}, "rotateEvery": "5s", "overlap": "2s", "credentialLifetime": "1h",
                    "targets": {"aksClusters": [CLUSTER]}}),
            ),
        )
        .await
        .unwrap();
    let first = wait_reason(&crots, "probe", "True", "Ready", 60).await;
    let app_id = sps
        .get("probe")
        .await
        .unwrap()
        .status
        .unwrap()
        .app_id
        .unwrap();
    let first_key = first.status.unwrap().current_key_id.unwrap();

    // The probe: every 100 ms, sign in with whatever the Secret holds now, as a consumer would.
    let stop_probe = Arc::new(AtomicBool::new(false));
    let (attempts, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let most_passwords = Arc::new(AtomicU64::new(0));
    let probe = {
        let (secrets, app_id, stop_probe) = (secrets.clone(), app_id.clone(), stop_probe.clone());
        let (attempts, failures) = (attempts.clone(), failures.clone());
        let azure_http = (emulator_http(&azure), azure.emulator.base_url.clone());
        let keys = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let seen = keys.clone();
        let handle = tokio::spawn(async move {
            // Every secret text seen, newest last: the AKS cluster must hold one of them that still signs in.
            let mut texts: Vec<String> = vec![];
            while !stop_probe.load(Ordering::Relaxed) {
                let secret = secrets.get("probe-credentials").await.unwrap();
                seen.lock().unwrap().insert(
                    secret.metadata.annotations.as_ref().unwrap()["entra-operator.io/key-id"]
                        .clone(),
                );
                let current = text(&secret, "AZURE_CLIENT_SECRET");
                if texts.last() != Some(&current) {
                    texts.push(current.clone());
                }
                let status = sign_in(&azure_http, &app_id, &current).await;
                attempts.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "probe: the Secret's credential (key {}) failed to sign in: {status}",
                        secret.metadata.annotations.as_ref().unwrap()["entra-operator.io/key-id"]
                    );
                }
                // The cluster's credential (the newest one it holds) signs in too. It may already hold one
                // published after the read above (a rotation can write the Secret and reset the cluster while
                // this probe waits on a loaded machine): read the Secret again before calling it unknown.
                let mut held = None;
                for fresh in [false, true] {
                    if fresh {
                        let now = text(
                            &secrets.get("probe-credentials").await.unwrap(),
                            "AZURE_CLIENT_SECRET",
                        );
                        if texts.last() != Some(&now) {
                            texts.push(now);
                        }
                    }
                    for t in texts.iter().rev() {
                        if cluster_holds_with(&azure_http, t).await {
                            held = Some(t.clone());
                            break;
                        }
                    }
                    if held.is_some() {
                        break;
                    }
                }
                match held {
                    Some(t) if sign_in(&azure_http, &app_id, &t).await == 200 => {}
                    held => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "probe: the cluster's credential {} ({} texts seen in the Secret)",
                            if held.is_some() {
                                "failed to sign in"
                            } else {
                                "is none the Secret held"
                            },
                            texts.len()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (handle, keys)
    };
    // Never more than two of the operator's passwords on the application.
    let watch = {
        let (stop_probe, most) = (stop_probe.clone(), most_passwords.clone());
        let (http, base, app_id) = (
            emulator_http(&azure),
            azure.emulator.base_url.clone(),
            app_id.clone(),
        );
        tokio::spawn(async move {
            while !stop_probe.load(Ordering::Relaxed) {
                let world: Value = http
                    .get(format!("{base}/_emulator/state"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let n = world["directory"]["applications"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter(|a| a["appId"] == app_id.as_str())
                    .map(|a| a["passwordCredentials"].as_array().unwrap().len() as u64)
                    .sum::<u64>();
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Two rotations, then kill -9 mid-rotation (right after the next one starts), then three more.
    let rotated_to = |n: usize| {
        let keys = probe.1.clone();
        async move {
            eventually(60, &format!("{n} keys seen"), || async {
                let seen = keys.lock().unwrap().len();
                if seen >= n {
                    Ok(())
                } else {
                    Err(format!("{seen} keys"))
                }
            })
            .await
        }
    };
    rotated_to(3).await;
    operator.drain();
    // Killed right after the next password reached the Secret: before it is verified and the overlap starts.
    operator.wait_for("rotated the client secret", Duration::from_secs(30));
    operator.signal(Signal::SIGKILL);
    let _ = operator.wait_exit(Duration::from_secs(10));
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    rotated_to(7).await;
    stop_probe.store(true, Ordering::Relaxed);
    probe.0.await.unwrap();
    watch.await.unwrap();

    let (attempts, failures) = (
        attempts.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    assert!(attempts > 100, "{attempts} sign-ins");
    assert_eq!(failures, 0, "{failures} of {attempts} sign-ins failed");
    assert!(
        most_passwords.load(Ordering::Relaxed) <= 2,
        "at most two passwords at any time, saw {}",
        most_passwords.load(Ordering::Relaxed)
    );
    assert!(!probe.1.lock().unwrap().contains("") && probe.1.lock().unwrap().contains(&first_key));

    // Settled: one password again once the last overlap ends, and it is the Secret's.
    eventually(30, "one password left", || async {
        let left = operator_passwords(&azure, &app_id).await;
        let secret = secrets
            .get("probe-credentials")
            .await
            .map_err(|e| e.to_string())?;
        let current = secret.metadata.annotations.unwrap()["entra-operator.io/key-id"].clone();
        if left.len() <= 2 && left.contains(&current) {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    delete_and_wait(&crots, "probe", 30, "rotation deleted").await;
    let lines = operator.stop();
    assert!(
        lines.iter().all(|l| !l.contains("AZURE_CLIENT_SECRET")),
        "no Secret data in the log"
    );
    sps.delete("probe", &DeleteParams::default()).await.unwrap();
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await
        .unwrap();
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aks_cluster_gets_each_secret_and_a_failing_reset_keeps_the_old_one() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("crot-aks").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let policy = allow_application(&admin, &ns.name).await;
    knobs(&azure, json!({"aks": {"resetDurationMs": 1500}})).await;
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "aks",
                json!({"applicationId": LEGACY_APP, "renewBefore": "10m", "overlap": "3s", "credentialLifetime": "24h",
                    "targets": {"aksClusters": [CLUSTER]}}),
            ),
        )
        .await
        .unwrap();
    let first = wait_reason(&crots, "aks", "True", "Ready", 60).await;
    let status = first.status.unwrap();
    assert!(
        status
            .targets
            .iter()
            .any(|t| t.kind == "AKSCluster" && t.state == "Published"),
        "{:?}",
        status.targets
    );
    // Without targets.secret the rotation keeps the credential in a Secret of its own.
    let first_secret = text(
        &secrets.get("aks-credential").await.unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    assert!(
        cluster_holds(&azure, &first_secret).await,
        "the cluster holds the new secret"
    );
    assert_eq!(token_status(&azure, LEGACY_APP, &first_secret).await, 200);

    // A reset that fails: reported, retried, and the old secret stays valid (and the cluster's) meanwhile.
    knobs(&azure, json!({"aks": {"resetFailureRate": 1.0}})).await;
    crots
        .patch(
            "aks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotationToken": "now"}})),
        )
        .await
        .unwrap();
    let failing = wait_reason(&crots, "aks", "False", "AKSResetFailed", 60).await;
    assert!(
        ready(&failing)
            .unwrap()
            .2
            .contains("spec.targets.aksClusters[0]"),
        "{failing:?}"
    );
    let first_key = status.current_key_id.clone().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // longer than the overlap
    // Counted, as cert-manager counts failed issuances, and backed off.
    let counted = crots.get("aks").await.unwrap().status.unwrap();
    assert!(
        counted.failed_attempts.is_some_and(|n| n >= 1) && counted.last_failure_time.is_some(),
        "{counted:?}"
    );
    assert!(
        operator_passwords(&azure, LEGACY_APP)
            .await
            .contains(&first_key),
        "the previous password stays while the cluster has not taken its successor"
    );
    assert!(cluster_holds(&azure, &first_secret).await);
    assert_eq!(token_status(&azure, LEGACY_APP, &first_secret).await, 200);

    knobs(&azure, json!({"aks": {"resetFailureRate": 0.0}})).await;
    let done = wait_reason(&crots, "aks", "True", "Ready", 90).await;
    let second_secret = text(
        &secrets.get("aks-credential").await.unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    assert_ne!(second_secret, first_secret);
    assert!(cluster_holds(&azure, &second_secret).await);
    assert_ne!(
        done.status.as_ref().unwrap().current_key_id.as_deref(),
        Some(first_key.as_str())
    );
    let settled = done.status.as_ref().unwrap();
    assert_eq!(settled.failed_attempts, None, "a success clears the count");
    assert!(settled.revision.is_some_and(|r| r >= 2), "{settled:?}");
    // After the overlap the old password goes, and with it the old secret's use.
    eventually(30, "old password removed", || async {
        if operator_passwords(&azure, LEGACY_APP)
            .await
            .contains(&first_key)
        {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(token_status(&azure, LEGACY_APP, &first_secret).await, 401);
    assert!(!cluster_holds(&azure, &first_secret).await);

    // A lost Secret: its text is gone, so a new secret is issued, and the one the cluster holds stays until
    // the cluster holds the new one.
    let second_key = done
        .status
        .as_ref()
        .unwrap()
        .current_key_id
        .clone()
        .unwrap();
    secrets
        .delete("aks-credential", &DeleteParams::default())
        .await
        .unwrap();
    let third_secret = eventually(60, "Secret re-issued and published", || async {
        let secret = secrets
            .get_opt("aks-credential")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Secret yet")?;
        let text = text(&secret, "AZURE_CLIENT_SECRET");
        if text != second_secret && cluster_holds(&azure, &text).await {
            Ok(text)
        } else {
            Err("not published yet".to_string())
        }
    })
    .await;
    assert_eq!(token_status(&azure, LEGACY_APP, &third_secret).await, 200);
    eventually(
        30,
        "the lost Secret's password removed after the overlap",
        || async {
            let left = operator_passwords(&azure, LEGACY_APP).await;
            if left.contains(&second_key) || left.len() != 1 {
                Err(format!("{left:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;

    // The metrics say so.
    let metrics = operator_metrics(&mut operator).await;
    assert!(
        metrics.contains("entra_operator_credential_rotations_total{result=\"completed\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "entra_operator_credential_expiry_timestamp_seconds{{kind=\"CredentialRotation\",namespace=\"{}\",name=\"aks\"}}",
        ns.name
    )));

    crots.delete("aks", &DeleteParams::default()).await.unwrap();
    operator.stop();
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await
        .unwrap();
    teardown(rbac, azure, ns).await;
}

async fn operator_metrics(operator: &mut Operator) -> String {
    let address = operator.wait_for(
        "serving /metrics, /healthz and /readyz",
        Duration::from_secs(5),
    )["address"]
        .as_str()
        .unwrap()
        .to_string();
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_restart_once_per_rotation() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("crot-restart").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
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
    wait_reason(&crots, "web", "True", "Ready", 60).await;
    let generation = |d: Deployment| d.metadata.generation.unwrap();
    assert_eq!(
        generation(deployments.get("web").await.unwrap()),
        1,
        "adopting the ServicePrincipal's secret restarts nothing"
    );
    for (i, token) in ["a", "b"].iter().enumerate() {
        crots
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rotationToken": token}})),
            )
            .await
            .unwrap();
        let rotated = eventually(60, "rotated and published", || async {
            let c = crots.get("web").await.map_err(|e| e.to_string())?;
            let s = c.status.clone().unwrap_or_default();
            match ready(&c) {
                Some((st, _, _))
                    if st == "True" && s.observed_rotation_token.as_deref() == Some(token) =>
                {
                    Ok(s)
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // Reconciles keep coming (the overlap ends, the ServicePrincipal changes): still one restart each.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let d = deployments.get("web").await.unwrap();
        assert_eq!(
            generation(d.clone()),
            2 + i as i64,
            "one restart per rotation"
        );
        let annotations = d
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(
            annotations["entra-operator.io/restarted-for-key"],
            rotated.current_key_id.unwrap()
        );
    }
    crots.delete("web", &DeleteParams::default()).await.unwrap();
    operator.stop();
    sps.delete("web", &DeleteParams::default()).await.unwrap();
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_are_reported_on_their_field() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("crot-bad").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    // An application the operator does not own.
    let foreign = "6b6b6b6b-0000-4000-8000-000000006b6b";
    seed(
        &azure,
        json!({"applications": [{"displayName": "someone else's", "appId": foreign,
            "objectId": "6b6b6b6b-0000-4000-8000-00000000a6a6", "servicePrincipalId": "6b6b6b6b-0000-4000-8000-00000000b6b6"}]}),
    )
    .await;
    // Each rotation its own Secret: a deleted rotation leaves its Secret behind (orphaned), and a later one
    // writing the same name would be a SecretConflict.
    let spec = |app: &str, clusters: Vec<String>| {
        let secret = format!("{}-{}-secret", &app[..8], clusters.len());
        json!({"applicationId": app, "renewBefore": "1m", "overlap": "1s", "credentialLifetime": "1h",
            "targets": {"secret": {"name": secret}, "aksClusters": clusters}})
    };
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "not-allowed",
                spec(LEGACY_APP, vec![]),
            ),
        )
        .await
        .unwrap();
    let denied = wait_reason(&crots, "not-allowed", "False", "DeniedByPolicy", 30).await;
    assert!(ready(&denied).unwrap().2.contains("spec.applicationId"));

    // Listed by the policy, but not owned by the operator's identity.
    let policy = allow_application(&admin, &ns.name).await;
    let mut listed: DelegationPolicy = Api::<DelegationPolicy>::all(admin.clone())
        .get(&policy)
        .await
        .unwrap();
    listed.spec.applications.push(foreign.into());
    listed.metadata.managed_fields = None;
    Api::<DelegationPolicy>::all(admin.clone())
        .patch(
            &policy,
            &PatchParams::apply("entra-operator-tests").force(),
            &Patch::Apply(&listed),
        )
        .await
        .unwrap();
    crots
        .create(
            &PostParams::default(),
            &object("CredentialRotation", "not-owned", spec(foreign, vec![])),
        )
        .await
        .unwrap();
    let not_owned = wait_reason(&crots, "not-owned", "False", "ApplicationNotOwned", 30).await;
    assert!(ready(&not_owned).unwrap().2.contains("spec.applicationId"));

    // A cluster that does not exist: the secret is issued and kept, the failure names the entry.
    let missing = CLUSTER.replace("/prod", "/nope");
    // Gone before the next rotation of the same application, which it would otherwise hold.
    delete_and_wait(&crots, "not-allowed", 30, "not-allowed deleted").await;
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "no-cluster",
                spec(LEGACY_APP, vec![missing.clone()]),
            ),
        )
        .await
        .unwrap();
    let failed = wait_reason(&crots, "no-cluster", "False", "AKSResetFailed", 30).await;
    let message = ready(&failed).unwrap().2;
    assert!(
        message.contains("spec.targets.aksClusters[0]") && message.contains("nope"),
        "{message}"
    );

    crots
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    operator.stop();
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await
        .unwrap();
    teardown(rbac, azure, ns).await;
}
