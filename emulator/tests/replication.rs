//! Credential replication (`replication.credentialMs`/`credentialRegions`): a client secret added with
//! addPassword, or a certificate added with PATCH keyCredentials, is refused as unknown by the regions that
//! have not seen it yet, so that during the window sign-ins both fail and succeed, and after it all succeed;
//! seeded credentials are never delayed, and with the knob at 0 a new credential signs in at once.

use std::time::{Duration, Instant};

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::RSA_PKCS1_SHA256,
};
use azure_emulator::{Options, Running, config::Config, replication::delay_ms, start};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const OPERATOR_APP: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const OPERATOR_SP: &str = "0e0e0e0e-0000-4000-8000-00000000b0b0";
const OPERATOR_SECRET: &str = "operator-test-secret-0123456789";
const TARGET_APP: &str = "7a7a7a7a-0000-4000-8000-000000007a7a";
const TARGET_OBJECT: &str = "7a7a7a7a-0000-4000-8000-00000000a7a7";
const TARGET_SECRET: &str = "seeded-target-secret-0123456789";
const ARM: &str = "https://management.azure.com/.default";
const WINDOW_MS: u64 = 1500;
const REGIONS: u32 = 4;

/// A self-signed RSA certificate and its key, for client assertions as the target application.
struct Cert {
    key: KeyPair,
    der: Vec<u8>,
    pem: String,
}

fn cert() -> Cert {
    let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        key.as_der().unwrap().as_ref().to_vec(),
    ));
    let signer = rcgen::KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let cert = params.self_signed(&signer).unwrap();
    Cert {
        key,
        der: cert.der().to_vec(),
        pem: cert.pem(),
    }
}

impl Cert {
    fn assertion(&self, aud: &str) -> String {
        let print =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der));
        let now = jiff::Timestamp::now().as_second();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": print});
        let body = json!({"aud": aud, "iss": TARGET_APP, "sub": TARGET_APP, "jti": uuid::Uuid::new_v4().to_string(),
                          "nbf": now, "iat": now, "exp": now + 600});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Its SHA-1 thumbprint as Entra prints it in AADSTS700027 (hex, upper case).
    fn thumbprint(&self) -> String {
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }
}

struct Emu {
    running: Running,
    http: Client,
    tenant: String,
    graph: String,
    _dir: tempfile::TempDir,
}

/// How one sign-in went.
enum Credential<'a> {
    Secret(&'a str),
    Cert(&'a Cert),
}

impl Emu {
    /// An emulator whose operator owns a target application with a seeded secret and `seeded_cert`.
    async fn new(seeded_cert: &Cert) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_seed();
        config.seed.applications[0].client_secrets = vec![OPERATOR_SECRET.into()];
        config.seed.applications.push(
            serde_json::from_value(json!({
                "displayName": "target", "appId": TARGET_APP, "objectId": TARGET_OBJECT,
                "servicePrincipalId": "7a7a7a7a-0000-4000-8000-00000000b7b7", "owners": [OPERATOR_SP],
                "clientSecrets": [TARGET_SECRET], "keyCredentials": [{"certificatePem": seeded_cert.pem}],
            }))
            .unwrap(),
        );
        let running = start(Options {
            config,
            state_dir: dir.path().to_path_buf(),
            persist: false,
            listen: "127.0.0.1:0".parse().unwrap(),
            hostnames: vec![],
        })
        .await
        .unwrap();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&running.ca_file).unwrap()).unwrap();
        let http = Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut emu = Emu {
            running,
            http,
            tenant: Config::default_seed().seed.tenant_id,
            graph: String::new(),
            _dir: dir,
        };
        let (status, body) = emu
            .sign_in(
                OPERATOR_APP,
                &Credential::Secret(OPERATOR_SECRET),
                "https://graph.microsoft.com/.default",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        emu.graph = body["access_token"].as_str().unwrap().to_string();
        emu
    }

    /// Sets knobs as testkit's `knobs(&azure, json!(...))` does: PATCH /_emulator/knobs.
    async fn knobs(&self, patch: Value) {
        let resp = self
            .http
            .patch(format!("{}/_emulator/knobs", self.running.base_url))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.running.base_url, self.tenant
        )
    }

    async fn sign_in(
        &self,
        client_id: &str,
        credential: &Credential<'_>,
        scope: &str,
    ) -> (StatusCode, Value) {
        let assertion;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", scope),
        ];
        match credential {
            Credential::Secret(s) => form.push(("client_secret", s)),
            Credential::Cert(c) => {
                assertion = c.assertion(&self.token_url());
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", &assertion));
            }
        }
        let resp = self
            .http
            .post(self.token_url())
            .form(&form)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn target_sign_in(&self, credential: &Credential<'_>) -> (StatusCode, Value) {
        self.sign_in(TARGET_APP, credential, ARM).await
    }

    /// addPassword on the target: (keyId, secretText).
    async fn add_password(&self) -> (String, String) {
        let resp = self
            .http
            .post(format!(
                "{}/v1.0/applications/{TARGET_OBJECT}/addPassword",
                self.running.base_url
            ))
            .bearer_auth(&self.graph)
            .json(&json!({"passwordCredential": {"displayName": "new"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        (
            body["keyId"].as_str().unwrap().to_string(),
            body["secretText"].as_str().unwrap().to_string(),
        )
    }

    /// Appends `cert` to the target's keyCredentials with a new keyId.
    async fn add_certificate(&self, cert: &Cert) -> String {
        self.add_certificate_as(cert, &uuid::Uuid::new_v4().to_string())
            .await
    }
}

/// The part of an Entra error description that does not vary per request (before the trace id).
fn description(body: &Value) -> &str {
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .split("\r\n")
        .next()
        .unwrap()
}

/// Entra's answer to a credential the region does not know: the same as to a wrong one.
fn refused_as_unknown(
    status: StatusCode,
    body: &Value,
    credential: &Credential<'_>,
) -> Result<(), String> {
    let expected = match credential {
        Credential::Secret(_) => format!(
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{TARGET_APP}'."
        ),
        Credential::Cert(c) => format!(
            "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{TARGET_APP}'.]",
            c.thumbprint()
        ),
    };
    let code = match credential {
        Credential::Secret(_) => 7000215,
        Credential::Cert(_) => 700027,
    };
    if status == StatusCode::UNAUTHORIZED
        && body["error"] == "invalid_client"
        && body["error_codes"] == json!([code])
        && description(body) == expected
    {
        Ok(())
    } else {
        Err(format!("{status} {body}"))
    }
}

/// One sign-in during the window, with the bounds of the time since the credential's creation at which the
/// emulator can have judged it (the creation happened between `before` and `after` the Graph call).
struct Attempt {
    ok: bool,
    earliest_ms: u128,
    latest_ms: u128,
}

/// Signs in again and again from the credential's creation until shortly before the window closes, then
/// checks: every answer is a success or the unknown-credential error; no success before the earliest region
/// could have seen it; at least one failure and one success within the window; and after the window, only
/// successes.
async fn sign_ins_across_the_window(
    emu: &Emu,
    credential: &Credential<'_>,
    earliest_region_ms: u64,
    before: Instant,
    after: Instant,
) {
    let mut attempts = vec![];
    while before.elapsed() < Duration::from_millis(WINDOW_MS - 150) {
        let start = Instant::now();
        let (status, body) = emu.target_sign_in(credential).await;
        let ok = status == StatusCode::OK;
        if !ok {
            refused_as_unknown(status, &body, credential).unwrap();
        }
        attempts.push(Attempt {
            ok,
            earliest_ms: start.saturating_duration_since(after).as_millis(),
            latest_ms: before.elapsed().as_millis(),
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary: Vec<(bool, u128, u128)> = attempts
        .iter()
        .map(|a| (a.ok, a.earliest_ms, a.latest_ms))
        .collect();
    for a in &attempts {
        assert!(
            !a.ok || a.latest_ms >= earliest_region_ms as u128,
            "a success before any region could have the credential ({earliest_region_ms} ms): {summary:?}"
        );
    }
    assert!(
        attempts.iter().any(|a| !a.ok),
        "no failure in the window: {summary:?}"
    );
    assert!(
        attempts.iter().any(|a| a.ok),
        "no success in the window: {summary:?}"
    );

    let closes = after + Duration::from_millis(WINDOW_MS + 20);
    tokio::time::sleep(closes.saturating_duration_since(Instant::now())).await;
    for _ in 0..20 {
        let (status, body) = emu.target_sign_in(credential).await;
        assert_eq!(status, StatusCode::OK, "after the window: {body}");
    }
}

/// The earliest of the regions' delays for a key, and whether it leaves room for both answers in the window:
/// late enough that the first sign-ins fail, early enough for many sign-ins to reach a region that has it.
fn earliest_region(key_id: &str) -> (u64, bool) {
    let earliest = (0..REGIONS)
        .map(|r| delay_ms(key_id, r, WINDOW_MS))
        .min()
        .unwrap();
    (earliest, (150..=600).contains(&earliest))
}

fn knobs_on() -> Value {
    json!({"replication": {"credentialMs": WINDOW_MS, "credentialRegions": REGIONS}})
}

#[tokio::test]
async fn a_new_client_secret_is_refused_by_some_regions_until_the_window_closes() {
    let emu = Emu::new(&cert()).await;
    emu.knobs(knobs_on()).await;
    // The regions' delays follow from the keyId; a key whose earliest region is too early or too late for a
    // clear test is set aside for another one (the odds of needing more than a few are small).
    for _ in 0..40 {
        let before = Instant::now();
        let (key_id, secret) = emu.add_password().await;
        let after = Instant::now();
        let (earliest, usable) = earliest_region(&key_id);
        if usable {
            let credential = Credential::Secret(&secret);
            sign_ins_across_the_window(&emu, &credential, earliest, before, after).await;
            return;
        }
    }
    panic!("no new password had its earliest region in 150..=600 ms");
}

#[tokio::test]
async fn a_new_certificate_is_refused_by_some_regions_until_the_window_closes() {
    let emu = Emu::new(&cert()).await;
    emu.knobs(knobs_on()).await;
    for _ in 0..40 {
        let new = cert();
        let key_id = uuid::Uuid::new_v4().to_string();
        if !earliest_region(&key_id).1 {
            continue;
        }
        let before = Instant::now();
        let given = emu.add_certificate_as(&new, &key_id).await;
        let after = Instant::now();
        assert_eq!(given, key_id);
        let credential = Credential::Cert(&new);
        sign_ins_across_the_window(&emu, &credential, earliest_region(&key_id).0, before, after)
            .await;
        return;
    }
    panic!("no keyId had its earliest region in 150..=600 ms");
}

impl Emu {
    /// Appends `cert` to the target's keyCredentials as azure-cli does (reads them, PATCHes them all), under
    /// the keyId given, so that a test can pick one whose regions suit it.
    async fn add_certificate_as(&self, cert: &Cert, key_id: &str) -> String {
        let url = format!(
            "{}/v1.0/applications/{TARGET_OBJECT}",
            self.running.base_url
        );
        let app: Value = self
            .http
            .get(&url)
            .bearer_auth(&self.graph)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut keys = app["keyCredentials"].as_array().unwrap().clone();
        keys.push(
            json!({"keyId": key_id, "type": "AsymmetricX509Cert", "usage": "Verify",
                         "key": STANDARD.encode(&cert.der)}),
        );
        let resp = self
            .http
            .patch(&url)
            .bearer_auth(&self.graph)
            .json(&json!({"keyCredentials": keys}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        key_id.to_string()
    }
}

#[tokio::test]
async fn with_one_region_a_new_credential_is_refused_exactly_as_an_unknown_one_for_the_whole_window()
 {
    let emu = Emu::new(&cert()).await;
    // One region is region 0, which sees a credential only when the window closes.
    emu.knobs(json!({"replication": {"credentialMs": 60_000, "credentialRegions": 1}}))
        .await;
    let (_, secret) = emu.add_password().await;
    let new = cert();
    emu.add_certificate(&new).await;
    for credential in [Credential::Secret(&secret), Credential::Cert(&new)] {
        for _ in 0..5 {
            let (status, body) = emu.target_sign_in(&credential).await;
            refused_as_unknown(status, &body, &credential).unwrap();
        }
    }
    // The same body as for a secret or certificate the application never had.
    let stranger = cert();
    for credential in [
        Credential::Secret("never-added-secret-0123456789"),
        Credential::Cert(&stranger),
    ] {
        let (status, body) = emu.target_sign_in(&credential).await;
        refused_as_unknown(status, &body, &credential).unwrap();
    }
}

#[tokio::test]
async fn seeded_credentials_are_never_delayed() {
    let seeded = cert();
    let emu = Emu::new(&seeded).await;
    emu.knobs(json!({"replication": {"credentialMs": 60_000, "credentialRegions": 1}}))
        .await;
    // Also what the admin API seeds while running.
    let resp = emu
        .http
        .post(format!("{}/_emulator/seed", emu.running.base_url))
        .json(&json!({"applications": [{"displayName": "target", "appId": TARGET_APP, "objectId": TARGET_OBJECT,
            "servicePrincipalId": "7a7a7a7a-0000-4000-8000-00000000b7b7", "clientSecrets": ["seeded-later-secret-0123456789"]}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    for credential in [
        Credential::Secret(TARGET_SECRET),
        Credential::Secret("seeded-later-secret-0123456789"),
        Credential::Cert(&seeded),
    ] {
        for _ in 0..10 {
            let (status, body) = emu.target_sign_in(&credential).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
}

#[tokio::test]
async fn with_the_knob_at_zero_a_new_credential_signs_in_at_once() {
    let emu = Emu::new(&cert()).await;
    // The default is off; setting it to 0 explicitly is the same.
    emu.knobs(json!({"replication": {"credentialMs": 0}})).await;
    let knobs: Value = emu
        .http
        .get(format!("{}/_emulator/knobs", emu.running.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        knobs["replication"],
        json!({"graphNotFoundMs": 0, "principalNotFoundMs": 0, "principalNotFoundWithTypeMs": 0,
               "credentialMs": 0, "credentialRegions": 4})
    );
    let (_, secret) = emu.add_password().await;
    let (status, body) = emu.target_sign_in(&Credential::Secret(&secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = cert();
    emu.add_certificate(&new).await;
    let (status, body) = emu.target_sign_in(&Credential::Cert(&new)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
