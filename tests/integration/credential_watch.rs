//! CredentialWatch end to end: the expiry of every password and certificate on a pre-existing application the
//! operator does not own, reported in status, in conditions naming the application and key ids, and in the
//! expiry gauge; without the optional Application.Read.All the watch says so; and nothing is ever written to
//! Azure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::{
    api::{CredentialWatch, conditions},
    azure::certificate::Material,
};

use crate::{
    harness::{
        Setup, delete_and_wait, emulator_get, emulator_http, eventually, knobs, object, ready_of,
        reset_calls, seed, teardown, wait_condition,
    },
    operator_run::{Azure, Operator},
};

/// An application made before the operator, owned by someone else (no owners here), with a certificate.
const LEGACY_APP: &str = "7e7e7e7e-0000-4000-8000-000000007e7e";
const LEGACY_OBJECT: &str = "7e7e7e7e-0000-4000-8000-00000000a7a7";
const CERT_KEY: &str = "c0c0c0c0-0000-4000-8000-00000000c0c0";
/// Someone with Application.ReadWrite.All, who adds the legacy application's passwords as a person would
/// (with their own end dates, which the seed cannot set).
const ADMIN_APP: &str = "adadadad-0000-4000-8000-00000000adad";
const ADMIN_SECRET: &str = "credential-watch-test-admin";
/// The label that makes the watch this test's operator's alone (CREDENTIAL_WATCH_SELECTOR): other tests'
/// operators run side by side on the same cluster.
const TEST_LABEL: &str = "entra-operator.io/test";

/// Seeds the legacy application with a certificate valid for 200 days, and the administrator.
async fn seed_legacy(azure: &Azure) {
    let now = Timestamp::now();
    let cert = Material::generate(
        "legacy-billing",
        now - SignedDuration::from_hours(1),
        now + SignedDuration::from_hours(200 * 24),
    )
    .unwrap();
    seed(
        azure,
        json!({"applications": [
            {"displayName": "legacy-billing", "appId": LEGACY_APP, "objectId": LEGACY_OBJECT,
             "servicePrincipalId": "7e7e7e7e-0000-4000-8000-00000000b7b7",
             "keyCredentials": [{"certificatePem": cert.certificate_pem(), "keyId": CERT_KEY,
                                 "displayName": "legacy-billing cert"}]},
            {"displayName": "test-admin", "appId": ADMIN_APP, "objectId": "adadadad-0000-4000-8000-00000000a0a0",
             "servicePrincipalId": "adadadad-0000-4000-8000-00000000b0b0",
             "graphPermissions": ["Application.ReadWrite.All"], "clientSecrets": [ADMIN_SECRET]},
        ]}),
    )
    .await;
}

/// Adds a password ending in `days` days to the legacy application, as the administrator; its key id and
/// end as Graph recorded it.
async fn add_legacy_password(azure: &Azure, name: &str, days: i64) -> (String, Timestamp) {
    let http = emulator_http(azure);
    let base = &azure.emulator.base_url;
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    let token: Value = http
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ADMIN_APP),
            ("client_secret", ADMIN_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let end = Timestamp::now() + SignedDuration::from_hours(days * 24);
    let resp = http
        .post(format!(
            "{base}/v1.0/applications/{LEGACY_OBJECT}/addPassword"
        ))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&json!({"passwordCredential": {"displayName": name, "endDateTime": end.to_string()}}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let made: Value = resp.json().await.unwrap();
    (
        made["keyId"].as_str().unwrap().to_ascii_lowercase(),
        made["endDateTime"].as_str().unwrap().parse().unwrap(),
    )
}

/// Grants the operator's identity Application.Read.All (admin consent): seeding its application again adds
/// to what it holds.
async fn grant_application_read_all(azure: &Azure) {
    let operator = azure_emulator::config::Config::default_seed()
        .seed
        .applications[0]
        .clone();
    seed(
        azure,
        json!({"applications": [{"displayName": operator.display_name, "appId": operator.app_id,
            "objectId": operator.object_id, "servicePrincipalId": operator.service_principal_id,
            "graphPermissions": ["Application.Read.All"]}]}),
    )
    .await;
}

/// Where the operator serves /metrics (from its log).
fn metrics_address(operator: &mut Operator) -> String {
    operator.wait_for(
        "serving /metrics, /healthz and /readyz",
        Duration::from_secs(5),
    )["address"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn operator_metrics(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the gauge's series for one credential, if exported.
fn gauge(metrics: &str, watch: &str, key_id: &str, kind: &str) -> Option<f64> {
    let series = format!(
        "entra_operator_watched_credential_expiry_timestamp_seconds{{watch=\"{watch}\",app_id=\"{LEGACY_APP}\",key_id=\"{key_id}\",kind=\"{kind}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
}

/// Every request the emulator answered since the last reset that was not a read (GET) or a token: there
/// must be none.
async fn writes(azure: &Azure) -> Vec<String> {
    emulator_get(azure, "/_emulator/calls")
        .await
        .as_object()
        .unwrap()
        .keys()
        .filter(|op| !op.starts_with("token ") && op.split(' ').nth(1) != Some("GET"))
        .cloned()
        .collect()
}

/// The watch's status after the grant: each credential of the legacy application with its kind and state,
/// the earliest expiry, and the Expiring condition naming the application and the expiring key alone.
fn assert_reported(seen: &CredentialWatch, soon: &str, soon_end: Timestamp, later: &str) {
    let status = seen.status.clone().unwrap();
    assert_eq!(status.application_count, Some(1));
    let app = &status.applications[0];
    assert_eq!(
        (app.app_id.as_str(), app.found, app.display_name.as_deref()),
        (LEGACY_APP, true, Some("legacy-billing"))
    );
    let state_of = |key: &str| {
        let c = app
            .credentials
            .iter()
            .find(|c| c.key_id == key)
            .unwrap_or_else(|| panic!("{key} in {app:?}"));
        (
            serde_json::to_value(c.kind).unwrap(),
            serde_json::to_value(c.state).unwrap(),
        )
    };
    assert_eq!(state_of(soon), (json!("Password"), json!("Expiring")));
    assert_eq!(state_of(later), (json!("Password"), json!("Valid")));
    assert_eq!(state_of(CERT_KEY), (json!("Certificate"), json!("Valid")));
    assert_eq!(app.credentials.len(), 3, "{app:?}");
    assert_eq!(
        status.earliest_expiry.as_ref().map(|t| t.0.as_second()),
        Some(soon_end.as_second())
    );
    let expiring = conditions::find(&status.conditions, "Expiring").unwrap();
    assert_eq!(expiring.status, "True");
    assert!(
        expiring.message.contains(LEGACY_APP)
            && expiring.message.contains(soon)
            && !expiring.message.contains(later),
        "{}",
        expiring.message
    );
    assert!(!conditions::is_true(&status.conditions, "Expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_reports_the_expiry_of_an_application_nobody_here_owns() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("cwatch").await;
    // Tokens shorter-lived than azure-identity's 5-minute refresh margin: the operator asks for a new one for
    // every request, so that the grant below is in its next one (as it would be within the hour in Entra).
    knobs(&azure, json!({"tokenLifetimeSeconds": 240})).await;
    seed_legacy(&azure).await;
    let (soon, soon_end) = add_legacy_password(&azure, "soon", 10).await;
    let (later, _) = add_legacy_password(&azure, "later", 400).await;
    let mut env = azure.env.clone();
    env.push((
        "CREDENTIAL_WATCH_SELECTOR".into(),
        format!("{TEST_LABEL}={}", ns.name),
    ));
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let address = metrics_address(&mut operator);
    reset_calls(&azure).await;

    // Cluster-scoped: named after the test's namespace, so that tests side by side never share one.
    let name = ns.name.clone();
    let watches: Api<CredentialWatch> = Api::all(admin.clone());
    let mut watch: CredentialWatch = object(
        "CredentialWatch",
        &name,
        json!({"applications": [LEGACY_APP], "warnBefore": "720h", "interval": "1m"}),
    );
    watch.metadata.labels = Some([(TEST_LABEL.to_string(), ns.name.clone())].into());
    watches
        .create(&PostParams::default(), &watch)
        .await
        .unwrap();

    // Under Application.ReadWrite.OwnedBy alone, the watch says what it lacks.
    let refused = wait_condition(&watches, &name, "False", "ApplicationReadNotGranted", 60).await;
    let (_, _, message) = ready_of(&refused).unwrap();
    assert!(
        message.contains("Application.Read.All") && message.contains("optional"),
        "{message}"
    );

    grant_application_read_all(&azure).await;
    // An annotation brings the watch back at once, rather than at its next interval.
    watches
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .unwrap();
    let seen = wait_condition(&watches, &name, "True", "Ready", 90).await;
    assert_reported(&seen, &soon, soon_end, &later);

    // The gauge, one series per credential, at its end as Graph recorded it.
    let metrics = operator_metrics(&address).await;
    assert_eq!(
        gauge(&metrics, &name, &soon, "Password"),
        Some(soon_end.as_second() as f64),
        "{metrics}"
    );
    assert!(gauge(&metrics, &name, &later, "Password").is_some());
    assert!(gauge(&metrics, &name, CERT_KEY, "Certificate").is_some());

    // Observe-only: since the operator started, it only read.
    assert_eq!(writes(&azure).await, Vec::<String>::new());

    // A deleted watch takes its series along.
    delete_and_wait(&watches, &name, 30, "the watch deleted").await;
    eventually(30, "the deleted watch's series gone", || async {
        if operator_metrics(&address)
            .await
            .contains(&format!("watch=\"{name}\""))
        {
            Err("still exported".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    operator.stop();
    teardown(rbac, azure, ns).await;
}
