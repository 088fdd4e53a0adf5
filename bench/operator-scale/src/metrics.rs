//! Counters read from Prometheus text: the API server's requests by verb (every client, for the delta of one
//! phase) and the operator's reconciliations by kind; and the operator's duration syntax for the flags.

use std::time::Duration;

use kube::Client;
use serde_json::{Value, json};

/// The API server's request counter by verb (from its /metrics), for the delta of one phase: every client.
pub async fn apiserver_requests(
    client: &Client,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(sum_by_label(&text, "apiserver_request_total", "verb"))
}

/// A Prometheus counter in text exposition, summed by one label's value.
pub fn sum_by_label(
    text: &str,
    metric: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let (prefix, key) = (format!("{metric}{{"), format!("{label}=\""));
    let mut sums = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let value = line
            .split(key.as_str())
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *sums.entry(value.to_string()).or_insert(0.0) += n;
    }
    sums
}

pub fn diff(
    after: &std::collections::BTreeMap<String, f64>,
    before: &std::collections::BTreeMap<String, f64>,
) -> Value {
    after
        .iter()
        .map(|(verb, n)| {
            (
                verb.clone(),
                json!(n - before.get(verb).copied().unwrap_or(0.0)),
            )
        })
        .filter(|(_, n)| n.as_f64().is_some_and(|n| n > 0.0))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let d: entra_operator::api::Duration = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(d.as_std())
}
