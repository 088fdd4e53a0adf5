//! Azure Resource Manager: Microsoft.Authorization role definitions and role assignments at any scope, and
//! AKS managedClusters (GET, resetServicePrincipalProfile as a long-running operation). Every call is
//! authorized as ARM does it: the caller's role assignments at or above the scope must allow the action.

pub mod aks;
mod assignments;
mod definitions;
pub mod resources;
pub mod roles;

use std::{collections::HashMap, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, Method, StatusCode, request::Parts},
    response::Response,
};
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::{
    auth::{Caller, authenticate},
    http::{RequestIds, arm_error, set_arm_ids},
    jwt::{Api, TokenProblem},
    limits::Verdict,
    server::Ctx,
    state::World,
};

pub const AUTHORIZATION_API_VERSIONS: &[&str] = &[
    "2022-04-01",
    "2022-05-01-preview",
    "2020-10-01-preview",
    "2020-04-01-preview",
    "2018-09-01-preview",
    "2018-01-01-preview",
    "2015-07-01",
];

/// Microsoft.Resources' subscriptions and tenants (azure-rest-api-specs `specification/resources/
/// resource-manager/Microsoft.Resources/stable/*/subscriptions.json`); az 2.91 sends 2022-12-01.
pub const SUBSCRIPTIONS_API_VERSIONS: &[&str] = &[
    "2022-12-01",
    "2022-01-01",
    "2021-01-01",
    "2020-01-01",
    "2019-11-01",
    "2019-06-01",
    "2018-06-01",
    "2016-06-01",
];

/// Microsoft.Resources' resource groups (the same folder's `resources.json`); az 2.91 sends 2024-11-01.
pub const RESOURCES_API_VERSIONS: &[&str] = &[
    "2025-04-01",
    "2025-03-01",
    "2024-11-01",
    "2024-07-01",
    "2024-03-01",
    "2023-07-01",
    "2022-09-01",
    "2021-04-01",
    "2021-01-01",
    "2020-10-01",
    "2020-08-01",
    "2020-06-01",
    "2019-10-01",
    "2019-08-01",
    "2019-07-01",
    "2019-05-10",
    "2019-05-01",
    "2019-03-01",
    "2018-05-01",
    "2018-02-01",
    "2017-05-10",
    "2016-09-01",
    "2016-07-01",
    "2016-02-01",
    "2015-11-01",
];

pub struct Req<'a> {
    pub ctx: &'a Ctx,
    pub caller: Caller,
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub ids: RequestIds,
    /// `https://host`, for URLs in responses.
    pub base: String,
}

enum Route {
    Assignments {
        scope: String,
        name: Option<String>,
    },
    Definitions {
        scope: String,
        guid: Option<String>,
    },
    Cluster {
        id: String,
        reset: bool,
    },
    /// A Key Vault (`Microsoft.KeyVault/vaults/{name}`), GET only.
    Vault {
        id: String,
    },
    /// managedClusters listed in a subscription or resource group.
    Clusters {
        scope: String,
    },
    Subscriptions {
        id: Option<String>,
    },
    Tenants,
    Groups {
        subscription: String,
        name: Option<String>,
    },
    Operation {
        subscription: String,
        location: String,
        id: String,
        result: bool,
    },
}

impl Route {
    /// The api-versions the route's resource type supports, where the emulator lists them (AKS accepts
    /// any well-formed one, since its versions come monthly).
    fn api_versions(&self) -> Option<&'static [&'static str]> {
        match self {
            Route::Assignments { .. } | Route::Definitions { .. } => {
                Some(AUTHORIZATION_API_VERSIONS)
            }
            Route::Subscriptions { .. } | Route::Tenants => Some(SUBSCRIPTIONS_API_VERSIONS),
            Route::Groups { .. } => Some(RESOURCES_API_VERSIONS),
            Route::Cluster { .. }
            | Route::Clusters { .. }
            | Route::Operation { .. }
            | Route::Vault { .. } => None,
        }
    }

    fn template(&self, method: &Method) -> String {
        let path = match self {
            Route::Assignments { name: None, .. } => {
                "{scope}/providers/Microsoft.Authorization/roleAssignments"
            }
            Route::Assignments { .. } => {
                "{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
            }
            Route::Definitions { guid: None, .. } => {
                "{scope}/providers/Microsoft.Authorization/roleDefinitions"
            }
            Route::Definitions { .. } => {
                "{scope}/providers/Microsoft.Authorization/roleDefinitions/{id}"
            }
            Route::Cluster { reset: false, .. } => "{cluster}",
            Route::Vault { .. } => "{vault}",
            Route::Cluster { reset: true, .. } => "{cluster}/resetServicePrincipalProfile",
            Route::Clusters { .. } => {
                "{scope}/providers/Microsoft.ContainerService/managedClusters"
            }
            Route::Subscriptions { id: None } => "/subscriptions",
            Route::Subscriptions { .. } => "/subscriptions/{id}",
            Route::Tenants => "/tenants",
            Route::Groups { name: None, .. } => "/subscriptions/{id}/resourcegroups",
            Route::Groups { .. } => "/subscriptions/{id}/resourcegroups/{name}",
            Route::Operation { result: false, .. } => "{location}/operations/{id}",
            Route::Operation { result: true, .. } => "{location}/operationresults/{id}",
        };
        format!("arm {method} {path}")
    }
}

fn parse(path: &str) -> Option<Route> {
    let trimmed = path.trim_end_matches('/');
    let lower = trimmed.to_ascii_lowercase();
    const AUTHZ: &str = "/providers/microsoft.authorization/";
    if let Some(at) = lower.rfind(AUTHZ) {
        let scope = if at == 0 {
            "/".to_string()
        } else {
            trimmed[..at].to_string()
        };
        let tail: Vec<&str> = trimmed[at + AUTHZ.len()..].split('/').collect();
        return match tail.as_slice() {
            [kind] if kind.eq_ignore_ascii_case("roleAssignments") => {
                Some(Route::Assignments { scope, name: None })
            }
            [kind, name] if kind.eq_ignore_ascii_case("roleAssignments") => {
                Some(Route::Assignments {
                    scope,
                    name: Some(name.to_string()),
                })
            }
            [kind] if kind.eq_ignore_ascii_case("roleDefinitions") => {
                Some(Route::Definitions { scope, guid: None })
            }
            [kind, guid] if kind.eq_ignore_ascii_case("roleDefinitions") => {
                Some(Route::Definitions {
                    scope,
                    guid: Some(guid.to_string()),
                })
            }
            _ => None,
        };
    }
    let segs: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
    let lsegs: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lsegs.iter().map(String::as_str).collect();
    if let Some(route) = parse_resources(&l, &segs) {
        return Some(route);
    }
    match l.as_slice() {
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.keyvault",
            "vaults",
            _,
        ] => Some(Route::Vault {
            id: trimmed.to_string(),
        }),
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.containerservice",
            "managedclusters",
            _,
        ] => Some(Route::Cluster {
            id: trimmed.to_string(),
            reset: false,
        }),
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.containerservice",
            "managedclusters",
            _,
            "resetserviceprincipalprofile",
        ] => Some(Route::Cluster {
            id: segs[..8].iter().fold(String::new(), |acc, s| acc + "/" + s),
            reset: true,
        }),
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.containerservice",
            "locations",
            _,
            kind @ ("operations" | "operationresults"),
            _,
        ] => Some(Route::Operation {
            subscription: segs[1].into(),
            location: segs[5].into(),
            id: segs[7].into(),
            result: *kind == "operationresults",
        }),
        _ => None,
    }
}

/// Microsoft.Resources (subscriptions, tenants, resource groups) and the AKS lists: `l` is `segs`
/// lowercased.
fn parse_resources(l: &[&str], segs: &[&str]) -> Option<Route> {
    match l {
        ["subscriptions"] => Some(Route::Subscriptions { id: None }),
        ["subscriptions", _] => Some(Route::Subscriptions {
            id: Some(segs[1].into()),
        }),
        ["tenants"] => Some(Route::Tenants),
        ["subscriptions", _, "resourcegroups"] => Some(Route::Groups {
            subscription: segs[1].into(),
            name: None,
        }),
        ["subscriptions", _, "resourcegroups", _] => Some(Route::Groups {
            subscription: segs[1].into(),
            name: Some(segs[3].into()),
        }),
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.containerservice",
            "managedclusters",
        ]
        | [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.containerservice",
            "managedclusters",
        ] => Some(Route::Clusters {
            scope: segs[..segs.len() - 3]
                .iter()
                .fold(String::new(), |acc, s| acc + "/" + s),
        }),
        _ => None,
    }
}

pub async fn handle(ctx: &Ctx, parts: &Parts, body: Bytes) -> Response {
    let ids = RequestIds::new(&parts.headers);
    let caller = match authenticate(
        ctx,
        &parts.headers,
        Api::Arm,
        &crate::token::base_url(parts),
    ) {
        Ok(c) => c,
        Err(problem) => {
            let (code, message) = match problem {
                TokenProblem::Missing => ("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.".to_string()),
                TokenProblem::Expired => (
                    "ExpiredAuthenticationToken",
                    format!("The access token expiry UTC time is earlier than current UTC time '{}'.", Timestamp::now()),
                ),
                TokenProblem::WrongAudience => (
                    "InvalidAuthenticationTokenAudience",
                    "The access token has been obtained for wrong audience or resource. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.azure.com/'.".to_string(),
                ),
                TokenProblem::Invalid => ("InvalidAuthenticationToken", "The received access token is not valid: at least one of the claims 'puid' or 'altsecid' or 'oid' should be present, or the signature is invalid.".to_string()),
            };
            let resp = arm_error(StatusCode::UNAUTHORIZED, code, &message, &ids);
            ctx.count("arm unauthenticated", resp.status());
            return resp;
        }
    };
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .to_string();
    let Some(route) = parse(&path) else {
        let resp = arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for the path '{path}'."),
            &ids,
        );
        ctx.count("arm unknown route", resp.status());
        return resp;
    };
    let template = route.template(&parts.method);

    let version = query.get("api-version").cloned();
    let version_error = match (&route, version.as_deref()) {
        (_, None) => Some(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
            &ids,
        )),
        (route, Some(v))
            if route
                .api_versions()
                .is_some_and(|supported| !supported.contains(&v)) =>
        {
            Some(arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                &format!(
                    "The api-version '{v}' is invalid. The supported versions are '{}'.",
                    route.api_versions().unwrap_or_default().join(",")
                ),
                &ids,
            ))
        }
        (_, Some(v)) if !looks_like_api_version(v) => Some(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!("The api-version '{v}' is invalid."),
            &ids,
        )),
        _ => None,
    };
    if let Some(resp) = version_error {
        ctx.count(&template, resp.status());
        return resp;
    }

    let injected = {
        let knobs = ctx.knobs.read();
        ctx.faults
            .lock()
            .pick(&knobs.faults, parts.method.as_str(), &path)
    };
    if injected.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(injected.latency_ms)).await;
    }
    if let Some(ms) = injected.timeout_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let resp = arm_error(
            StatusCode::GATEWAY_TIMEOUT,
            "GatewayTimeout",
            "The gateway did not receive a response within the specified time period.",
            &ids,
        );
        ctx.count(&template, resp.status());
        return resp;
    }
    if let Some(status) = injected.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = match status.as_u16() {
            429 => arm_error(
                status,
                "TooManyRequests",
                "The request is being throttled.",
                &ids,
            ),
            503 => arm_error(
                status,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
                &ids,
            ),
            _ => arm_error(
                status,
                "InternalServerError",
                "Encountered internal server error.",
                &ids,
            ),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        ctx.count(&template, resp.status());
        return resp;
    }

    let kind = match parts.method {
        Method::GET | Method::HEAD => "reads",
        Method::DELETE => "deletes",
        _ => "writes",
    };
    let verdict = {
        let knobs = ctx.knobs.read();
        ctx.limiter.lock().arm(&knobs, &caller.oid, kind)
    };
    let tenant_level = path.to_ascii_lowercase().starts_with("/providers");
    let header = format!(
        "x-ms-ratelimit-remaining-{}-{kind}",
        if tenant_level {
            "tenant"
        } else {
            "subscription"
        }
    );
    let mut resp = match verdict {
        Verdict::Throttled { retry_after, .. } => {
            let op = match kind {
                "reads" => "Read",
                "deletes" => "Delete",
                _ => "Write",
            };
            let mut resp = arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                &format!(
                    "The request is being throttled as the limit has been reached for operation type - {op}. For more information, see - https://aka.ms/armthrottling"
                ),
                &ids,
            );
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after));
            resp.headers_mut().insert(
                axum::http::HeaderName::from_bytes(header.as_bytes()).expect("valid"),
                HeaderValue::from(0),
            );
            resp
        }
        Verdict::Allowed { remaining, .. } => {
            let req = Req {
                ctx,
                caller,
                method: parts.method.clone(),
                query,
                headers: &parts.headers,
                body,
                ids: ids.clone(),
                base: crate::token::base_url(parts),
            };
            let mut resp = match route {
                Route::Assignments { scope, name } => {
                    assignments::handle(&req, &scope, name.as_deref())
                }
                Route::Definitions { scope, guid } => {
                    definitions::handle(&req, &scope, guid.as_deref())
                }
                Route::Cluster { id, reset } => aks::cluster(&req, &id, reset),
                Route::Vault { id } => resources::vault(&req, &id),
                Route::Clusters { scope } => aks::list(&req, &scope),
                Route::Subscriptions { id } => resources::subscription(&req, id.as_deref()),
                Route::Tenants => resources::tenants(&req),
                Route::Groups { subscription, name } => {
                    resources::group(&req, &subscription, name.as_deref())
                }
                Route::Operation {
                    subscription,
                    location,
                    id,
                    result,
                } => aks::operation(&req, &subscription, &location, &id, result),
            };
            resp.headers_mut().insert(
                axum::http::HeaderName::from_bytes(header.as_bytes()).expect("valid"),
                HeaderValue::from(remaining),
            );
            resp
        }
    };
    set_arm_ids(&mut resp, &ids);
    ctx.count(&template, resp.status());
    resp
}

fn looks_like_api_version(v: &str) -> bool {
    let date = v.split('-').take(3).collect::<Vec<_>>();
    date.len() == 3
        && date[0].len() == 4
        && date.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// Whether scope `outer` is `inner` or one of its ancestors (ARM ids compare case-insensitively).
pub fn at_or_above(outer: &str, inner: &str) -> bool {
    let o = outer.trim_end_matches('/').to_ascii_lowercase();
    let i = inner.trim_end_matches('/').to_ascii_lowercase();
    o.is_empty() || i == o || i.starts_with(&format!("{o}/"))
}

/// Whether `principal` holds, at `scope` or above, a role that allows `action`.
pub fn authorized(world: &World, principal: &str, scope: &str, action: &str) -> bool {
    world
        .arm
        .role_assignments
        .values()
        .filter(|a| a.principal_id.eq_ignore_ascii_case(principal) && at_or_above(&a.scope, scope))
        .any(|a| {
            let guid = roles::guid_of(&a.role_definition_id).to_ascii_lowercase();
            roles::builtin_by_guid(&guid)
                .or_else(|| world.arm.custom_roles.get(&guid))
                .is_some_and(|r| roles::allows(r, action))
        })
}

pub fn authorization_failed(req: &Req, action: &str, scope: &str) -> Response {
    arm_error(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            req.caller.app_id, req.caller.oid
        ),
        &req.ids,
    )
}

/// The 404 ARM gives for a scope that does not exist, naming the first missing level; None if it exists.
pub fn missing_scope(req: &Req, world: &World, scope: &str) -> Option<Response> {
    if scope == "/" || world.scope_exists(scope) {
        return None;
    }
    let segs: Vec<&str> = scope.trim_matches('/').split('/').collect();
    let not_found = |code: &str, message: String| {
        Some(arm_error(StatusCode::NOT_FOUND, code, &message, &req.ids))
    };
    if segs.len() >= 2 && segs[0].eq_ignore_ascii_case("subscriptions") {
        let sub = format!("/subscriptions/{}", segs[1]);
        if !world.scope_exists(&sub) {
            return not_found(
                "SubscriptionNotFound",
                format!("The subscription '{}' could not be found.", segs[1]),
            );
        }
        if segs.len() >= 4 && segs[2].eq_ignore_ascii_case("resourceGroups") {
            let rg = format!("{sub}/resourceGroups/{}", segs[3]);
            if !world.scope_exists(&rg) {
                return not_found(
                    "ResourceGroupNotFound",
                    format!("Resource group '{}' could not be found.", segs[3]),
                );
            }
            let what = segs[4..]
                .iter()
                .skip(1)
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            return not_found(
                "ResourceNotFound",
                format!(
                    "The Resource '{what}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
                    segs[3]
                ),
            );
        }
    }
    not_found(
        "ResourceNotFound",
        format!("The scope '{scope}' was not found."),
    )
}

/// The request body as a JSON object, or ARM's error for anything else.
pub fn body_object(req: &Req) -> Result<Map<String, Value>, Response> {
    let content_type = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(arm_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "The content media type '{content_type}' is not supported. Only 'application/json' is supported."
            ),
            &req.ids,
        ));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: the body must be a JSON object.",
            &req.ids,
        )),
        Err(e) => Err(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            &format!("The request content was invalid and could not be deserialized: '{e}'."),
            &req.ids,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route() {
        let sub = "/subscriptions/11111111-2222-3333-4444-555555555555";
        match parse(&format!(
            "{sub}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s/providers/Microsoft.Authorization/roleAssignments/x"
        )) {
            Some(Route::Assignments { scope, name }) => {
                assert_eq!(
                    scope,
                    format!(
                        "{sub}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
                    )
                );
                assert_eq!(name.as_deref(), Some("x"));
            }
            _ => panic!(),
        }
        assert!(
            matches!(parse("/providers/Microsoft.Authorization/roleDefinitions/g"), Some(Route::Definitions { scope, .. }) if scope == "/")
        );
        assert!(matches!(
            parse(&format!(
                "{sub}/resourcegroups/rg/providers/Microsoft.ContainerService/managedClusters/c/resetServicePrincipalProfile"
            )),
            Some(Route::Cluster { reset: true, .. })
        ));
        assert!(matches!(
            parse(&format!(
                "{sub}/providers/Microsoft.ContainerService/locations/eastus/operationresults/abc"
            )),
            Some(Route::Operation { result: true, .. })
        ));
        assert!(matches!(
            parse(&format!("{sub}/resourceGroups/rg")),
            Some(Route::Groups { name: Some(n), .. }) if n == "rg"
        ));
        assert!(matches!(
            parse(&format!("{sub}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters")),
            Some(Route::Clusters { scope }) if scope == format!("{sub}/resourceGroups/rg")
        ));
        // What the emulator does not model stays unknown (InvalidResourceType), as before.
        assert!(
            parse(&format!(
                "{sub}/resourceGroups/rg/providers/Microsoft.Compute/disks/d"
            ))
            .is_none()
        );
    }

    #[test]
    fn scope_ancestry() {
        assert!(at_or_above(
            "/subscriptions/S",
            "/subscriptions/s/resourceGroups/rg"
        ));
        assert!(!at_or_above(
            "/subscriptions/s/resourceGroups/rg",
            "/subscriptions/s/resourceGroups/rg2"
        ));
        assert!(!at_or_above(
            "/subscriptions/s/resourceGroups/rg",
            "/subscriptions/s/resourceGroups/rg-2"
        ));
        assert!(at_or_above("/", "/subscriptions/s"));
    }
}
