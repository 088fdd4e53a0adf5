//! Table tests of the rotation's plan and of its deletion: each case is a moment of a rotation's life (a
//! crash between two writes included), built with `crate::fixtures`, and asserts the exact steps planned and
//! what matters of the status to write.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::SignedDuration,
    jiff::Timestamp,
};
use serde_json::json;

use super::{
    Error,
    cleanup::{self, Release},
    gather::Gathered,
    plan::{self, Step, Trigger},
    subject::{Subject, VaultTarget},
    targets::{self, ClearedClusters},
};
use crate::{
    api::KeyVaultSecretTarget,
    api::{
        CredentialRotation, CredentialRotationStatus, ServicePrincipal,
        credential_rotation::{SIGN_IN_TARGET, TargetKind, TargetState, WorkloadKind},
    },
    azure::{
        graph::AppCredential,
        keyvault::{Attributes, SecretVersion},
    },
    controller::{credentials, key_vault, reconcile::Failure},
    fixtures::{
        NAMESPACE, SUBSCRIPTION, application, credential_rotation_with, delivered_secret, key_id,
        owned_by, password, service_principal, t0,
    },
};

const DAY: i64 = 86_400;
const OWNER: &str = "web";

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn key(serial: u64) -> String {
    key_id(OWNER, serial)
}

fn cluster() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks1"
    )
}

/// A rotation of the ServicePrincipal `web`, with the fields of `overrides` set.
fn rotation(overrides: serde_json::Value) -> CredentialRotation {
    let mut spec = json!({"servicePrincipalRef": {"name": OWNER}});
    if let (Some(spec), Some(overrides)) = (spec.as_object_mut(), overrides.as_object()) {
        spec.extend(overrides.clone());
    }
    credential_rotation_with("rot", spec)
}

/// What a reconcile of a rotation of `web` gathers: its application with `passwords`, and `secret`.
fn gathered(passwords: Vec<AppCredential>, secret: Option<Secret>, cleared: &[&str]) -> Gathered {
    let sp: ServicePrincipal = service_principal(OWNER);
    let subject = Subject {
        app: application(OWNER, passwords),
        owner: OWNER.into(),
        secret: Some(sp.spec.secret.clone().expect("a secret target")),
        display_name: sp.spec.display_name.clone(),
        lifetime: credentials::DEFAULT_LIFETIME,
        vaults: vec![],
        sp: Some(sp),
        kind: credentials::Kind::Password,
        source: None,
    };
    Gathered::new(subject, ClearedClusters::of(cleared), secret, NAMESPACE)
}

/// `web`'s Secret delivering `serial`, owned by the ServicePrincipal.
fn secret(serial: u64) -> Option<Secret> {
    Some(owned_by(
        delivered_secret(OWNER, OWNER, serial),
        &service_principal(OWNER),
    ))
}

/// Status naming `current` (issued at `issued`) and every target of `crot` holding it.
fn published(
    crot: &CredentialRotation,
    current: u64,
    issued: Timestamp,
) -> CredentialRotationStatus {
    let key = key(current);
    let mut status = CredentialRotationStatus {
        current_key_id: Some(key.clone()),
        last_rotation_time: Some(Time(issued)),
        ..Default::default()
    };
    let mut held = vec![(TargetKind::Secret, OWNER.to_string())];
    held.push((TargetKind::SignIn, SIGN_IN_TARGET.to_string()));
    held.extend(
        crot.spec
            .targets
            .aks_clusters
            .iter()
            .map(|c| (TargetKind::AksCluster, c.clone())),
    );
    held.extend(
        crot.spec
            .targets
            .restart_workloads
            .iter()
            .map(|w| (TargetKind::Workload(w.kind), w.name.clone())),
    );
    for (kind, name) in held {
        let entry = targets::entry(kind, &name, &key, TargetState::Published, None, issued);
        targets::set_target(&mut status, entry);
    }
    status
}

/// ... with `previous` still valid, going at `removal`.
fn overlapping(
    crot: &CredentialRotation,
    current: u64,
    issued: Timestamp,
    previous: u64,
    removal: Timestamp,
) -> CredentialRotationStatus {
    CredentialRotationStatus {
        previous_key_id: Some(key(previous)),
        previous_key_removal_time: Some(Time(removal)),
        ..published(crot, current, issued)
    }
}

/// The steps of publishing a key no target holds yet, to the Secret and the sign-in only.
fn publish_new() -> Vec<Step> {
    vec![
        Step::RecordSchedule,
        Step::PublishSecret,
        Step::Verify,
        Step::RequirePublished,
        Step::CountCompleted,
    ]
}

/// The steps of a rotation replacing `previous` with password `serial`, published at `now`.
fn rotate(previous: Option<u64>, serial: u64, trigger: Trigger, now: Timestamp) -> Vec<Step> {
    let mut steps = vec![Step::CheckTemplates];
    if let Some(previous) = previous {
        steps.push(Step::RecordIntent {
            previous: key(previous),
        });
    }
    steps.push(Step::AddPassword {
        serial,
        lifetime: credentials::DEFAULT_LIFETIME,
    });
    // With a Secret: staged and verified before the Secret gets it.
    steps.extend([
        Step::Stage { trigger },
        Step::Verify,
        Step::WriteSecret { trigger },
    ]);
    steps.extend(publish_new());
    if previous.is_some() {
        let until = now + SignedDuration::from_hours(1);
        steps.push(Step::StartOverlap { until });
    }
    steps
}

/// Nothing to do but check that every target still holds the key.
fn steady() -> Vec<Step> {
    vec![
        Step::RecordSchedule,
        Step::PublishSecret,
        Step::RequirePublished,
    ]
}

struct Case {
    name: &'static str,
    crot: CredentialRotation,
    status: CredentialRotationStatus,
    gathered: Gathered,
    now: Timestamp,
    finishing: bool,
    /// The steps, or the reason of a refusal before any step.
    expect: Result<Vec<Step>, &'static str>,
    /// What matters of the status to write (the plan's starting status).
    check: fn(&CredentialRotationStatus),
}

fn nothing(_: &CredentialRotationStatus) {}

fn now() -> Timestamp {
    at(DAY)
}

fn month() -> Timestamp {
    at(31 * DAY)
}

/// Password 2, added 5 seconds ago at [`month`]: still on its way into the Secret.
fn young() -> AppCredential {
    password(OWNER, 2, month() - SignedDuration::from_secs(5), 365)
}

/// Password 2, added a minute before [`month`]: left behind.
fn old() -> AppCredential {
    password(OWNER, 2, month() - SignedDuration::from_secs(60), 365)
}

fn p1() -> AppCredential {
    password(OWNER, 1, t0(), 365)
}

fn p2() -> AppCredential {
    password(OWNER, 2, at(20 * DAY), 365)
}

fn plain() -> CredentialRotation {
    rotation(json!({}))
}

fn with_workload() -> CredentialRotation {
    rotation(json!({"targets": {"restartWorkloads": [{"kind": "Deployment", "name": "api"}]}}))
}

fn with_cluster() -> CredentialRotation {
    rotation(json!({"targets": {"aksClusters": [cluster()]}}))
}

/// Password 1 current, and the intent to replace it recorded.
fn intent() -> CredentialRotationStatus {
    CredentialRotationStatus {
        previous_key_id: Some(key(1)),
        ..published(&plain(), 1, t0())
    }
}

/// A fresh rotation, a Secret adopted, the steady state, and a crash before the Secret write.
fn fresh_and_steady_cases() -> Vec<Case> {
    vec![
        Case {
            name: "a Secret holding a newer password of ours with no intent recorded is adopted: nothing \
                   restarts, and the password it replaced, kept by nothing, goes",
            crot: with_workload(),
            status: published(&with_workload(), 1, t0()),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: at(21 * DAY),
            finishing: false,
            expect: Ok([vec![Step::RemoveLeftover { key_id: key(1) }], publish_new()].concat()),
            check: |s| {
                assert_eq!(s.current_key_id, Some(key(2)));
                assert_eq!(s.previous_key_id, None);
                assert_eq!(s.targets.len(), 1, "{:?}", s.targets);
                assert_eq!(s.targets[0].key_id, Some(key(2)));
            },
        },
        Case {
            name: "a fresh rotation adopts the ServicePrincipal's first password and publishes it",
            crot: rotation(json!({"rotationToken": "first"})),
            status: CredentialRotationStatus::default(),
            gathered: gathered(vec![p1()], secret(1), &[]),
            now: now(),
            finishing: false,
            expect: Ok(publish_new()),
            check: |s| {
                assert_eq!(s.current_key_id, Some(key(1)));
                assert_eq!(s.last_rotation_time, Some(Time(t0())));
                assert_eq!(
                    s.observed_rotation_token.as_deref(),
                    Some("first"),
                    "a token present from the start is no request to rotate"
                );
            },
        },
        Case {
            name: "a fresh rotation with no password of its own yet issues the first",
            crot: plain(),
            status: CredentialRotationStatus::default(),
            gathered: gathered(vec![], None, &[]),
            now: now(),
            finishing: false,
            expect: Ok(rotate(None, 1, Trigger::Initial, now())),
            check: |s| assert_eq!(s.current_key_id, None),
        },
        Case {
            name: "the steady state checks its targets and changes nothing",
            crot: plain(),
            status: published(&plain(), 1, t0()),
            gathered: gathered(vec![p1()], secret(1), &[]),
            now: now(),
            finishing: false,
            expect: Ok(steady()),
            check: |s| assert_eq!(s.previous_key_id, None),
        },
        Case {
            name: "a crash after addPassword: a password younger than the grace is on its way, the rotation waits",
            crot: plain(),
            status: intent(),
            gathered: gathered(vec![p1(), young()], secret(1), &[]),
            now: month(),
            finishing: false,
            expect: Ok(vec![Step::Wait {
                reason: "WaitingForOverlap",
                message:
                    "a scheduled rotation is due; it starts when the previous secret's overlap ends"
                        .into(),
                until: month() + SignedDuration::from_secs(10),
            }]),
            check: |s| {
                assert_eq!(s.current_key_id, Some(key(1)));
                assert_eq!(
                    s.previous_key_id, None,
                    "the intent() never reached the Secret"
                );
            },
        },
    ]
}

/// Crashes between two writes, and a Secret edited or lost.
fn crash_cases() -> Vec<Case> {
    vec![
        Case {
            name: "a crash after addPassword: an older password is left behind, removed, and the rotation goes on",
            crot: plain(),
            status: intent(),
            gathered: gathered(vec![p1(), old()], secret(1), &[]),
            now: month(),
            finishing: false,
            expect: Ok([
                vec![Step::RemoveLeftover { key_id: key(2) }],
                rotate(Some(1), 3, Trigger::Scheduled, month()),
            ]
            .concat()),
            check: |s| assert_eq!(s.previous_key_id, None),
        },
        Case {
            name: "a crash after the Secret write: status catches up with the newer key, no new password",
            crot: with_workload(),
            status: CredentialRotationStatus {
                previous_key_id: Some(key(1)),
                ..published(&with_workload(), 1, t0())
            },
            gathered: gathered(vec![p1(), young()], secret(2), &[]),
            now: month(),
            finishing: false,
            expect: Ok(vec![
                Step::RecordSchedule,
                Step::PublishSecret,
                Step::Verify,
                Step::RestartWorkload {
                    index: 0,
                    kind: WorkloadKind::Deployment,
                    name: "api".into(),
                },
                Step::RequirePublished,
                Step::CountCompleted,
                Step::StartOverlap {
                    until: month() + SignedDuration::from_hours(1),
                },
            ]),
            check: |s| {
                assert_eq!(s.current_key_id, Some(key(2)));
                assert_eq!(s.previous_key_id, Some(key(1)));
                assert!(
                    s.targets.is_empty(),
                    "the workloads hold the old() key: {:?}",
                    s.targets
                );
            },
        },
        Case {
            name: "a Secret lost: a new password at once, the one it held becomes the previous",
            crot: plain(),
            status: published(&plain(), 1, t0()),
            gathered: gathered(vec![p1()], None, &[]),
            now: now(),
            finishing: false,
            expect: Ok(rotate(Some(1), 2, Trigger::Initial, now())),
            check: nothing,
        },
        Case {
            name: "a Secret edited to name a password that is not ours: re-issued",
            crot: plain(),
            status: published(&plain(), 1, t0()),
            gathered: {
                let mut edited = secret(1).expect("a secret");
                edited.metadata.annotations.get_or_insert_default().insert(
                    crate::api::protocol::KEY_ID_ANNOTATION.into(),
                    "foreign".into(),
                );
                gathered(vec![p1()], Some(edited), &[])
            },
            now: now(),
            finishing: false,
            expect: Ok(rotate(Some(1), 2, Trigger::Initial, now())),
            check: nothing,
        },
    ]
}

/// Who owns the Secret, and each reason a rotation falls due.
fn due_cases() -> Vec<Case> {
    vec![
        Case {
            name: "a Secret someone else owns is left untouched",
            crot: plain(),
            status: published(&plain(), 1, t0()),
            gathered: gathered(vec![p1()], Some(delivered_secret(OWNER, OWNER, 1)), &[]),
            now: now(),
            finishing: false,
            expect: Err("SecretConflict"),
            check: nothing,
        },
        Case {
            name: "a rotation due by schedule",
            crot: plain(),
            status: published(&plain(), 1, t0()),
            gathered: gathered(vec![p1()], secret(1), &[]),
            now: month(),
            finishing: false,
            expect: Ok(rotate(Some(1), 2, Trigger::Scheduled, month())),
            check: nothing,
        },
        Case {
            name: "a rotation due by a changed rotationToken",
            crot: rotation(json!({"rotationToken": "b"})),
            status: CredentialRotationStatus {
                observed_rotation_token: Some("a".into()),
                ..published(&plain(), 1, t0())
            },
            gathered: gathered(vec![p1()], secret(1), &[]),
            now: now(),
            finishing: false,
            expect: Ok(rotate(Some(1), 2, Trigger::Manual, now())),
            check: |s| assert_eq!(s.observed_rotation_token.as_deref(), Some("a")),
        },
        Case {
            name: "a rotation due as the secret nears its expiry",
            crot: rotation(json!({"renewBefore": "240h"})),
            status: published(&plain(), 1, t0()),
            gathered: gathered(vec![password(OWNER, 1, t0(), 20)], secret(1), &[]),
            now: at(11 * DAY),
            finishing: false,
            expect: Ok(rotate(Some(1), 2, Trigger::Expiring, at(11 * DAY))),
            check: nothing,
        },
        Case {
            name: "the overlap running: the previous password stays, and the rotation wakes at its end",
            crot: plain(),
            status: overlapping(&plain(), 2, at(20 * DAY), 1, at(20 * DAY + 1800)),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: at(20 * DAY + 60),
            finishing: false,
            expect: Ok(steady()),
            check: |s| {
                assert_eq!(s.previous_key_id, Some(key(1)));
                let removal = s.previous_key_removal_time.as_ref().map(|t| t.0);
                let wake = plan::wake_in(at(20 * DAY + 60), &[removal], Duration::from_secs(3600));
                assert_eq!(wake, Duration::from_secs(1740));
            },
        },
        Case {
            name: "a rotation due while the overlap runs waits for its end",
            crot: plain(),
            status: overlapping(
                &plain(),
                2,
                t0(),
                1,
                month() + SignedDuration::from_secs(600),
            ),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: month(),
            finishing: false,
            expect: Ok(vec![Step::Wait {
                reason: "WaitingForOverlap",
                message:
                    "a scheduled rotation is due; it starts when the previous secret's overlap ends"
                        .into(),
                until: month() + SignedDuration::from_secs(600),
            }]),
            check: nothing,
        },
    ]
}

/// The overlap, failing and forbidden targets, and a deleted rotation finishing.
fn overlap_and_target_cases() -> Vec<Case> {
    vec![
        Case {
            name: "the overlap over and every target holding the new key: the previous password goes",
            crot: plain(),
            status: overlapping(&plain(), 2, at(20 * DAY), 1, at(20 * DAY + 3600)),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: at(21 * DAY),
            finishing: false,
            expect: Ok([vec![Step::RemovePrevious { key_id: key(1) }], steady()].concat()),
            check: |s| assert_eq!(s.previous_key_id, Some(key(1)), "gone only once removed"),
        },
        Case {
            name: "a target failing keeps the previous password after the overlap",
            crot: with_cluster(),
            status: {
                let mut s = overlapping(&with_cluster(), 2, at(20 * DAY), 1, at(20 * DAY + 3600));
                let failed = targets::entry(
                    TargetKind::AksCluster,
                    &cluster(),
                    &key(2),
                    TargetState::Failed,
                    Some("the reset failed".into()),
                    at(20 * DAY),
                );
                targets::set_target(&mut s, failed);
                s
            },
            gathered: gathered(vec![p1(), p2()], secret(2), &[&cluster()]),
            now: at(21 * DAY),
            finishing: false,
            expect: Ok(vec![
                Step::RecordSchedule,
                Step::PublishSecret,
                Step::ResetCluster {
                    index: 0,
                    cluster: cluster(),
                },
                Step::RequirePublished,
                Step::CountCompleted,
            ]),
            check: |s| assert_eq!(s.previous_key_id, Some(key(1))),
        },
        Case {
            name: "a policy that now() forbids an AKS cluster: nothing is written",
            crot: with_cluster(),
            status: published(&with_cluster(), 1, t0()),
            gathered: gathered(vec![p1()], secret(1), &[]),
            now: month(),
            finishing: false,
            expect: Err("DeniedByPolicy"),
            check: nothing,
        },
        Case {
            name: "deletion finishes the overlap and starts no rotation, though one is due",
            crot: plain(),
            status: overlapping(
                &plain(),
                2,
                t0(),
                1,
                month() - SignedDuration::from_secs(60),
            ),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: month(),
            finishing: true,
            expect: Ok([vec![Step::RemovePrevious { key_id: key(1) }], steady()].concat()),
            check: nothing,
        },
        Case {
            name: "deletion during the overlap waits for nothing but the overlap",
            crot: plain(),
            status: overlapping(
                &plain(),
                2,
                t0(),
                1,
                month() + SignedDuration::from_secs(600),
            ),
            gathered: gathered(vec![p1(), p2()], secret(2), &[]),
            now: month(),
            finishing: true,
            expect: Ok(steady()),
            check: |s| assert_eq!(s.previous_key_id, Some(key(1))),
        },
    ]
}
#[test]
fn the_plan_decides_every_moment_of_a_rotation() {
    let cases = [
        fresh_and_steady_cases(),
        crash_cases(),
        due_cases(),
        overlap_and_target_cases(),
    ]
    .into_iter()
    .flatten();
    for case in cases {
        let planned = plan::plan(
            &case.crot,
            &case.status,
            &case.gathered,
            case.now,
            case.finishing,
        );
        match (planned, case.expect) {
            (Ok(planned), Ok(steps)) => {
                assert_eq!(planned.steps, steps, "{}", case.name);
                (case.check)(&planned.status);
            }
            (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "{}: {e}", case.name),
            (planned, expect) => panic!("{}: planned {planned:?}, expected {expect:?}", case.name),
        }
    }
}

/// The Key Vault target of the rotations in [`key_vault_cases`].
fn vault_target() -> KeyVaultSecretTarget {
    serde_json::from_value(json!({
        "vault": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"),
        "name": "web-secret",
    }))
    .expect("a target")
}

/// Version `name` of the vault target, written for `web`, holding password `serial`, created at `created`.
fn version(name: &str, serial: u64, created: i64, enabled: bool) -> SecretVersion {
    let owner = key_vault::owner_mark("", NAMESPACE, "ServicePrincipal", OWNER);
    SecretVersion {
        id: format!("https://kv1.vault.azure.net/secrets/web-secret/{name}"),
        attributes: Attributes {
            enabled: Some(enabled),
            created: Some(created),
            ..Attributes::default()
        },
        tags: Some(
            [
                (key_vault::OWNER_TAG, owner),
                (key_vault::KEY_ID_TAG, key(serial)),
                (key_vault::FORMAT_TAG, "password".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ),
        content_type: Some("text/plain".into()),
    }
}

/// `gathered` with the vault target, whose versions are `versions`.
fn with_vault(mut gathered: Gathered, versions: Vec<SecretVersion>) -> Gathered {
    gathered.subject.vaults = vec![VaultTarget {
        field: "spec.targets.keyVaultSecrets[0]".into(),
        target: vault_target(),
    }];
    gathered.vaults = vec![versions];
    gathered
}

/// `status` with the vault target holding `serial`.
fn vault_holds(mut status: CredentialRotationStatus, serial: u64) -> CredentialRotationStatus {
    let name = vault_target().display();
    let entry = targets::entry(
        TargetKind::KeyVaultSecret,
        &name,
        &key(serial),
        TargetState::Published,
        None,
        t0(),
    );
    targets::set_target(&mut status, entry);
    status
}

struct VaultCase {
    name: &'static str,
    status: CredentialRotationStatus,
    gathered: Gathered,
    now: Timestamp,
    expect: Vec<Step>,
}

/// Moments of a rotation publishing to a Key Vault secret.
fn key_vault_cases() -> Vec<VaultCase> {
    let publish_vault = Step::PublishKeyVault {
        index: 0,
        name: vault_target().display(),
    };
    vec![
        VaultCase {
            name: "the first password goes to the vault once it signs in",
            status: CredentialRotationStatus::default(),
            gathered: with_vault(gathered(vec![p1()], secret(1), &[]), vec![]),
            now: now(),
            expect: vec![
                Step::RecordSchedule,
                Step::PublishSecret,
                Step::Verify,
                publish_vault.clone(),
                Step::RequirePublished,
                Step::CountCompleted,
            ],
        },
        VaultCase {
            name: "steady: the vault's newest version holds the key, nothing is written",
            status: vault_holds(published(&plain(), 1, t0()), 1),
            gathered: with_vault(
                gathered(vec![p1()], secret(1), &[]),
                vec![version("v1", 1, 10, true)],
            ),
            now: now(),
            expect: steady(),
        },
        VaultCase {
            name: "status says the vault holds the key, but its version was disabled by hand: published again",
            status: vault_holds(published(&plain(), 1, t0()), 1),
            gathered: with_vault(
                gathered(vec![p1()], secret(1), &[]),
                vec![version("v1", 1, 10, false)],
            ),
            now: now(),
            expect: vec![
                Step::RecordSchedule,
                Step::PublishSecret,
                publish_vault.clone(),
                Step::RequirePublished,
                Step::CountCompleted,
            ],
        },
    ]
}

/// Moments of a rotation retiring the previous version of a Key Vault secret.
fn key_vault_retirement_cases() -> Vec<VaultCase> {
    let publish_vault = Step::PublishKeyVault {
        index: 0,
        name: vault_target().display(),
    };
    vec![
        VaultCase {
            name: "the overlap is over and every target holds the successor: the previous version is disabled, then its password goes",
            status: vault_holds(overlapping(&plain(), 2, at(20 * DAY), 1, month()), 2),
            gathered: with_vault(
                gathered(vec![p1(), p2()], secret(2), &[]),
                vec![version("v1", 1, 10, true), version("v2", 2, 20, true)],
            ),
            now: month(),
            expect: vec![
                Step::DisableVersions {
                    index: 0,
                    versions: vec!["v1".into()],
                },
                Step::RemovePrevious { key_id: key(1) },
                Step::RecordSchedule,
                Step::PublishSecret,
                Step::RequirePublished,
            ],
        },
        VaultCase {
            name: "the overlap is over but the vault does not hold the successor: nothing is disabled or removed",
            status: overlapping(&plain(), 2, at(20 * DAY), 1, month()),
            gathered: with_vault(
                gathered(vec![p1(), p2()], secret(2), &[]),
                vec![version("v1", 1, 10, true)],
            ),
            now: month(),
            expect: vec![
                Step::RecordSchedule,
                Step::PublishSecret,
                publish_vault.clone(),
                Step::RequirePublished,
                Step::CountCompleted,
            ],
        },
        VaultCase {
            name: "a version naming a password that is gone (a crash, a removal by hand) is disabled",
            status: vault_holds(published(&plain(), 2, at(20 * DAY)), 2),
            gathered: with_vault(
                gathered(vec![p2()], secret(2), &[]),
                vec![version("v1", 1, 10, true), version("v2", 2, 20, true)],
            ),
            now: month(),
            expect: vec![
                Step::DisableVersions {
                    index: 0,
                    versions: vec!["v1".into()],
                },
                Step::RecordSchedule,
                Step::PublishSecret,
                Step::RequirePublished,
            ],
        },
    ]
}

/// Without a Secret the first vault keeps the text: a rotation writes it at once (WriteSecret) and does not
/// publish it a second time after the sign-in; a version someone else wrote there stops it before a password
/// is added.
#[test]
fn without_a_secret_the_first_vault_is_written_at_once() {
    let crot = rotation(json!({"rotationToken": "now"}));
    let vault_only = |versions: Vec<SecretVersion>| {
        let mut g = with_vault(gathered(vec![p1()], None, &[]), versions);
        g.subject.secret = None;
        g.published = Some(super::gather::Issued {
            credential: p1(),
            text: azure_core::credentials::Secret::new("text-1".to_string()),
        });
        g
    };
    let status = vault_holds(published(&crot, 1, t0()), 1);
    let planned = plan::plan(
        &crot,
        &status,
        &vault_only(vec![version("v1", 1, 10, true)]),
        now(),
        false,
    )
    .expect("a plan");
    // No staging Secret without a Secret: the vault keeps the text at once, and is verified after.
    let unstaged: Vec<Step> = rotate(Some(1), 2, Trigger::Manual, now())
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !(matches!(s, Step::Stage { .. }) || *i == 4 && matches!(s, Step::Verify)))
        .map(|(_, s)| s)
        .collect();
    assert_eq!(planned.steps, unstaged);
    let mut foreign = version("v1", 1, 10, true);
    foreign.tags.as_mut().unwrap().remove(key_vault::OWNER_TAG);
    let refused = plan::plan(&crot, &status, &vault_only(vec![foreign]), now(), false)
        .expect_err("someone else's secret");
    assert_eq!(refused.reason(), "SecretConflict");
}

/// A rotation publishing to a Key Vault secret: after the sign-in, and disabled before its password goes.
#[test]
fn key_vault_targets_in_the_plan() {
    for case in key_vault_cases()
        .into_iter()
        .chain(key_vault_retirement_cases())
    {
        let planned = plan::plan(&plain(), &case.status, &case.gathered, case.now, false)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(planned.steps, case.expect, "{}", case.name);
    }
}

struct Deletion {
    name: &'static str,
    crot: CredentialRotation,
    status: CredentialRotationStatus,
    /// The finishing reconcile's result; None when no rotation was in progress.
    finished: Option<Result<(), Error>>,
    /// What is handed back, or the reason deletion stops with and when it looks again.
    expect: Result<Vec<Release>, (&'static str, Option<Timestamp>)>,
}

const NOW: i64 = DAY;

fn by_id() -> CredentialRotation {
    credential_rotation_with(
        "rot",
        json!({"applicationId": "00000000-0000-4000-8000-0000000000b1", "targets": {"secret": {"name": "creds", "format": "env"}}}),
    )
}

fn unmark() -> Result<Vec<Release>, (&'static str, Option<Timestamp>)> {
    Ok(vec![Release::Unmark {
        service_principal: OWNER.into(),
    }])
}

/// A rotation of `web` replacing password 1 with 2, password 1 going at `removal`.
fn in_progress(removal: Option<Timestamp>) -> CredentialRotationStatus {
    CredentialRotationStatus {
        previous_key_id: Some(key(1)),
        previous_key_removal_time: removal.map(Time),
        ..published(&plain(), 2, t0())
    }
}

fn deletion_cases() -> Vec<Deletion> {
    let now = at(NOW);
    let by_ref = plain();
    let by_id = by_id();
    vec![
        Deletion {
            name: "nothing in progress, by servicePrincipalRef: the ServicePrincipal takes its passwords back",
            crot: by_ref.clone(),
            status: published(&by_ref, 1, t0()),
            finished: None,
            expect: unmark(),
        },
        Deletion {
            name: "nothing in progress, by applicationId: the rotation's Secret is orphaned",
            crot: by_id.clone(),
            status: CredentialRotationStatus::default(),
            finished: None,
            expect: Ok(vec![Release::OrphanSecret {
                name: "creds".into(),
            }]),
        },
        Deletion {
            name: "the finishing pass removed the previous password",
            crot: by_ref.clone(),
            status: published(&by_ref, 2, t0()),
            finished: Some(Ok(())),
            expect: unmark(),
        },
        Deletion {
            name: "the overlap still runs: deletion waits for its end",
            crot: by_ref.clone(),
            status: in_progress(Some(at(DAY + 600))),
            finished: Some(Ok(())),
            expect: Err(("FinishingRotation", Some(at(DAY + 600)))),
        },
        Deletion {
            name: "a target does not hold the new key yet: deletion looks again soon",
            crot: by_ref.clone(),
            status: in_progress(None),
            finished: Some(Err(Error::Waiting {
                reason: "VerifyingCredential",
                message: "not yet".into(),
                until: now + SignedDuration::from_secs(20),
            })),
            expect: Err((
                "VerifyingCredential",
                Some(now + SignedDuration::from_secs(20)),
            )),
        },
        Deletion {
            name: "the overlap has no end yet and nothing failed: deletion looks again in 5s",
            crot: by_ref.clone(),
            status: in_progress(None),
            finished: Some(Ok(())),
            expect: Err((
                "FinishingRotation",
                Some(now + SignedDuration::from_secs(5)),
            )),
        },
        Deletion {
            name: "the application is gone: nothing left to finish",
            crot: by_id.clone(),
            status: in_progress(Some(at(DAY + 600))),
            finished: Some(Err(Error::ApplicationNotFound("gone".into()))),
            expect: Ok(vec![Release::OrphanSecret {
                name: "creds".into(),
            }]),
        },
        Deletion {
            name: "a policy now denies the rotation: nothing it may finish",
            crot: by_ref.clone(),
            status: in_progress(Some(at(DAY + 600))),
            finished: Some(Err(Error::DeniedByPolicy("no".into()))),
            expect: unmark(),
        },
        Deletion {
            name: "the ServicePrincipal is gone: nothing left to finish",
            crot: by_ref.clone(),
            status: in_progress(Some(at(DAY + 600))),
            finished: Some(Err(Error::ServicePrincipalNotFound("gone".into()))),
            expect: unmark(),
        },
    ]
}

#[test]
fn deletion_finishes_or_gives_up_then_hands_back() {
    let now = at(NOW);
    let cases = deletion_cases();
    for case in cases {
        let mut status = case.status;
        let outcome = cleanup::deletion(&case.crot, &mut status, case.finished, now);
        match (outcome, case.expect) {
            (Ok(releases), Ok(expected)) => assert_eq!(releases, expected, "{}", case.name),
            (Err(e), Err((reason, until))) => {
                assert_eq!(e.reason(), reason, "{}: {e}", case.name);
                if let Some(until) = until {
                    assert!(
                        matches!(e, Error::Waiting { until: u, .. } if u == until),
                        "{}: {e:?}",
                        case.name
                    );
                }
            }
            (outcome, expect) => panic!("{}: {outcome:?}, expected {expect:?}", case.name),
        }
    }
}

/// The staging Secret holding password `serial`'s text, owned by `owner_of`'s ServicePrincipal (or, with
/// `foreign`, by nobody).
fn staging(serial: u64, foreign: bool) -> Secret {
    let mut s = delivered_secret(
        &crate::controller::naming::pending_secret_name(OWNER),
        OWNER,
        serial,
    );
    s.data = Some(
        [(
            super::gather::STAGED_KEY.to_string(),
            k8s_openapi::ByteString(crate::fixtures::secret_text(OWNER, serial).into_bytes()),
        )]
        .into(),
    );
    match foreign {
        true => s,
        false => owned_by(s, &service_principal(OWNER)),
    }
}

/// A rotation stopped while its new password (2) was verified: the Secret still delivers 1, the staging
/// Secret holds 2. It goes on with the verification and then the Secret; password 2 is no leftover however
/// old it is; no new rotation starts, whatever is due.
#[test]
fn a_rotation_waiting_for_verification_goes_on_from_the_staging_secret() {
    let crot = rotation(json!({"rotateEvery": "720h", "rotationToken": "again"}));
    let intent = CredentialRotationStatus {
        previous_key_id: Some(key(1)),
        ..published(&crot, 1, t0())
    };
    let with = |staged: Secret| {
        gathered(vec![p1(), old()], secret(1), &[]).with_staging(Some(staged), NAMESPACE)
    };
    let planned = plan::plan(&crot, &intent, &with(staging(2, false)), month(), false).unwrap();
    let mut expected = vec![
        Step::Verify,
        Step::WriteSecret {
            trigger: Trigger::Resumed,
        },
    ];
    expected.extend(publish_new());
    expected.push(Step::StartOverlap {
        until: month() + SignedDuration::from_hours(1),
    });
    assert_eq!(planned.steps, expected);
    assert_eq!(
        planned.status.previous_key_id,
        Some(key(1)),
        "the intent stands"
    );

    // The staging Secret remembers why the rotation began.
    let mut remembered = staging(2, false);
    remembered.data.as_mut().unwrap().insert(
        super::gather::TRIGGER_KEY.into(),
        k8s_openapi::ByteString(b"scheduled".to_vec()),
    );
    let planned = plan::plan(&crot, &intent, &with(remembered), month(), false).unwrap();
    assert_eq!(
        planned.steps[1],
        Step::WriteSecret {
            trigger: Trigger::Scheduled
        }
    );

    // Status lost its intent: recorded again before anything else.
    let lost = published(&crot, 1, t0());
    let planned = plan::plan(&crot, &lost, &with(staging(2, false)), month(), false).unwrap();
    assert_eq!(planned.steps[0], Step::RecordIntent { previous: key(1) });

    // A staging Secret holding the delivered password (a crash after the Secret write) is dropped.
    let delivered =
        gathered(vec![p1()], secret(1), &[]).with_staging(Some(staging(1, false)), NAMESPACE);
    assert!(delivered.pending.is_none());
    let settled = published(&crot, 1, month());
    let planned = plan::plan(&crot, &settled, &delivered, month(), false).unwrap();
    assert_eq!(planned.steps[0], Step::DropStaging);

    // A Secret of that name someone else owns is never written.
    let refused = plan::plan(&crot, &intent, &with(staging(2, true)), month(), false).unwrap_err();
    assert_eq!(refused.reason(), "SecretConflict");
}

#[test]
fn repeated_failures_back_off_exponentially_and_keep_their_reason() {
    use std::time::Duration;
    let secs = Duration::from_secs;
    assert_eq!(super::backoff(secs(5), 1), secs(5));
    assert_eq!(super::backoff(secs(5), 2), secs(10));
    assert_eq!(super::backoff(secs(5), 4), secs(40));
    assert_eq!(super::backoff(secs(5), 40), secs(3600), "at most an hour");
    let cause = Error::Publishing {
        reason: "AKSResetFailed",
        message: "the reset failed".into(),
    };
    let base = cause.retry_after();
    let repeated = Error::Repeated {
        cause: Box::new(cause),
        attempts: 3,
    };
    assert_eq!(
        repeated.reason(),
        "AKSResetFailed",
        "the condition keeps the cause's reason"
    );
    assert_eq!(repeated.retry_after(), base * 4);
    assert!(repeated.to_string().contains("failed 3 times in a row"));
    assert!(!repeated.stalled());
}
