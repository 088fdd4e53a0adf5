//! Publishing only what Entra accepts everywhere (issue 18), against the emulator's credential replication
//! knob: a new secret is refused by some regions for 1.5 s. A consumer that reads the Secret and signs in every
//! 100 ms never fails through rotations when the operator verifies over a window longer than that; with
//! verification turned down to one sign-in, the same consumer does fail. The ServicePrincipal turns Ready only
//! once its first secret has passed, and status shows the rounds.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

use entra_operator::api::{CredentialRotation, ServicePrincipal};

use crate::{
    harness::{
        Setup, delete_and_wait, emulator_http, eventually, knobs, object, sign_in, teardown, text,
        wait_condition,
    },
    operator_run::{Azure, Operator},
};

const KEY_ID: &str = "entra-operator.io/key-id";

/// What a consumer saw: sign-ins tried and failed, and the secrets (key ids) it read.
struct Seen {
    attempts: u64,
    failures: u64,
    keys: usize,
}

/// Runs a ServicePrincipal rotated every 6 s under the replication knob, with the operator verifying
/// `sign_ins` rounds over `window`, while a consumer signs in every 100 ms with whatever the Secret holds,
/// until it has read `rotations` + 1 secrets.
async fn consumer_through_rotations(
    prefix: &str,
    sign_ins: &str,
    window: &str,
    rotations: usize,
) -> Seen {
    let Setup {
        admin,
        ns,
        kubeconfig,
        mut azure,
        rbac,
        _dir,
    } = Setup::new(prefix).await;
    azure.env.push(("VERIFY_SIGN_INS".into(), sign_ins.into()));
    azure.env.push(("VERIFY_WINDOW".into(), window.into()));
    let replication = json!({"replication": {"credentialMs": 1500, "credentialRegions": 4}});
    knobs(&azure, replication).await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
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
    let sp = wait_condition(&sps, "probe", "True", "Ready", 90).await;
    let status = sp.status.unwrap();
    let app_id = status.app_id.unwrap();
    let verified = status.verification.expect("status shows the verification");
    let required: u32 = sign_ins.parse().unwrap();
    assert!(
        verified.verified_time.is_some() && verified.successes >= required,
        "Ready only once verified: {verified:?}"
    );
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "probe",
                json!({"servicePrincipalRef": {"name": "probe"}, "rotateEvery": "6s", "overlap": "3s", "credentialLifetime": "1h"}),
            ),
        )
        .await
        .unwrap();
    wait_condition(&crots, "probe", "True", "Ready", 90).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let keys = Arc::new(Mutex::new(BTreeSet::new()));
    let consumer = {
        let (stop, attempts, failures, keys) = (
            stop.clone(),
            attempts.clone(),
            failures.clone(),
            keys.clone(),
        );
        let (secrets, app_id) = (secrets.clone(), app_id.clone());
        let http = (emulator_http(&azure), azure.emulator.base_url.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let secret = secrets.get("probe-credentials").await.unwrap();
                let key = secret.metadata.annotations.as_ref().unwrap()[KEY_ID].clone();
                keys.lock().unwrap().insert(key.clone());
                let status = sign_in(&http, &app_id, &text(&secret, "AZURE_CLIENT_SECRET")).await;
                attempts.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "consumer: the Secret's secret (key {key}) failed to sign in: {status}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    eventually(180, &format!("{} secrets read", rotations + 1), || async {
        let seen = keys.lock().unwrap().len();
        match seen > rotations {
            true => Ok(()),
            false => Err(format!("{seen} read")),
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();

    let rotation = crots.get("probe").await.unwrap().status.unwrap();
    let verification = rotation
        .verification
        .clone()
        .expect("the rotation shows its verification");
    assert!(verification.attempts >= 1, "{verification:?}");
    assert!(
        rotation.revision.is_some_and(|r| r as usize >= rotations),
        "every rotation counted: {rotation:?}"
    );
    assert!(
        rotation.conditions.iter().any(|c| c.type_ == "Verifying"),
        "a Verifying condition: {:?}",
        rotation.conditions
    );
    let seen = Seen {
        attempts: attempts.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        keys: keys.lock().unwrap().len(),
    };
    delete_and_wait(&crots, "probe", 60, "rotation deleted").await;
    operator.stop();
    sps.delete("probe", &DeleteParams::default()).await.unwrap();
    let _: &Azure = &azure;
    teardown(rbac, azure, ns).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_over_a_window_a_consumer_never_fails_while_secrets_replicate() {
    // 3 rounds over 3 s: longer than the 1.5 s the emulator takes to replicate a secret everywhere.
    let seen = consumer_through_rotations("verify-window", "3", "3s", 3).await;
    assert!(seen.attempts > 50, "{} sign-ins", seen.attempts);
    assert!(seen.keys > 3);
    assert_eq!(
        seen.failures, 0,
        "{} of {} sign-ins failed",
        seen.failures, seen.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_by_one_sign_in_a_consumer_fails_while_secrets_replicate() {
    // What the window prevents: published after one successful round, a secret reaches the consumer while
    // some regions still refuse it.
    let seen = consumer_through_rotations("verify-once", "1", "1s", 3).await;
    assert!(seen.keys > 3);
    assert!(
        seen.failures > 0,
        "with one sign-in the consumer should have hit a region without the new secret ({} sign-ins)",
        seen.attempts
    );
}
