//! Error and response shapes of the three API families, as clients branch on them: Graph's OData error,
//! ARM's CloudError, and the Entra token endpoint's OAuth error with its AADSTS code.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use jiff::Timestamp;
use serde_json::{Value, json};

/// Ids that tie a response to its request, echoed in headers and error bodies.
#[derive(Clone, Debug)]
pub struct RequestIds {
    pub request_id: String,
    pub client_request_id: String,
}

impl RequestIds {
    pub fn new(headers: &HeaderMap) -> Self {
        let request_id = crate::state::new_id();
        let client_request_id = headers
            .get("client-request-id")
            .or_else(|| headers.get("x-ms-client-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| request_id.clone());
        RequestIds {
            request_id,
            client_request_id,
        }
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Graph: `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.
pub fn graph_error(status: StatusCode, code: &str, message: &str, ids: &RequestIds) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id,
            }
        }
    });
    let mut resp = json_response(status, &body);
    set_graph_ids(&mut resp, ids);
    resp
}

pub fn set_graph_ids(resp: &mut Response, ids: &RequestIds) {
    if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ids.client_request_id) {
        resp.headers_mut().insert("client-request-id", v);
    }
}

/// ARM: `{"error":{"code","message"}}` (common-types ErrorResponse).
pub fn arm_error(status: StatusCode, code: &str, message: &str, ids: &RequestIds) -> Response {
    let mut resp = json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    );
    set_arm_ids(&mut resp, ids);
    resp
}

pub fn set_arm_ids(resp: &mut Response, ids: &RequestIds) {
    for name in [
        "x-ms-request-id",
        "x-ms-correlation-request-id",
        "x-ms-routing-request-id",
    ] {
        let value = if name == "x-ms-routing-request-id" {
            format!(
                "LOCAL:{}:{}",
                Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
                ids.request_id
            )
        } else {
            ids.request_id.clone()
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
}

/// Entra token endpoint: `{"error","error_description","error_codes","timestamp","trace_id","correlation_id"}`,
/// the description starting with the AADSTS code and ending with the trace lines.
pub fn token_error(
    status: StatusCode,
    error: &str,
    aadsts: u32,
    description: &str,
    ids: &RequestIds,
) -> Response {
    let now = Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{aadsts}: {description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {now}",
            ids.request_id, ids.client_request_id
        ),
        "error_codes": [aadsts],
        "timestamp": now,
        "trace_id": ids.request_id,
        "correlation_id": ids.client_request_id,
    });
    json_response(status, &body)
}

/// Formats a timestamp as Graph and ARM do: RFC 3339, UTC, with a `Z` and at most 7 fractional digits
/// (.NET's tick precision, which strict parsers of Azure's output may assume).
pub fn rfc3339(t: Timestamp) -> String {
    let ticks = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Nanosecond)
        .increment(100);
    t.round(ticks).unwrap_or(t).to_string()
}
