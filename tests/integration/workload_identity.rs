//! Workload identity end to end: a projected ServiceAccount token from the real API server is exchanged at
//! the emulator's token endpoint, which validates it against the API server's own OIDC discovery and JWKS,
//! exactly as Entra does with an AKS cluster's issuer.

use std::time::Duration;

use azure_emulator::config::Config;
use serde_json::{Value, json};

use crate::support::{
    AUDIENCE, OPERATOR_APP, TestNamespace, admin_client, emulator_trusting_testenv, sa_token,
};

#[tokio::test]
async fn service_account_tokens_from_testenv_sign_in_through_federated_credentials() {
    let client = admin_client().await;
    let ns = TestNamespace::new(&client, "wi").await;
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator_trusting_testenv(&ns.name, "entra-operator", dir.path()).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&emulator.ca_file).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let tenant = Config::default_seed().seed.tenant_id;
    let exchange = |assertion: String| {
        let http = http.clone();
        let url = format!("{}/{tenant}/oauth2/v2.0/token", emulator.base_url);
        async move {
            let resp = http
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", OPERATOR_APP),
                    ("scope", "https://graph.microsoft.com/.default"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };

    let good = sa_token(&client, &ns.name, "entra-operator", AUDIENCE).await;
    let (status, body) = exchange(good.clone()).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let claims: Value =
        serde_json::from_slice(&base64_decode_url(token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["appid"], OPERATOR_APP);
    assert_eq!(
        claims["appidacr"], "2",
        "authenticated by a federated assertion"
    );
    assert_eq!(claims["roles"], json!(["Application.ReadWrite.OwnedBy"]));

    let other_sa = sa_token(&client, &ns.name, "someone-else", AUDIENCE).await;
    let (status, body) = exchange(other_sa).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700213)),
        "another subject: {body}"
    );

    let wrong_audience = sa_token(
        &client,
        &ns.name,
        "entra-operator",
        "https://kubernetes.default.svc",
    )
    .await;
    let (_, body) = exchange(wrong_audience).await;
    assert_eq!(body["error_codes"][0], 700213, "another audience: {body}");

    // Same claims, forged signature: the keys from the API server's JWKS reject it.
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_sig = "A".repeat(parts[2].len());
    parts[2] = &forged_sig;
    let (status, body) = exchange(parts.join(".")).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50013)),
        "{body}"
    );

    emulator.shutdown().await.unwrap();
    ns.cleanup().await;
}

fn base64_decode_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
