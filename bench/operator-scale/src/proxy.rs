//! A counting proxy between the operator and the API server, so that API server requests can be attributed to
//! the operator alone: kube-apiserver's `apiserver_request_total` has no client label, and testenv keeps no
//! audit log. The operator gets a kubeconfig for `http://127.0.0.1:<port>`; each request is counted by verb
//! (as the API server names them: GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION) and
//! resource, then sent on through the benchmark's own client (testenv's admin credentials, which the operator
//! would otherwise use directly), its answer streamed back (watches included).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Requests by (verb, resource).
type Counts = Mutex<BTreeMap<(String, String), u64>>;

pub struct Proxy {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    client: kube::Client,
    counts: Arc<Counts>,
}

impl Proxy {
    pub async fn start(client: kube::Client) -> anyhow::Result<Proxy> {
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            client,
            counts: counts.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("   API server proxy stopped: {e}");
            }
        });
        Ok(Proxy { addr, counts, task })
    }

    /// Writes a kubeconfig that reaches the API server through this proxy.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "bench-proxy", "cluster": {"server": format!("http://{}", self.addr)}}],
            "users": [{"name": "bench-proxy", "user": {}}],
            "contexts": [{"name": "bench-proxy", "context": {"cluster": "bench-proxy", "user": "bench-proxy"}}],
            "current-context": "bench-proxy",
        });
        std::fs::write(path, serde_json::to_string_pretty(&config)?)?;
        Ok(())
    }

    /// The requests counted since the last take, and resets them: `{"byVerb": {..}, "byVerbAndResource": {..}}`.
    pub fn take(&self) -> Value {
        let taken = std::mem::take(&mut *self.counts.lock().expect("not poisoned"));
        let mut by_verb: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_resource: BTreeMap<String, u64> = BTreeMap::new();
        for ((verb, resource), n) in taken {
            *by_verb.entry(verb.clone()).or_default() += n;
            *by_resource.entry(format!("{verb} {resource}")).or_default() += n;
        }
        let total: u64 = by_verb.values().sum();
        json!({"total": total, "byVerb": by_verb, "byVerbAndResource": by_resource})
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (verb, resource) = classify(&parts.method, &parts.uri, &parts.headers);
    *shared
        .counts
        .lock()
        .expect("not poisoned")
        .entry((verb.to_string(), resource))
        .or_default() += 1;
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = http::Request::builder().method(parts.method).uri(path);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    let out = match out.body(kube::client::Body::from(bytes)) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match shared.client.send(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for name in [
                header::CONNECTION,
                header::TRANSFER_ENCODING,
                header::UPGRADE,
            ] {
                parts.headers.remove(name);
            }
            parts.headers.remove("keep-alive");
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::HOST,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// The verb and resource the API server would record for a request.
fn classify(method: &Method, uri: &Uri, headers: &HeaderMap) -> (&'static str, String) {
    let segments: Vec<&str> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => {
            // Discovery (/api, /apis, /version, /openapi) and anything else outside the resource tree.
            return (
                if method == Method::GET {
                    "GET"
                } else {
                    "OTHER"
                },
                "(discovery)".into(),
            );
        }
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (resource, name, subresource) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [] => ("(discovery)", None, None),
    };
    let watch = watch_path
        || uri
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        Method::GET if watch => "WATCH",
        Method::GET if name.is_none() => "LIST",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH
            if headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/apply-patch")) =>
        {
            "APPLY"
        }
        Method::PATCH => "PATCH",
        Method::DELETE if name.is_none() => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verb(method: Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().unwrap(), &HeaderMap::new())
    }

    #[test]
    fn requests_are_classified_as_the_api_server_counts_them() {
        assert_eq!(
            verb(
                Method::GET,
                "/apis/entra-operator.io/v1alpha1/namespaces/a/serviceprincipals?limit=500"
            ),
            ("LIST", "serviceprincipals".into())
        );
        assert_eq!(
            verb(
                Method::GET,
                "/apis/entra-operator.io/v1alpha1/namespaces/a/serviceprincipals?watch=true&resourceVersion=1"
            ),
            ("WATCH", "serviceprincipals".into())
        );
        assert_eq!(
            verb(Method::GET, "/api/v1/namespaces/a/secrets/x"),
            ("GET", "secrets".into())
        );
        assert_eq!(
            verb(Method::GET, "/api/v1/namespaces/a"),
            ("GET", "namespaces".into())
        );
        assert_eq!(
            verb(
                Method::PATCH,
                "/apis/entra-operator.io/v1alpha1/namespaces/a/roledelegations/x/status"
            ),
            ("PATCH", "roledelegations/status".into())
        );
        assert_eq!(
            verb(Method::POST, "/api/v1/namespaces/a/events"),
            ("POST", "events".into())
        );
        assert_eq!(
            verb(Method::DELETE, "/api/v1/namespaces/a/secrets"),
            ("DELETECOLLECTION", "secrets".into())
        );
        assert_eq!(verb(Method::GET, "/apis"), ("GET", "(discovery)".into()));
        let mut apply = HeaderMap::new();
        apply.insert(
            header::CONTENT_TYPE,
            "application/apply-patch+yaml".parse().unwrap(),
        );
        assert_eq!(
            classify(
                &Method::PATCH,
                &"/api/v1/namespaces/a/secrets/x".parse().unwrap(),
                &apply
            )
            .0,
            "APPLY"
        );
    }
}
