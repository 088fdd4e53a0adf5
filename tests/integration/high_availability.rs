//! Two replicas with leader election, under the chart's RBAC (its ClusterRole and its leader-election Role):
//! only the leader reconciles; killed mid-work, the other takes over within the Lease's duration, and the
//! result has no duplicate application or password.

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::api::ServicePrincipal;

use crate::{
    harness::{Setup, all_gone, eventually, state, teardown},
    operator_run::Operator,
    support::chart_rules,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_without_duplicates() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("ha").await;
    // The chart's leader-election Role, bound in this namespace.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "entra-operator-leader-election"},
        "rules": chart_rules("Role"),
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "entra-operator-leader-election"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "entra-operator-leader-election"},
        "subjects": [{"kind": "ServiceAccount", "name": "entra-operator", "namespace": ns.name}],
    }))
    .unwrap();
    let pp = PatchParams::apply("entra-operator-tests");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns.name)
        .patch("entra-operator-leader-election", &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns.name)
        .patch(
            "entra-operator-leader-election",
            &pp,
            &Patch::Apply(&binding),
        )
        .await
        .unwrap();

    let replica = |name: &str| {
        let mut env = azure.env.clone();
        env.extend(
            [
                ("LEADER_ELECTION", "true"),
                ("LEADER_ELECTION_NAMESPACE", ns.name.as_str()),
                ("LEADER_ELECTION_LEASE_DURATION", "6s"),
                ("POD_NAME", name),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Operator::start_with(&kubeconfig, &env)
    };
    let mut first = replica("replica-a");
    first.wait_for("leading", Duration::from_secs(30));
    let mut second = replica("replica-b");
    second.wait_for("waiting for leadership", Duration::from_secs(30));

    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let names: Vec<String> = (0..4).map(|i| format!("ha-{i}")).collect();
    for name in &names {
        let sp: ServicePrincipal = serde_json::from_value(json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": name}, "spec": {"displayName": name, "secret": {"name": format!("{name}-credentials")}},
        }))
        .unwrap();
        sps.create(&PostParams::default(), &sp).await.unwrap();
    }
    // Killed as soon as it starts on them: no chance to release the Lease.
    first.wait_for("created application", Duration::from_secs(30));
    first.signal(Signal::SIGKILL);
    let _ = first.wait_exit(Duration::from_secs(10));
    let killed = std::time::Instant::now();
    second.wait_for("leading", Duration::from_secs(20));
    let took = killed.elapsed();
    assert!(
        !second
            .seen()
            .iter()
            .any(|l| l.contains("created application") || l.contains("reconcile failed")),
        "the standby reconciled nothing before it led:\n{}",
        second.seen().join("\n")
    );
    assert!(
        took <= Duration::from_secs(6 + 3),
        "took over after {took:?}, beyond the 6 s Lease (and a renewal's slack)"
    );

    for name in &names {
        eventually(60, &format!("{name} Ready"), || async {
            let sp = sps.get(name).await.map_err(|e| e.to_string())?;
            let ready = sp.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("{:?}", sp.status))
            }
        })
        .await;
    }
    // One application and one password per object, whoever did the work.
    let world = state(&azure).await;
    let apps: Vec<&Value> = world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| {
            a["tags"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t.as_str()
                        .is_some_and(|t| t.starts_with("entra-operator/object="))
                })
            })
        })
        .collect();
    assert_eq!(apps.len(), names.len(), "one application per object");
    for app in apps {
        assert_eq!(
            app["passwordCredentials"].as_array().unwrap().len(),
            1,
            "one password on {}",
            app["displayName"]
        );
    }

    // SIGTERM releases the Lease (no holder left), and the standby leads.
    let mut third = replica("replica-c");
    third.wait_for("waiting for leadership", Duration::from_secs(30));
    second.signal(Signal::SIGTERM);
    let (status, lines) = second.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("released the leader-election Lease"))
    );
    third.wait_for("leading", Duration::from_secs(10));
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns.name)
            .get("entra-operator")
            .await
            .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-c")
    );
    sps.delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    all_gone(&sps, 60).await;
    third.signal(Signal::SIGTERM);
    let _ = third.wait_exit(Duration::from_secs(10));
    teardown(rbac, azure, ns).await;
}
