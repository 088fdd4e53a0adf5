//! Certificate credentials end to end, on the real control plane and the emulator: a ServicePrincipal with a
//! generated certificate and one taking cert-manager's TLS Secret both deliver credentials that Microsoft's
//! azure-identity signs in with, from every format a consumer mounts; a CredentialRotation renews the first
//! (a kill -9 included) and follows the second's renewals, and a consumer signing in every 100 ms with whatever
//! the Secret holds never fails, with never more than two of the operator's certificates on the application.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::{
    api::{CredentialRotation, ServicePrincipal},
    azure::certificate::Material,
    controller::secret_format,
};

use crate::{
    harness::{
        Setup, delete_and_wait, emulator_http, eventually, object, state, teardown, wait_condition,
    },
    operator_run::{Azure, Operator},
};

const KEY_ID: &str = "entra-operator.io/key-id";

/// The operator's certificates (displayName `entra-operator:...`) on application `app_id`, as keyId →
/// thumbprint (base64).
async fn operator_certificates(azure: &Azure, app_id: &str) -> BTreeMap<String, String> {
    certificates_in(&state(azure).await, app_id)
}

fn certificates_in(world: &Value, app_id: &str) -> BTreeMap<String, String> {
    world["directory"]["applications"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["appId"] == app_id)
        .flat_map(|a| a["keyCredentials"].as_array().cloned().unwrap_or_default())
        .filter(|k| {
            k["displayName"]
                .as_str()
                .is_some_and(|d| d.starts_with("entra-operator:"))
        })
        .map(|k| {
            let id = k["keyId"].as_str().unwrap().to_string();
            (
                id,
                k["customKeyIdentifier"].as_str().unwrap_or_default().into(),
            )
        })
        .collect()
}

/// Writes the Secret's keys as files into `dir`, as the kubelet mounts a Secret volume.
fn mount(secret: &Secret, dir: &Path) {
    for (key, value) in secret.data.as_ref().unwrap() {
        std::fs::write(dir.join(key), &value.0).unwrap();
    }
}

/// Signs in with Microsoft's azure-identity from what a consumer of `format` has: the Secret mounted at
/// `dir` and, for env, its keys as environment variables (`EnvironmentCredential`, exactly as an application
/// would); for az and azure.json, the PEM file their fields name (`CertificateCredential`); for tls,
/// tls.key and tls.crt. The token's appid claim, or the SDK's error.
/// A tls Secret names no application: `app_id` is the one the consumer is configured with.
fn sdk_sign_in(
    azure: &Azure,
    format: &str,
    secret: &Secret,
    dir: &Path,
    app_id: &str,
) -> Result<String, String> {
    const PROGRAM: &str = r#"
import base64, json, os, sys
from azure.identity import CertificateCredential, EnvironmentCredential
fmt, directory, tenant, authority = sys.argv[1:5]
read = lambda name: open(os.path.join(directory, name)).read()
options = dict(authority=authority, disable_instance_discovery=True)
if fmt == "env":
    credential = EnvironmentCredential(disable_instance_discovery=True)
elif fmt == "az":
    credential = CertificateCredential(read("tenant"), read("appId"), certificate_path=read("fileWithCertAndPrivateKey"), **options)
elif fmt == "azure.json":
    doc = json.loads(read("azure.json"))
    credential = CertificateCredential(doc["tenantId"], doc["aadClientId"], certificate_path=doc["aadClientCertPath"], **options)
else:
    client_id = sys.argv[5]
    credential = CertificateCredential(tenant, client_id, certificate_data=(read("tls.key") + read("tls.crt")).encode(), **options)
token = credential.get_token("https://management.azure.com/.default").token
claims = token.split(".")[1]
print(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["appid"])
"#;
    let python = crate::harness::sdk_python();
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    let data = secret.data.clone().unwrap_or_default();
    let mut command = std::process::Command::new(python);
    command
        .args(["-c", PROGRAM, format, dir.to_str().unwrap(), &tenant])
        .arg(&azure.emulator.base_url)
        .arg(app_id)
        .env("REQUESTS_CA_BUNDLE", &azure.emulator.ca_file)
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_CLIENT_ID");
    if format == "env" {
        for (key, v) in &data {
            if key.starts_with("AZURE_") {
                command.env(key, String::from_utf8_lossy(&v.0).as_ref());
            }
        }
    }
    let out = command.output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The token endpoint's answer to a client assertion signed with `material` (0: no answer), as the Azure SDKs
/// send it.
async fn assert_sign_in(
    http: &(reqwest::Client, String),
    client_id: &str,
    material: &Material,
) -> u16 {
    let tenant = azure_emulator::config::Config::default_seed()
        .seed
        .tenant_id;
    let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", http.1);
    for _ in 0..3 {
        let assertion = material
            .client_assertion(client_id, &endpoint, jiff::Timestamp::now())
            .unwrap();
        let sent = http
            .0
            .post(&endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await;
        if let Ok(answer) = sent {
            return answer.status().as_u16();
        }
    }
    0
}

/// The certificate a Secret written in `format` holds.
fn held(secret: &Secret, format: entra_operator::api::SecretFormat) -> Option<Material> {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Material::from_pem(&secret_format::extract_secret(format, &data, true)?).ok()
}

/// A consumer signing in every 100 ms with whatever `secret` holds, and a watcher counting the operator's
/// certificates on the application every 50 ms.
struct Probe {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
    keys: Arc<Mutex<BTreeSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    fn start(azure: &Azure, secrets: &Api<Secret>, secret: &str, app_id: &str) -> Probe {
        let probe = Probe {
            stop: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(AtomicU64::new(0)),
            most: Arc::new(AtomicU64::new(0)),
            keys: Arc::new(Mutex::new(BTreeSet::new())),
            tasks: vec![],
        };
        let http = (emulator_http(azure), azure.emulator.base_url.clone());
        let (stop, attempts, failures, keys) = (
            probe.stop.clone(),
            probe.attempts.clone(),
            probe.failures.clone(),
            probe.keys.clone(),
        );
        let (secrets, name, client_id) = (secrets.clone(), secret.to_string(), app_id.to_string());
        let consumer = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let secret = secrets.get(&name).await.unwrap();
                let annotations = secret.metadata.annotations.clone().unwrap_or_default();
                keys.lock().unwrap().insert(annotations[KEY_ID].clone());
                let format =
                    serde_json::from_value(json!(annotations["entra-operator.io/format"])).unwrap();
                let status = match held(&secret, format) {
                    Some(material) => assert_sign_in(&http, &client_id, &material).await,
                    None => 1,
                };
                attempts.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "probe: the Secret's certificate (key {}) failed: {status}",
                        annotations[KEY_ID]
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (stop, most) = (probe.stop.clone(), probe.most.clone());
        let (http, base, app_id) = (
            emulator_http(azure),
            azure.emulator.base_url.clone(),
            app_id.to_string(),
        );
        let watcher = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let world: Value = http
                    .get(format!("{base}/_emulator/state"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                most.fetch_max(
                    certificates_in(&world, &app_id).len() as u64,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Probe {
            tasks: vec![consumer, watcher],
            ..probe
        }
    }

    /// Waits until `n` key ids have been seen in the Secret.
    async fn seen(&self, n: usize, secs: u64) {
        eventually(secs, &format!("{n} certificates seen"), || async {
            let seen = self.keys.lock().unwrap().len();
            if seen >= n {
                Ok(())
            } else {
                Err(format!("{seen} seen"))
            }
        })
        .await
    }

    /// Stops and asserts: sign-ins happened, none failed, never more than two certificates.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let (attempts, failures) = (
            self.attempts.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        );
        assert!(attempts > 30, "{attempts} sign-ins");
        assert_eq!(failures, 0, "{failures} of {attempts} sign-ins failed");
        let most = self.most.load(Ordering::Relaxed);
        assert!(
            most <= 2,
            "at most two of the operator's certificates at any time, saw {most}"
        );
    }
}

/// Patches spec.secret of ServicePrincipal `name`.
async fn set_secret(sps: &Api<ServicePrincipal>, name: &str, secret: Value) {
    sps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secret": secret}})),
    )
    .await
    .unwrap();
}

/// The Secret `name` once it is written in `format`.
async fn in_format(secrets: &Api<Secret>, name: &str, format: &str) -> Secret {
    eventually(30, &format!("Secret {name} in {format}"), || async {
        let s = secrets.get(name).await.map_err(|e| e.to_string())?;
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        match annotations
            .get("entra-operator.io/format")
            .map(String::as_str)
        {
            Some(f) if f == format => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Switches ServicePrincipal `gen` to `format` and signs in with azure-identity from what the re-rendered
/// Secret holds, mounted at `dir`: the same certificate (`credential`), for application `app_id`.
async fn signs_in_as(
    azure: &Azure,
    sps: &Api<ServicePrincipal>,
    secrets: &Api<Secret>,
    format: &str,
    dir: &str,
    app_id: &str,
    credential: &entra_operator::api::service_principal::CredentialStatus,
) {
    set_secret(
        sps,
        "gen",
        json!({"name": "gen-cert", "format": format, "mountPath": dir}),
    )
    .await;
    let secret = in_format(secrets, "gen-cert", format).await;
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()[KEY_ID],
        credential.key_id,
        "{format}: the same certificate, re-rendered"
    );
    let held =
        held(&secret, serde_json::from_value(json!(format)).unwrap()).expect("a certificate");
    assert_eq!(
        Some(held.thumbprint_hex()),
        credential.thumbprint,
        "{format}"
    );
    mount(&secret, Path::new(dir));
    let appid = sdk_sign_in(azure, format, &secret, Path::new(dir), app_id)
        .unwrap_or_else(|e| panic!("{format}: azure-identity could not sign in: {e}"));
    assert_eq!(appid, app_id, "{format}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_certificate_signs_in_from_every_format_and_rotates_through_a_kill() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("cert-gen").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    // Where a consumer mounts the Secret: the formats name the PEM file under it.
    let mounted = tempfile::tempdir().unwrap();
    let dir = mounted.path().to_str().unwrap().to_string();
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            "gen",
            json!({"displayName": "gen", "certificate": {}, "credentialLifetime": "2h",
                   "secret": {"name": "gen-cert", "format": "env", "mountPath": dir}}),
        ),
    )
    .await
    .unwrap();
    let sp = wait_condition(&sps, "gen", "True", "Ready", 60).await;
    let status = sp.status.unwrap();
    let app_id = status.app_id.unwrap();
    let credential = status.credential.unwrap();
    assert!(
        credential.thumbprint.is_some(),
        "status names the thumbprint"
    );
    assert_eq!(credential.hint, None);
    let on_app = operator_certificates(&azure, &app_id).await;
    assert_eq!(
        on_app.keys().collect::<Vec<_>>(),
        [&credential.key_id],
        "one certificate"
    );

    // Every format, re-rendered from the same certificate, signs in with azure-identity as its consumer would.
    for format in ["env", "az", "azure.json", "tls"] {
        signs_in_as(&azure, &sps, &secrets, format, &dir, &app_id, &credential).await;
    }
    assert_eq!(
        operator_certificates(&azure, &app_id).await.len(),
        1,
        "no certificate was added for a format"
    );

    // Rotations with overlap, through a kill -9 right after a new certificate reached the Secret.
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "gen",
                json!({"servicePrincipalRef": {"name": "gen"}, "rotateEvery": "6s", "overlap": "2s"}),
            ),
        )
        .await
        .unwrap();
    let probe = Probe::start(&azure, &secrets, "gen-cert", &app_id);
    probe.seen(3, 90).await;
    operator.drain();
    operator.wait_for("rotated the client secret", Duration::from_secs(60));
    operator.signal(Signal::SIGKILL);
    let _ = operator.wait_exit(Duration::from_secs(10));
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    probe.seen(5, 120).await;
    probe.finish().await;
    let rotation = wait_condition(&crots, "gen", "True", "Ready", 60).await;
    assert!(
        !serde_json::to_string(&rotation.status)
            .unwrap()
            .contains("PRIVATE KEY"),
        "no key in the rotation's status"
    );

    delete_and_wait(&crots, "gen", 30, "rotation deleted").await;
    let lines = operator.stop();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("PRIVATE KEY") && !l.contains("certificate.pem")),
        "no key material in the log"
    );
    let events = crate::harness::events_of(&admin, &ns.name).await;
    assert!(
        events.iter().all(|e| !e.contains("PRIVATE KEY")),
        "no key in events"
    );
    sps.delete("gen", &DeleteParams::default()).await.unwrap();
    teardown(rbac, azure, ns).await;
}

/// A kubernetes.io/tls Secret holding `material`, as cert-manager writes it.
fn tls_secret(name: &str, material: &Material) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name},
    }))
    .map(|mut s: Secret| {
        s.data = Some(BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(material.certificate_pem().as_bytes().to_vec()),
            ),
            (
                "tls.key".into(),
                ByteString(material.private_key_pem().as_bytes().to_vec()),
            ),
        ]));
        s
    })
    .unwrap()
}

/// A certificate valid from now for two hours, as cert-manager would issue it.
fn issued(name: &str) -> Material {
    let now = jiff::Timestamp::now();
    Material::generate(name, now, now + jiff::SignedDuration::from_hours(2)).unwrap()
}

/// Renews `web`'s TLS Secret with no rotation: the ServicePrincipal delivers the new certificate and removes
/// the old one itself.
async fn follows_a_renewal_alone(
    azure: &Azure,
    sps: &Api<ServicePrincipal>,
    secrets: &Api<Secret>,
    app_id: &str,
) {
    let renewed = issued("web");
    secrets
        .replace(
            "web-tls",
            &PostParams::default(),
            &tls_secret("web-tls", &renewed),
        )
        .await
        .unwrap();
    eventually(60, "the ServicePrincipal delivers the renewal", || async {
        let sp = sps.get("web").await.map_err(|e| e.to_string())?;
        let held = sp
            .status
            .and_then(|s| s.credential)
            .and_then(|c| c.thumbprint);
        let on_app = operator_certificates(azure, app_id).await;
        match (held == Some(renewed.thumbprint_hex()), on_app.len()) {
            (true, 1) => Ok(()),
            other => Err(format!("{other:?}: {on_app:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_secret_certificate_signs_in_and_its_renewals_rotate_with_overlap() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("cert-tls").await;
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let mounted = tempfile::tempdir().unwrap();
    let dir = mounted.path().to_str().unwrap().to_string();
    // The ServicePrincipal comes first: it waits for cert-manager's Secret, and takes it once written.
    sps.create(
        &PostParams::default(),
        &object(
            "ServicePrincipal",
            "web",
            json!({"displayName": "web", "certificate": {"secretRef": {"name": "web-tls"}},
                   "secret": {"name": "web-cert", "format": "env", "mountPath": dir}}),
        ),
    )
    .await
    .unwrap();
    wait_condition(&sps, "web", "False", "WaitingForCertificate", 60).await;
    let first = issued("web");
    secrets
        .create(&PostParams::default(), &tls_secret("web-tls", &first))
        .await
        .unwrap();
    let sp = wait_condition(&sps, "web", "True", "Ready", 60).await;
    let status = sp.status.unwrap();
    let app_id = status.app_id.unwrap();
    assert_eq!(
        status.credential.unwrap().thumbprint,
        Some(first.thumbprint_hex())
    );
    let delivered = secrets.get("web-cert").await.unwrap();
    mount(&delivered, mounted.path());
    let appid = sdk_sign_in(&azure, "env", &delivered, mounted.path(), "")
        .unwrap_or_else(|e| panic!("azure-identity could not sign in: {e}"));
    assert_eq!(appid, app_id);

    // A rotation follows each renewal with its overlap: the consumer never fails, two certificates at most.
    crots
        .create(
            &PostParams::default(),
            &object(
                "CredentialRotation",
                "web",
                json!({"servicePrincipalRef": {"name": "web"}, "renewBefore": "30m", "overlap": "3s"}),
            ),
        )
        .await
        .unwrap();
    wait_condition(&crots, "web", "True", "Ready", 60).await;
    let probe = Probe::start(&azure, &secrets, "web-cert", &app_id);
    for round in 2..=3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let latest = issued("web");
        secrets
            .replace(
                "web-tls",
                &PostParams::default(),
                &tls_secret("web-tls", &latest),
            )
            .await
            .unwrap();
        probe.seen(round, 60).await;
        let print = latest.thumbprint();
        eventually(60, "only the renewed certificate left", || async {
            let on_app = operator_certificates(&azure, &app_id).await;
            match on_app.values().collect::<Vec<_>>() == [&print] {
                true => Ok(()),
                false => Err(format!("{on_app:?}")),
            }
        })
        .await;
    }
    probe.finish().await;
    let rotation = wait_condition(&crots, "web", "True", "Ready", 60).await;
    let events = crate::harness::events_of(&admin, &ns.name).await;
    assert!(
        events.iter().any(|e| e.contains("renewed rotation")),
        "the rotation says it followed a renewal: {events:?}"
    );
    assert!(rotation.status.unwrap().current_key_id.is_some());

    // Without a rotation the ServicePrincipal follows a renewal itself: the new one delivered, the old gone.
    delete_and_wait(&crots, "web", 30, "rotation deleted").await;
    follows_a_renewal_alone(&azure, &sps, &secrets, &app_id).await;
    operator.stop();
    sps.delete("web", &DeleteParams::default()).await.unwrap();
    teardown(rbac, azure, ns).await;
}
