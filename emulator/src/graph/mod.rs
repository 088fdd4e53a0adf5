//! Microsoft Graph v1.0: applications (with passwords, federated identity credentials and owners),
//! service principals, deleted items, delta queries and JSON batching, with Graph's permission model for
//! application permissions (Application.ReadWrite.OwnedBy reaches only owned applications).

mod applications;
mod batch;
mod delta;
mod directory_objects;
mod keys;
mod query;
mod render;
mod service_principals;

use std::{collections::HashMap, future::Future, pin::Pin, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, Method, StatusCode, request::Parts},
    response::Response,
};
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::{
    auth::{Caller, authenticate},
    http::{RequestIds, graph_error, json_response, set_graph_ids},
    jwt::{Api, TokenProblem},
    limits::Verdict,
    server::Ctx,
};

/// One Graph request, authenticated and parsed.
pub struct Req<'a> {
    pub ctx: &'a Ctx,
    pub caller: &'a Caller,
    pub method: Method,
    pub segments: Vec<Segment>,
    pub query: HashMap<String, String>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub ids: &'a RequestIds,
    /// `https://host/v1.0`, for links in responses.
    pub base: String,
}

/// A path segment: a name, and an OData key in parentheses if any (`applications(appId='x')`).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub key: Option<(String, String)>,
}

pub async fn handle(ctx: &Ctx, parts: &Parts, body: Bytes) -> Response {
    let ids = RequestIds::new(&parts.headers);
    let caller = match authenticate(
        ctx,
        &parts.headers,
        Api::Graph,
        &crate::token::base_url(parts),
    ) {
        Ok(c) => c,
        Err(problem) => {
            let message = match problem {
                TokenProblem::Missing => "Access token is empty.",
                TokenProblem::Expired => "Lifetime validation failed, the token is expired.",
                TokenProblem::WrongAudience => "Invalid audience.",
                TokenProblem::Invalid => {
                    "Access token validation failure. Invalid audience or signature."
                }
            };
            let resp = graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
                &ids,
            );
            ctx.count("graph unauthenticated", resp.status());
            return resp;
        }
    };
    let base = format!("{}/v1.0", crate::token::base_url(parts));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rest = path_and_query.get("/v1.0".len()..).unwrap_or("");
    execute(
        ctx,
        &caller,
        parts.method.clone(),
        rest,
        &parts.headers,
        body,
        &ids,
        &base,
    )
    .await
}

/// Runs one request (a top-level one or one from a batch) through faults, throttling and the handlers.
#[allow(clippy::too_many_arguments)] // the parts of one request; a struct would only be unpacked again
pub fn execute<'a>(
    ctx: &'a Ctx,
    caller: &'a Caller,
    method: Method,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    body: Bytes,
    ids: &'a RequestIds,
    base: &'a str,
) -> Pin<Box<dyn Future<Output = Response> + Send + 'a>> {
    Box::pin(async move {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let segments = match parse_path(path) {
            Ok(s) => s,
            Err(message) => {
                let resp = graph_error(StatusCode::BAD_REQUEST, "BadRequest", &message, ids);
                ctx.count("graph unparsable path", resp.status());
                return resp;
            }
        };
        let query: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
        let route = template(&method, &segments);

        let injected = {
            let knobs = ctx.knobs.read();
            ctx.faults.lock().pick(&knobs.faults, method.as_str(), path)
        };
        if injected.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(injected.latency_ms)).await;
        }
        if let Some(ms) = injected.timeout_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let resp = graph_error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "The request timed out.",
                ids,
            );
            ctx.count(&route, resp.status());
            return resp;
        }
        if let Some(status) = injected.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = match status.as_u16() {
                429 => graph_error(status, "TooManyRequests", "Please retry again later.", ids),
                503 => graph_error(status, "serviceNotAvailable", "Service unavailable.", ids),
                504 => graph_error(status, "timeout", "The request timed out.", ids),
                _ => graph_error(
                    status,
                    "generalException",
                    "General exception while processing.",
                    ids,
                ),
            };
            if status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            ctx.count(&route, resp.status());
            return resp;
        }

        let write = method != Method::GET;
        let cost = query::cost(&method, &segments, &query);
        let verdict = {
            let knobs = ctx.knobs.read();
            ctx.limiter
                .lock()
                .graph(&knobs, &caller.app_id, cost, write)
        };
        let tenant = ctx.world.lock().tenant_id.clone();
        let mut resp = match verdict {
            Verdict::Throttled { retry_after, which } => {
                let mut resp = graph_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Please retry again later.",
                    ids,
                );
                let h = resp.headers_mut();
                h.insert("retry-after", HeaderValue::from(retry_after));
                let kind = if which == "WriteLimitExceeded" {
                    "Write"
                } else {
                    "ReadWrite"
                };
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Tenant_Application/{kind}/{}/{tenant}",
                    caller.app_id
                )) {
                    h.insert("x-ms-throttle-scope", v);
                }
                h.insert("x-ms-throttle-information", HeaderValue::from_static(which));
                resp
            }
            Verdict::Allowed { used, .. } => {
                let req = Req {
                    ctx,
                    caller,
                    method: method.clone(),
                    segments,
                    query,
                    headers,
                    body,
                    ids,
                    base: base.to_string(),
                };
                let mut resp = route_request(req).await;
                if used > 0.8
                    && let Ok(v) = HeaderValue::from_str(&format!("{:.1}", (used * 1.8).min(1.8)))
                {
                    resp.headers_mut()
                        .insert("x-ms-throttle-limit-percentage", v);
                }
                resp
            }
        };
        resp.headers_mut()
            .insert("x-ms-resource-unit", HeaderValue::from(cost));
        set_graph_ids(&mut resp, ids);
        ctx.count(&route, resp.status());
        resp
    })
}

async fn route_request(req: Req<'_>) -> Response {
    let names: Vec<&str> = req.segments.iter().map(|s| s.name.as_str()).collect();
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["$batch"] if req.method == Method::POST => batch::handle(req).await,
        ["applications", ..] => applications::handle(req),
        ["serviceprincipals", ..] => service_principals::handle(req),
        ["directory", "deleteditems", ..] => applications::deleted_items(req),
        ["directoryobjects", "getbyids"] if req.method == Method::POST => {
            directory_objects::get_by_ids(req)
        }
        ["directoryobjects", ..] if req.method == Method::GET => {
            applications::directory_object(req)
        }
        _ => not_found_segment(&req),
    }
}

pub fn not_found_segment(req: &Req) -> Response {
    let last = req.segments.last().map(|s| s.name.as_str()).unwrap_or("");
    graph_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Resource not found for the segment '{last}'."),
        req.ids,
    )
}

pub fn method_not_allowed(req: &Req) -> Response {
    graph_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        &format!(
            "The HTTP method '{}' is not supported for this resource.",
            req.method
        ),
        req.ids,
    )
}

pub fn forbidden(req: &Req) -> Response {
    graph_error(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
        req.ids,
    )
}

pub fn not_found(req: &Req, id: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
        req.ids,
    )
}

pub fn bad_request(req: &Req, message: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "Request_BadRequest",
        message,
        req.ids,
    )
}

/// The request body as a JSON object, or the error Graph gives for anything else.
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
        return Err(graph_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "The Content-Type header must be application/json.",
            req.ids,
        ));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
            req.ids,
        )),
    }
}

pub fn ok_json(status: StatusCode, body: &Value) -> Response {
    json_response(status, body)
}

pub fn no_content() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Whether the caller may read (write: false) or change (write: true) applications at all, and which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    Owned,
    Denied,
}

pub fn access(caller: &Caller, write: bool) -> Access {
    let read_all = caller.has_role("Application.Read.All") || caller.has_role("Directory.Read.All");
    if caller.has_role("Application.ReadWrite.All") || (!write && read_all) {
        Access::All
    } else if caller.has_role("Application.ReadWrite.OwnedBy") {
        Access::Owned
    } else {
        Access::Denied
    }
}

/// Whether an object created at `created` is still invisible to reads, as on a lagging replica.
pub fn not_yet_replicated(ctx: &Ctx, created: Timestamp) -> bool {
    let window = ctx.knobs.read().replication.graph_not_found_ms;
    window > 0 && Timestamp::now().duration_since(created).as_millis() < window as i128
}

/// Splits the path into segments with their OData keys, percent-decoding each.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut out = vec![];
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("Invalid segment '{raw}'."))?;
        let segment = match decoded.split_once('(') {
            // The one function called without parameters, as SDKs write it: `delta()`.
            Some((name, ")")) if name.eq_ignore_ascii_case("delta") => Segment {
                name: name.to_string(),
                key: None,
            },
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("Bad Request - Error in query syntax: '{decoded}'."))?;
                let (key_name, value) = match inner.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), v.trim()),
                    None => ("id".to_string(), inner.trim()),
                };
                let value = value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .ok_or_else(|| format!("Bad Request - Error in query syntax: '{decoded}'."))?
                    .replace("''", "'");
                Segment {
                    name: name.to_string(),
                    key: Some((key_name, value)),
                }
            }
            None => Segment {
                name: decoded.to_string(),
                key: None,
            },
        };
        out.push(segment);
    }
    Ok(out)
}

/// The route's shape for call counts: ids replaced by placeholders.
fn template(method: &Method, segments: &[Segment]) -> String {
    let mut out = format!("graph {method} ");
    for (i, s) in segments.iter().enumerate() {
        out.push('/');
        let looks_like_id = uuid::Uuid::parse_str(&s.name).is_ok();
        if looks_like_id {
            out.push_str("{id}");
        } else if i > 0 && segments[i - 1].name.eq_ignore_ascii_case("deletedItems") {
            out.push_str(if s.name.starts_with("microsoft.graph.") {
                &s.name
            } else {
                "{id}"
            });
        } else {
            out.push_str(&s.name);
        }
        if let Some((k, _)) = &s.key {
            out.push_str(&format!("({k}={{{k}}})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_odata_keys_parse() {
        let s = parse_path("/applications(uniqueName='a%2Fb''c')/addPassword").unwrap();
        assert_eq!(s[0].name, "applications");
        assert_eq!(s[0].key, Some(("uniqueName".into(), "a/b'c".into())));
        assert_eq!(s[1].name, "addPassword");
        let s = parse_path("/applications('00000000-0000-0000-0000-000000000001')").unwrap();
        assert_eq!(
            s[0].key,
            Some(("id".into(), "00000000-0000-0000-0000-000000000001".into()))
        );
        assert_eq!(
            parse_path("/applications/delta()").unwrap()[1],
            Segment {
                name: "delta".into(),
                key: None
            }
        );
        assert!(parse_path("/applications()").is_err());
        assert!(parse_path("/applications(appId=x)").is_err());
        assert!(parse_path("/applications(appId='x'").is_err());
    }

    #[test]
    fn templates_hide_ids() {
        let s =
            parse_path("/applications/00000000-0000-0000-0000-000000000001/addPassword").unwrap();
        assert_eq!(
            template(&Method::POST, &s),
            "graph POST /applications/{id}/addPassword"
        );
        let s = parse_path("/applications(uniqueName='x')").unwrap();
        assert_eq!(
            template(&Method::PATCH, &s),
            "graph PATCH /applications(uniqueName={uniqueName})"
        );
    }
}
