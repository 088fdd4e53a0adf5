//! The HTTPS server: one listener for all APIs (Entra token endpoint, Graph under /v1.0, ARM under
//! /subscriptions and /providers, the admin API under /_emulator, Key Vault by its vault Host header), the
//! CONNECT proxy that tunnels vault hosts to it, the shared state they work on, and the persistence of that
//! state.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    response::Response,
};
use parking_lot::{Mutex, RwLock};

use crate::{
    config::{Config, Knobs},
    jwt::{IssuerKeys, TokenKeys},
    limits::{Faults, Limiter},
    pki::Pki,
    state::World,
};

/// Everything the handlers share.
pub struct Shared {
    pub world: Mutex<World>,
    pub knobs: RwLock<Knobs>,
    pub keys: TokenKeys,
    pub issuers: IssuerKeys,
    pub jwk: (String, String, String),
    pub limiter: Mutex<Limiter>,
    pub faults: Mutex<Faults>,
    /// Calls by route template, then by status.
    pub calls: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// The main listener's URL (`https://127.0.0.1:8443`): the authority Key Vault's challenge names, whatever
    /// host a vault request came in on.
    pub base_url: String,
    state_file: Option<PathBuf>,
    dirty: AtomicBool,
}

pub type Ctx = Arc<Shared>;

impl Shared {
    /// Marks the state as changed, for the next snapshot.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn count(&self, route: &str, status: StatusCode) {
        *self
            .calls
            .lock()
            .entry(route.to_string())
            .or_default()
            .entry(status.as_u16())
            .or_default() += 1;
    }

    fn snapshot(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*self.world.lock())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

pub struct Options {
    pub config: Config,
    pub state_dir: PathBuf,
    /// Keep objects across restarts (in state_dir/state.json).
    pub persist: bool,
    pub listen: SocketAddr,
    /// Extra names for the server certificate.
    pub hostnames: Vec<String>,
}

/// A running emulator.
pub struct Running {
    pub addr: SocketAddr,
    pub base_url: String,
    pub ca_file: PathBuf,
    /// The CONNECT proxy for vault hosts, as clients' `HTTPS_PROXY` (`http://127.0.0.1:40123`).
    pub proxy_url: String,
    pub ctx: Ctx,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    proxy: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving and writes a final snapshot.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.proxy.abort();
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        let _ = self.task.await;
        self.ctx.snapshot()
    }
}

pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut names = opts.hostnames.clone();
    // Vault hosts are served too (through the proxy or a Host header), under the real names.
    names.extend(
        crate::keyvault::DNS_SUFFIXES
            .iter()
            .map(|(suffix, _)| format!("*{suffix}")),
    );
    let pki = Pki::load_or_create(&opts.state_dir, &names)?;
    let state_file = opts.persist.then(|| opts.state_dir.join("state.json"));
    let mut world = match &state_file {
        Some(f) if f.exists() => serde_json::from_slice(&std::fs::read(f)?)?,
        _ => World::from_seed(&opts.config.seed)?,
    };
    world.directory.rebuild_index();

    let listener = std::net::TcpListener::bind(opts.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let proxy_listener =
        tokio::net::TcpListener::bind(SocketAddr::new(opts.listen.ip(), opts.config.proxy_listen))
            .await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let base_url = format!("https://{host}:{}", addr.port());

    let ctx = Arc::new(Shared {
        world: Mutex::new(world),
        faults: Mutex::new(Faults::new(opts.config.knobs.random_seed)),
        knobs: RwLock::new(opts.config.knobs.clone()),
        keys: TokenKeys::new(&pki)?,
        issuers: IssuerKeys::new(opts.config.seed.trusted_issuers.clone()),
        jwk: (pki.kid.clone(), pki.jwk_n.clone(), pki.jwk_e.clone()),
        limiter: Mutex::new(Limiter::default()),
        calls: Mutex::new(BTreeMap::new()),
        base_url: base_url.clone(),
        dirty: AtomicBool::new(state_file.is_some()),
        state_file,
    });

    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        pki.server_cert_pem.into_bytes(),
        pki.server_key_pem.into_bytes(),
    )
    .await?;
    let handle = axum_server::Handle::new();
    let app = router(ctx.clone());
    let proxy = tokio::spawn(crate::keyvault::proxy::serve(
        proxy_listener,
        ctx.clone(),
        tls.get_inner(),
        app.clone(),
    ));
    let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });

    // Snapshots are written in the background, at most once a second, so that a burst of writes costs one.
    let snap = Arc::downgrade(&ctx);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(ctx) = snap.upgrade() else { break };
            if let Err(e) = ctx.snapshot() {
                tracing::warn!(error = %e, "could not write the state snapshot");
            }
        }
    });

    Ok(Running {
        addr,
        base_url,
        ca_file: pki.ca_file,
        proxy_url: format!("http://{host}:{}", proxy_addr.port()),
        ctx,
        handle,
        task,
        proxy,
    })
}

fn router(ctx: Ctx) -> Router {
    Router::new().fallback(dispatch).with_state(ctx)
}

/// Routes by path prefix. The APIs' paths (OData keys in parentheses, ARM scopes of any depth) do not fit
/// a pattern router, so each API parses its own.
async fn dispatch(State(ctx): State<Ctx>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let limit = ctx.knobs.read().max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(&parts),
    };
    let path = parts.uri.path().to_string();
    let lower = path.to_ascii_lowercase();
    if let Some(vault) = request_host(&parts).and_then(crate::keyvault::parse_host) {
        crate::keyvault::handle(&ctx, &parts, body, vault).await
    } else if lower.starts_with("/_emulator/") {
        crate::admin::handle(&ctx, &parts, body).await
    } else if lower.starts_with("/v1.0/") || lower == "/v1.0" {
        crate::graph::handle(&ctx, &parts, body).await
    } else if lower.trim_start_matches('/') == "metadata/endpoints" {
        // az joins `--endpoint-resource-manager` and the path, so a trailing slash there gives `//metadata`.
        let tenant = ctx.world.lock().tenant_id.clone();
        let resp =
            crate::arm::resources::metadata_endpoints(&crate::token::base_url(&parts), &tenant);
        ctx.count("arm GET /metadata/endpoints", resp.status());
        resp
    } else if lower.starts_with("/subscriptions")
        || lower.starts_with("/providers")
        || lower == "/tenants"
    {
        crate::arm::handle(&ctx, &parts, body).await
    } else {
        crate::token::handle(&ctx, &parts, body).await
    }
}

/// The host a request names: the URI's authority (HTTP/2) or the Host header (HTTP/1.1).
fn request_host(parts: &axum::http::request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get("host").and_then(|h| h.to_str().ok()))
}

fn too_large(parts: &axum::http::request::Parts) -> Response {
    let ids = crate::http::RequestIds::new(&parts.headers);
    let path = parts.uri.path().to_ascii_lowercase();
    if request_host(parts)
        .and_then(crate::keyvault::parse_host)
        .is_some()
    {
        crate::keyvault::kv_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "The request body is too large.",
            None,
        )
    } else if path.starts_with("/v1.0") {
        crate::http::graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request_EntityTooLarge",
            "The request body is too large.",
            &ids,
        )
    } else if path.starts_with("/subscriptions") || path.starts_with("/providers") {
        crate::http::arm_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request content size exceeds the maximum allowed.",
            &ids,
        )
    } else if path.starts_with("/_emulator") {
        crate::http::json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": "request body too large"}),
        )
    } else {
        crate::http::token_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            90004,
            "The request body is too large.",
            &ids,
        )
    }
}

/// Reads the body as JSON, or None when it is not JSON (the caller answers in its API's shape).
pub fn json_body(body: &Bytes) -> Option<serde_json::Value> {
    serde_json::from_slice(body).ok()
}
