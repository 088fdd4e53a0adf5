//! Logging, Prometheus metrics, and the health endpoints.

pub mod metrics;
pub mod server;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::{LogArgs, LogFormat};

/// Installs the global tracing subscriber. Logs go to standard error, so that `crdgen` output on standard
/// output stays clean.
pub fn init_logging(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|e| {
        anyhow::anyhow!(
            "--log-filter {:?} is not a valid filter: {e}",
            args.log_filter
        )
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(())
}

/// The span one reconcile runs in: every log line it writes carries the kind, the object and a trace id (32 hex
/// digits, as W3C trace context has them), so that one reconcile's lines can be found among many.
pub fn reconcile_span(kind: &'static str, namespace: &str, name: &str) -> tracing::Span {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    tracing::info_span!("reconcile", kind, object = %format!("{namespace}/{name}"), trace_id = %trace_id)
}
