//! The operator binary against the real API server: it reports readiness, honours SIGTERM, and runs under
//! a ServiceAccount with nothing but the RBAC it is granted.

use std::time::Duration;

use kube::api::DeleteParams;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{
    AUDIENCE, TestNamespace, admin_client, admin_kubeconfig, emulator_endpoints,
    emulator_trusting_testenv, grant_operator_rbac, install_crds, operator_azure_env, sa_token,
    service_account_kubeconfig,
};
/// The one operator launcher (testkit's, shared with the soak and the benchmarks), and the emulator set-up,
/// where the tests have always found them.
pub use testkit::{harness::Azure, operator::Operator};

// Multi-threaded wherever an in-process emulator serves while the test blocks reading the operator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_ready_and_exits_cleanly_on_sigterm() {
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "operator-ready").await;
    let azure = Azure::new(&client, &ns.name).await;

    let mut operator = Operator::start_with(&admin_kubeconfig(), &azure.env);
    let ready = operator.wait_for("operator ready", Duration::from_secs(30));
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["apiserver"].as_str().unwrap().starts_with("v1."),
        "{ready}"
    );

    operator.signal(Signal::SIGTERM);
    let (status, lines) = operator.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        lines.join("\n")
    );
    let last: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        last.iter()
            .any(|v| v["message"] == "shutting down" && v["signal"] == "SIGTERM"),
        "no shutdown line:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        last.len(),
        lines.len(),
        "every log line is JSON:\n{}",
        lines.join("\n")
    );
    azure.emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_under_its_own_service_account_needs_exactly_its_rbac() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "operator-sa").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        service_account_kubeconfig(&admin, &ns.name, "entra-operator", dir.path()).await;

    let azure = Azure::new(&admin, &ns.name).await;

    // Without any grant, the API server refuses and the operator says what it may not do, then exits.
    let (status, lines) =
        Operator::start_with(&kubeconfig, &azure.env).wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not allowed to list serviceprincipals.entra-operator.io")),
        "{}",
        lines.join("\n")
    );

    // With the operator's rules it starts.
    let (roles, bindings, name) = grant_operator_rbac(&admin, &ns.name, "entra-operator").await;

    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    operator.signal(Signal::SIGTERM);
    let (status, lines) = operator.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", lines.join("\n"));

    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = roles.delete(&name, &DeleteParams::default()).await;
    azure.emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}

// Multi-threaded: the emulator runs on this test's runtime while the test blocks reading the operator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_signs_in_to_azure_with_workload_identity() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "operator-wi").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        service_account_kubeconfig(&admin, &ns.name, "entra-operator", dir.path()).await;
    let (roles, bindings, name) = grant_operator_rbac(&admin, &ns.name, "entra-operator").await;
    let emulator = emulator_trusting_testenv(&ns.name, "entra-operator", dir.path()).await;

    // The token kubelet would project for the operator's pod: its own ServiceAccount, Entra's audience.
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(
        &token_file,
        sa_token(&admin, &ns.name, "entra-operator", AUDIENCE).await,
    )
    .unwrap();
    let mut operator =
        Operator::start_with(&kubeconfig, &operator_azure_env(&emulator, &token_file));
    let ready = operator.wait_for("azure credential ready", Duration::from_secs(30));
    assert_eq!(ready["cloud"], "Custom");
    assert_eq!(ready["credential"], "WorkloadIdentity");
    operator.wait_for("operator ready", Duration::from_secs(30));
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());

    // Another ServiceAccount's token is not trusted: the operator says so, naming Entra's error code.
    std::fs::write(
        &token_file,
        sa_token(&admin, &ns.name, "intruder", AUDIENCE).await,
    )
    .unwrap();
    let mut operator =
        Operator::start_with(&kubeconfig, &operator_azure_env(&emulator, &token_file));
    let refused = operator.wait_for("azure credential not ready", Duration::from_secs(30));
    assert!(
        refused["error"].as_str().unwrap().contains("AADSTS700213"),
        "{refused}"
    );
    operator.wait_for("operator ready", Duration::from_secs(30));
    operator.signal(Signal::SIGTERM);
    let (status, lines) = operator.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !lines.iter().any(|l| l.contains(&token)),
        "the assertion never reaches the log"
    );

    let calls: serde_json::Value = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&emulator.ca_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap()
        .get(format!("{}/_emulator/calls", emulator.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        calls["token POST /{tenant}/oauth2/v2.0/token"]["200"], 1,
        "{calls}"
    );

    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = roles.delete(&name, &DeleteParams::default()).await;
    emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_signs_in_with_a_managed_identity() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "operator-mi").await;
    let dir = tempfile::tempdir().unwrap();
    // The host's managed identity is the operator's application, served App Service style.
    let mut config = azure_emulator::config::Config::default_seed();
    config.seed.managed_identity = Some(azure_emulator::config::ManagedIdentity {
        app_id: crate::support::OPERATOR_APP.into(),
        identity_header: "host-identity-header".into(),
    });
    let emulator = azure_emulator::start(azure_emulator::Options {
        config,
        state_dir: dir.path().join("emulator"),
        persist: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec![],
    })
    .await
    .unwrap();
    let base = emulator.base_url.clone();
    let env = |header: &str| -> Vec<(String, String)> {
        let mut env = emulator_endpoints(&emulator);
        env.extend(
            [
                ("AZURE_CREDENTIAL", "managed-identity".to_string()),
                ("IDENTITY_ENDPOINT", format!("{base}/msi/token")),
                ("IDENTITY_HEADER", header.to_string()),
                ("ENTRA_OPERATOR_CLUSTER_ID", format!("testenv-{}", ns.name)),
                ("WATCH_NAMESPACES", ns.name.clone()),
                ("METRICS_ADDR", "127.0.0.1:0".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    };

    let mut operator = Operator::start_with(&admin_kubeconfig(), &env("wrong"));
    let refused = operator.wait_for("azure credential not ready", Duration::from_secs(30));
    assert_eq!(refused["credential"], "ManagedIdentity");
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());

    let mut operator = Operator::start_with(&admin_kubeconfig(), &env("host-identity-header"));
    operator.wait_for("azure credential ready", Duration::from_secs(30));
    operator.wait_for("operator ready", Duration::from_secs(30));
    // And Graph accepts its tokens: a ServicePrincipal converges.
    let sps: kube::Api<entra_operator::api::ServicePrincipal> =
        kube::Api::namespaced(admin.clone(), &ns.name);
    let sp = serde_json::from_value(serde_json::json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "via-msi"}, "spec": {"displayName": "via-msi"},
    }))
    .unwrap();
    sps.create(&kube::api::PostParams::default(), &sp)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sp = sps.get("via-msi").await.unwrap();
        if sp
            .status
            .as_ref()
            .is_some_and(|s| entra_operator::api::conditions::is_true(&s.conditions, "Ready"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not Ready: {:?}",
            sp.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sps.delete("via-msi", &DeleteParams::default())
        .await
        .unwrap();
    while sps.get_opt("via-msi").await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());

    // A user-assigned identity without any Graph permission: Graph refuses, and the object says so (Stalled,
    // naming Graph's code) instead of retrying quietly.
    let mut weak = env("host-identity-header");
    weak.push((
        "AZURE_CLIENT_ID".into(),
        "5a5a5a5a-0000-4000-8000-000000005a5a".into(),
    ));
    let mut operator = Operator::start_with(&admin_kubeconfig(), &weak);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sp = serde_json::from_value(serde_json::json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "no-grant"}, "spec": {"displayName": "no-grant", "deletionPolicy": "Orphan"},
    }))
    .unwrap();
    sps.create(&kube::api::PostParams::default(), &sp)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stalled = loop {
        let sp = sps.get("no-grant").await.unwrap();
        let conds = sp.status.map(|s| s.conditions).unwrap_or_default();
        if entra_operator::api::conditions::is_true(&conds, "Stalled") {
            break conds;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not Stalled: {conds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ready = entra_operator::api::conditions::find(&stalled, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AzurePermissionDenied")
    );
    assert!(
        ready.message.contains("Authorization_RequestDenied"),
        "{}",
        ready.message
    );
    sps.delete("no-grant", &DeleteParams::default())
        .await
        .unwrap();
    while sps.get_opt("no-grant").await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    operator.signal(Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}
