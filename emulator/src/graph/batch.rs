//! JSON batching (`POST /$batch`): up to 20 requests, ids unique case-insensitively, `dependsOn` ordering
//! with 424 for dependents of a failed request; each request is throttled and counted on its own.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

use super::{Req, body_object, ok_json};
use crate::http::graph_error;

struct Item {
    id: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Option<Value>,
    depends_on: Vec<String>,
}

pub async fn handle(req: Req<'_>) -> Response {
    let bad = |message: &str| graph_error(StatusCode::BAD_REQUEST, "BadRequest", message, req.ids);
    let body = match body_object(&req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return bad("Invalid batch payload format: 'requests' is required.");
    };
    if requests.is_empty() || requests.len() > 20 {
        return bad("Invalid batch payload format: a batch holds 1 to 20 requests.");
    }
    let mut items = vec![];
    for r in requests {
        let Some(id) = r
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return bad("Invalid batch payload format: every request needs an 'id'.");
        };
        if items.iter().any(|i: &Item| i.id.eq_ignore_ascii_case(id)) {
            return bad(&format!(
                "Invalid batch payload format: duplicate request id '{id}'."
            ));
        }
        let Some(method) = r
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
        else {
            return bad(&format!(
                "Invalid batch payload format: request '{id}' has no valid 'method'."
            ));
        };
        let Some(url) = r
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| !u.starts_with("http"))
        else {
            return bad(&format!(
                "Invalid batch payload format: request '{id}' needs a relative 'url'."
            ));
        };
        let mut headers = HeaderMap::new();
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(value))) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    headers.insert(name, value);
                }
            }
        }
        let body = r.get("body").cloned();
        if body.is_some() && !headers.contains_key("content-type") {
            return bad(&format!(
                "Invalid batch payload format: request '{id}' has a body but no Content-Type header."
            ));
        }
        let depends_on = match r.get("dependsOn") {
            None => vec![],
            Some(Value::Array(d)) => d
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                return bad(&format!(
                    "Invalid batch payload format: request '{id}' has an invalid 'dependsOn'."
                ));
            }
        };
        items.push(Item {
            id: id.to_string(),
            method,
            url: url.to_string(),
            headers,
            body,
            depends_on,
        });
    }
    for item in &items {
        for d in &item.depends_on {
            if !items.iter().any(|i| i.id.eq_ignore_ascii_case(d)) {
                return bad(&format!(
                    "Invalid batch payload format: request '{}' depends on unknown request '{d}'.",
                    item.id
                ));
            }
        }
    }

    // Run in dependency order: repeatedly take the first request whose dependencies have all run.
    let mut status: HashMap<String, u16> = HashMap::new();
    let mut responses = vec![];
    let mut pending: Vec<&Item> = items.iter().collect();
    while !pending.is_empty() {
        let Some(pos) = pending.iter().position(|i| {
            i.depends_on
                .iter()
                .all(|d| status.contains_key(&d.to_ascii_lowercase()))
        }) else {
            return bad("Invalid batch payload format: the dependsOn graph has a cycle.");
        };
        let item = pending.remove(pos);
        let failed_dependency = item.depends_on.iter().any(|d| {
            status
                .get(&d.to_ascii_lowercase())
                .is_some_and(|s| *s >= 400)
        });
        let (code, headers, body) = if failed_dependency {
            (
                424,
                json!({}),
                json!({"error": {"code": "FailedDependency", "message": "A request this one depends on failed."}}),
            )
        } else {
            let path = if item.url.starts_with('/') {
                item.url.clone()
            } else {
                format!("/{}", item.url)
            };
            let body_bytes = item
                .body
                .as_ref()
                .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
                .unwrap_or_default();
            let resp = super::execute(
                req.ctx,
                req.caller,
                item.method.clone(),
                &path,
                &item.headers,
                body_bytes,
                req.ids,
                &req.base,
            )
            .await;
            let code = resp.status().as_u16();
            let mut headers = serde_json::Map::new();
            for (k, v) in resp.headers() {
                if let Ok(v) = v.to_str() {
                    headers.insert(k.as_str().to_string(), json!(v));
                }
            }
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
            (code, Value::Object(headers), body)
        };
        status.insert(item.id.to_ascii_lowercase(), code);
        let mut entry = json!({"id": item.id, "status": code, "headers": headers});
        if !body.is_null() {
            entry["body"] = body;
        }
        responses.push(entry);
    }
    ok_json(StatusCode::OK, &json!({"responses": responses}))
}
