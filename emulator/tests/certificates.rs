//! Certificate credentials: a certificate registered by seed is an application's key credential (shown by
//! Graph without its key), and client assertions signed with its key sign in, RS256 or PS256, named by `x5t`
//! or `x5t#S256`, while unknown or expired certificates, expired assertions and wrong audiences are refused
//! with Entra's codes.

use std::time::Duration;

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding},
};
use azure_emulator::{Options, Running, config::Config, start};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const APP_ID: &str = "c3c3c3c3-0000-4000-8000-00000000c3c3";
const APP_OBJECT: &str = "c3c3c3c3-0000-4000-8000-00000000a3a3";
const ARM: &str = "https://management.azure.com/.default";

struct Cert {
    key: KeyPair,
    der: Vec<u8>,
    pem: String,
}

/// A self-signed RSA certificate valid between the two years, as `create-for-rbac --create-cert` makes one.
fn cert(from_year: i32, to_year: i32) -> Cert {
    let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        key.as_der().unwrap().as_ref().to_vec(),
    ));
    let signer = rcgen::KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cert-app");
    params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
    params.not_after = rcgen::date_time_ymd(to_year, 1, 1);
    let cert = params.self_signed(&signer).unwrap();
    Cert {
        key,
        der: cert.der().to_vec(),
        pem: cert.pem(),
    }
}

#[derive(Clone, Copy)]
enum Thumbprint {
    Sha1,
    Sha256,
}

impl Cert {
    /// A client assertion; `claims` are merged over valid ones for `aud`.
    fn assertion(&self, alg: &str, thumbprint: Thumbprint, aud: &str, claims: Value) -> String {
        let (name, algorithm) = match thumbprint {
            Thumbprint::Sha1 => ("x5t", &digest::SHA1_FOR_LEGACY_USE_ONLY),
            Thumbprint::Sha256 => ("x5t#S256", &digest::SHA256),
        };
        let print = URL_SAFE_NO_PAD.encode(digest::digest(algorithm, &self.der));
        let header = json!({"alg": alg, "typ": "JWT", name: print});
        let now = jiff::Timestamp::now().as_second();
        let mut body = json!({"aud": aud, "iss": APP_ID, "sub": APP_ID, "jti": uuid::Uuid::new_v4().to_string(),
                              "nbf": now, "iat": now, "exp": now + 600});
        for (k, v) in claims.as_object().unwrap() {
            body[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let encoding: &'static dyn RsaEncoding = if alg == "PS256" {
            &RSA_PSS_SHA256
        } else {
            &RSA_PKCS1_SHA256
        };
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(encoding, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

struct Emu {
    running: Running,
    http: Client,
    tenant: String,
    _dir: tempfile::TempDir,
}

impl Emu {
    /// An emulator with an application whose key credentials are `certs`.
    async fn with(certs: &[&Cert]) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_seed();
        let keys: Vec<Value> = certs
            .iter()
            .map(|c| json!({"certificatePem": c.pem}))
            .collect();
        config.seed.applications.push(
            serde_json::from_value(json!({
                "displayName": "cert-app", "appId": APP_ID, "objectId": APP_OBJECT,
                "servicePrincipalId": "c3c3c3c3-0000-4000-8000-00000000b3b3",
                "graphPermissions": ["Application.Read.All"], "keyCredentials": keys,
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
        Emu {
            running,
            http,
            tenant: Config::default_seed().seed.tenant_id,
            _dir: dir,
        }
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.running.base_url, self.tenant
        )
    }

    async fn sign_in(&self, assertion: &str, scope: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", APP_ID),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }
}

fn code(body: &Value) -> i64 {
    body["error_codes"][0].as_i64().unwrap_or_default()
}

#[tokio::test]
async fn a_registered_certificate_signs_in_with_either_algorithm_and_thumbprint() {
    let cert = cert(2024, 2040);
    let emu = Emu::with(&[&cert]).await;
    let v1 = format!("{}/{}/oauth2/token", emu.running.base_url, emu.tenant);
    for (alg, print, aud) in [
        ("RS256", Thumbprint::Sha1, emu.token_url()),
        ("PS256", Thumbprint::Sha256, emu.token_url()),
        ("RS256", Thumbprint::Sha256, v1.clone()),
        ("PS256", Thumbprint::Sha1, v1),
    ] {
        // MSAL Python sends NumericDates with fractions (time.time()).
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let claims = json!({"iat": now, "nbf": now, "exp": now + 600.0});
        let (status, body) = emu
            .sign_in(&cert.assertion(alg, print, &aud, claims), ARM)
            .await;
        assert_eq!(status, StatusCode::OK, "{alg} {aud}: {body}");
        assert!(body["access_token"].is_string());
    }
}

#[tokio::test]
async fn graph_shows_the_key_credential_without_its_key() {
    let cert = cert(2024, 2040);
    let emu = Emu::with(&[&cert]).await;
    let assertion = cert.assertion("RS256", Thumbprint::Sha1, &emu.token_url(), json!({}));
    let (status, body) = emu
        .sign_in(&assertion, "https://graph.microsoft.com/.default")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let app: Value = emu
        .http
        .get(format!(
            "{}/v1.0/applications/{APP_OBJECT}",
            emu.running.base_url
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = app["keyCredentials"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{app}");
    let key = &keys[0];
    assert_eq!(key["key"], Value::Null);
    assert_eq!(key["type"], "AsymmetricX509Cert");
    assert_eq!(key["usage"], "Verify");
    assert_eq!(
        key["customKeyIdentifier"],
        STANDARD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &cert.der))
    );
    assert!(
        key["startDateTime"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-01")
    );
    assert!(
        key["endDateTime"]
            .as_str()
            .unwrap()
            .starts_with("2040-01-01")
    );
}

#[tokio::test]
async fn unknown_expired_or_impersonated_certificates_are_refused_as_entra_does() {
    let registered = cert(2024, 2040);
    let expired = cert(2020, 2021);
    let stranger = cert(2024, 2040);
    let emu = Emu::with(&[&registered, &expired]).await;
    let aud = emu.token_url();

    let unknown = stranger.assertion("RS256", Thumbprint::Sha1, &aud, json!({}));
    let (status, body) = emu.sign_in(&unknown, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not registered")
    );
    assert_eq!(body["error"], "invalid_client");

    let old = expired.assertion("RS256", Thumbprint::Sha256, &aud, json!({}));
    let (status, body) = emu.sign_in(&old, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // The registered certificate's thumbprint, but signed by another key.
    let forged = registered.assertion("RS256", Thumbprint::Sha1, &aud, json!({}));
    let other = stranger.assertion("RS256", Thumbprint::Sha1, &aud, json!({}));
    let forged = format!(
        "{}.{}",
        forged.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    let (status, body) = emu.sign_in(&forged, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("signature validation")
    );
}

#[tokio::test]
async fn assertions_out_of_time_for_elsewhere_without_jti_or_in_other_algorithms_are_refused() {
    let registered = cert(2024, 2040);
    let emu = Emu::with(&[&registered]).await;
    let aud = emu.token_url();

    let now = jiff::Timestamp::now().as_second();
    let late = registered.assertion(
        "RS256",
        Thumbprint::Sha1,
        &aud,
        json!({"nbf": now - 3600, "exp": now - 900}),
    );
    let (status, body) = emu.sign_in(&late, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, 700024),
        "{body}"
    );

    // A few seconds past exp is within Entra's clock skew.
    let skewed = registered.assertion("RS256", Thumbprint::Sha1, &aud, json!({"exp": now - 30}));
    assert_eq!(emu.sign_in(&skewed, ARM).await.0, StatusCode::OK);

    let elsewhere = registered.assertion(
        "RS256",
        Thumbprint::Sha1,
        "https://login.microsoftonline.com/another-tenant/oauth2/v2.0/token",
        json!({}),
    );
    let (status, body) = emu.sign_in(&elsewhere, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 50012),
        "{body}"
    );

    let no_jti = registered.assertion("RS256", Thumbprint::Sha1, &aud, json!({"jti": null}));
    let (status, body) = emu.sign_in(&no_jti, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, 50027),
        "{body}"
    );

    let hs = registered.assertion("RS384", Thumbprint::Sha1, &aud, json!({}));
    let (status, body) = emu.sign_in(&hs, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
}

const PROOF_AUDIENCE: &str = "00000002-0000-0000-c000-000000000000";

impl Emu {
    async fn graph_token(&self, cert: &Cert) -> String {
        let assertion = cert.assertion("RS256", Thumbprint::Sha1, &self.token_url(), json!({}));
        let (status, body) = self
            .sign_in(&assertion, "https://graph.microsoft.com/.default")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn action(&self, token: &str, action: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!(
                "{}/v1.0/applications/{APP_OBJECT}/{action}",
                self.running.base_url
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// A proof of possession for addKey/removeKey signed by `cert`, as Learn's sample makes one.
fn proof(cert: &Cert, claims: Value) -> String {
    let mut all = json!({"iss": APP_OBJECT, "sub": null, "jti": null});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    cert.assertion("RS256", Thumbprint::Sha1, PROOF_AUDIENCE, all)
}

#[tokio::test]
async fn an_application_rolls_its_own_certificate_with_add_key_and_remove_key() {
    let old = cert(2024, 2040);
    let new = cert(2024, 2041);
    let stranger = cert(2024, 2040);
    let emu = Emu::with(&[&old]).await;
    let token = emu.graph_token(&old).await;
    let add = |proof: String| {
        json!({"keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify",
        "key": STANDARD.encode(&new.der)}, "passwordCredential": null, "proof": proof})
    };

    let now = jiff::Timestamp::now().as_second();
    for bad in [
        proof(&stranger, json!({})),
        proof(&old, json!({"iss": "00000000-0000-4000-8000-000000000000"})),
        proof(&old, json!({"aud": "https://graph.microsoft.com"})),
        proof(&old, json!({"nbf": now, "exp": now + 1200})),
        proof(&old, json!({"nbf": now - 1200, "exp": now - 900})),
    ] {
        let (status, body) = emu.action(&token, "addKey", add(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    let (status, added) = emu
        .action(&token, "addKey", add(proof(&old, json!({}))))
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["key"], Value::Null);
    assert_eq!(added["type"], "AsymmetricX509Cert");
    assert!(
        added["endDateTime"]
            .as_str()
            .unwrap()
            .starts_with("2041-01-01")
    );
    // The new certificate signs in at once.
    let token = emu.graph_token(&new).await;

    let app: Value = emu
        .http
        .get(format!(
            "{}/v1.0/applications/{APP_OBJECT}",
            emu.running.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = app["keyCredentials"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{app}");
    let old_id = keys.iter().find(|k| k["keyId"] != added["keyId"]).unwrap()["keyId"].clone();

    let remove = json!({"keyId": old_id, "proof": proof(&new, json!({}))});
    let (status, body) = emu.action(&token, "removeKey", remove).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let assertion = old.assertion("RS256", Thumbprint::Sha1, &emu.token_url(), json!({}));
    let (status, body) = emu.sign_in(&assertion, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
}

#[tokio::test]
async fn an_owner_patches_key_credentials_appending_by_key_id_as_az_does() {
    let first = cert(2024, 2040);
    let second = cert(2024, 2041);
    let emu = Emu::with(&[&first]).await;
    let owner_sp = "d4d4d4d4-0000-4000-8000-00000000b4b4";
    let seed = json!({"applications": [
        {"displayName": "owner", "appId": "d4d4d4d4-0000-4000-8000-00000000d4d4",
         "objectId": "d4d4d4d4-0000-4000-8000-00000000a4a4", "servicePrincipalId": owner_sp,
         "clientSecrets": ["owner-secret-0123456789"], "graphPermissions": ["Application.ReadWrite.OwnedBy"]},
        {"displayName": "cert-app", "appId": APP_ID, "objectId": APP_OBJECT,
         "servicePrincipalId": "c3c3c3c3-0000-4000-8000-00000000b3b3", "owners": [owner_sp]},
    ]});
    let resp = emu
        .http
        .post(format!("{}/_emulator/seed", emu.running.base_url))
        .json(&seed)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let resp: Value = emu
        .http
        .post(emu.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "d4d4d4d4-0000-4000-8000-00000000d4d4"),
            ("client_secret", "owner-secret-0123456789"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v1.0/applications/{APP_OBJECT}", emu.running.base_url);
    let app: Value = emu
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let existing = app["keyCredentials"][0].clone();
    assert_eq!(existing["key"], Value::Null);
    let patch = |keys: Value| {
        emu.http
            .patch(&url)
            .bearer_auth(&token)
            .json(&json!({"keyCredentials": keys}))
            .send()
    };
    let new_key = json!({"@odata.type": "#microsoft.graph.keyCredential", "type": "AsymmetricX509Cert",
        "usage": "Verify", "key": STANDARD.encode(&second.der), "displayName": null,
        "startDateTime": "2025-01-01T00:00:00Z", "endDateTime": "2030-01-01T00:00:00Z"});

    let unknown = json!([{"keyId": uuid::Uuid::new_v4().to_string(), "key": null}]);
    assert_eq!(
        patch(unknown).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    let appended = patch(json!([existing, new_key])).await.unwrap();
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);
    let app: Value = emu
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        app["keyCredentials"][1]["endDateTime"], "2030-01-01T00:00:00Z",
        "{app}"
    );
    for c in [&first, &second] {
        let assertion = c.assertion("RS256", Thumbprint::Sha1, &emu.token_url(), json!({}));
        assert_eq!(emu.sign_in(&assertion, ARM).await.0, StatusCode::OK);
    }

    let replaced = patch(json!([new_key])).await.unwrap();
    assert_eq!(replaced.status(), StatusCode::NO_CONTENT);
    let assertion = first.assertion("RS256", Thumbprint::Sha1, &emu.token_url(), json!({}));
    let (status, body) = emu.sign_in(&assertion, ARM).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, 700027),
        "{body}"
    );
}
