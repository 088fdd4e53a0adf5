//! The kubectl plugin (`kubectl-entra`) against the real control plane and the emulator: the operator makes a
//! ServicePrincipal Ready, then the plugin, run as an admin would run it, reports it in `status`, finds its
//! credential in `expiring`'s window (exit 1) and not in a one-second one (exit 0), inspects its Secret
//! without ever printing the secret, and signs in with it; then `rotate --wait` rotates a CredentialRotation of
//! the same application and returns once its Secret holds the new key; `policy explain` names the policy that
//! allows a grant and the one that denies another; `check` finds every CRD and no leader.
//!
//! The plugin is another package of the workspace, so cargo gives these tests no CARGO_BIN_EXE_ for it:
//! `make build` (which `make test` runs first) builds it with the rest of the workspace's binaries, into the
//! same target directory as the operator binary the tests run; [`plugin_bin`] finds it there.

use std::{path::PathBuf, process::Command, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, api::PostParams};
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, DelegationPolicy, ServicePrincipal};

use crate::{
    harness::{
        Setup, eventually, object, put_policy, ready_reason, teardown, text, wait_condition,
    },
    operator_run::Operator,
    support::admin_kubeconfig,
};

/// `kubectl-entra` beside the operator binary (target/<profile>/), where `cargo build -p kubectl-entra` puts it.
fn plugin_bin() -> PathBuf {
    let path = testkit::operator::operator_bin()
        .with_file_name(format!("kubectl-entra{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "no plugin at {}: build it with `cargo build -p kubectl-entra` (`make build` does)",
        path.display()
    );
    path
}

/// Runs the plugin with the admin kubeconfig; its exit code and stdout (stderr must not hold a panic).
async fn plugin(args: &[&str]) -> (i32, String) {
    let mut command = Command::new(plugin_bin());
    command
        .arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .args(args)
        .env_remove("KUBECONFIG");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap(), stdout)
}

fn json_of(args: &[&str], stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn time(value: &Value) -> Timestamp {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_reports_finds_inspects_and_signs_in() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("plugin").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let sp: ServicePrincipal = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": "payroll"},
        "spec": {"displayName": "payroll", "secret": {"name": "payroll-credentials"}},
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
    let credential = status.credential.clone().unwrap();
    let expires = credential.end_date_time.clone().unwrap().0;
    let secret = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .get("payroll-credentials")
        .await
        .unwrap();
    let client_secret = text(&secret, "AZURE_CLIENT_SECRET");
    let ns_name = ns.name.as_str();

    status_lists_it_ready(ns_name, expires).await;
    story_names_its_azure_ids(ns_name, status.app_id.as_deref().unwrap()).await;
    expiring_finds_it_in_the_window_only(ns_name).await;

    let args = [
        "inspect",
        "secret",
        "payroll-credentials",
        "-n",
        ns_name,
        "-o",
        "json",
    ];
    let (code, stdout) = plugin(&args).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        !stdout.contains(&client_secret),
        "the secret is never printed"
    );
    let report = json_of(&args, &stdout);
    assert_eq!(report["keyId"], credential.key_id.as_str());
    assert_eq!(report["format"], "env");
    assert_eq!(report["owner"], "ServicePrincipal/payroll");
    assert_eq!(report["current"], true);
    assert_eq!(time(&report["expires"]), expires);

    let ca = azure.emulator.ca_file.to_str().unwrap().to_string();
    let args = [
        "inspect",
        "secret",
        "payroll-credentials",
        "-n",
        ns_name,
        "-o",
        "json",
        "--sign-in",
        "--ca-file",
        &ca,
    ];
    let (code, stdout) = plugin(&args).await;
    assert!(
        !stdout.contains(&client_secret),
        "the secret is never printed"
    );
    assert_eq!(json_of(&args, &stdout)["signIn"], "signed in", "{stdout}");
    assert_eq!(code, 0);
    let (_, table) = plugin(&args[..5]).await;
    assert!(
        table.contains(credential.key_id.as_str()) && !table.contains(&client_secret),
        "{table}"
    );

    rotate_waits_for_the_new_key(&admin, ns_name).await;
    policy_explain_names_the_allowing_policy(&admin, ns_name).await;
    check_reports_each_crd_and_no_leader(ns_name).await;

    operator.stop();
    teardown(rbac, azure, ns).await;
}

/// A rotation of the ServicePrincipal `payroll` (its Secret `payroll`); `rotate --wait` sets the token and
/// returns once the Secret holds a new key.
async fn rotate_waits_for_the_new_key(admin: &kube::Client, ns: &str) {
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), ns);
    let crot: CredentialRotation = object(
        "CredentialRotation",
        "payroll",
        json!({"servicePrincipalRef": {"name": "payroll"}, "renewBefore": "1m", "overlap": "1s",
            "credentialLifetime": "1h"}),
    );
    crots.create(&PostParams::default(), &crot).await.unwrap();
    let first = wait_condition(&crots, "payroll", "True", "Ready", 60).await;
    let first_key = first.status.unwrap().current_key_id.unwrap();
    let args = [
        "rotate",
        "payroll",
        "-n",
        ns,
        "--wait",
        "--timeout",
        "2m",
        "-o",
        "json",
    ];
    let (code, stdout) = plugin(&args).await;
    let outcome = json_of(&args, &stdout);
    assert_eq!(outcome["progress"]["state"], "done", "{outcome}");
    assert_eq!(code, 0, "{outcome}");
    let new_key = outcome["progress"]["keyId"].as_str().unwrap();
    assert_ne!(new_key, first_key, "a new key");
    let now = crots.get("payroll").await.unwrap();
    assert_eq!(
        now.spec.rotation_token.as_deref(),
        outcome["rotationToken"].as_str()
    );
    let secret = Api::<Secret>::namespaced(admin.clone(), ns)
        .get(&secret_name_of(admin, ns).await)
        .await
        .unwrap();
    assert_eq!(secret.annotations()["entra-operator.io/key-id"], new_key);
}

/// The Secret the ServicePrincipal `payroll` delivers to.
async fn secret_name_of(admin: &kube::Client, ns: &str) -> String {
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), ns);
    let sp = sps.get("payroll").await.unwrap();
    sp.spec.secret.unwrap().name
}

async fn status_lists_it_ready(ns: &str, expires: Timestamp) {
    let args = ["status", "-n", ns, "-o", "json"];
    let (code, stdout) = plugin(&args).await;
    assert_eq!(code, 0, "{stdout}");
    let rows = json_of(&args, &stdout);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ServicePrincipal" && r["name"] == "payroll")
        .unwrap_or_else(|| panic!("payroll in {rows}"));
    assert_eq!(row["namespace"], ns);
    assert_eq!(row["ready"], "True", "{row}");
    assert_eq!(time(&row["expires"]), expires);
    let (code, table) = plugin(&args[..3]).await;
    assert_eq!(code, 0);
    assert!(
        table.starts_with("KIND ") && table.contains("payroll"),
        "{table}"
    );
}

async fn story_names_its_azure_ids(ns: &str, app_id: &str) {
    let args = ["status", "sp", "payroll", "-n", ns, "-o", "json"];
    let (code, stdout) = plugin(&args).await;
    assert_eq!(code, 0, "{stdout}");
    let story = json_of(&args, &stdout);
    assert_eq!(story["azureIds"]["appId"], app_id, "{story}");
    assert!(
        story["azureIds"]["servicePrincipalId"].is_string(),
        "{story}"
    );
    let conditions = story["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{story}"
    );
    let events = story["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["reason"] == "CredentialIssued"),
        "{story}"
    );
}

async fn expiring_finds_it_in_the_window_only(ns: &str) {
    let args = ["expiring", "-n", ns, "--within", "10000h", "-o", "json"];
    let (code, stdout) = plugin(&args).await;
    let found = json_of(&args, &stdout);
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "payroll" && e["kind"] == "ServicePrincipal"),
        "{found}"
    );
    assert_eq!(code, 1, "something expires within 10000h: exit 1");
    let args = ["expiring", "-n", ns, "--within", "1s", "-o", "json"];
    let (code, stdout) = plugin(&args).await;
    assert_eq!(json_of(&args, &stdout), json!([]));
    assert_eq!(code, 0, "nothing expires within 1s: exit 0");
}

/// `policy explain` runs the operator's guardrail against the cluster's policies: the one selecting this
/// namespace allows Reader at its resource group (exit 0) and denies Contributor, naming itself (exit 1).
async fn policy_explain_names_the_allowing_policy(admin: &kube::Client, ns: &str) {
    let scope = format!("/subscriptions/00000000-0000-4000-8000-0000000000aa/resourceGroups/{ns}");
    let policy = put_policy(
        admin,
        ns,
        "plugin",
        json!({"scopes": [scope], "roles": ["Reader"]}),
    )
    .await;
    let args = [
        "policy", "explain", "-n", ns, "--role", "Reader", "--scope", &scope, "-o", "json",
    ];
    let (code, stdout) = plugin(&args).await;
    let allowed = json_of(&args, &stdout);
    assert_eq!(
        (code, &allowed["allowed"], &allowed["policy"]),
        (0, &json!(true), &json!(policy)),
        "{allowed}"
    );
    let args = [
        "policy",
        "explain",
        "-n",
        ns,
        "--role",
        "Contributor",
        "--scope",
        &scope,
        "-o",
        "json",
    ];
    let (code, stdout) = plugin(&args).await;
    let denied = json_of(&args, &stdout);
    assert_eq!((code, &denied["allowed"]), (1, &json!(false)), "{denied}");
    assert!(
        denied["message"].as_str().unwrap().contains(&policy),
        "{denied}"
    );
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &Default::default())
        .await
        .unwrap();
}

/// `check` looks at every CRD, and finds no leader: this test's operator runs without leader election, so its
/// namespace has no Lease (exit 1). Whether each CRD matches is not asserted: admission_fuzz, running beside,
/// installs altered CRDs for a moment.
async fn check_reports_each_crd_and_no_leader(ns: &str) {
    let args = ["check", "--operator-namespace", ns, "-o", "json"];
    let (code, stdout) = plugin(&args).await;
    let findings = json_of(&args, &stdout);
    let findings = findings.as_array().unwrap();
    let crds = findings
        .iter()
        .filter(|f| f["check"].as_str().unwrap().starts_with("CRD "))
        .count();
    assert_eq!(crds, entra_operator::api::crds().len(), "{findings:?}");
    let leader = findings
        .iter()
        .find(|f| f["check"] == "operator leader")
        .unwrap();
    assert_eq!(leader["ok"], false, "{leader}");
    assert!(
        leader["detail"].as_str().unwrap().contains("no Lease"),
        "{leader}"
    );
    assert_eq!(code, 1);
}
