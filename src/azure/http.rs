//! The request pipeline Graph and ARM share: a token for the service's scope from the operator's credential,
//! the request, a count in the metrics, and failures turned into `AzureError`s. Both services answer errors
//! as `{"error":{"code","message"}}`; only the request-id header differs. Every request goes through its
//! budget's `Throttle`, and a 429 is waited out here (up to `MAX_THROTTLE_WAIT`), not by the reconcile.

use std::{sync::Arc, time::Duration};

use azure_core::credentials::TokenCredential;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    error::{AzureError, retry_after},
    throttle::{Signal, Throttle},
};
use crate::telemetry::metrics::Metrics;

/// How long one request may wait out 429s before its caller sees the throttle (and requeues).
const MAX_THROTTLE_WAIT: Duration = super::throttle::MAX_PAUSE;
/// Graph's `x-ms-throttle-limit-percentage` at which to hold back: the header starts at 0.8, far before the
/// limit, and throttling at 0.8 would give away a fifth of the budget.
const GRAPH_NEAR_LIMIT: f64 = 0.99;

/// The budgets Azure counts separately: Graph counts writes against their own limit, ARM reads, writes and
/// deletes each against a bucket.
#[derive(Debug, Default)]
struct Budgets {
    reads: Throttle,
    writes: Throttle,
    deletes: Throttle,
}

#[derive(Clone)]
pub struct Service {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    endpoint: String,
    scope: String,
    /// "graph" or "arm": the metrics' service label, and the prefix of operation names.
    name: &'static str,
    request_id_header: &'static str,
    metrics: Option<Arc<Metrics>>,
    budgets: Arc<Budgets>,
}

impl Service {
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        endpoint: &str,
        scope: &str,
        name: &'static str,
        request_id_header: &'static str,
    ) -> Self {
        Service {
            http,
            credential,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            scope: scope.to_string(),
            name,
            request_id_header,
            metrics: None,
            budgets: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, operation: &str, status: u16) {
        if let Some(m) = &self.metrics {
            let op = operation
                .strip_prefix(self.name)
                .map(str::trim_start)
                .unwrap_or(operation);
            m.azure_call(self.name, op, status);
        }
    }

    /// Sends one request to `{endpoint}{path}`; a success's JSON body (None when empty), or the error.
    pub async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Option<Value>), AzureError> {
        self.send_full(operation, method, path, body, headers)
            .await
            .map(|(status, _, body)| (status, body))
    }

    fn budget(&self, method: &Method) -> &Throttle {
        match *method {
            Method::GET | Method::HEAD => &self.budgets.reads,
            Method::DELETE if self.name == "arm" => &self.budgets.deletes,
            _ => &self.budgets.writes,
        }
    }

    /// What a response says about its budget: Retry-After on a 429; ARM's remaining count, or Graph's
    /// percentage of the limit used, when the next requests could spend the rest.
    fn signal(
        &self,
        budget: &Throttle,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
    ) -> Signal {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Signal::Throttled(retry_after(headers).unwrap_or(Duration::from_secs(1)));
        }
        let number = |v: &reqwest::header::HeaderValue| v.to_str().ok()?.trim().parse::<f64>().ok();
        let near = headers.iter().any(|(name, value)| {
            let name = name.as_str();
            if name.starts_with("x-ms-ratelimit-remaining-subscription-")
                || name.starts_with("x-ms-ratelimit-remaining-tenant-")
            {
                number(value).is_some_and(|left| budget.near(left.max(0.0) as u64))
            } else if name == "x-ms-throttle-limit-percentage" {
                number(value).is_some_and(|used| used >= GRAPH_NEAR_LIMIT)
            } else {
                false
            }
        });
        if near { Signal::NearLimit } else { Signal::Ok }
    }

    /// As `send`, with the response's headers (a long-running operation's Location, for one).
    pub async fn send_full(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Option<Value>), AzureError> {
        let budget = self.budget(&method);
        let mut waited = Duration::ZERO;
        let (status, response_headers, bytes) = loop {
            let permit = budget.acquire().await;
            let token = self
                .credential
                .get_token(&[self.scope.as_str()], None)
                .await
                .map_err(|e| AzureError::Credential(e.to_string()))?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.endpoint))
                .bearer_auth(token.token.secret());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|source| {
                self.count(operation, 0);
                AzureError::Transport { operation, source }
            })?;
            let status = resp.status();
            self.count(operation, status.as_u16());
            let response_headers = resp.headers().clone();
            let bytes = resp
                .bytes()
                .await
                .map_err(|source| AzureError::Transport { operation, source })?;
            drop(permit);
            let signal = self.signal(budget, status, &response_headers);
            budget.learn(signal);
            match signal {
                // Not processed, so safe to send again, writes included; the budget's pause is the wait.
                Signal::Throttled(after) if waited + after <= MAX_THROTTLE_WAIT => waited += after,
                _ => break (status, response_headers, bytes),
            }
        };
        if status.is_success() {
            let value = if bytes.is_empty() {
                None
            } else {
                serde_json::from_slice(&bytes).ok()
            };
            return Ok((status, response_headers, value));
        }
        let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(AzureError::Api {
            operation,
            status: status.as_u16(),
            code: error["error"]["code"]
                .as_str()
                .unwrap_or("Unknown")
                .to_string(),
            message: error["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            request_id: response_headers
                .get(self.request_id_header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            retry_after: retry_after(&response_headers),
        })
    }

    /// The claims of the token this service sends (from the credential's cache when it holds one), unverified:
    /// what the operator's identity was granted, as Entra put it in the token. None when the token is not a
    /// JWT.
    pub async fn token_claims(&self) -> Result<Option<Value>, AzureError> {
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| AzureError::Credential(e.to_string()))?;
        Ok(super::credential::claims(token.token.secret()))
    }

    /// The path and query of an absolute URL on this service's endpoint (where a long-running operation is
    /// polled); None for any other host, which is never sent the operator's token.
    pub fn path_of<'a>(&self, url: &'a str) -> Option<&'a str> {
        url.strip_prefix(self.endpoint.trim_end_matches('/'))
            .filter(|rest| rest.starts_with('/'))
    }

    /// GET of one object that may not exist: 404 is None, not an error.
    pub async fn get_opt<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Option<T>, AzureError> {
        match self.send(operation, Method::GET, path, None, &[]).await {
            Ok((_, body)) => parse(operation, body).map(Some),
            Err(AzureError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A success's body as `T`, or the error saying the answer did not have the documented shape.
pub fn parse<T: DeserializeOwned>(
    operation: &'static str,
    value: Option<Value>,
) -> Result<T, AzureError> {
    let value = value.ok_or_else(|| AzureError::Unexpected {
        operation,
        detail: "empty body".into(),
    })?;
    serde_json::from_value(value).map_err(|e| AzureError::Unexpected {
        operation,
        detail: e.to_string(),
    })
}
