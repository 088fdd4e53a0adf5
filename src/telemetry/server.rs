//! The operator's HTTP endpoints: /metrics for Prometheus, /healthz (the process serves) and /readyz (it is
//! connected and its controllers run).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use super::metrics::Metrics;

#[derive(Clone)]
pub struct Probe {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Probe>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    p.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Probe>| async move {
                if p.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(probe)
}

/// Serves until the process ends.
pub async fn serve(addr: std::net::SocketAddr, probe: Probe) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(probe)).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}
