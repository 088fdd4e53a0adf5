//! The operator under measurement, started through the launcher the tests and the soak use
//! (`testkit::operator`): nothing inherited from the benchmark's environment, the emulator's endpoints and a
//! client secret, a port of its own for /metrics, and its log (warnings and errors) in a file, kept for when
//! it fails.

use std::path::{Path, PathBuf};

use anyhow::bail;
use testkit::{operator::Launch, support::emulator_endpoints};

use crate::{Bench, OPERATOR_SECRET, metrics::sum_by_label, stage::Stage, sys};

/// A running operator, its log (warnings and errors) kept for when it fails.
pub struct Operator {
    process: testkit::operator::Operator,
    pub pid: u32,
    log: PathBuf,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts `--operator` on the stage's namespace and emulator; `env` wins over the defaults.
    pub fn spawn(
        bench: &Bench,
        stage: &Stage,
        env: &[(String, String)],
    ) -> anyhow::Result<Operator> {
        let dir = tempfile::tempdir()?;
        let log = match &bench.args.log_dir {
            Some(logs) => next_log_file(logs, &stage.ns)?,
            None => dir.path().join("operator.log"),
        };
        // A free port for its /metrics, to see its start-up pass end.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut defaults = emulator_endpoints(&stage.emulator);
        defaults.extend(
            [
                ("AZURE_CREDENTIAL", "client-secret".to_string()),
                ("AZURE_CLIENT_ID", stage.caller.graph_app.clone()),
                ("AZURE_CLIENT_SECRET", OPERATOR_SECRET.into()),
                ("ENTRA_OPERATOR_CLUSTER_ID", format!("bench-{}", stage.ns)),
                ("WATCH_NAMESPACES", stage.ns.clone()),
                ("METRICS_ADDR", metrics.to_string()),
                ("RUST_LOG", bench.args.operator_log.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let process = Launch::new(&bench.args.operator, &bench.operator_kubeconfig)
            .clear_env()
            .env(&defaults)
            .env(env)
            .log_to(&log)
            .start()?;
        Ok(Operator {
            pid: process.pid(),
            process,
            log,
            metrics,
            _dir: dir,
        })
    }

    pub fn running(&mut self) -> bool {
        matches!(self.process.exited(), Ok(None))
    }

    /// Fails when the operator has exited, with the end of its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.process.exited()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the operator exited ({status}); its log ends:\n{}",
                tail.join("\n")
            );
        }
        Ok(())
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        sys::cpu_seconds(&self.pid.to_string())
    }

    pub async fn stop(self) {
        self.process.kill();
    }

    /// Reconciliations so far by kind, from its /metrics (None while it does not answer).
    pub async fn reconciliations(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(sum_by_label(
            &text,
            "entra_operator_reconciliations_total",
            "kind",
        ))
    }
}

/// The first `{ns}-operator-{i}.log` not taken yet in `--log-dir`: every operator of a run keeps its own.
fn next_log_file(logs: &Path, ns: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(logs)?;
    let mut i = 0;
    loop {
        let path = logs.join(format!("{ns}-operator-{i}.log"));
        if !path.exists() {
            return Ok(path);
        }
        i += 1;
    }
}
