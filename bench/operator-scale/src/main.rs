//! Scale benchmark for entra-operator, on the local control plane (testenv) against an in-process Azure
//! emulator with its default knobs (throttling at Graph's and ARM's documented limits).
//!
//! - For each size N (`--sizes`): N ServicePrincipals, each with a RoleDelegation (AcrPull on the registry),
//!   created at once. Measures the time until every object is Ready against the least time the emulator's
//!   throttling allows for the writes they need, the Azure calls per object by operation against the minimum
//!   (app upsert, SP upsert, addPassword, role assignment PUT), the API server requests the operator makes,
//!   by verb, and its peak RSS and CPU time. Then a steady state over compressed hours with nothing changing:
//!   Azure calls (reads apart) per object per hour, and memory.
//! - A rotation storm (`--storm R`): R ServicePrincipals with a CredentialRotation each; once all are settled
//!   every rotation is made due at once (spec.rotationToken bumped on all of them), and the time until every
//!   rotation completed (new key in the Secret, previous password removed after the overlap) is measured
//!   against the least time Graph's write limit allows from the bucket's level at that moment.
//!
//! Writes bench/results/operator-scale.{json,md}; a run of only one part keeps the other part's last results.
//! Needs `make testenv-up` and a release build of the operator (`make bench-scale` and `make bench-storm` do
//! both).

mod azure;
mod create;
mod metrics;
mod operator;
mod proxy;
mod report;
mod stage;
mod steady;
mod storm;
mod sys;
mod track;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use crate::{
    create::scale_measure,
    proxy::Proxy,
    stage::{install_crds, on_stage},
    storm::storm_measure,
};

#[derive(Parser)]
pub struct Args {
    /// Object counts to run, comma-separated (empty: none), each on a fresh operator and emulator.
    #[arg(long, default_value = "100,1000", value_parser = parse_sizes)]
    pub sizes: Sizes,
    /// Rotation storm: this many ServicePrincipals with a CredentialRotation each, then every rotation due at
    /// once (0: no storm).
    #[arg(long, default_value_t = 0)]
    pub storm: usize,
    /// The storm's spec.overlap: how long each previous password stays after its successor is published.
    #[arg(long, default_value = "15s")]
    pub storm_overlap: String,
    /// Seconds to wait idle between the storm's set-up and the storm (150 refills Graph's write bucket; by
    /// default the storm starts at once, on what creating its objects left in the bucket).
    #[arg(long, default_value_t = 0)]
    pub storm_idle: u64,
    /// The operator binary (a release build).
    #[arg(long, default_value = "target/release/entra-operator")]
    pub operator: PathBuf,
    /// testenv's admin kubeconfig.
    #[arg(
        long,
        env = "TESTENV_KUBECONFIG",
        default_value = "target/testenv/kubeconfig"
    )]
    pub kubeconfig: PathBuf,
    /// The compressed hour of the steady state: the operator's default resync (1h) becomes this, and every
    /// other `*_INTERVAL` flag of the operator is divided by the same factor.
    #[arg(long, alias = "resync", default_value = "20s")]
    pub hour: String,
    /// How many compressed hours the steady state lasts.
    #[arg(long, alias = "periods", default_value_t = 3)]
    pub hours: u32,
    /// The emulator's throttling scale during the steady state. Default: the compression factor, so that a
    /// compressed hour refills what an hour does.
    #[arg(long)]
    pub steady_throttle_scale: Option<f64>,
    /// More environment for the steady-state operator, KEY=VALUE (wins over the scaled intervals).
    #[arg(long = "steady-env", value_name = "KEY=VALUE")]
    pub steady_env: Vec<String>,
    /// Concurrent requests of the benchmark's own creates and patches (kube-rs has no client-side rate limit).
    #[arg(long, default_value_t = 64)]
    pub client_concurrency: usize,
    /// Where to write the report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Keep each operator's log in this directory (default: thrown away; its end is shown if it fails).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The operator's RUST_LOG.
    #[arg(long, default_value = "warn")]
    pub operator_log: String,
    /// The emulator's throttling scale for the whole run: 1 is Azure's documented limits (the benchmark);
    /// smaller makes a small run throttle-bound, to try the harness out. The report says which.
    #[arg(long, default_value_t = 1.0)]
    pub throttle_scale: f64,
    /// Give the operator testenv's kubeconfig itself rather than the counting proxy (to rule the proxy out);
    /// its API server requests are then not counted apart.
    #[arg(long)]
    pub direct: bool,
}

#[derive(Clone)]
pub struct Sizes(pub Vec<usize>);

fn parse_sizes(text: &str) -> Result<Sizes, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?} is not a positive count")),
        })
        .collect::<Result<_, _>>()
        .map(Sizes)
}

pub const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
pub const OPERATOR_SECRET: &str = "bench-operator-secret";
/// The operator's default resync, which the steady state compresses into `--hour`.
pub const HOUR: Duration = Duration::from_secs(3600);
/// The Azure writes a ServicePrincipal with a RoleDelegation needs at least: app upsert, SP upsert,
/// addPassword (Graph), role assignment PUT (ARM).
pub const MIN_GRAPH_WRITES_PER_OBJECT: f64 = 3.0;
pub const MIN_ARM_WRITES_PER_OBJECT: f64 = 1.0;
/// Below this the throttling does not bound creation: a percentage of it would mean nothing.
pub const NOT_THROTTLE_BOUND_SECONDS: f64 = 1.0;

pub struct Bench {
    pub client: Client,
    pub args: Args,
    proxy: Proxy,
    /// The operator's kubeconfig, through the proxy.
    pub operator_kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.operator.exists(),
        "{} not found: cargo build --release -p entra-operator",
        args.operator.display()
    );
    anyhow::ensure!(
        !args.sizes.0.is_empty() || args.storm > 0,
        "nothing to run: give --sizes or --storm"
    );
    let bench = Bench::connect(args).await?;
    let scale = scale_runs(&bench).await?;
    let storm = storm(&bench).await?;
    let written = report::write(&bench.args.out, scale, storm)?;
    eprintln!("wrote {written}");
    Ok(())
}

/// Each of `--sizes` on a fresh stage, with the machine and the limits they ran under (None without sizes).
async fn scale_runs(bench: &Bench) -> anyhow::Result<Option<Value>> {
    if bench.args.sizes.0.is_empty() {
        return Ok(None);
    }
    let machine = sys::machine();
    let mut runs = vec![];
    for &n in &bench.args.sizes.0 {
        eprintln!("== {n} ServicePrincipals with a RoleDelegation each");
        let measure = async |stage: &stage::Stage| scale_measure(bench, stage, n).await;
        runs.push(on_stage(bench, &format!("scale-{n}"), measure).await?);
    }
    Ok(Some(json!({
        "generatedAt": sys::now(),
        "machine": machine,
        "throttling": bench.throttling(),
        "compressedHour": bench.args.hour,
        "hours": bench.args.hours,
        "runs": runs,
    })))
}

/// The rotation storm of `--storm` (None without it).
async fn storm(bench: &Bench) -> anyhow::Result<Option<Value>> {
    if bench.args.storm == 0 {
        return Ok(None);
    }
    eprintln!(
        "== rotation storm: {} CredentialRotations due at once",
        bench.args.storm
    );
    let machine = sys::machine();
    let r = bench.args.storm;
    let mut result = on_stage(bench, &format!("storm-{r}"), async |stage| {
        storm_measure(bench, stage, r).await
    })
    .await?;
    result["generatedAt"] = json!(sys::now());
    result["machine"] = machine;
    result["throttling"] = bench.throttling();
    Ok(Some(result))
}

impl Bench {
    /// testenv's client, the CRDs installed, and the counting proxy the operator talks through.
    async fn connect(args: Args) -> anyhow::Result<Bench> {
        let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).with_context(|| {
            format!(
                "{}: start testenv with `make testenv-up`",
                args.kubeconfig.display()
            )
        })?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config.clone())?;
        install_crds(&client).await?;
        // The proxy gets a client (and connection pool) of its own, apart from the benchmark's creates and
        // watches.
        let proxy = Proxy::start(Client::try_from(config)?).await?;
        let dir = tempfile::tempdir()?;
        let operator_kubeconfig = dir.path().join("operator.kubeconfig");
        proxy.write_kubeconfig(&operator_kubeconfig)?;
        let operator_kubeconfig = if args.direct {
            std::fs::canonicalize(&args.kubeconfig)?
        } else {
            operator_kubeconfig
        };
        Ok(Bench {
            client,
            args,
            proxy,
            operator_kubeconfig,
            _dir: dir,
        })
    }

    /// The emulator's limits in this run.
    pub fn throttling(&self) -> Value {
        let mut knobs = azure_emulator::config::Config::default_seed().knobs;
        knobs.throttling.scale = self.args.throttle_scale;
        azure::limits(&knobs)
    }

    /// The operator's API server requests since the last call (null with --direct).
    pub fn operator_requests(&self) -> Value {
        let counted = self.proxy.take();
        if self.args.direct {
            Value::Null
        } else {
            counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_separators_and_may_be_empty() {
        assert_eq!(parse_sizes("100,1000,5_000").unwrap().0, [100, 1000, 5000]);
        assert!(parse_sizes("").unwrap().0.is_empty());
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("x").is_err());
    }
}
