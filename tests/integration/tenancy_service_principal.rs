//! The tenancy boundary for ServicePrincipals (issue 13): adoption takes only an application created for
//! the object itself or one a policy lists, and never one another object holds; an adopted application keeps
//! the federated credentials someone else put there; a delivery that keeps failing leaves no trail of live
//! passwords. Each attack is tried from a namespace no policy selects and from one whose policy allows other
//! things, and Azure is read back from the emulator's state.

use std::time::Duration;

use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{DelegationPolicy, ServicePrincipal};

use crate::{
    harness::{
        Setup, all_gone, graph_as_operator, put_policy, ready_of, seed, state, teardown, text,
        token_status, wait_condition,
    },
    operator_run::Operator,
    support::TestNamespace,
};

/// The emulator's seeded application that the operator's identity owns and no object created.
const LEGACY_APP: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";
const LEGACY_OBJECT: &str = "5a5a5a5a-0000-4000-8000-00000000a5a5";
const ISSUER: &str = "https://issuer.example.com";

fn sp_object(name: &str, spec: Value) -> ServicePrincipal {
    let mut full = json!({"displayName": name, "secret": {"name": name}});
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(
        json!({"apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": name}, "spec": full}),
    )
    .unwrap()
}

/// The application with `app_id` as the emulator holds it.
async fn application(azure: &crate::operator_run::Azure, app_id: &str) -> Value {
    state(azure).await["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .find(|a| {
            a["appId"]
                .as_str()
                .is_some_and(|a| a.eq_ignore_ascii_case(app_id))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no application {app_id}"))
}

/// What of an application the operator could change, to compare before and after.
fn azure_side(app: &Value) -> Value {
    json!({
        "displayName": app["displayName"], "tags": app["tags"], "notes": app["notes"],
        "passwordCredentials": app["passwordCredentials"],
        "federatedIdentityCredentials": app["federatedIdentityCredentials"],
    })
}

/// The operator's environment, watching `namespaces` instead of the setup's one.
fn watching(env: &[(String, String)], namespaces: &[&str]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "WATCH_NAMESPACES")
        .cloned()
        .collect();
    env.push(("WATCH_NAMESPACES".into(), namespaces.join(",")));
    env
}

async fn drop_policies(admin: &kube::Client, names: &[String]) {
    let policies: Api<DelegationPolicy> = Api::all(admin.clone());
    for name in names {
        let _ = policies.delete(name, &DeleteParams::default()).await;
    }
}

async fn warned(admin: &kube::Client, ns: &str, object: &str, reason: &str) -> bool {
    Api::<Event>::namespaced(admin.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        })
}

/// Every place a secret text could leak to: status, events and the operator's log.
async fn assert_nowhere(admin: &kube::Client, namespaces: &[&str], lines: &[String], text: &str) {
    assert!(text.len() >= 16, "a real secret text");
    for ns in namespaces {
        let sps = Api::<ServicePrincipal>::namespaced(admin.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap();
        for sp in sps.items {
            let status = serde_json::to_string(&sp.status).unwrap();
            assert!(!status.contains(text), "status of {}", sp.name_any());
        }
        let events = Api::<Event>::namespaced(admin.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap();
        for e in events.items {
            assert!(
                !serde_json::to_string(&e).unwrap().contains(text),
                "an Event in {ns}"
            );
        }
    }
    assert!(
        !lines.iter().any(|l| l.contains(text)),
        "the operator's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_another_namespaces_application_is_denied_or_a_conflict() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tsp-victim").await;
    let intruder = TestNamespace::new(&admin, "tsp-intruder").await;
    let other = TestNamespace::new(&admin, "tsp-other").await;
    let listed = TestNamespace::new(&admin, "tsp-listed").await;
    let env = watching(
        &azure.env,
        &[&ns.name, &intruder.name, &other.name, &listed.name],
    );
    let mut operator = Operator::start_with(&kubeconfig, &env);
    operator.wait_for("operator ready", Duration::from_secs(30));

    // The victim: an application the operator created for it, with a password and a federated credential.
    let victims: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    victims
        .create(
            &PostParams::default(),
            &sp_object(
                "victim",
                json!({"federatedCredentials": [{"name": "ci", "issuer": ISSUER, "subject": "repo:victim"}]}),
            ),
        )
        .await
        .unwrap();
    let victim = wait_condition(&victims, "victim", "True", "Ready", 60).await;
    let victim_app = victim.status.unwrap().app_id.unwrap();
    let victim_text = text(
        &Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get("victim")
            .await
            .unwrap(),
        "AZURE_CLIENT_SECRET",
    );
    // An application another cluster's operator holds, which this operator's identity also owns.
    let foreign_cluster = "32323232-0000-4000-8000-000000003232";
    seed(
        &azure,
        json!({"applications": [{"displayName": "elsewhere", "appId": foreign_cluster,
            "objectId": "32323232-0000-4000-8000-00000000a3a3", "servicePrincipalId": "32323232-0000-4000-8000-00000000b3b3",
            "owners": ["0e0e0e0e-0000-4000-8000-00000000b0b0"]}]}),
    )
    .await;
    assert_eq!(
        graph_as_operator(
            &azure,
            reqwest::Method::PATCH,
            "/applications/32323232-0000-4000-8000-00000000a3a3",
            Some(
                json!({"tags": ["entra-operator", "entra-operator/cluster=prod-eu",
                "entra-operator/object=payments/api"]})
            ),
        )
        .await,
        204
    );
    let before = azure_side(&application(&azure, &victim_app).await);
    let elsewhere_before = azure_side(&application(&azure, foreign_cluster).await);

    // A policy that allows other things (roles, another application) is no ground; one that lists the
    // victim's application (an administrator's mistake) still meets the victim's claim.
    let other_policy = put_policy(
        &admin,
        &other.name,
        "other",
        json!({"scopes": ["/subscriptions/11111111-2222-3333-4444-555555555555"], "roles": ["Reader"],
            "applications": [LEGACY_APP]}),
    )
    .await;
    let listed_policy = put_policy(
        &admin,
        &listed.name,
        "listed",
        json!({"applications": [victim_app, foreign_cluster]}),
    )
    .await;
    let adopt = |app: &str| json!({"adopt": {"appId": app}});
    for tenant in [&intruder.name, &other.name] {
        let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), tenant);
        sps.create(
            &PostParams::default(),
            &sp_object("stolen", adopt(&victim_app)),
        )
        .await
        .unwrap();
        let denied = wait_condition(&sps, "stolen", "False", "DeniedByPolicy", 30).await;
        let (_, _, message) = ready_of(&denied).unwrap();
        assert!(
            message.contains("spec.adopt.appId")
                && message.contains(&victim_app)
                && message.contains("applications"),
            "{tenant}: {message}"
        );
        assert!(
            !message.contains(&ns.name),
            "an unauthorized tenant learns nothing of the holder: {message}"
        );
        assert!(warned(&admin, tenant, "stolen", "DeniedByPolicy").await);
        assert!(denied.status.unwrap().app_id.is_none());
    }
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &listed.name);
    sps.create(
        &PostParams::default(),
        &sp_object("stolen", adopt(&victim_app)),
    )
    .await
    .unwrap();
    sps.create(
        &PostParams::default(),
        &sp_object("elsewhere", adopt(foreign_cluster)),
    )
    .await
    .unwrap();
    let conflict = wait_condition(&sps, "stolen", "False", "Conflict", 30).await;
    let (_, _, message) = ready_of(&conflict).unwrap();
    assert!(
        message.contains("spec.adopt.appId")
            && message.contains(&format!("ServicePrincipal {}/victim", ns.name)),
        "{message}"
    );
    let conflict = wait_condition(&sps, "elsewhere", "False", "Conflict", 30).await;
    let (_, _, message) = ready_of(&conflict).unwrap();
    assert!(
        message.contains("spec.adopt.appId") && message.contains("cluster prod-eu"),
        "{message}"
    );
    assert!(warned(&admin, &listed.name, "stolen", "Conflict").await);

    // Nothing was written: no Secret for any thief, both applications as they were, the victim Ready and
    // its secret still signing in.
    for tenant in [&intruder.name, &other.name, &listed.name] {
        assert!(
            Api::<Secret>::namespaced(admin.clone(), tenant)
                .get_opt("stolen")
                .await
                .unwrap()
                .is_none(),
            "{tenant}: no Secret"
        );
    }
    assert_eq!(azure_side(&application(&azure, &victim_app).await), before);
    assert_eq!(
        azure_side(&application(&azure, foreign_cluster).await),
        elsewhere_before
    );
    wait_condition(&victims, "victim", "True", "Ready", 5).await;
    assert_eq!(token_status(&azure, &victim_app, &victim_text).await, 200);

    // Denied objects clean up without touching what they never held.
    for tenant in [&intruder.name, &other.name, &listed.name] {
        let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), tenant);
        sps.delete("stolen", &DeleteParams::default())
            .await
            .unwrap();
    }
    sps.delete("elsewhere", &DeleteParams::default())
        .await
        .unwrap();
    for tenant in [&intruder.name, &other.name, &listed.name] {
        all_gone(
            &Api::<ServicePrincipal>::namespaced(admin.clone(), tenant),
            30,
        )
        .await;
    }
    assert_eq!(azure_side(&application(&azure, &victim_app).await), before);
    assert_eq!(
        azure_side(&application(&azure, foreign_cluster).await),
        elsewhere_before
    );
    assert_eq!(token_status(&azure, &victim_app, &victim_text).await, 200);
    assert_nowhere(
        &admin,
        &[&ns.name, &intruder.name, &other.name, &listed.name],
        operator.seen(),
        &victim_text,
    )
    .await;

    // What the marks allow without a policy: an application left (Orphan) by a deleted object of the same
    // name in the same namespace, and only to that name.
    let own: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &intruder.name);
    own.create(
        &PostParams::default(),
        &sp_object("again", json!({"deletionPolicy": "Orphan"})),
    )
    .await
    .unwrap();
    let first = wait_condition(&own, "again", "True", "Ready", 60).await;
    let left = first.status.unwrap().app_id.unwrap();
    own.delete("again", &DeleteParams::default()).await.unwrap();
    all_gone(&own, 30).await;
    own.create(&PostParams::default(), &sp_object("again", adopt(&left)))
        .await
        .unwrap();
    own.create(
        &PostParams::default(),
        &sp_object("other-name", adopt(&left)),
    )
    .await
    .unwrap();
    let again = wait_condition(&own, "again", "True", "Ready", 60).await;
    assert_eq!(again.status.unwrap().app_id.as_deref(), Some(left.as_str()));
    let secret = Api::<Secret>::namespaced(admin.clone(), &intruder.name)
        .get("again")
        .await
        .unwrap();
    assert_eq!(
        token_status(&azure, &left, &text(&secret, "AZURE_CLIENT_SECRET")).await,
        200
    );
    let denied = wait_condition(&own, "other-name", "False", "DeniedByPolicy", 30).await;
    assert!(
        ready_of(&denied).unwrap().2.contains("spec.adopt.appId"),
        "{:?}",
        ready_of(&denied)
    );
    // Deleting the re-adopter removes its password and never the application.
    for name in ["again", "other-name"] {
        own.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_gone(&own, 30).await;
    assert_eq!(
        application(&azure, &left).await["passwordCredentials"],
        json!([])
    );

    victims
        .delete("victim", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&victims, 30).await;
    drop_policies(&admin, &[other_policy, listed_policy]).await;
    operator.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    for extra in [intruder, other, listed] {
        extra.cleanup().await;
    }
    teardown(rbac, azure, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_application_keeps_the_credentials_this_object_did_not_add() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tsp-fic").await;
    let policy = put_policy(
        &admin,
        &ns.name,
        "legacy",
        json!({"applications": [LEGACY_APP]}),
    )
    .await;
    // Someone else's trust on the application, one of them under a name the spec below also uses.
    for (name, subject) in [("shared", "repo:someone-else"), ("theirs", "repo:theirs")] {
        assert_eq!(
            graph_as_operator(
                &azure,
                reqwest::Method::POST,
                &format!("/applications/{LEGACY_OBJECT}/federatedIdentityCredentials"),
                Some(json!({"name": name, "issuer": ISSUER, "subject": subject,
                    "audiences": ["api://AzureADTokenExchange"]})),
            )
            .await,
            201
        );
    }
    let before = azure_side(&application(&azure, LEGACY_APP).await);
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    sps.create(
        &PostParams::default(),
        &sp_object(
            "adopter",
            json!({"adopt": {"appId": LEGACY_APP}, "federatedCredentials": [
                {"name": "shared", "issuer": ISSUER, "subject": "repo:adopter"},
                {"name": "mine", "issuer": ISSUER, "subject": "repo:adopter-2"},
            ]}),
        ),
    )
    .await
    .unwrap();
    let conflict = wait_condition(&sps, "adopter", "False", "Conflict", 30).await;
    let (_, _, message) = ready_of(&conflict).unwrap();
    assert!(
        message.contains("spec.federatedCredentials[0].name") && message.contains("shared"),
        "{message}"
    );
    // Decided before any write: no tags, no password, no credential, no Secret.
    assert_eq!(azure_side(&application(&azure, LEGACY_APP).await), before);
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get_opt("adopter")
            .await
            .unwrap()
            .is_none()
    );

    // Without the clash the adoption goes ahead, and status lists only what this object added.
    sps.patch(
        "adopter",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"federatedCredentials": [
            {"name": "mine", "issuer": ISSUER, "subject": "repo:adopter-2"}]}})),
    )
    .await
    .unwrap();
    let ready = wait_condition(&sps, "adopter", "True", "Ready", 30).await;
    assert_eq!(ready.status.unwrap().federated_credentials, vec!["mine"]);
    let app = application(&azure, LEGACY_APP).await;
    let subjects = |app: &Value| -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = app["federatedIdentityCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["subject"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        subjects(&app),
        vec![
            ("mine".to_string(), "repo:adopter-2".to_string()),
            ("shared".into(), "repo:someone-else".into()),
            ("theirs".into(), "repo:theirs".into()),
        ]
    );

    // Delete removes what it added, and only that.
    sps.delete("adopter", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&sps, 30).await;
    let app = application(&azure, LEGACY_APP).await;
    assert_eq!(
        subjects(&app),
        vec![
            ("shared".to_string(), "repo:someone-else".to_string()),
            ("theirs".into(), "repo:theirs".into()),
        ]
    );
    assert_eq!(app["passwordCredentials"], json!([]));

    drop_policies(&admin, &[policy]).await;
    operator.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}

/// Waits for `n` failed reconciles of `object`, nudging it (an annotation) so that it need not wait out its
/// retry delay.
async fn fail_times(operator: &mut Operator, sps: &Api<ServicePrincipal>, object: &str, n: usize) {
    let mut failed = 0;
    let mut nudges = 0u32;
    while failed < n {
        nudges += 1;
        sps.patch(
            object,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/nudge": nudges.to_string()}}})),
        )
        .await
        .unwrap();
        let line = operator.wait_for("reconcile failed", Duration::from_secs(30));
        if line.to_string().contains(&format!("/{object}")) {
            failed += 1;
        }
    }
}

fn passwords_of(app: &Value) -> usize {
    app["passwordCredentials"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_leave_at_most_two_passwords() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        mut azure,
        rbac,
        _dir,
    } = Setup::new("tsp-passwords").await;
    // The password removed below is noticed by the drift feed, which otherwise vouches for the application.
    azure.env.push(("DRIFT_INTERVAL".into(), "1s".into()));
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);

    // The operator's own Secret made immutable, and the password it holds removed in Azure: every delivery
    // of a new password now fails at the Secret write.
    sps.create(&PostParams::default(), &sp_object("sealed", json!({})))
        .await
        .unwrap();
    let sealed = wait_condition(&sps, "sealed", "True", "Ready", 60).await;
    let app_id = sealed.status.unwrap().app_id.unwrap();
    let delivered = text(&secrets.get("sealed").await.unwrap(), "AZURE_CLIENT_SECRET");
    secrets
        .patch(
            "sealed",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": true})),
        )
        .await
        .unwrap();
    let app = application(&azure, &app_id).await;
    let object_id = app["id"].as_str().unwrap().to_string();
    assert_eq!(
        graph_as_operator(
            &azure,
            reqwest::Method::POST,
            &format!("/applications/{object_id}/removePassword"),
            Some(json!({"keyId": app["passwordCredentials"][0]["keyId"]})),
        )
        .await,
        204
    );
    fail_times(&mut operator, &sps, "sealed", 20).await;
    let left = passwords_of(&application(&azure, &app_id).await);
    assert!(left <= 2, "{left} passwords after 20 failed deliveries");

    // Specs that cannot be delivered at all add no password: an unknown placeholder, and a Secret over 1 MiB.
    sps.create(
        &PostParams::default(),
        &sp_object(
            "placeholder",
            json!({"secret": {"name": "placeholder", "format": "template",
                "templates": {"cfg": "id={{ clientId }} secret={{ clientSecret }} {{ nope }}"}}}),
        ),
    )
    .await
    .unwrap();
    let huge = "x".repeat(600 * 1024);
    sps.create(
        &PostParams::default(),
        &sp_object(
            "huge",
            json!({"secret": {"name": "huge", "format": "template",
                "templates": {"a": huge, "b": format!("{huge}{{{{ clientSecret }}}}")}}}),
        ),
    )
    .await
    .unwrap();
    for name in ["placeholder", "huge"] {
        let invalid = wait_condition(&sps, name, "False", "InvalidSpec", 60).await;
        let (_, _, message) = ready_of(&invalid).unwrap();
        assert!(
            message.contains("nope") || message.contains("spec.secret"),
            "{message}"
        );
        fail_times(&mut operator, &sps, name, 20).await;
        let app_id = sps.get(name).await.unwrap().status.unwrap().app_id;
        // The application is made before the Secret is rendered; its id is recorded once it is Ready, so it
        // is found by its display name.
        let world = state(&azure).await;
        let apps: Vec<&Value> = world["directory"]["applications"]
            .as_object()
            .unwrap()
            .values()
            .filter(|a| a["displayName"] == name)
            .collect();
        assert_eq!(apps.len(), 1, "{name}: {app_id:?}");
        assert_eq!(
            passwords_of(apps[0]),
            0,
            "{name}: no password for a Secret that cannot be written"
        );
        assert!(secrets.get_opt(name).await.unwrap().is_none());
    }

    // The Secret made writable again: one delivery, one password, and the texts stayed out of sight.
    secrets
        .delete("sealed", &DeleteParams::default())
        .await
        .unwrap();
    let sealed = wait_condition(&sps, "sealed", "True", "Ready", 60).await;
    assert_eq!(passwords_of(&application(&azure, &app_id).await), 1);
    let issued = text(&secrets.get("sealed").await.unwrap(), "AZURE_CLIENT_SECRET");
    assert_eq!(token_status(&azure, &app_id, &issued).await, 200);
    assert!(sealed.status.unwrap().credential.is_some());
    operator.drain();
    for secret in [&delivered, &issued] {
        assert_nowhere(&admin, &[&ns.name], operator.seen(), secret).await;
    }

    for name in ["sealed", "placeholder", "huge"] {
        sps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_gone(&sps, 30).await;
    operator.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(operator.wait_exit(Duration::from_secs(10)).0.success());
    teardown(rbac, azure, ns).await;
}

/// A certificate's TLS Secret is read in the object's own namespace only: a ServicePrincipal naming the
/// Secret of another namespace waits for one in its own, and another namespace's certificate never reaches
/// Entra or its Secret. Tried from a namespace no policy selects, where a generated certificate still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_taken_only_from_the_objects_own_namespace() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("tsp-cert").await;
    let victim = TestNamespace::new(&admin, "tsp-cert-victim").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let now = jiff::Timestamp::now();
    let theirs = entra_operator::azure::certificate::Material::generate(
        "theirs",
        now,
        now + jiff::SignedDuration::from_hours(2),
    )
    .unwrap();
    let tls: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "shared-tls"},
        "stringData": {"tls.crt": theirs.certificate_pem(), "tls.key": theirs.private_key_pem()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &victim.name)
        .create(&PostParams::default(), &tls)
        .await
        .unwrap();
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    sps.create(
        &PostParams::default(),
        &sp_object(
            "borrower",
            json!({"certificate": {"secretRef": {"name": "shared-tls"}}}),
        ),
    )
    .await
    .unwrap();
    sps.create(
        &PostParams::default(),
        &sp_object("generated", json!({"certificate": {}})),
    )
    .await
    .unwrap();
    let generated = wait_condition(&sps, "generated", "True", "Ready", 60).await;
    let waiting = wait_condition(&sps, "borrower", "False", "WaitingForCertificate", 60).await;
    let (_, _, message) = ready_of(&waiting).unwrap();
    assert!(
        message.contains(&format!("{}/shared-tls", ns.name)),
        "the object's own namespace is where it looks: {message}"
    );
    // Their certificate is on no application, and no Secret of this namespace holds it.
    let world = state(&azure).await;
    let print = theirs.thumbprint();
    assert!(
        !world.to_string().contains(&print),
        "another namespace's certificate reached Entra"
    );
    let own = Api::<Secret>::namespaced(admin.clone(), &ns.name);
    assert!(own.get_opt("borrower").await.unwrap().is_none());
    let thumbprint = generated.status.unwrap().credential.unwrap().thumbprint;
    assert!(thumbprint.is_some_and(|t| t != theirs.thumbprint_hex()));
    operator.stop();
    for name in ["borrower", "generated"] {
        sps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    victim.cleanup().await;
    teardown(rbac, azure, ns).await;
}
