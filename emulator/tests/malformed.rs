//! Robustness: thousands of malformed requests, generated deterministically from a seed, thrown at the token
//! endpoint, Microsoft Graph and ARM. Every one must be answered (no hang, no dropped connection) with a 4xx
//! in the error shape of its API family:
//!
//! - Graph: `{"error":{"code":string,"message":string,"innerError":{"request-id":string,...}}}`
//! - ARM:   `{"error":{"code":string,"message":string}}`
//! - token: `{"error":string,"error_description":"AADSTS...","error_codes":[int,...]}`
//!
//! `MALFORMED_SEED` and `MALFORMED_CASES` override the seed (default 20240601) and the number of generated
//! requests (default 3000). A failing request is printed with the seed and its index, so it can be
//! replayed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use azure_emulator::{Options, config::Config, start};
use reqwest::{
    Client, Method,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde_json::{Value, json};

const OPERATOR_APP_ID: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const OPERATOR_SP_ID: &str = "0e0e0e0e-0000-4000-8000-00000000b0b0";
const OPERATOR_SECRET: &str = "malformed-test-secret~0123456789";
/// The application the operator owns in the default seed (aks-prod-legacy-sp).
const OWNED_APP_OBJECT_ID: &str = "5a5a5a5a-0000-4000-8000-00000000a5a5";
const OWNED_APP_ID: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";
const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const RG_SHARED: &str =
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared";
const CLUSTER: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/prod";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const AUTHZ_VERSION: &str = "api-version=2022-04-01";
const AKS_VERSION: &str = "api-version=2024-09-01";
/// The request body limit set for the run (the maxBodyBytes knob).
const MAX_BODY: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------
// A small deterministic generator (SplitMix64), so that a seed always produces the same requests.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }
    fn junk_in(&mut self, lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.junk(n)
    }
    fn guid(&mut self) -> String {
        let b = self.bytes(16);
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
    /// Something that is not a GUID (but may look close to one).
    fn bad_guid(&mut self) -> String {
        let g = self.guid();
        match self.below(10) {
            0 => g[..35].to_string(),
            1 => format!("{g}0"),
            2 => g.replace('-', "_"),
            3 => format!("{{{g}"),
            4 => g.replacen(&g[0..1], "z", 1),
            5 => "not-a-guid".into(),
            6 => "00000000-0000-0000-0000-00000000000g".into(),
            7 => format!("{}%20", &g[..20]),
            8 => "%C3%A9%C3%A9%C3%A9".into(),
            _ => format!("{}..", &g[..10]),
        }
    }
    /// Printable garbage, sometimes with non-ASCII characters.
    fn junk(&mut self, n: usize) -> String {
        const CHARS: &[&str] = &[
            "a", "Z", "0", "'", "\"", "(", ")", "{", "}", "[", "]", ",", ":", " ", "=", "/", "\\",
            "$", "%", "&", "?", "#", "é", "😀", "\u{0}", "\n", "ü", "eq", " and ", " or ",
        ];
        (0..n).map(|_| self.pick(CHARS)).collect()
    }
}

fn pct(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Token,
    Graph,
    Arm,
    /// Outside the three APIs (unknown root routes): either the Graph or the token shape is accepted.
    Other,
}

#[derive(Clone, Debug)]
struct Case {
    family: Family,
    label: &'static str,
    method: Method,
    /// Path and query, percent-encoded as sent.
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Case {
    fn new(family: Family, label: &'static str, method: Method, path: impl Into<String>) -> Case {
        Case {
            family,
            label,
            method,
            path: path.into(),
            headers: vec![],
            body: vec![],
        }
    }
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Case {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
    fn bearer(self, token: &str) -> Case {
        self.header("authorization", format!("Bearer {token}"))
    }
    fn json_ct(self) -> Case {
        self.header("content-type", "application/json")
    }
    fn body(mut self, body: impl AsRef<[u8]>) -> Case {
        self.body = body.as_ref().to_vec();
        self
    }
}

struct Tokens {
    tenant: String,
    graph: String,
    arm: String,
    graph_expired: String,
    arm_expired: String,
    /// An in-progress AKS reset operation (for the operation-status routes).
    operation_id: String,
}

/// Malformed JSON text: truncated, unbalanced, or not JSON at all.
fn broken_json(rng: &mut Rng, valid: &str) -> Vec<u8> {
    match rng.below(8) {
        0 if valid.len() > 1 => valid.as_bytes()[..rng.range(1, valid.len() - 1)].to_vec(),
        1 => format!("{valid}}}").into_bytes(),
        2 => valid.replace('"', "'").into_bytes(),
        3 => b"{".to_vec(),
        4 => format!("{{\"a\":{}", rng.junk(5)).into_bytes(),
        5 => rng.bytes_in(1, 200),
        6 => b"\xef\xbb\xbf{\"bom\":".to_vec(),
        _ => vec![],
    }
}

/// JSON that parses but is not an object.
fn wrong_type_json(rng: &mut Rng) -> &'static str {
    rng.pick(&[
        "[]",
        "[{}]",
        "null",
        "true",
        "0",
        "-1.5e300",
        "\"string\"",
        "[{\"tags\":[\"x\"]}]",
    ])
}

fn oversized(rng: &mut Rng) -> Vec<u8> {
    let n = rng.range(MAX_BODY + 1, MAX_BODY * 12);
    let mut body = b"{\"displayName\":\"".to_vec();
    body.resize(n, b'a');
    body
}

fn token_path(t: &Tokens) -> String {
    format!("/{}/oauth2/v2.0/token", t.tenant)
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn token_case(rng: &mut Rng, t: &Tokens) -> Case {
    let path = token_path(t);
    let post = |label| Case::new(Family::Token, label, Method::POST, path.clone());
    let form_ct = "application/x-www-form-urlencoded";
    let graph_scope = "https://graph.microsoft.com/.default";
    let good = [
        ("grant_type", "client_credentials"),
        ("client_id", OPERATOR_APP_ID),
        ("scope", graph_scope),
    ];
    match rng.below(17) {
        0 => {
            // A valid form, but the wrong or no Content-Type.
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", OPERATOR_APP_ID),
                ("client_secret", OPERATOR_SECRET),
                ("scope", graph_scope),
            ]);
            let c = post("token: wrong content-type").body(body);
            match rng.below(4) {
                0 => c,
                1 => c.header("content-type", "text/plain"),
                2 => c.json_ct(),
                _ => c.header("content-type", "multipart/form-data; boundary=x"),
            }
        }
        1 => post("token: JSON body").json_ct().body(
            json!({"grant_type": "client_credentials", "client_id": OPERATOR_APP_ID, "client_secret": OPERATOR_SECRET, "scope": graph_scope})
                .to_string(),
        ),
        2 => {
            // One required field missing or empty.
            let mut pairs = good.to_vec();
            pairs.push(("client_secret", OPERATOR_SECRET));
            let i = rng.below(3);
            if rng.chance(0.5) {
                pairs.remove(i);
            } else {
                pairs[i].1 = "";
            }
            post("token: missing field")
                .header("content-type", form_ct)
                .body(form(&pairs))
        }
        3 => {
            let grant = rng.pick(&[
                "authorization_code",
                "password",
                "refresh_token",
                "CLIENT_CREDENTIALS",
                "client_credentials ",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "é",
            ]);
            post("token: bad grant_type")
                .header("content-type", form_ct)
                .body(form(&[
                    ("grant_type", grant),
                    ("client_id", OPERATOR_APP_ID),
                    ("client_secret", OPERATOR_SECRET),
                    ("scope", graph_scope),
                ]))
        }
        4 => {
            let junk = rng.junk(6);
            let scope = match rng.below(6) {
                0 => "https://graph.microsoft.com".to_string(),
                1 => "https://graph.microsoft.com/Application.ReadWrite.All".into(),
                2 => "https://example.com/.default".into(),
                3 => "https://graph.microsoft.com/.default https://management.azure.com/.default"
                    .into(),
                4 => "/.default".into(),
                _ => junk,
            };
            post("token: bad scope")
                .header("content-type", form_ct)
                .body(form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", OPERATOR_APP_ID),
                    ("client_secret", OPERATOR_SECRET),
                    ("scope", &scope),
                ]))
        }
        5 => {
            let client = if rng.chance(0.5) {
                rng.guid()
            } else {
                rng.bad_guid()
            };
            post("token: unknown client")
                .header("content-type", form_ct)
                .body(form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client),
                    ("client_secret", OPERATOR_SECRET),
                    ("scope", graph_scope),
                ]))
        }
        6 => {
            let secret = match rng.below(3) {
                0 => format!("{OPERATOR_SECRET}x"),
                1 => rng.junk(40),
                _ => OPERATOR_SECRET.to_uppercase(),
            };
            post("token: wrong secret")
                .header("content-type", form_ct)
                .body(form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", OPERATOR_APP_ID),
                    ("client_secret", &secret),
                    ("scope", graph_scope),
                ]))
        }
        7 => {
            let assertion = match rng.below(4) {
                0 => rng.junk(30),
                1 => "a.b.c".to_string(),
                2 => "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4Iiwic3ViIjoieSIsImF1ZCI6InoifQ.".into(),
                _ => format!("{}.{}.", rng.junk(10), rng.junk(10)),
            };
            let kind = if rng.chance(0.5) {
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            } else {
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
            };
            post("token: garbage client assertion")
                .header("content-type", form_ct)
                .body(form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", OPERATOR_APP_ID),
                    ("client_assertion_type", kind),
                    ("client_assertion", &assertion),
                    ("scope", graph_scope),
                ]))
        }
        8 => {
            let tenant = match rng.below(3) {
                0 => rng.guid(),
                1 => pct(&rng.junk(8)),
                _ => "common".to_string(),
            };
            Case::new(
                Family::Token,
                "token: unknown tenant",
                Method::POST,
                format!("/{tenant}/oauth2/v2.0/token"),
            )
            .header("content-type", form_ct)
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("client_id", OPERATOR_APP_ID),
                ("client_secret", OPERATOR_SECRET),
                ("scope", graph_scope),
            ]))
        }
        9 => {
            let method = rng.pick(&["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"]);
            Case::new(
                Family::Token,
                "token: wrong method",
                Method::from_bytes(method.as_bytes()).unwrap(),
                path.clone(),
            )
            .header("content-type", form_ct)
            .body(form(&good))
        }
        10 => post("token: random bytes")
            .header("content-type", form_ct)
            .body(rng.bytes_in(0, 600)),
        11 => {
            let junk = rng.junk(12);
            let basic = match rng.below(3) {
                0 => "Basic !!!notbase64!!!".to_string(),
                1 => format!(
                    "Basic {}",
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        "no-colon-here"
                    )
                ),
                _ => format!("Basic {}", pct(&junk)),
            };
            post("token: garbage basic auth")
                .header("content-type", form_ct)
                .header("authorization", basic)
                .body(form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", graph_scope),
                ]))
        }
        12 => post("token: body too large")
            .header("content-type", form_ct)
            .body(oversized(rng)),
        13 => {
            let body = match rng.below(4) {
                0 => "grant_type=client_credentials&client_id=%ZZ&scope=%".to_string(),
                1 => "grant_type&client_id&scope&&&===".into(),
                2 => format!("{}&&{}", rng.junk(20), rng.junk(20)),
                _ => "grant_type=client_credentials&grant_type=password&client_id=x".into(),
            };
            post("token: form garbage")
                .header("content-type", form_ct)
                .body(body)
        }
        14 => {
            // No secret, no assertion.
            post("token: no credential")
                .header("content-type", form_ct)
                .body(form(&good))
        }
        15 => {
            // Discovery documents of a tenant that does not exist.
            let tenant = rng.guid();
            let p = if rng.chance(0.5) {
                format!("/{tenant}/v2.0/.well-known/openid-configuration")
            } else {
                format!("/{tenant}/discovery/v2.0/keys")
            };
            Case::new(Family::Token, "token: discovery of unknown tenant", Method::GET, p)
        }
        _ => {
            let v = rng.pick(&[
                "client_credentials%00",
                "client_credentials%0A",
                "%E9",
                "%FF%FE",
            ]);
            post("token: encoded garbage")
                .header("content-type", form_ct)
                .body(format!(
                    "grant_type={v}&client_id={OPERATOR_APP_ID}&client_secret={}&scope={}",
                    pct(OPERATOR_SECRET),
                    pct(graph_scope)
                ))
        }
    }
}

fn bad_filter(rng: &mut Rng) -> String {
    let junk = rng.junk_in(1, 12);
    match rng.below(16) {
        0 => "appId eq".into(),
        1 => "appId eq 'x".into(),
        2 => "appId gt 'x'".into(),
        3 => "(appId eq 'x')".into(),
        4 => "startswith(displayName,'x'".into(),
        5 => "tags/any(t:s eq 'x')".into(),
        6 => "notes eq 'x'".into(),
        7 => "appId eq 'x' and".into(),
        8 => "".into(),
        9 => "appId eq 'é".into(),
        10 => "displayName eq 'ü' and é".into(),
        11 => "é eq 'x'".into(),
        12 => "appId eq 'x' or (".into(),
        13 => format!("{junk} eq"),
        14 => format!("startswith({junk}"),
        _ => junk,
    }
}

fn bad_odata_key(rng: &mut Rng) -> String {
    let g = rng.guid();
    let junk = rng.junk(5);
    match rng.below(14) {
        0 => "applications(appId=x)".into(),
        1 => format!("applications(appId='{g}'"),
        2 => format!("applications(appId={g})"),
        3 => format!("applications(appId='{g})"),
        4 => format!("applications(appId={g}')"),
        5 => "applications()".into(),
        6 => format!("applications(foo='{g}')"),
        7 => format!("applications(id='{}')", rng.bad_guid()),
        8 => format!("applications('{}')", rng.bad_guid()),
        9 => format!("applications((appId='{g}'))"),
        10 => format!("applications(appId='{g}')x"),
        11 => format!("applications(appId='{}')", pct(&junk)),
        12 => format!("applications(uniqueName=''{g}')"),
        _ => format!("applications({}", pct(&junk)),
    }
}

fn graph_auth_case(rng: &mut Rng, t: &Tokens) -> Case {
    let path = match rng.below(4) {
        0 => "/v1.0/applications".to_string(),
        1 => format!("/v1.0/applications/{OWNED_APP_OBJECT_ID}"),
        2 => format!("/v1.0/applications(appId='{OWNED_APP_ID}')"),
        _ => "/v1.0/servicePrincipals".into(),
    };
    let c = Case::new(Family::Graph, "graph: bad token", Method::GET, path);
    let mut tampered = t.graph.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let junk = rng.junk(10);
    match rng.below(9) {
        0 => c,
        1 => c.bearer(&t.arm),
        2 => c.bearer(&t.graph_expired),
        3 => c.bearer(&String::from_utf8(tampered).unwrap()),
        4 => c.bearer("eyJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL2dyYXBoLm1pY3Jvc29mdC5jb20ifQ."),
        5 => c.header("authorization", format!("Basic {}", t.graph)),
        6 => c.header("authorization", "Bearer "),
        7 => c.bearer(&pct(&junk)),
        _ => c.header(
            "authorization",
            format!("Bearer {}", &t.graph[..t.graph.len() / 2]),
        ),
    }
}

fn graph_case(rng: &mut Rng, t: &Tokens) -> Case {
    let owned = format!("/v1.0/applications/{OWNED_APP_OBJECT_ID}");
    let g = |label, method: Method, path: String| {
        Case::new(Family::Graph, label, method, path).bearer(&t.graph)
    };
    match rng.below(22) {
        0 | 1 => graph_auth_case(rng, t),
        2 => {
            let bad = rng.bad_guid();
            let (method, suffix) = match rng.below(5) {
                0 => (Method::GET, ""),
                1 => (Method::DELETE, ""),
                2 => (Method::PATCH, ""),
                3 => (Method::POST, "/addPassword"),
                _ => (Method::GET, "/owners"),
            };
            g(
                "graph: bad GUID in path",
                method,
                format!("/v1.0/applications/{bad}{suffix}"),
            )
            .json_ct()
            .body(r#"{"tags":["x"]}"#)
        }
        3 => {
            let key = bad_odata_key(rng);
            let method = if rng.chance(0.7) {
                Method::GET
            } else {
                Method::PATCH
            };
            g("graph: bad OData key", method, format!("/v1.0/{key}"))
                .json_ct()
                .body(r#"{"tags":["x"]}"#)
        }
        4 => {
            let q = match rng.below(8) {
                0 => "$top=0".to_string(),
                1 => "$top=-1".into(),
                2 => "$top=1000".into(),
                3 => "$top=abc".into(),
                4 => "$top=".into(),
                5 => "$top=99999999999999999999999".into(),
                6 => format!("$top=1.5&$filter={}", pct("appId eq 'x'")),
                _ => format!("$top={}", pct(&rng.junk(4))),
            };
            let set = if rng.chance(0.8) {
                "applications"
            } else {
                "servicePrincipals"
            };
            g("graph: bad $top", Method::GET, format!("/v1.0/{set}?{q}"))
        }
        5 | 6 => {
            let f = bad_filter(rng);
            let set = if rng.chance(0.8) {
                "applications"
            } else {
                "servicePrincipals"
            };
            g(
                "graph: bad $filter",
                Method::GET,
                format!("/v1.0/{set}?$filter={}&$select=id,appId", pct(&f)),
            )
        }
        7 => {
            let valid = r#"{"tags":["team:x"],"description":"d"}"#;
            g("graph: malformed JSON", Method::PATCH, owned.clone())
                .json_ct()
                .body(broken_json(rng, valid))
        }
        8 => {
            let (method, path) = match rng.below(4) {
                0 => (Method::PATCH, owned.clone()),
                1 => (Method::POST, format!("{owned}/addPassword")),
                2 => (Method::POST, format!("{owned}/removePassword")),
                _ => (Method::POST, "/v1.0/applications".to_string()),
            };
            g("graph: JSON of the wrong type", method, path)
                .json_ct()
                .body(wrong_type_json(rng))
        }
        9 => {
            let c = g("graph: wrong content-type", Method::PATCH, owned.clone())
                .body(r#"{"tags":["team:x"]}"#);
            match rng.below(4) {
                0 => c,
                1 => c.header("content-type", "text/plain"),
                2 => c.header("content-type", "application/x-www-form-urlencoded"),
                _ => c.header("content-type", "application/xml"),
            }
        }
        10 => {
            let body = match rng.below(12) {
                0 => json!({"tags": "x"}),
                1 => json!({"tags": [1, 2]}),
                2 => json!({"displayName": ""}),
                3 => json!({"displayName": null}),
                4 => json!({"displayName": 5}),
                5 => json!({"signInAudience": "Everyone"}),
                6 => json!({"description": {"a": 1}}),
                7 => json!({"bogusProperty": 1}),
                8 => json!({"id": rng.guid()}),
                9 => json!({"appId": rng.guid()}),
                10 => json!({"passwordCredentials": []}),
                _ => json!({"uniqueName": rng.junk(6)}),
            };
            g("graph: invalid property", Method::PATCH, owned.clone())
                .json_ct()
                .body(body.to_string())
        }
        11 => {
            let body = match rng.below(7) {
                0 => json!({"passwordCredential": 5}),
                1 => json!({"passwordCredential": "x"}),
                2 => json!({"passwordCredential": {"displayName": 7}}),
                3 => json!({"passwordCredential": {"endDateTime": "tomorrow"}}),
                4 => json!({"passwordCredential": {"startDateTime": 17}}),
                5 => {
                    json!({"passwordCredential": {"startDateTime": "2030-01-01T00:00:00Z", "endDateTime": "2029-01-01T00:00:00Z"}})
                }
                _ => {
                    json!({"passwordCredential": {"endDateTime": "2000-01-01T00:00:00Z", "startDateTime": "2000-01-01T00:00:00Z"}})
                }
            };
            g(
                "graph: bad addPassword",
                Method::POST,
                format!("{owned}/addPassword"),
            )
            .json_ct()
            .body(body.to_string())
        }
        12 => {
            let body = match rng.below(5) {
                0 => json!({}),
                1 => json!({"keyId": rng.bad_guid()}),
                2 => json!({"keyId": 7}),
                3 => json!({"keyId": rng.guid()}),
                _ => json!({"keyId": null}),
            };
            g(
                "graph: bad removePassword",
                Method::POST,
                format!("{owned}/removePassword"),
            )
            .json_ct()
            .body(body.to_string())
        }
        13 => {
            let body = match rng.below(4) {
                0 => {
                    json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{}", rng.bad_guid())})
                }
                1 => json!({"@odata.id": 5}),
                2 => json!({}),
                _ => json!({"@odata.id": ""}),
            };
            g(
                "graph: bad owner reference",
                Method::POST,
                format!("{owned}/owners/$ref"),
            )
            .json_ct()
            .body(body.to_string())
        }
        14 => {
            let long = "x".repeat(700);
            let body = match rng.below(6) {
                0 => {
                    json!({"issuer": "https://i", "subject": "s", "audiences": ["api://AzureADTokenExchange"]})
                }
                1 => {
                    json!({"name": "has space", "issuer": "https://i", "subject": "s", "audiences": ["api://AzureADTokenExchange"]})
                }
                2 => json!({"name": "n", "issuer": "https://i", "subject": "s", "audiences": []}),
                3 => {
                    json!({"name": "n", "issuer": "https://i", "subject": "s", "audiences": ["a", "b"]})
                }
                4 => json!({"name": "n", "issuer": long, "subject": "s", "audiences": ["a"]}),
                _ => json!({"name": 5, "issuer": "https://i", "subject": "s", "audiences": ["a"]}),
            };
            g(
                "graph: bad federated credential",
                Method::POST,
                format!("{owned}/federatedIdentityCredentials"),
            )
            .json_ct()
            .body(body.to_string())
        }
        15 | 16 => graph_batch_case(rng, t),
        17 => {
            let junk = pct(&rng.junk(6));
            let path = match rng.below(8) {
                0 => "/v1.0/me".to_string(),
                1 => "/v1.0/users".into(),
                2 => format!("{owned}/bogus"),
                3 => format!("/v1.0/{junk}"),
                4 => "/v1.0/".into(),
                5 => "/v1.0".into(),
                6 => "/v1.0/applications/%FF%FE".into(),
                _ => format!("/v1.0/applications/{}/{junk}/{junk}", rng.guid()),
            };
            g("graph: unknown route", Method::GET, path)
        }
        18 => {
            let (method, path) = match rng.below(7) {
                0 => (Method::PUT, "/v1.0/applications".to_string()),
                1 => (Method::DELETE, "/v1.0/applications".into()),
                2 => (Method::PUT, owned.clone()),
                3 => (Method::POST, owned.clone()),
                4 => (Method::GET, format!("{owned}/addPassword")),
                5 => (Method::from_bytes(b"FOO").unwrap(), owned.clone()),
                _ => (Method::GET, "/v1.0/$batch".into()),
            };
            g("graph: wrong method", method, path)
                .json_ct()
                .body(r#"{"tags":["x"]}"#)
        }
        19 => {
            let path = if rng.chance(0.5) {
                owned.clone()
            } else {
                "/v1.0/$batch".to_string()
            };
            g("graph: body too large", Method::PATCH, path)
                .json_ct()
                .body(oversized(rng))
        }
        20 => {
            let (method, path) = if rng.chance(0.5) {
                (Method::PATCH, owned.clone())
            } else {
                (Method::POST, "/v1.0/$batch".to_string())
            };
            g("graph: random bytes", method, path)
                .json_ct()
                .body(rng.bytes_in(1, 4000))
        }
        _ => {
            let (method, path, body) = match rng.below(4) {
                0 => (
                    Method::GET,
                    format!("/v1.0/servicePrincipals/{}", rng.bad_guid()),
                    String::new(),
                ),
                1 => (
                    Method::POST,
                    "/v1.0/servicePrincipals".to_string(),
                    json!({"appId": 5}).to_string(),
                ),
                2 => (
                    Method::POST,
                    "/v1.0/servicePrincipals".to_string(),
                    json!({}).to_string(),
                ),
                _ => (
                    Method::GET,
                    format!(
                        "/v1.0/applications/delta?$deltatoken={}",
                        pct(&rng.junk(20))
                    ),
                    String::new(),
                ),
            };
            g("graph: bad service principal or delta", method, path)
                .json_ct()
                .body(body)
        }
    }
}

fn batch_item(i: usize) -> Value {
    json!({"id": i.to_string(), "method": "GET", "url": format!("/applications/{OWNED_APP_OBJECT_ID}?$select=id")})
}

fn graph_batch_case(rng: &mut Rng, t: &Tokens) -> Case {
    let body: Value = match rng.below(14) {
        0 => {
            let n = rng.range(21, 60);
            json!({"requests": (0..n).map(batch_item).collect::<Vec<_>>()})
        }
        1 => json!({"requests": []}),
        2 => json!({}),
        3 => json!({"requests": {"id": "1"}}),
        4 => {
            let mut a = batch_item(1);
            let mut b = batch_item(2);
            a["id"] = json!("Req");
            b["id"] = json!("req");
            json!({"requests": [a, b]})
        }
        5 => {
            let mut a = batch_item(1);
            let field = rng.pick(&["id", "method", "url"]).to_string();
            a.as_object_mut().unwrap().remove(&field);
            json!({"requests": [a, batch_item(2)]})
        }
        6 => {
            let mut a = batch_item(1);
            a["url"] = json!(format!(
                "https://graph.microsoft.com/v1.0/applications/{OWNED_APP_OBJECT_ID}"
            ));
            json!({"requests": [a]})
        }
        7 => {
            let mut a = batch_item(1);
            a["method"] = json!("PATCH");
            a["url"] = json!(format!("/applications/{OWNED_APP_OBJECT_ID}"));
            a["body"] = json!({"tags": ["x"]});
            json!({"requests": [a]})
        }
        8 => {
            let mut a = batch_item(1);
            a["dependsOn"] = json!(["nope"]);
            json!({"requests": [a]})
        }
        9 => {
            // A cycle: 1 -> 2 -> 3 -> 1, or a request depending on itself.
            let n = rng.range(1, 3);
            let items: Vec<Value> = (1..=n)
                .map(|i| {
                    let mut a = batch_item(i);
                    a["dependsOn"] = json!([(i % n + 1).to_string()]);
                    a
                })
                .collect();
            json!({"requests": items})
        }
        10 => {
            let mut a = batch_item(1);
            a["dependsOn"] = json!("2");
            json!({"requests": [a, batch_item(2)]})
        }
        11 => {
            let mut a = batch_item(1);
            a["method"] = json!(rng.pick(&["GE T", "", "é", "G\nET"]));
            json!({"requests": [a]})
        }
        12 => {
            let mut a = batch_item(1);
            a["id"] = json!(rng.pick(&["", "   "]).to_string());
            if a["id"] == json!("   ") {
                a["id"] = json!(5);
            }
            json!({"requests": [a]})
        }
        _ => json!([batch_item(1)]),
    };
    Case::new(
        Family::Graph,
        "graph: bad $batch",
        Method::POST,
        "/v1.0/$batch",
    )
    .bearer(&t.graph)
    .json_ct()
    .body(body.to_string())
}

fn assignment_body(principal: &str) -> Value {
    json!({"properties": {
        "roleDefinitionId": format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
        "principalId": principal,
        "principalType": "ServicePrincipal",
    }})
}

fn arm_case(rng: &mut Rng, t: &Tokens) -> Case {
    let a = |label, method: Method, path: String| {
        Case::new(Family::Arm, label, method, path).bearer(&t.arm)
    };
    let assignment = |name: &str| {
        format!(
            "{RG_SHARED}/providers/Microsoft.Authorization/roleAssignments/{name}?{AUTHZ_VERSION}"
        )
    };
    match rng.below(17) {
        0 | 1 => {
            let path = if rng.chance(0.5) {
                format!("{SUB}/providers/Microsoft.Authorization/roleAssignments?{AUTHZ_VERSION}")
            } else {
                format!("{CLUSTER}?{AKS_VERSION}")
            };
            let c = Case::new(Family::Arm, "arm: bad token", Method::GET, path);
            let mut tampered = t.arm.clone().into_bytes();
            let i = tampered.len() - 5;
            tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
            match rng.below(7) {
                0 => c,
                1 => c.bearer(&t.graph),
                2 => c.bearer(&t.arm_expired),
                3 => c.bearer(&String::from_utf8(tampered).unwrap()),
                4 => c.header("authorization", "Bearer"),
                5 => c.bearer(&pct(&rng.junk(12))),
                _ => c.header("authorization", format!("Basic {}", t.arm)),
            }
        }
        2 => {
            let base = format!("{SUB}/providers/Microsoft.Authorization/roleAssignments");
            let path = match rng.below(5) {
                0 => base,
                1 => format!("{base}?api-version="),
                2 => format!("{base}?api-version=2099-01-01"),
                3 => format!("{base}?api-version={}", pct(&rng.junk(5))),
                _ => format!("{CLUSTER}?api-version=latest"),
            };
            a("arm: bad api-version", Method::GET, path)
        }
        3 => {
            let name = rng.bad_guid();
            a("arm: bad GUID in path", Method::PUT, assignment(&name))
                .json_ct()
                .body(assignment_body(OPERATOR_SP_ID).to_string())
        }
        4 => {
            let valid = assignment_body(OPERATOR_SP_ID).to_string();
            a("arm: malformed JSON", Method::PUT, assignment(&rng.guid()))
                .json_ct()
                .body(broken_json(rng, &valid))
        }
        5 => a(
            "arm: JSON of the wrong type",
            Method::PUT,
            assignment(&rng.guid()),
        )
        .json_ct()
        .body(wrong_type_json(rng)),
        6 => {
            let mut body = assignment_body(OPERATOR_SP_ID);
            match rng.below(8) {
                0 => {
                    body["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove("roleDefinitionId");
                }
                1 => {
                    body["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove("principalId");
                }
                2 => body["properties"]["principalId"] = json!(rng.bad_guid()),
                3 => body["properties"]["principalType"] = json!("Robot"),
                4 => body["properties"]["conditionVersion"] = json!("2.0"),
                5 => {
                    body["properties"]["roleDefinitionId"] = json!(format!(
                        "{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}",
                        rng.guid()
                    ))
                }
                6 => body = json!({"properties": 5}),
                _ => body["properties"]["roleDefinitionId"] = json!(7),
            }
            a(
                "arm: invalid assignment body",
                Method::PUT,
                assignment(&rng.guid()),
            )
            .json_ct()
            .body(body.to_string())
        }
        7 => {
            // A valid assignment body, sent as something other than JSON.
            let c = a(
                "arm: wrong content-type",
                Method::PUT,
                assignment(&rng.guid()),
            )
            .body(assignment_body(OPERATOR_SP_ID).to_string());
            match rng.below(3) {
                0 => c,
                1 => c.header("content-type", "text/plain"),
                _ => c.header("content-type", "application/x-www-form-urlencoded"),
            }
        }
        8 => {
            let junk = pct(&rng.junk(6));
            let path = match rng.below(6) {
                0 => format!(
                    "{SUB}/resourceGroups/rg-shared/providers/Microsoft.Foo/bars/x?{AUTHZ_VERSION}"
                ),
                1 => format!(
                    "/providers/Microsoft.Authorization/roleAssignments/x/y?{AUTHZ_VERSION}"
                ),
                2 => format!("/subscriptions?{AUTHZ_VERSION}"),
                3 => format!("{SUB}/{junk}?{AUTHZ_VERSION}"),
                4 => format!("/providers/{junk}?{AUTHZ_VERSION}"),
                _ => format!("{SUB}/resourceGroups/rg-shared?{AUTHZ_VERSION}"),
            };
            a("arm: unknown route", Method::GET, path)
        }
        9 => {
            let (method, path) = match rng.below(5) {
                0 => (Method::PATCH, assignment(&rng.guid())),
                1 => (Method::POST, assignment(&rng.guid())),
                2 => (
                    Method::PUT,
                    format!(
                        "{SUB}/providers/Microsoft.Authorization/roleAssignments?{AUTHZ_VERSION}"
                    ),
                ),
                3 => (Method::DELETE, format!("{CLUSTER}?{AKS_VERSION}")),
                _ => (Method::from_bytes(b"FOO").unwrap(), assignment(&rng.guid())),
            };
            a("arm: wrong method", method, path)
                .json_ct()
                .body(assignment_body(OPERATOR_SP_ID).to_string())
        }
        10 => {
            let f = match rng.below(5) {
                0 => "principalId eq".to_string(),
                1 => "atScope() and".into(),
                2 => "principalId eq 'x".into(),
                3 => "assignedTo('x')".into(),
                _ => rng.junk(8),
            };
            a(
                "arm: bad $filter",
                Method::GET,
                format!(
                    "{SUB}/providers/Microsoft.Authorization/roleAssignments?{AUTHZ_VERSION}&$filter={}",
                    pct(&f)
                ),
            )
        }
        11 => a("arm: body too large", Method::PUT, assignment(&rng.guid()))
            .json_ct()
            .body(oversized(rng)),
        12 => {
            let body = match rng.below(6) {
                0 => json!({}).to_string(),
                1 => json!({"clientId": ""}).to_string(),
                2 => json!({"clientId": OWNED_APP_ID, "secret": 5}).to_string(),
                3 => json!({"clientId": OWNED_APP_ID, "secret": "s".repeat(191)}).to_string(),
                4 => "{\"clientId\":".to_string(),
                _ => "[]".to_string(),
            };
            a(
                "arm: bad AKS reset",
                Method::POST,
                format!("{CLUSTER}/resetServicePrincipalProfile?{AKS_VERSION}"),
            )
            .json_ct()
            .body(body)
        }
        13 => {
            let path = match rng.below(3) {
                0 => format!(
                    "{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/{}?{AKS_VERSION}",
                    pct(&rng.junk(5))
                ),
                1 => format!(
                    "{SUB}/providers/Microsoft.ContainerService/locations/westeurope/operations/{}?{AKS_VERSION}",
                    rng.bad_guid()
                ),
                _ => format!(
                    "{SUB}/providers/Microsoft.ContainerService/locations/westeurope/operationresults/{}?{AKS_VERSION}",
                    rng.guid()
                ),
            };
            a("arm: unknown AKS object", Method::GET, path)
        }
        14 => {
            // An existing operation, asked for under a subscription segment that is not a subscription id.
            let sub = rng.pick(&["%C3%A9t%C3%A9", "a%0Ab", "%E2%9C%93", "not-a-guid", "%7F"]);
            let kind = if rng.chance(0.5) {
                "operationresults"
            } else {
                "operations"
            };
            a(
                "arm: AKS operation under a bad subscription",
                Method::GET,
                format!(
                    "/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/westeurope/{kind}/{}?{AKS_VERSION}",
                    t.operation_id
                ),
            )
        }
        15 => a("arm: random bytes", Method::PUT, assignment(&rng.guid()))
            .json_ct()
            .body(rng.bytes_in(1, 4000)),
        _ => {
            // Role definitions: bad GUIDs and bodies.
            let path = format!(
                "{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}?{AUTHZ_VERSION}",
                rng.bad_guid()
            );
            let method = if rng.chance(0.5) {
                Method::GET
            } else {
                Method::PUT
            };
            a("arm: bad role definition", method, path)
                .json_ct()
                .body(broken_json(rng, r#"{"properties":{"roleName":"x"}}"#))
        }
    }
}

fn other_case(rng: &mut Rng) -> Case {
    let junk = pct(&rng.junk(8));
    let path = match rng.below(6) {
        0 => "/".to_string(),
        1 => format!("/{junk}"),
        2 => "/common/oauth2/token".into(),
        3 => format!("/{junk}/{junk}/{junk}"),
        4 => "/v1.1/applications".into(),
        _ => "/favicon.ico".into(),
    };
    let method = rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH"]);
    Case::new(
        Family::Other,
        "other: unknown route",
        Method::from_bytes(method.as_bytes()).unwrap(),
        path,
    )
    .body(rng.bytes_in(0, 64))
}

fn generate(seed: u64, n: usize, t: &Tokens) -> Vec<Case> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| match rng.below(100) {
            0..=19 => token_case(&mut rng, t),
            20..=59 => graph_case(&mut rng, t),
            60..=94 => arm_case(&mut rng, t),
            _ => other_case(&mut rng),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Checking responses.

fn is_str(v: &Value) -> bool {
    v.is_string()
}

fn graph_shape(body: &Value) -> Result<(), String> {
    let e = &body["error"];
    if !is_str(&e["code"]) || !is_str(&e["message"]) {
        return Err("error.code / error.message are not strings".into());
    }
    if !e["innerError"].is_object() || !is_str(&e["innerError"]["request-id"]) {
        return Err("error.innerError.request-id missing".into());
    }
    Ok(())
}

fn arm_shape(body: &Value) -> Result<(), String> {
    let e = &body["error"];
    if !is_str(&e["code"]) || !is_str(&e["message"]) {
        return Err("error.code / error.message are not strings".into());
    }
    Ok(())
}

fn token_shape(body: &Value) -> Result<(), String> {
    if !is_str(&body["error"]) {
        return Err("error is not a string".into());
    }
    if !body["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("AADSTS"))
    {
        return Err("error_description does not start with AADSTS".into());
    }
    let codes = body["error_codes"].as_array();
    if !codes.is_some_and(|c| !c.is_empty() && c.iter().all(|x| x.is_u64() || x.is_i64())) {
        return Err("error_codes is not a non-empty array of integers".into());
    }
    Ok(())
}

/// Confirmed failures by family, kind of request and status: (index of the request, what is wrong).
type Failures = BTreeMap<(Family, &'static str, String), Vec<(usize, String)>>;

/// What happened to one request: the status (or a transport outcome) and what is wrong with it, if anything.
struct Outcome {
    status: String,
    problem: Option<String>,
}

async fn send(client: &Client, base: &str, case: &Case) -> Outcome {
    let mut headers = HeaderMap::new();
    for (k, v) in &case.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_bytes(v).expect("header value"),
        );
    }
    let req = client
        .request(case.method.clone(), format!("{base}{}", case.path))
        .headers(headers)
        .body(case.body.clone());
    let resp = match tokio::time::timeout(TIMEOUT, req.send()).await {
        Err(_) => {
            return Outcome {
                status: "TIMEOUT".into(),
                problem: Some(format!("no response within {TIMEOUT:?}")),
            };
        }
        Ok(Err(e)) => {
            return Outcome {
                status: "NO-RESPONSE".into(),
                problem: Some(format!("transport error: {e:?}")),
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = match tokio::time::timeout(TIMEOUT, resp.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Outcome {
                status: status.as_u16().to_string(),
                problem: Some(format!("body not readable: {e}")),
            };
        }
        Err(_) => {
            return Outcome {
                status: status.as_u16().to_string(),
                problem: Some("body did not arrive in time".into()),
            };
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let snippet: String = text.chars().take(300).collect();
    let problem = if !status.is_client_error() {
        Some(format!("status {status} is not a 4xx; body: {snippet}"))
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Err(_) => Some(format!(
                "body is not JSON (content-type '{content_type}'): {snippet:?}"
            )),
            Ok(body) => {
                let shape = match case.family {
                    Family::Graph => graph_shape(&body),
                    Family::Arm => arm_shape(&body),
                    Family::Token => token_shape(&body),
                    Family::Other => graph_shape(&body).or_else(|_| token_shape(&body)),
                };
                shape
                    .err()
                    .map(|e| format!("wrong error shape ({e}): {snippet}"))
            }
        }
    };
    Outcome {
        status: status.as_u16().to_string(),
        problem,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Set-up.

fn client(http1: bool, ca: &[u8]) -> Client {
    let mut b = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).expect("CA")])
        .timeout(TIMEOUT)
        .pool_max_idle_per_host(64);
    if http1 {
        b = b.http1_only();
    }
    b.build().expect("client")
}

async fn get_token(client: &Client, base: &str, tenant: &str, scope: &str) -> String {
    let resp = client
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", OPERATOR_APP_ID),
            ("client_secret", OPERATOR_SECRET),
            ("scope", scope),
        ]))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200, "token for {scope}");
    let body: Value = resp.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn knobs(client: &Client, base: &str, patch: Value) {
    let resp = client
        .patch(format!("{base}/_emulator/knobs"))
        .header("content-type", "application/json")
        .body(patch.to_string())
        .send()
        .await
        .expect("knobs");
    assert_eq!(resp.status(), 200, "PATCH knobs {patch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_in_their_apis_error_shape() {
    let seed: u64 = std::env::var("MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20240601);
    let n: usize = std::env::var("MALFORMED_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);

    let mut config = Config::default_seed();
    let operator = config
        .seed
        .applications
        .iter_mut()
        .find(|a| a.app_id == OPERATOR_APP_ID)
        .expect("the operator is in the default seed");
    operator.client_secrets.push(OPERATOR_SECRET.into());
    config.knobs.throttling.enabled = false;
    config.knobs.faults.clear();
    let tenant = config.seed.tenant_id.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(Options {
        config,
        state_dir: dir.path().to_path_buf(),
        persist: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec![],
    })
    .await
    .expect("emulator starts");
    let base = running.base_url.clone();
    let ca = std::fs::read(&running.ca_file).expect("CA file");
    let h2 = client(false, &ca);
    let h1 = client(true, &ca);

    let graph_scope = "https://graph.microsoft.com/.default";
    let arm_scope = "https://management.azure.com/.default";
    // Expired tokens: a one-second lifetime, then wait it out (the emulator allows no leeway).
    knobs(
        &h2,
        &base,
        json!({"tokenLifetimeSeconds": 1, "throttling": {"enabled": false}}),
    )
    .await;
    let graph_expired = get_token(&h2, &base, &tenant, graph_scope).await;
    let arm_expired = get_token(&h2, &base, &tenant, arm_scope).await;
    knobs(
        &h2,
        &base,
        json!({"tokenLifetimeSeconds": 3599, "aks": {"resetDurationMs": 3_600_000}}),
    )
    .await;
    let graph = get_token(&h2, &base, &tenant, graph_scope).await;
    let arm = get_token(&h2, &base, &tenant, arm_scope).await;

    // One AKS reset in progress, so that its operation routes exist.
    let resp = h2
        .post(format!(
            "{base}{CLUSTER}/resetServicePrincipalProfile?{AKS_VERSION}"
        ))
        .bearer_auth(&arm)
        .header("content-type", "application/json")
        .body(json!({"clientId": OWNED_APP_ID, "secret": "s3cret"}).to_string())
        .send()
        .await
        .expect("reset");
    assert_eq!(resp.status(), 202, "AKS reset starts");
    let operation_id = resp
        .headers()
        .get("azure-asyncoperation")
        .and_then(|v| v.to_str().ok())
        .and_then(|u| u.split('?').next())
        .and_then(|u| u.rsplit('/').next())
        .expect("operation id")
        .to_string();

    knobs(&h2, &base, json!({"maxBodyBytes": MAX_BODY})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let tokens = Tokens {
        tenant: tenant.clone(),
        graph,
        arm,
        graph_expired,
        arm_expired,
        operation_id,
    };
    let cases = Arc::new(generate(seed, n, &tokens));

    // Throw them at the emulator: a few workers each over HTTP/2 and HTTP/1.1.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let client = if w % 2 == 0 { h2.clone() } else { h1.clone() };
        let (cases, next, base) = (cases.clone(), next.clone(), base.clone());
        workers.spawn(async move {
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cases.len() {
                    break;
                }
                out.push((i, send(&client, &base, &cases[i]).await));
            }
            out
        });
    }
    let mut outcomes: Vec<(usize, Outcome)> = vec![];
    while let Some(r) = workers.join_next().await {
        outcomes.extend(r.expect("worker"));
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let elapsed = started.elapsed();

    // A request that failed may have been a bystander on a connection another request broke: replay each
    // failure alone on a fresh connection to tell the two apart.
    let mut confirmed: Failures = BTreeMap::new();
    let mut bystanders = 0;
    for (i, o) in &outcomes {
        if o.problem.is_none() {
            continue;
        }
        let case = &cases[*i];
        let fresh = client(case.path.len().is_multiple_of(2), &ca);
        let again = send(&fresh, &base, case).await;
        match again.problem {
            Some(p) => confirmed
                .entry((case.family, case.label, again.status.clone()))
                .or_default()
                .push((*i, p)),
            None => bystanders += 1,
        }
    }

    let mut by_status: BTreeMap<(Family, String), usize> = BTreeMap::new();
    let mut by_label: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for (i, o) in &outcomes {
        *by_status
            .entry((cases[*i].family, o.status.clone()))
            .or_default() += 1;
        *by_label
            .entry(cases[*i].label)
            .or_default()
            .entry(o.status.clone())
            .or_default() += 1;
    }
    println!(
        "\n{} malformed requests (seed {seed}) in {:.2?} ({:.0}/s)",
        outcomes.len(),
        elapsed,
        outcomes.len() as f64 / elapsed.as_secs_f64()
    );
    println!("\nresponses by family and status:");
    for ((family, status), count) in &by_status {
        println!("  {family:?}\t{status}\t{count}");
    }
    println!("\nresponses by kind of request:");
    for (label, statuses) in &by_label {
        let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!("  {label:<48} {}", s.join(" "));
    }

    let failing: usize = confirmed.values().map(Vec::len).sum();
    if bystanders > 0 {
        println!(
            "\n{bystanders} requests failed in the run but passed when replayed alone (their connection was broken by another request)"
        );
    }
    if !confirmed.is_empty() {
        println!("\nFAILURES ({failing} requests, replayed alone and still failing):");
        for ((family, label, status), items) in &confirmed {
            println!(
                "- {family:?} / {label} / {status}: {} requests",
                items.len()
            );
            for (i, problem) in items.iter().take(3) {
                let c = &cases[*i];
                let body: String = String::from_utf8_lossy(&c.body).chars().take(160).collect();
                let headers: Vec<String> = c
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "authorization")
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                    .collect();
                println!(
                    "    #{i}: {} {}\n        headers: {headers:?}\n        body: {body:?}\n        => {problem}",
                    c.method, c.path
                );
            }
        }
    }
    running.shutdown().await.ok();
    assert!(
        confirmed.is_empty(),
        "{failing} malformed requests were not answered with a 4xx in their API's error shape (seed {seed}); see the list above"
    );
}
