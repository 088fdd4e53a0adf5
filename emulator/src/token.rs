//! The Entra token endpoint (`/{tenant}/oauth2/v2.0/token`, client-credentials grant with a client secret
//! or a federated client assertion), the OpenID discovery document, JWKS, and the instance-discovery
//! endpoint that MSAL asks before it trusts an unknown authority host.

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, request::Parts},
    response::Response,
};
use jiff::Timestamp;
use serde_json::json;

use crate::{
    http::{RequestIds, json_response, token_error},
    jwt::{Api, AssertionProblem, Claims, GRAPH_AUDIENCE, peek_assertion},
    server::Ctx,
    state::{new_id, sha256_hex},
};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub async fn handle(ctx: &Ctx, parts: &Parts, body: Bytes) -> Response {
    let ids = RequestIds::new(&parts.headers);
    let path = parts.uri.path();
    let base = base_url(parts);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let tenant = ctx.world.lock().tenant_id.clone();
    let (route, response) = match (parts.method.clone(), segments.as_slice()) {
        (Method::GET, ["msi", "token"]) => (
            "token GET /msi/token",
            managed_identity(
                ctx,
                &parts.headers,
                parts.uri.query().unwrap_or(""),
                &base,
                &tenant,
                &ids,
            ),
        ),
        (Method::GET, ["common", "discovery", "instance"]) => (
            "token GET /common/discovery/instance",
            instance_discovery(&base, parts.uri.query().unwrap_or("")),
        ),
        (Method::GET, [t, "v2.0", ".well-known", "openid-configuration"])
            if known_tenant(t, &tenant) =>
        {
            (
                "token GET /{tenant}/v2.0/.well-known/openid-configuration",
                openid_configuration(&base, &tenant),
            )
        }
        (Method::GET, [t, "discovery", "v2.0", "keys"]) if known_tenant(t, &tenant) => {
            let (kid, n, e) = &ctx.jwk;
            let keys = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": kid, "n": n, "e": e, "alg": "RS256"}]});
            (
                "token GET /{tenant}/discovery/v2.0/keys",
                json_response(StatusCode::OK, &keys),
            )
        }
        (Method::POST, [t, "oauth2", "v2.0", "token"]) => {
            let response = if known_tenant(t, &tenant) {
                token(ctx, &parts.headers, &body, &base, &tenant, &ids).await
            } else {
                token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    90002,
                    &format!(
                        "Tenant '{t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                    ),
                    &ids,
                )
            };
            ("token POST /{tenant}/oauth2/v2.0/token", response)
        }
        (_, [_, "oauth2", "v2.0", "token"]) => (
            "token other /{tenant}/oauth2/v2.0/token",
            token_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                900561,
                "The endpoint only accepts POST requests.",
                &ids,
            ),
        ),
        (
            Method::GET,
            [t, "v2.0", ".well-known", "openid-configuration"] | [t, "discovery", "v2.0", "keys"],
        ) => (
            "token GET unknown tenant",
            token_error(
                StatusCode::BAD_REQUEST,
                "invalid_tenant",
                90002,
                &format!(
                    "Tenant '{t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
                &ids,
            ),
        ),
        _ => (
            "unknown route",
            crate::http::graph_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requested resource does not exist.",
                &ids,
            ),
        ),
    };
    ctx.count(route, response.status());
    response
}

fn known_tenant(t: &str, tenant: &str) -> bool {
    t.eq_ignore_ascii_case(tenant) || t == "organizations"
}

/// The scheme and host clients reached us at, for URLs in responses (HTTP/2 carries the host in the URI's
/// authority, HTTP/1.1 in the Host header).
pub fn base_url(parts: &Parts) -> String {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}")
}

fn instance_discovery(base: &str, query: &str) -> Response {
    let host = base.trim_start_matches("https://");
    // MSAL sends the authorization endpoint without our port; answer with our own base and its tenant.
    let tenant = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()
        .and_then(|q| {
            q.into_iter()
                .find(|(k, _)| k == "authorization_endpoint")
                .map(|(_, v)| v)
        })
        .and_then(|endpoint| {
            endpoint
                .split("/oauth2/")
                .next()
                .and_then(|s| s.rsplit('/').next())
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "common".into());
    json_response(
        StatusCode::OK,
        &json!({
            "tenant_discovery_endpoint": format!("{base}/{tenant}/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }),
    )
}

fn openid_configuration(base: &str, tenant: &str) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": format!("{base}/{tenant}/v2.0"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }),
    )
}

async fn token(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
    base: &str,
    tenant: &str,
    ids: &RequestIds,
) -> Response {
    let bad = |aadsts: u32, error: &str, text: &str| {
        token_error(StatusCode::BAD_REQUEST, error, aadsts, text, ids)
    };
    let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(_) => {
            return bad(
                900144,
                "invalid_request",
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    };
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return bad(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    let Some(grant_type) = field("grant_type") else {
        return bad(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    if grant_type != "client_credentials" {
        return bad(
            70003,
            "unsupported_grant_type",
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    // HTTP Basic carries client_id:client_secret as an alternative to the form fields.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let client_id = field("client_id")
        .map(str::to_string)
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
    let Some(client_id) = client_id else {
        return bad(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = field("scope") else {
        return bad(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let Some(resource) = scope.strip_suffix("/.default") else {
        return bad(
            1002012,
            "invalid_scope",
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let Some((api, aud)) = audience_for(resource, base) else {
        return bad(
            500011,
            "invalid_resource",
            &format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        );
    };

    let app = ctx.world.lock().app_by_app_id(&client_id).cloned();
    let Some(mut app) = app else {
        return bad(
            700016,
            "unauthorized_client",
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    let unauthorized = |aadsts: u32, text: &str| {
        token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            aadsts,
            text,
            ids,
        )
    };

    // A secret or certificate that has not reached the region serving this request is, to it, unknown: the
    // checks below then answer AADSTS7000215 or AADSTS700027 exactly as for a wrong one (`replication`).
    crate::replication::as_seen_by_a_region(ctx, &mut app);
    let secret = field("client_secret")
        .map(str::to_string)
        .or_else(|| basic.map(|(_, s)| s));
    let appidacr = if let Some(secret) = secret {
        let hash = sha256_hex(&secret);
        let now = Timestamp::now();
        match app
            .password_credentials
            .iter()
            .find(|p| p.secret_sha256 == hash)
        {
            None => {
                return unauthorized(
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
            Some(p) if p.end_date_time <= now => {
                return unauthorized(
                    7000222,
                    &format!(
                        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
                    ),
                );
            }
            Some(p) if p.start_date_time > now => {
                return unauthorized(
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
            Some(_) => "1",
        }
    } else if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type") != Some(ASSERTION_TYPE) {
            return bad(
                50027,
                "invalid_request",
                &format!("Invalid client_assertion_type: expected {ASSERTION_TYPE}."),
            );
        }
        let claims = match peek_assertion(assertion) {
            Ok(c) => c,
            Err(_) => {
                return bad(
                    50027,
                    "invalid_request",
                    "JWT token is invalid or malformed.",
                );
            }
        };
        // A certificate assertion is the application speaking for itself (iss == sub == its client id); a
        // federated one comes from another issuer about one of its subjects.
        let checked = if claims.iss == claims.sub {
            certificate_assertion(&app, assertion, base, tenant, &client_id, ids)
        } else {
            federated_assertion(ctx, &app, assertion, &claims, ids).await
        };
        if let Err(response) = checked {
            return response;
        }
        "2"
    } else {
        return unauthorized(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    };

    match sign(ctx, base, tenant, &app.app_id, api, aud, appidacr) {
        Some((token, lifetime)) => json_response(
            StatusCode::OK,
            &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
        ),
        None => bad(
            7000229,
            "invalid_client",
            &format!(
                "The client application {client_id} is missing service principal in the tenant {tenant}."
            ),
        ),
    }
}

/// Checks a federated (workload identity) assertion: a federated credential of the application must match its
/// issuer, subject and audience, and the issuer's keys must verify it.
async fn federated_assertion(
    ctx: &Ctx,
    app: &crate::state::Application,
    assertion: &str,
    claims: &crate::jwt::AssertionClaims,
    ids: &RequestIds,
) -> Result<(), Response> {
    let bad = |aadsts: u32, error: &str, text: &str| {
        token_error(StatusCode::BAD_REQUEST, error, aadsts, text, ids)
    };
    let unauthorized = |aadsts: u32, text: &str| {
        token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            aadsts,
            text,
            ids,
        )
    };
    let matching = app.federated_identity_credentials.iter().find(|f| {
        f.issuer == claims.iss
            && f.subject == claims.sub
            && claims.aud.iter().any(|a| f.audiences.contains(a))
    });
    if matching.is_none() {
        let issuer_known = app
            .federated_identity_credentials
            .iter()
            .any(|f| f.issuer == claims.iss);
        return Err(if issuer_known {
            bad(
                700213,
                "invalid_request",
                &format!(
                    "No matching federated identity record found for presented assertion subject '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
                    claims.sub
                ),
            )
        } else {
            bad(
                700211,
                "invalid_request",
                &format!(
                    "No matching federated identity record found for presented assertion issuer '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
                    claims.iss
                ),
            )
        });
    }
    match ctx.issuers.verify(assertion, &claims.iss).await {
        Ok(()) => Ok(()),
        Err(AssertionProblem::Expired) => Err(bad(
            700024,
            "invalid_client",
            "Client assertion is not within its valid time range.",
        )),
        Err(AssertionProblem::IssuerUnreachable(why)) => {
            tracing::warn!(issuer = %claims.iss, %why, "cannot obtain the issuer's keys");
            Err(bad(
                50166,
                "invalid_request",
                &format!(
                    "Request to External OIDC endpoint failed: could not obtain the signing keys of issuer '{}'.",
                    claims.iss
                ),
            ))
        }
        Err(AssertionProblem::BadSignature | AssertionProblem::Malformed) => Err(unauthorized(
            50013,
            "Assertion failed signature validation.",
        )),
    }
}

/// Checks a client assertion signed with one of the application's certificates (see `certs` for the
/// format's source), answering as Entra does when it is refused.
///
/// Errors:
/// - the header names no registered certificate: 401 `invalid_client` AADSTS700027 "The certificate with
///   identifier used to sign the client assertion is not registered on application. [Reason - The key was not
///   found., Thumbprint of key used by client: '…']" (Learn Q&A threads on AADSTS700027 quote it verbatim);
/// - the signature does not verify: 401 AADSTS700027 "Client assertion failed signature validation."
///   (Learn Q&A, same threads);
/// - the certificate is outside its validity: 401 AADSTS700027 "Client assertion contains an invalid
///   signature. [Reason - The key used is expired., …, Found key 'Start=…, End=…']": the message reported for
///   expired certificates in Q&A threads; no separate code (such as 7000277) was found in Learn's list;
/// - `aud` is not this tenant's token endpoint (v2 `/oauth2/v2.0/token` or v1 `/oauth2/token`, both of which
///   Learn's certificate-credentials page allows): 401 AADSTS50012 "Client assertion audience claim does not
///   match Realm issuer." (Learn's error list: 50012 AuthenticationFailed, "invalid client assertion");
/// - outside `nbf`..`exp` (with `certs::CLOCK_SKEW_SECONDS`): 400 AADSTS700024, as for federated assertions;
/// - `iss`/`sub` not the client_id sent: 401 AADSTS700021 "Client assertion application identifier doesn't
///   match 'client_id' parameter." (from Entra's answers as reported; not in Learn's list);
/// - no `jti`, no `x5t`, unreadable: 400 `invalid_request` AADSTS50027 (invalid JWT), the emulator's choice.
fn certificate_assertion(
    app: &crate::state::Application,
    assertion: &str,
    base: &str,
    tenant: &str,
    client_id: &str,
    ids: &RequestIds,
) -> Result<(), Response> {
    use crate::certs::CertProblem;
    let unauthorized = |code: u32, text: &str| {
        token_error(StatusCode::UNAUTHORIZED, "invalid_client", code, text, ids)
    };
    let audiences = token_endpoints(base, tenant);
    let expected = crate::certs::Expected {
        audiences: &audiences,
        now: Timestamp::now(),
    };
    let claims = match crate::certs::verify(assertion, &app.key_credentials, &expected) {
        Ok(claims) => claims,
        Err(CertProblem::Malformed(why)) => {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                why,
                ids,
            ));
        }
        Err(CertProblem::UnknownKey(thumbprint)) => {
            return Err(unauthorized(
                700027,
                &format!(
                    "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                    app.app_id
                ),
            ));
        }
        Err(CertProblem::BadSignature) => {
            return Err(unauthorized(
                700027,
                "Client assertion failed signature validation.",
            ));
        }
        Err(CertProblem::KeyExpired(thumbprint, start, end)) => {
            return Err(unauthorized(
                700027,
                &format!(
                    "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '{thumbprint}', Found key 'Start={start}, End={end}']"
                ),
            ));
        }
        Err(CertProblem::WrongAudience(_)) => {
            return Err(unauthorized(
                50012,
                "Client assertion audience claim does not match Realm issuer.",
            ));
        }
        Err(CertProblem::OutsideTimeRange) => {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
                ids,
            ));
        }
    };
    if !claims.iss.eq_ignore_ascii_case(client_id) {
        return Err(unauthorized(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    Ok(())
}

/// The token endpoints an assertion may name as its audience: v2 and v1, under the tenant id or
/// `organizations`.
fn token_endpoints(base: &str, tenant: &str) -> Vec<String> {
    [tenant, "organizations"]
        .iter()
        .flat_map(|t| {
            [
                format!("{base}/{t}/oauth2/v2.0/token"),
                format!("{base}/{t}/oauth2/token"),
            ]
        })
        .collect()
}

/// The API a requested resource names and the audience of its tokens. Graph is `https://graph.microsoft.com`
/// (its tokens' audience whatever the spelling asked for), or this emulator's own URL when a client uses it
/// as its cloud's Graph: a sovereign cloud's Graph URL is its Graph audience (`https://graph.microsoft.us`),
/// and az asks for its cloud's `microsoftGraphResourceId`. ARM keeps the audience as asked; Key Vault's is its
/// resource without the trailing slash, as Key Vault's own tokens carry it.
fn audience_for(resource: &str, base: &str) -> Option<(Api, String)> {
    match Api::for_resource(resource) {
        Some(Api::Graph) => Some((Api::Graph, GRAPH_AUDIENCE.to_string())),
        Some(Api::Arm) => Some((Api::Arm, resource.to_string())),
        Some(Api::KeyVault) => Some((
            Api::KeyVault,
            resource.trim_end_matches('/').to_ascii_lowercase(),
        )),
        None if resource.trim_end_matches('/').eq_ignore_ascii_case(base) => {
            Some((Api::Graph, base.to_string()))
        }
        None => None,
    }
}

/// Signs an access token for an application's service principal (None when it has none), with its Graph
/// application permissions as roles when the token is for Graph.
fn sign(
    ctx: &Ctx,
    base: &str,
    tenant: &str,
    app_id: &str,
    api: Api,
    aud: String,
    appidacr: &str,
) -> Option<(String, i64)> {
    let (oid, roles) = {
        let world = ctx.world.lock();
        let sp = world.sp_by_app_id(app_id)?;
        (sp.id.clone(), sp.graph_permissions.clone())
    };
    let now = Timestamp::now().as_second();
    let lifetime = ctx.knobs.read().token_lifetime_seconds as i64;
    let claims = Claims {
        aud,
        iss: format!("{base}/{tenant}/v2.0"),
        iat: now,
        nbf: now,
        exp: now + lifetime,
        tid: tenant.to_string(),
        oid: oid.clone(),
        sub: oid,
        appid: app_id.to_string(),
        azp: app_id.to_string(),
        appidacr: appidacr.into(),
        idtyp: "app".into(),
        roles: if api == Api::Graph { roles } else { vec![] },
        ver: "1.0".into(),
        uti: new_id(),
    };
    Some((ctx.keys.sign(&claims), lifetime))
}

/// The managed identity endpoint as App Service and Azure Functions expose it (IDENTITY_ENDPOINT, with the
/// IDENTITY_HEADER secret): `GET ?resource=…&api-version=2019-08-01[&client_id=…]`. Numbers are strings in
/// its answer, as documented.
fn managed_identity(
    ctx: &Ctx,
    headers: &HeaderMap,
    query: &str,
    base: &str,
    tenant: &str,
    ids: &RequestIds,
) -> Response {
    let Some(configured) = ctx.world.lock().managed_identity.clone() else {
        return token_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            90002,
            "No managed identity is configured for this host.",
            ids,
        );
    };
    let header = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if header != Some(configured.identity_header.as_str()) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "The X-IDENTITY-HEADER value is missing or wrong.",
            ids,
        );
    }
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let field = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(resource) = field("resource") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request must contain the parameter 'resource'.",
            ids,
        );
    };
    let Some((api, aud)) = audience_for(resource, base) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found."),
            ids,
        );
    };
    // A user-assigned identity is chosen by client_id; otherwise the host's (system-assigned) one.
    let app_id = field("client_id").unwrap_or(&configured.app_id).to_string();
    match sign(ctx, base, tenant, &app_id, api, aud, "2") {
        Some((token, lifetime)) => {
            let expires_on = Timestamp::now().as_second() + lifetime;
            json_response(
                StatusCode::OK,
                &json!({"access_token": token, "expires_on": expires_on.to_string(), "expires_in": lifetime.to_string(),
                        "resource": resource, "token_type": "Bearer", "client_id": app_id}),
            )
        }
        None => token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            700016,
            &format!("No managed identity {app_id} is assigned to this host."),
            ids,
        ),
    }
}
