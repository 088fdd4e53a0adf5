//! The emulator's behaviour as a client of the real services relies on it: permissions, idempotent
//! upserts, secrets that authenticate, replication delay, throttling, faults, delta, batching, ARM
//! authorization and errors, AKS's long-running reset, and persistence across a restart.

use std::time::Duration;

use azure_emulator::{Options, Running, config::Config, start};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const OPERATOR_APP: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const OPERATOR_SP: &str = "0e0e0e0e-0000-4000-8000-00000000b0b0";
const OPERATOR_SECRET: &str = "operator-test-secret-0123456789";
const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
const CLUSTER: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/prod";

struct Emu {
    running: Running,
    http: Client,
    tenant: String,
    _dir: Option<tempfile::TempDir>,
}

fn config() -> Config {
    let mut config = Config::default_seed();
    config.seed.applications[0].client_secrets = vec![OPERATOR_SECRET.into()];
    // A second application the operator does not own, and an identity with no permissions at all.
    config.seed.applications.push(serde_json::from_value(json!({
        "displayName": "someone-elses-app", "appId": "2b2b2b2b-0000-4000-8000-000000002b2b",
        "objectId": "2b2b2b2b-0000-4000-8000-00000000a2b2", "servicePrincipalId": "2b2b2b2b-0000-4000-8000-00000000b2b2",
        "clientSecrets": ["unprivileged-secret-0123456789"],
    })).unwrap());
    config
}

async fn emulator_with(config: Config, dir: &std::path::Path, persist: bool) -> Running {
    start(Options {
        config,
        state_dir: dir.to_path_buf(),
        persist,
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec![],
    })
    .await
    .unwrap()
}

impl Emu {
    async fn new() -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let running = emulator_with(config(), dir.path(), false).await;
        Emu::connect(running, Some(dir))
    }

    fn connect(running: Running, dir: Option<tempfile::TempDir>) -> Emu {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&running.ca_file).unwrap()).unwrap();
        let http = Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let tenant = Config::default_seed().seed.tenant_id;
        Emu {
            running,
            http,
            tenant,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url)
    }

    async fn token_response(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/{}/oauth2/v2.0/token", self.tenant)))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn token(&self, client_id: &str, secret: &str, scope: &str) -> String {
        let (status, body) = self.token_response(client_id, secret, scope).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn graph_token(&self) -> String {
        self.token(
            OPERATOR_APP,
            OPERATOR_SECRET,
            "https://graph.microsoft.com/.default",
        )
        .await
    }

    async fn arm_token(&self) -> String {
        self.token(
            OPERATOR_APP,
            OPERATOR_SECRET,
            "https://management.azure.com/.default",
        )
        .await
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Creates an application with its service principal; returns (object id, appId, SP id).
    async fn app_with_sp(&self, token: &str, unique: &str) -> (String, String, String) {
        let (s, _, app) = self
            .call(
                token,
                Method::PATCH,
                &format!("/v1.0/applications(uniqueName='{unique}')"),
                Some(json!({"displayName": unique})),
                &[("Prefer", "create-if-missing")],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{app}");
        let app_id = app["appId"].as_str().unwrap().to_string();
        let (s, _, sp) = self
            .call(
                token,
                Method::PATCH,
                &format!("/v1.0/servicePrincipals(appId='{app_id}')"),
                Some(json!({})),
                &[("Prefer", "create-if-missing")],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{sp}");
        (
            app["id"].as_str().unwrap().into(),
            app_id,
            sp["id"].as_str().unwrap().into(),
        )
    }

    async fn add_password(&self, token: &str, app_id: &str, body: Value) -> Value {
        let (s, _, pw) = self
            .call(
                token,
                Method::POST,
                &format!("/v1.0/applications(appId='{app_id}')/addPassword"),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{pw}");
        pw
    }
}

#[tokio::test]
async fn upsert_is_idempotent_and_the_creator_owns_what_it_creates() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    let path = "/v1.0/applications(uniqueName='cluster-x-ns-name')";
    let (s1, _, created) = emu
        .call(
            &t,
            Method::PATCH,
            path,
            Some(json!({"displayName": "a"})),
            &[("Prefer", "create-if-missing")],
        )
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(created["uniqueName"], "cluster-x-ns-name");
    let (s2, _, body) = emu
        .call(
            &t,
            Method::PATCH,
            path,
            Some(json!({"displayName": "b"})),
            &[("Prefer", "create-if-missing")],
        )
        .await;
    assert_eq!(s2, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null, "204 has no body");
    let (s3, _, _) = emu
        .call(
            &t,
            Method::PATCH,
            "/v1.0/applications(uniqueName='missing')",
            Some(json!({"displayName": "c"})),
            &[],
        )
        .await;
    assert_eq!(
        s3,
        StatusCode::NOT_FOUND,
        "without Prefer a missing app is not created"
    );

    let (_, _, owners) = emu
        .call(
            &t,
            Method::GET,
            &format!(
                "/v1.0/applications/{}/owners",
                created["id"].as_str().unwrap()
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(owners["value"][0]["id"], OPERATOR_SP);
    let (_, _, got) = emu.call(&t, Method::GET, path, None, &[]).await;
    assert_eq!(got["displayName"], "b");
    let world = emu
        .admin(Method::GET, "/_emulator/state", json!(null))
        .await;
    assert_eq!(
        world["directory"]["applications"]
            .as_object()
            .unwrap()
            .values()
            .filter(|a| a["uniqueName"] == "cluster-x-ns-name")
            .count(),
        1
    );
}

#[tokio::test]
async fn owned_by_reaches_only_owned_applications() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    let foreign = "/v1.0/applications(appId='2b2b2b2b-0000-4000-8000-000000002b2b')";
    let (s, _, e) = emu
        .call(
            &t,
            Method::PATCH,
            foreign,
            Some(json!({"notes": "mine now"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(e["error"]["code"], "Authorization_RequestDenied");
    let (s, _, _) = emu
        .call(
            &t,
            Method::POST,
            &format!("{foreign}/addPassword"),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, _, list) = emu
        .call(&t, Method::GET, "/v1.0/applications", None, &[])
        .await;
    let ids: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["appId"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&"2b2b2b2b-0000-4000-8000-000000002b2b"),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"5a5a5a5a-0000-4000-8000-000000005a5a"),
        "the seeded app it owns is listed: {ids:?}"
    );

    // An identity without Graph permissions can sign in but not read the directory.
    let weak = emu
        .token(
            "2b2b2b2b-0000-4000-8000-000000002b2b",
            "unprivileged-secret-0123456789",
            "https://graph.microsoft.com/.default",
        )
        .await;
    let (s, _, _) = emu
        .call(&weak, Method::GET, "/v1.0/applications", None, &[])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // And a token for ARM is no token for Graph.
    let arm = emu.arm_token().await;
    let (s, _, e) = emu
        .call(&arm, Method::GET, "/v1.0/applications", None, &[])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(e["error"]["code"], "InvalidAuthenticationToken");
}

#[tokio::test]
async fn passwords_authenticate_until_removed_or_expired_and_are_shown_once() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    let (_, app_id, _) = emu.app_with_sp(&t, "pw").await;
    let pw = emu
        .add_password(
            &t,
            &app_id,
            json!({"passwordCredential": {"displayName": "entra-operator/ns/name/1"}}),
        )
        .await;
    let secret = pw["secretText"].as_str().unwrap();
    assert_eq!(pw["hint"].as_str().unwrap(), &secret[..3]);
    let start: jiff::Timestamp = pw["startDateTime"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = pw["endDateTime"].as_str().unwrap().parse().unwrap();
    assert!(
        end.duration_since(start).as_hours() >= 2 * 365 * 24,
        "default end is two years after start"
    );
    emu.token(&app_id, secret, "https://management.azure.com/.default")
        .await;

    let (_, _, app) = emu
        .call(
            &t,
            Method::GET,
            &format!("/v1.0/applications(appId='{app_id}')"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        app["passwordCredentials"][0]["secretText"],
        Value::Null,
        "the text is only in addPassword's response"
    );
    assert!(
        !emu.admin(Method::GET, "/_emulator/state", json!(null))
            .await
            .to_string()
            .contains(secret),
        "state dump redacts"
    );

    let (s, _, _) = emu
        .call(
            &t,
            Method::POST,
            &format!("/v1.0/applications(appId='{app_id}')/removePassword"),
            Some(json!({"keyId": pw["keyId"]})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = emu
        .token_response(&app_id, secret, "https://management.azure.com/.default")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"][0], 7000215);

    let now = jiff::Timestamp::now();
    let short = emu
        .add_password(&t, &app_id, json!({"passwordCredential": {"startDateTime": (now - jiff::SignedDuration::from_hours(1)).to_string(), "endDateTime": (now + jiff::SignedDuration::from_millis(300)).to_string()}}))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, body) = emu
        .token_response(
            &app_id,
            short["secretText"].as_str().unwrap(),
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_codes"][0], 7000222, "{body}");
    let (s, body) = emu
        .token_response(
            &app_id,
            short["secretText"].as_str().unwrap(),
            "https://management.azure.com",
        )
        .await;
    assert_eq!(
        (s, body["error_codes"][0].clone()),
        (StatusCode::BAD_REQUEST, json!(1002012))
    );
    let (_, body) = emu
        .token_response(
            "99999999-0000-4000-8000-000000000000",
            "x",
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!(body["error_codes"][0], 700016);
}

#[tokio::test]
async fn replication_delay_hides_new_objects_for_a_while() {
    let emu = Emu::new().await;
    emu.admin(Method::PATCH, "/_emulator/knobs", json!({"replication": {"graphNotFoundMs": 400, "principalNotFoundMs": 400, "principalNotFoundWithTypeMs": 0}})).await;
    let t = emu.graph_token().await;
    let (s, _, app) = emu
        .call(
            &t,
            Method::POST,
            "/v1.0/applications",
            Some(json!({"displayName": "fresh"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let path = format!("/v1.0/applications/{}", app["id"].as_str().unwrap());
    let (s, _, e) = emu.call(&t, Method::GET, &path, None, &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("Request_ResourceNotFound"))
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (s, _, _) = emu.call(&t, Method::GET, &path, None, &[]).await;
    assert_eq!(s, StatusCode::OK);

    let (_, _, sp) = emu
        .call(
            &t,
            Method::POST,
            "/v1.0/servicePrincipals",
            Some(json!({"appId": app["appId"]})),
            &[],
        )
        .await;
    let arm = emu.arm_token().await;
    let assign = |typed: bool| {
        let mut props = json!({"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"), "principalId": sp["id"]});
        if typed {
            props["principalType"] = json!("ServicePrincipal");
        }
        json!({"properties": props})
    };
    let ra = format!(
        "{SUB}/resourceGroups/rg-shared/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    );
    let (s, _, e) = emu
        .call(&arm, Method::PUT, &ra, Some(assign(false)), &[])
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("PrincipalNotFound")),
        "{e}"
    );
    let (s, _, _) = emu
        .call(&arm, Method::PUT, &ra, Some(assign(true)), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED, "principalType rides out the delay");
}

#[tokio::test]
async fn throttling_answers_429_with_the_documented_headers() {
    let emu = Emu::new().await;
    emu.admin(
        Method::PATCH,
        "/_emulator/knobs",
        json!({"throttling": {"enabled": true, "scale": 0.002}}),
    )
    .await;
    let t = emu.graph_token().await;
    // 3000 writes per 150 s scaled by 0.002: 6 writes, then 429.
    let mut statuses = vec![];
    let mut throttled = None;
    for i in 0..10 {
        let (s, h, body) = emu
            .call(
                &t,
                Method::POST,
                "/v1.0/applications",
                Some(json!({"displayName": format!("t{i}")})),
                &[],
            )
            .await;
        statuses.push(s.as_u16());
        if s == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some((h, body));
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        6,
        "{statuses:?}"
    );
    let (h, body) = throttled.expect("throttled");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["x-ms-throttle-information"], "WriteLimitExceeded");
    assert_eq!(
        h["x-ms-throttle-scope"].to_str().unwrap(),
        format!("Tenant_Application/Write/{OPERATOR_APP}/{}", emu.tenant)
    );
    assert_eq!(body["error"]["code"], "TooManyRequests");
    let calls = emu
        .admin(Method::GET, "/_emulator/calls", json!(null))
        .await;
    assert_eq!(calls["graph POST /applications"]["429"], 4);
}

#[tokio::test]
async fn injected_faults_follow_their_rules() {
    let emu = Emu::new().await;
    emu.admin(Method::PATCH, "/_emulator/knobs", json!({"faults": [{"method": "POST", "pathContains": "/addPassword", "rate": 1.0, "status": 503}]})).await;
    let t = emu.graph_token().await;
    let (_, app_id, _) = emu.app_with_sp(&t, "faulty").await;
    let (s, _, e) = emu
        .call(
            &t,
            Method::POST,
            &format!("/v1.0/applications(appId='{app_id}')/addPassword"),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("serviceNotAvailable"))
    );
    let (_, _, app) = emu
        .call(
            &t,
            Method::GET,
            &format!("/v1.0/applications(appId='{app_id}')"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        app["passwordCredentials"],
        json!([]),
        "a failed request changed nothing"
    );
    emu.admin(
        Method::PATCH,
        "/_emulator/knobs",
        json!({"faults": [{"pathContains": "/addPassword", "rate": 1.0, "latencyMs": 200}]}),
    )
    .await;
    let started = std::time::Instant::now();
    emu.add_password(&t, &app_id, json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn delta_reports_changes_and_removals_since_the_last_round() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    async fn round(emu: &Emu, t: &str, mut url: String) -> (Vec<Value>, String) {
        let mut items = vec![];
        loop {
            let path = url.trim_start_matches(&emu.running.base_url).to_string();
            let (s, _, page) = emu.call(t, Method::GET, &path, None, &[]).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            items.extend(page["value"].as_array().unwrap().iter().cloned());
            match (
                page["@odata.nextLink"].as_str(),
                page["@odata.deltaLink"].as_str(),
            ) {
                (Some(next), None) => url = next.to_string(),
                (None, Some(delta)) => return (items, delta.to_string()),
                other => panic!("a page has exactly one of nextLink and deltaLink: {other:?}"),
            }
        }
    }
    for i in 0..250 {
        emu.call(
            &t,
            Method::POST,
            "/v1.0/applications",
            Some(json!({"displayName": format!("d{i}")})),
            &[],
        )
        .await;
    }
    let (first, delta) = round(
        &emu,
        &t,
        emu.url("/v1.0/applications/delta?$select=displayName"),
    )
    .await;
    assert_eq!(
        first.len(),
        251,
        "everything the operator owns, over two pages"
    );
    assert!(
        first.iter().all(|a| a.get("appId").is_none()),
        "$select applies"
    );

    let (created_id, created_app_id, _) = emu.app_with_sp(&t, "new-one").await;
    let victim = first[0]["id"].as_str().unwrap().to_string();
    emu.call(
        &t,
        Method::DELETE,
        &format!("/v1.0/applications/{victim}"),
        None,
        &[],
    )
    .await;
    let (second, delta2) = round(&emu, &t, delta).await;
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(
        second
            .iter()
            .any(|a| a["id"] == created_id.as_str() && a["displayName"] == "new-one")
    );
    assert!(
        second
            .iter()
            .any(|a| a["id"] == victim.as_str() && a["@removed"]["reason"] == "changed")
    );

    emu.call(
        &t,
        Method::DELETE,
        &format!("/v1.0/directory/deletedItems/{victim}"),
        None,
        &[],
    )
    .await;
    let (third, _) = round(&emu, &t, delta2).await;
    assert_eq!(
        third,
        vec![json!({"id": victim, "@removed": {"reason": "deleted"}})]
    );
    assert!(!created_app_id.is_empty());
}

#[tokio::test]
async fn batch_runs_dependencies_in_order_and_fails_dependents() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    let body = json!({"requests": [
        {"id": "1", "method": "POST", "url": "/applications", "headers": {"Content-Type": "application/json"}, "body": {"displayName": "b1"}},
        {"id": "2", "method": "GET", "url": "/applications/00000000-0000-4000-8000-000000000000"},
        {"id": "3", "method": "GET", "url": "/applications?$top=1", "dependsOn": ["1"]},
        {"id": "4", "method": "GET", "url": "/applications?$top=1", "dependsOn": ["2"]},
    ]});
    let (s, _, out) = emu
        .call(&t, Method::POST, "/v1.0/$batch", Some(body), &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    let status = |id: &str| {
        out["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()["status"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (status("1"), status("2"), status("3"), status("4")),
        (201, 404, 200, 424)
    );

    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/applications"}))
        .collect();
    let (s, _, _) = emu
        .call(
            &t,
            Method::POST,
            "/v1.0/$batch",
            Some(json!({"requests": too_many})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let dup = json!({"requests": [{"id": "a", "method": "GET", "url": "/applications"}, {"id": "A", "method": "GET", "url": "/applications"}]});
    let (s, _, _) = emu
        .call(&t, Method::POST, "/v1.0/$batch", Some(dup), &[])
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "ids are unique case-insensitively"
    );
}

#[tokio::test]
async fn arm_authorizes_by_role_assignment_and_reports_like_arm() {
    let emu = Emu::new().await;
    let g = emu.graph_token().await;
    let arm = emu.arm_token().await;
    let (_, app_id, sp) = emu.app_with_sp(&g, "grantee").await;
    let scope = format!(
        "{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr"
    );
    let body = json!({"properties": {"roleDefinitionId": format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"), "principalId": sp, "principalType": "ServicePrincipal"}});
    let name = uuid::Uuid::new_v4();
    let path = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"
    );
    let (s, h, created) = emu
        .call(&arm, Method::PUT, &path, Some(body.clone()), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert!(h.contains_key("x-ms-request-id") && h.contains_key("x-ms-correlation-request-id"));
    assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-writes"));
    assert_eq!(
        created["properties"]["roleDefinitionId"],
        format!("/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"),
        "echoed in the tenant-level form, as the spec examples show"
    );
    assert_eq!(created["properties"]["scope"], scope.as_str());
    let (s, _, _) = emu
        .call(&arm, Method::PUT, &path, Some(body.clone()), &[])
        .await;
    assert_eq!(s, StatusCode::OK, "the same PUT again is idempotent");

    let other = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    );
    let (s, _, e) = emu
        .call(&arm, Method::PUT, &other, Some(body.clone()), &[])
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("RoleAssignmentExists"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&name.simple().to_string()),
        "names the existing assignment: {e}"
    );

    let bad_name = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/not-a-guid?api-version=2022-04-01"
    );
    let (_, _, e) = emu
        .call(&arm, Method::PUT, &bad_name, Some(body.clone()), &[])
        .await;
    assert_eq!(e["error"]["code"], "InvalidRoleAssignmentId");
    let mut user = body.clone();
    user["properties"]["principalType"] = json!("User");
    let (_, _, e) = emu.call(&arm, Method::PUT, &other, Some(user), &[]).await;
    assert_eq!(e["error"]["code"], "UnmatchedPrincipalType");
    let missing_rg = format!(
        "{SUB}/resourceGroups/nope/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    );
    let (s, _, e) = emu
        .call(&arm, Method::PUT, &missing_rg, Some(body.clone()), &[])
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceGroupNotFound"))
    );
    let (s, _, e) = emu
        .call(
            &arm,
            Method::PUT,
            &path.replace("2022-04-01", "1999-01-01"),
            Some(body.clone()),
            &[],
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidApiVersionParameter"))
    );

    // The grantee itself holds only AcrPull: it may not assign roles.
    let secret = emu.add_password(&g, &app_id, json!({})).await["secretText"]
        .as_str()
        .unwrap()
        .to_string();
    let weak = emu
        .token(&app_id, &secret, "https://management.azure.com/.default")
        .await;
    let (s, _, e) = emu
        .call(&weak, Method::PUT, &other, Some(body.clone()), &[])
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("AuthorizationFailed"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.Authorization/roleAssignments/write")
    );

    let list = format!(
        "{SUB}/resourceGroups/rg-shared/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId%20eq%20'{sp}'"
    );
    let (_, _, listed) = emu.call(&arm, Method::GET, &list, None, &[]).await;
    assert_eq!(
        listed["value"].as_array().unwrap().len(),
        1,
        "below the scope, by principal"
    );
    let at = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=atScope()"
    );
    let (_, _, listed) = emu.call(&arm, Method::GET, &at, None, &[]).await;
    assert!(
        listed["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["properties"]["principalId"] == OPERATOR_SP),
        "inherited from the subscription"
    );

    let (s, _, _) = emu.call(&arm, Method::DELETE, &path, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = emu.call(&arm, Method::DELETE, &path, None, &[]).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "already gone");
}

#[tokio::test]
async fn custom_roles_have_unique_names_and_cannot_go_while_assigned() {
    let emu = Emu::new().await;
    let arm = emu.arm_token().await;
    let g = emu.graph_token().await;
    let (_, _, sp) = emu.app_with_sp(&g, "disk-user").await;
    let role = uuid::Uuid::new_v4();
    let rg = format!("{SUB}/resourceGroups/rg-disks");
    let def = json!({"properties": {"roleName": "disk access", "type": "CustomRole", "assignableScopes": [rg],
        "permissions": [{"actions": ["Microsoft.Compute/disks/read", "Microsoft.Compute/disks/write"]}]}});
    let path = format!(
        "{rg}/providers/Microsoft.Authorization/roleDefinitions/{role}?api-version=2022-04-01"
    );
    let (s, _, _) = emu
        .call(&arm, Method::PUT, &path, Some(def.clone()), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let other = format!(
        "{rg}/providers/Microsoft.Authorization/roleDefinitions/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    );
    let (s, _, e) = emu.call(&arm, Method::PUT, &other, Some(def), &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("RoleDefinitionWithSameNameExists")
        )
    );
    let (_, _, found) = emu.call(&arm, Method::GET, &format!("{rg}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01&$filter=roleName%20eq%20'disk%20access'"), None, &[]).await;
    assert_eq!(found["value"][0]["name"], role.to_string());

    let ra = format!(
        "{rg}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    );
    let body = json!({"properties": {"roleDefinitionId": format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{role}"), "principalId": sp, "principalType": "ServicePrincipal"}});
    let (s, _, e) = emu.call(&arm, Method::PUT, &ra, Some(body), &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (s, _, e) = emu.call(&arm, Method::DELETE, &path, None, &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("RoleDefinitionHasAssignments"))
    );
    emu.call(&arm, Method::DELETE, &ra, None, &[]).await;
    let (s, _, _) = emu.call(&arm, Method::DELETE, &path, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn aks_reset_is_a_long_running_operation_that_changes_the_clusters_secret() {
    let emu = Emu::new().await;
    emu.admin(
        Method::PATCH,
        "/_emulator/knobs",
        json!({"aks": {"resetDurationMs": 300}}),
    )
    .await;
    let g = emu.graph_token().await;
    let arm = emu.arm_token().await;
    let (_, app_id, _) = emu.app_with_sp(&g, "aks-sp").await;
    let secret = emu.add_password(&g, &app_id, json!({})).await["secretText"]
        .as_str()
        .unwrap()
        .to_string();

    let reset = format!("{CLUSTER}/resetServicePrincipalProfile?api-version=2025-01-01");
    let (s, h, _) = emu
        .call(
            &arm,
            Method::POST,
            &reset,
            Some(json!({"clientId": app_id, "secret": "x".repeat(191)})),
            &[],
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "secrets over 190 bytes are refused"
    );
    assert!(!h.contains_key("location"));
    let (s, h, _) = emu
        .call(
            &arm,
            Method::POST,
            &reset,
            Some(json!({"clientId": app_id, "secret": secret})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let status_url = h["azure-asyncoperation"].to_str().unwrap().to_string();
    let result_url = h["location"].to_str().unwrap().to_string();
    let check = json!({"clusterId": CLUSTER, "secret": secret});
    assert_eq!(
        emu.admin(Method::POST, "/_emulator/aks/check", check.clone())
            .await["secretMatches"],
        false,
        "not before the operation ends"
    );
    let (s, _, op) = emu
        .call(
            &arm,
            Method::GET,
            status_url.trim_start_matches(&emu.running.base_url),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (s, op["status"].as_str()),
        (StatusCode::OK, Some("InProgress"))
    );
    let (s, _, _) = emu
        .call(
            &arm,
            Method::GET,
            result_url.trim_start_matches(&emu.running.base_url),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, _, op) = emu
        .call(
            &arm,
            Method::GET,
            status_url.trim_start_matches(&emu.running.base_url),
            None,
            &[],
        )
        .await;
    assert_eq!(op["status"], "Succeeded");
    let (s, _, _) = emu
        .call(
            &arm,
            Method::GET,
            result_url.trim_start_matches(&emu.running.base_url),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = emu.admin(Method::POST, "/_emulator/aks/check", check).await;
    assert_eq!(
        (after["secretMatches"].as_bool(), after["clientId"].as_str()),
        (Some(true), Some(app_id.as_str()))
    );
    let (_, _, cluster) = emu
        .call(
            &arm,
            Method::GET,
            &format!("{CLUSTER}?api-version=2025-01-01"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        cluster["properties"]["servicePrincipalProfile"],
        json!({"clientId": app_id}),
        "the secret is never returned"
    );

    emu.admin(
        Method::PATCH,
        "/_emulator/knobs",
        json!({"aks": {"resetDurationMs": 50, "resetFailureRate": 1.0}}),
    )
    .await;
    let (_, h, _) = emu
        .call(
            &arm,
            Method::POST,
            &reset,
            Some(json!({"clientId": app_id, "secret": "another-secret"})),
            &[],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, _, op) = emu
        .call(
            &arm,
            Method::GET,
            h["azure-asyncoperation"]
                .to_str()
                .unwrap()
                .trim_start_matches(&emu.running.base_url),
            None,
            &[],
        )
        .await;
    assert_eq!(op["status"], "Failed");
    let still = emu
        .admin(
            Method::POST,
            "/_emulator/aks/check",
            json!({"clusterId": CLUSTER, "secret": secret}),
        )
        .await;
    assert_eq!(
        still["secretMatches"], true,
        "a failed reset leaves the old secret in place"
    );
}

#[tokio::test]
async fn state_survives_a_restart_with_persist() {
    let dir = tempfile::tempdir().unwrap();
    let first = Emu::connect(emulator_with(config(), dir.path(), true).await, None);
    let t = first.graph_token().await;
    let (_, app_id, _) = first.app_with_sp(&t, "durable").await;
    let secret = first.add_password(&t, &app_id, json!({})).await["secretText"]
        .as_str()
        .unwrap()
        .to_string();
    let ca_before = std::fs::read(&first.running.ca_file).unwrap();
    first.running.shutdown().await.unwrap();

    let second = Emu::connect(emulator_with(config(), dir.path(), true).await, None);
    assert_eq!(
        std::fs::read(&second.running.ca_file).unwrap(),
        ca_before,
        "the CA is kept"
    );
    second
        .token(&app_id, &secret, "https://management.azure.com/.default")
        .await;
    let t = second.graph_token().await;
    let (s, _, app) = second
        .call(
            &t,
            Method::GET,
            "/v1.0/applications(uniqueName='durable')",
            None,
            &[],
        )
        .await;
    assert_eq!(
        (s, app["appId"].as_str()),
        (StatusCode::OK, Some(app_id.as_str()))
    );
}

#[tokio::test]
async fn federated_credentials_upsert_by_name_and_enforce_their_limits() {
    let emu = Emu::new().await;
    let t = emu.graph_token().await;
    let (id, _, _) = emu.app_with_sp(&t, "wi-app").await;
    let base = format!("/v1.0/applications/{id}/federatedIdentityCredentials");
    let fic = |subject: &str| json!({"issuer": "https://oidc.example/abc/", "subject": subject, "audiences": ["api://AzureADTokenExchange"]});
    let by_name = format!("{base}(name='ci')");
    let (s, _, created) = emu
        .call(
            &t,
            Method::PATCH,
            &by_name,
            Some(fic("system:serviceaccount:a:b")),
            &[("Prefer", "create-if-missing")],
        )
        .await;
    assert_eq!(
        (s, created["name"].as_str()),
        (StatusCode::CREATED, Some("ci"))
    );
    let (s, _, _) = emu
        .call(
            &t,
            Method::PATCH,
            &by_name,
            Some(fic("system:serviceaccount:a:c")),
            &[("Prefer", "create-if-missing")],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "exists: updated in place");
    let (s, _, got) = emu.call(&t, Method::GET, &by_name, None, &[]).await;
    assert_eq!(
        (s, got["subject"].as_str()),
        (StatusCode::OK, Some("system:serviceaccount:a:c"))
    );

    let mut dup = fic("other");
    dup["name"] = json!("ci");
    let (s, _, e) = emu.call(&t, Method::POST, &base, Some(dup), &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("Request_MultipleObjectsWithSameKeyValue")
        )
    );
    let mut same_pair = fic("system:serviceaccount:a:c");
    same_pair["name"] = json!("ci2");
    let (s, _, e) = emu
        .call(&t, Method::POST, &base, Some(same_pair), &[])
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("InvalidFederatedIdentityCredentialValue")
        )
    );
    let mut two_audiences = fic("x");
    two_audiences["name"] = json!("x");
    two_audiences["audiences"] = json!(["a", "b"]);
    let (s, _, _) = emu
        .call(&t, Method::POST, &base, Some(two_audiences), &[])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "exactly one audience");

    for i in 0..19 {
        let mut f = fic(&format!("s{i}"));
        f["name"] = json!(format!("n{i}"));
        let (s, _, e) = emu.call(&t, Method::POST, &base, Some(f), &[]).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
    }
    let mut f = fic("s20");
    f["name"] = json!("n20");
    let (s, _, _) = emu.call(&t, Method::POST, &base, Some(f), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "at most 20 per application");
    let (_, _, list) = emu.call(&t, Method::GET, &base, None, &[]).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 20);

    let (s, _, _) = emu.call(&t, Method::DELETE, &by_name, None, &[]).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = emu.call(&t, Method::GET, &by_name, None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// What the Azure CLI needs beyond the operator's APIs: the cloud's metadata, subscriptions and tenants,
/// resource groups, AKS lists, getByIds, and Graph tokens for the emulator's own URL (which ARM refuses).
#[tokio::test]
async fn the_azure_cli_surface() {
    let emu = Emu::new().await;
    let base = emu.running.base_url.clone();
    let arm = emu.arm_token().await;
    let graph = emu.graph_token().await;
    let own_graph = emu
        .token(OPERATOR_APP, OPERATOR_SECRET, &format!("{base}//.default"))
        .await;
    let nobody = emu
        .token(
            "2b2b2b2b-0000-4000-8000-000000002b2b",
            "unprivileged-secret-0123456789",
            "https://management.azure.com/.default",
        )
        .await;

    let metadata = emu
        .http
        .get(emu.url("//metadata/endpoints?api-version=2022-09-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metadata.status(),
        StatusCode::OK,
        "unauthenticated, and az's `//` is fine"
    );
    let metadata: Value = metadata.json().await.unwrap();
    let root = format!("{base}/");
    assert_eq!(metadata["authentication"]["loginEndpoint"], root.as_str());
    assert_eq!(metadata["resourceManager"], root.as_str());
    assert_eq!(metadata["microsoftGraphResourceId"], root.as_str());
    assert_eq!(
        metadata["authentication"]["audiences"][0],
        "https://management.core.windows.net/"
    );

    let sub_id = SUB.trim_start_matches("/subscriptions/");
    let groups = format!("{SUB}/resourcegroups");
    // (case, token, path, status, what the body holds: a JSON pointer and its value)
    let cases: Vec<(&str, &str, String, StatusCode, &str, Value)> = vec![
        ("the operator sees its subscription", &arm, "/subscriptions?api-version=2022-12-01".into(), StatusCode::OK, "/value/0/subscriptionId", json!(sub_id)),
        ("and reads it", &arm, format!("{SUB}?api-version=2022-12-01"), StatusCode::OK, "/state", json!("Enabled")),
        ("a principal without roles sees none", &nobody, "/subscriptions?api-version=2022-12-01".into(), StatusCode::OK, "/value", json!([])),
        ("nor reads it", &nobody, format!("{SUB}?api-version=2022-12-01"), StatusCode::NOT_FOUND, "/error/code", json!("SubscriptionNotFound")),
        ("an api-version Microsoft.Resources lacks", &arm, "/subscriptions?api-version=2022-04-01".into(), StatusCode::BAD_REQUEST, "/error/code", json!("InvalidApiVersionParameter")),
        ("tenants", &arm, "/tenants?api-version=2022-12-01".into(), StatusCode::OK, "/value/0/tenantId", json!(emu.tenant)),
        ("resource groups", &arm, format!("{groups}?api-version=2024-11-01"), StatusCode::OK, "/value/1/name", json!("rg-aks")),
        ("one group", &arm, format!("{groups}/rg-aks?api-version=2024-11-01"), StatusCode::OK, "/location", json!("westeurope")),
        ("a missing group", &arm, format!("{groups}/rg-nope?api-version=2024-11-01"), StatusCode::NOT_FOUND, "/error/code", json!("ResourceGroupNotFound")),
        ("a group without rights", &nobody, format!("{groups}/rg-aks?api-version=2024-11-01"), StatusCode::FORBIDDEN, "/error/code", json!("AuthorizationFailed")),
        ("groups without rights are not listed", &nobody, format!("{groups}?api-version=2024-11-01"), StatusCode::OK, "/value", json!([])),
        ("AKS clusters in a subscription", &arm, format!("{SUB}/providers/Microsoft.ContainerService/managedClusters?api-version=2025-01-01"), StatusCode::OK, "/value/0/id", json!(CLUSTER)),
        ("a Graph token for the emulator's URL reaches Graph", &own_graph, "/v1.0/servicePrincipals?$filter=servicePrincipalNames/any(c:c%20eq%20'5a5a5a5a-0000-4000-8000-000000005a5a')".into(), StatusCode::OK, "/value/0/id", json!("5a5a5a5a-0000-4000-8000-00000000b5b5")),
        ("but not ARM", &own_graph, "/subscriptions?api-version=2022-12-01".into(), StatusCode::UNAUTHORIZED, "/error/code", json!("InvalidAuthenticationTokenAudience")),
        ("getByIds needs Directory.Read.All", &graph, "/v1.0/directoryObjects/getByIds".into(), StatusCode::FORBIDDEN, "/error/code", json!("Authorization_RequestDenied")),
    ];
    for (case, token, path, status, pointer, want) in cases {
        let method = if path.ends_with("getByIds") {
            Method::POST
        } else {
            Method::GET
        };
        let body = (method == Method::POST).then(|| json!({"ids": [OPERATOR_SP]}));
        let (got, _, body) = emu.call(token, method, &path, body, &[]).await;
        assert_eq!(got, status, "{case}: {body}");
        assert_eq!(body.pointer(pointer), Some(&want), "{case}: {body}");
    }
}
