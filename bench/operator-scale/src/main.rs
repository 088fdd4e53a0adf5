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
mod proxy;
mod report;
mod sys;
mod track;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use azure_emulator::limits::Limit;
use clap::Parser;
use futures::{TryStreamExt, stream};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use entra_operator::api::{
    CredentialRotation, DelegationPolicy, RoleDelegation, ServicePrincipal,
    conditions::{READY, is_true},
};

use crate::{
    azure::{Bucket, Caller, Calls, GRAPH_WRITE_RU, round2},
    proxy::Proxy,
    track::Tracker,
};

#[derive(Parser)]
struct Args {
    /// Object counts to run, comma-separated (empty: none), each on a fresh operator and emulator.
    #[arg(long, default_value = "100,1000", value_parser = parse_sizes)]
    sizes: Sizes,
    /// Rotation storm: this many ServicePrincipals with a CredentialRotation each, then every rotation due at
    /// once (0: no storm).
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// The storm's spec.overlap: how long each previous password stays after its successor is published.
    #[arg(long, default_value = "15s")]
    storm_overlap: String,
    /// Seconds to wait idle between the storm's set-up and the storm (150 refills Graph's write bucket; by
    /// default the storm starts at once, on what creating its objects left in the bucket).
    #[arg(long, default_value_t = 0)]
    storm_idle: u64,
    /// The operator binary (a release build).
    #[arg(long, default_value = "target/release/entra-operator")]
    operator: PathBuf,
    /// testenv's admin kubeconfig.
    #[arg(
        long,
        env = "TESTENV_KUBECONFIG",
        default_value = "target/testenv/kubeconfig"
    )]
    kubeconfig: PathBuf,
    /// The compressed hour of the steady state: the operator's default resync (1h) becomes this, and every
    /// other `*_INTERVAL` flag of the operator is divided by the same factor.
    #[arg(long, alias = "resync", default_value = "20s")]
    hour: String,
    /// How many compressed hours the steady state lasts.
    #[arg(long, alias = "periods", default_value_t = 3)]
    hours: u32,
    /// The emulator's throttling scale during the steady state. Default: the compression factor, so that a
    /// compressed hour refills what an hour does.
    #[arg(long)]
    steady_throttle_scale: Option<f64>,
    /// More environment for the steady-state operator, KEY=VALUE (wins over the scaled intervals).
    #[arg(long = "steady-env", value_name = "KEY=VALUE")]
    steady_env: Vec<String>,
    /// Concurrent requests of the benchmark's own creates and patches (kube-rs has no client-side rate limit).
    #[arg(long, default_value_t = 64)]
    client_concurrency: usize,
    /// Where to write the report.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Keep each operator's log in this directory (default: thrown away; its end is shown if it fails).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// The operator's RUST_LOG.
    #[arg(long, default_value = "warn")]
    operator_log: String,
    /// The emulator's throttling scale for the whole run: 1 is Azure's documented limits (the benchmark);
    /// smaller makes a small run throttle-bound, to try the harness out. The report says which.
    #[arg(long, default_value_t = 1.0)]
    throttle_scale: f64,
    /// Give the operator testenv's kubeconfig itself rather than the counting proxy (to rule the proxy out);
    /// its API server requests are then not counted apart.
    #[arg(long)]
    direct: bool,
}

#[derive(Clone)]
struct Sizes(Vec<usize>);

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

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const OPERATOR_SECRET: &str = "bench-operator-secret";
/// The operator's default resync, which the steady state compresses into `--hour`.
const HOUR: Duration = Duration::from_secs(3600);
/// The Azure writes a ServicePrincipal with a RoleDelegation needs at least: app upsert, SP upsert,
/// addPassword (Graph), role assignment PUT (ARM).
const MIN_GRAPH_WRITES_PER_OBJECT: f64 = 3.0;
const MIN_ARM_WRITES_PER_OBJECT: f64 = 1.0;
/// Below this the throttling does not bound creation: a percentage of it would mean nothing.
const NOT_THROTTLE_BOUND_SECONDS: f64 = 1.0;

struct Bench {
    client: Client,
    args: Args,
    proxy: Proxy,
    /// The operator's kubeconfig, through the proxy.
    operator_kubeconfig: PathBuf,
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
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).with_context(|| {
        format!(
            "{}: start testenv with `make testenv-up`",
            args.kubeconfig.display()
        )
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config.clone())?;
    install_crds(&client).await?;
    // The proxy gets a client (and connection pool) of its own, apart from the benchmark's creates and watches.
    let proxy = Proxy::start(Client::try_from(config)?).await?;
    let dir = tempfile::tempdir()?;
    let operator_kubeconfig = dir.path().join("operator.kubeconfig");
    proxy.write_kubeconfig(&operator_kubeconfig)?;
    let operator_kubeconfig = if args.direct {
        std::fs::canonicalize(&args.kubeconfig)?
    } else {
        operator_kubeconfig
    };
    let bench = Bench {
        client,
        args,
        proxy,
        operator_kubeconfig,
        _dir: dir,
    };

    let mut scale = None;
    if !bench.args.sizes.0.is_empty() {
        let machine = sys::machine();
        let mut runs = vec![];
        for &n in &bench.args.sizes.0 {
            eprintln!("== {n} ServicePrincipals with a RoleDelegation each");
            runs.push(scale_run(&bench, n).await?);
        }
        scale = Some(json!({
            "generatedAt": sys::now(),
            "machine": machine,
            "throttling": bench.throttling(),
            "compressedHour": bench.args.hour,
            "hours": bench.args.hours,
            "runs": runs,
        }));
    }
    let mut storm = None;
    if bench.args.storm > 0 {
        eprintln!(
            "== rotation storm: {} CredentialRotations due at once",
            bench.args.storm
        );
        let machine = sys::machine();
        let mut result = storm_run(&bench, bench.args.storm).await?;
        result["generatedAt"] = json!(sys::now());
        result["machine"] = machine;
        result["throttling"] = bench.throttling();
        storm = Some(result);
    }
    let written = report::write(&bench.args.out, scale, storm)?;
    eprintln!("wrote {written}");
    Ok(())
}

impl Bench {
    /// The emulator's limits in this run.
    fn throttling(&self) -> Value {
        let mut knobs = azure_emulator::config::Config::default_seed().knobs;
        knobs.throttling.scale = self.args.throttle_scale;
        azure::limits(&knobs)
    }

    /// The operator's API server requests since the last call (null with --direct).
    fn operator_requests(&self) -> Value {
        let counted = self.proxy.take();
        if self.args.direct {
            Value::Null
        } else {
            counted
        }
    }
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in entra_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("operator-scale").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    Ok(())
}

/// A fresh emulator (full buckets) and namespace, with a DelegationPolicy allowing AcrPull on rg-shared.
struct Stage {
    emulator: azure_emulator::Running,
    ns: String,
    caller: Caller,
    _dir: tempfile::TempDir,
}

async fn stage(bench: &Bench, name: &str) -> anyhow::Result<Stage> {
    let dir = tempfile::tempdir()?;
    let mut config = azure_emulator::config::Config::default_seed();
    config.seed.applications[0].client_secrets = vec![OPERATOR_SECRET.into()];
    config.knobs.throttling.scale = bench.args.throttle_scale;
    let caller = Caller {
        graph_app: config.seed.applications[0].app_id.clone(),
        arm_principal: config.seed.applications[0].service_principal_id.clone(),
    };
    let emulator = azure_emulator::start(azure_emulator::Options {
        config,
        state_dir: dir.path().join("emulator"),
        persist: false,
        listen: "127.0.0.1:0".parse()?,
        hostnames: vec![],
    })
    .await?;
    let ns = format!("bench-{name}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(bench.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let policies: Api<DelegationPolicy> = Api::all(bench.client.clone());
    policies
        .patch(
            &ns,
            &PatchParams::apply("operator-scale").force(),
            &Patch::Apply(&serde_json::from_value::<DelegationPolicy>(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "DelegationPolicy",
                "metadata": {"name": ns},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "scopes": [format!("{SUB}/resourceGroups/rg-shared")], "roles": ["AcrPull"]},
            }))?),
        )
        .await?;
    Ok(Stage {
        emulator,
        ns,
        caller,
        _dir: dir,
    })
}

/// Runs a measurement on a fresh stage, then removes everything the stage made, also when the measurement
/// failed (testenv is shared).
async fn on_stage<F>(bench: &Bench, name: &str, measure: F) -> anyhow::Result<Value>
where
    F: AsyncFnOnce(&Stage) -> anyhow::Result<(Value, Operator)>,
{
    let stage = stage(bench, name).await?;
    match measure(&stage).await {
        Ok((result, operator)) => {
            teardown(bench, stage, Some(operator)).await?;
            Ok(result)
        }
        Err(e) => {
            eprintln!("   failed; removing what the run made");
            if let Err(cleanup) = teardown(bench, stage, None).await {
                eprintln!("   cleaning up failed too: {cleanup:#}");
            }
            Err(e)
        }
    }
}

/// Removes everything a stage made, so that the next size starts on an empty namespace: the operator (when
/// there is one) deletes its objects (the emulator's throttling off meanwhile: this emulator is thrown away
/// next), then what is left loses its finalizers, and the namespace goes.
async fn teardown(bench: &Bench, stage: Stage, operator: Option<Operator>) -> anyhow::Result<()> {
    let ns = &stage.ns;
    stage.emulator.ctx.knobs.write().throttling.enabled = false;
    let sps: Api<ServicePrincipal> = Api::namespaced(bench.client.clone(), ns);
    let rds: Api<RoleDelegation> = Api::namespaced(bench.client.clone(), ns);
    let crots: Api<CredentialRotation> = Api::namespaced(bench.client.clone(), ns);
    if let Some(mut operator) = operator {
        let objects = count(&sps).await? + count(&rds).await? + count(&crots).await?;
        eprintln!("   cleaning up {objects} objects");
        rds.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        crots
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        sps.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120 + objects as u64 / 10);
        while Instant::now() < deadline && operator.running() {
            if !(any(&sps).await? || any(&rds).await? || any(&crots).await?) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        operator.stop().await;
    }
    let left = strip_finalizers(&rds).await?
        + strip_finalizers(&crots).await?
        + strip_finalizers(&sps).await?;
    if left > 0 {
        eprintln!("   {left} objects left behind by the operator: their finalizers removed");
    }
    let policies: Api<DelegationPolicy> = Api::all(bench.client.clone());
    let _ = policies.delete(ns, &DeleteParams::default()).await;
    let namespaces: Api<Namespace> = Api::all(bench.client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while namespaces.get_opt(ns).await?.is_some() {
        if Instant::now() > deadline {
            eprintln!("   namespace {ns} still terminating after 300 s; going on");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stage.emulator.shutdown().await
}

async fn count<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list_metadata(&ListParams::default()).await?.items.len())
}

async fn any<K>(api: &Api<K>) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(!api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty())
}

async fn strip_finalizers<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let left = api.list_metadata(&ListParams::default()).await?.items;
    for o in &left {
        let _ = api
            .patch_metadata(
                &o.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    Ok(left.len())
}

/// A running operator, its log (warnings and errors) kept for when it fails.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn spawn(bench: &Bench, stage: &Stage, env: &[(String, String)]) -> anyhow::Result<Operator> {
        let base = &stage.emulator.base_url;
        let dir = tempfile::tempdir()?;
        let log = match &bench.args.log_dir {
            Some(logs) => {
                std::fs::create_dir_all(logs)?;
                let mut i = 0;
                loop {
                    let path = logs.join(format!("{}-operator-{i}.log", stage.ns));
                    if !path.exists() {
                        break path;
                    }
                    i += 1;
                }
            }
            None => dir.path().join("operator.log"),
        };
        // A free port for its /metrics, to see its start-up pass end.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut command = tokio::process::Command::new(&bench.args.operator);
        command
            .args(["run", "--log-format", "json", "--kubeconfig"])
            .arg(&bench.operator_kubeconfig)
            .env_clear()
            .envs([
                ("AZURE_CLOUD", "custom".to_string()),
                ("AZURE_AUTHORITY_HOST", base.clone()),
                ("AZURE_GRAPH_ENDPOINT", format!("{base}/v1.0")),
                ("AZURE_RESOURCE_MANAGER_ENDPOINT", base.clone()),
                (
                    "AZURE_CA_FILE",
                    stage.emulator.ca_file.display().to_string(),
                ),
                ("AZURE_CREDENTIAL", "client-secret".into()),
                ("AZURE_CLIENT_ID", stage.caller.graph_app.clone()),
                ("AZURE_CLIENT_SECRET", OPERATOR_SECRET.into()),
                (
                    "AZURE_TENANT_ID",
                    azure_emulator::config::Config::default_seed()
                        .seed
                        .tenant_id,
                ),
                ("ENTRA_OPERATOR_CLUSTER_ID", format!("bench-{}", stage.ns)),
                ("WATCH_NAMESPACES", stage.ns.clone()),
                ("METRICS_ADDR", metrics.to_string()),
                ("RUST_LOG", bench.args.operator_log.clone()),
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child.id().context("operator pid")?;
        Ok(Operator {
            child,
            pid,
            log,
            metrics,
            _dir: dir,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails when the operator has exited, with the end of its log.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
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

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        sys::cpu_seconds(&self.pid.to_string())
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Reconciliations so far by kind, from its /metrics (None while it does not answer).
    async fn reconciliations(&self) -> Option<std::collections::BTreeMap<String, f64>> {
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

fn ready_sp(sp: &ServicePrincipal) -> bool {
    sp.status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, READY))
}

fn ready_rd(rd: &RoleDelegation) -> bool {
    rd.status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, READY))
}

fn ready(conditions: &[Condition]) -> bool {
    is_true(conditions, READY)
}

/// Creates `n` objects (or pairs) at once, as fast as the API server takes them.
async fn create_all<F, Fut>(bench: &Bench, n: usize, create: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter((0..n).map(anyhow::Ok))
        .try_for_each_concurrent(bench.args.client_concurrency, create)
        .await
}

/// How long a phase may take before the run is called failed: generous, it only guards against a hang.
fn timeout_for(min_seconds: f64, n: usize) -> Duration {
    Duration::from_secs_f64(300.0 + 3.0 * min_seconds + n as f64 / 2.0)
}

async fn scale_run(bench: &Bench, n: usize) -> anyhow::Result<Value> {
    on_stage(bench, &format!("scale-{n}"), async |stage| {
        scale_measure(bench, stage, n).await
    })
    .await
}

async fn scale_measure(
    bench: &Bench,
    stage: &Stage,
    n: usize,
) -> anyhow::Result<(Value, Operator)> {
    let client = &bench.client;
    let sps: Api<ServicePrincipal> = Api::namespaced(client.clone(), &stage.ns);
    let rds: Api<RoleDelegation> = Api::namespaced(client.clone(), &stage.ns);

    // The least time the throttling allows for the writes N objects need, from the buckets as they are now
    // (full: a fresh emulator).
    let bucket = |limit| Bucket::now(&stage.emulator, limit, &stage.caller);
    let nf = n as f64;
    let terms: Vec<_> = [
        bucket(Limit::GraphWrites).map(|b| b.term(MIN_GRAPH_WRITES_PER_OBJECT * nf)),
        bucket(Limit::GraphResourceUnits)
            .map(|b| b.term(MIN_GRAPH_WRITES_PER_OBJECT * nf * GRAPH_WRITE_RU)),
        bucket(Limit::ArmWrites).map(|b| b.term(MIN_ARM_WRITES_PER_OBJECT * nf)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (min_seconds, minimum) = azure::minimum(terms);

    // Creation with the default resync (1h): a short one would resync objects while others are created.
    let mut operator = Operator::spawn(bench, stage, &[])?;
    let sp_ready = Tracker::start(sps.clone(), n, ready_sp);
    let rd_ready = Tracker::start(rds.clone(), n, ready_rd);
    sp_ready.synced().await?;
    rd_ready.synced().await?;
    Calls::take(&stage.emulator);
    bench.operator_requests();
    let apiserver_before = apiserver_requests(client).await?;
    let cpu_start = operator.cpu_seconds()?;
    let bench_cpu_start = sys::cpu_seconds("self")?;

    let started = Instant::now();
    create_all(bench, n, |i| {
        let (sps, rds) = (sps.clone(), rds.clone());
        async move {
            let name = format!("app-{i}");
            let sp: ServicePrincipal = serde_json::from_value(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
                "metadata": {"name": name},
                "spec": {"displayName": name, "secret": {"name": format!("{name}-credentials")}},
            }))?;
            sps.create(&PostParams::default(), &sp).await?;
            let rd: RoleDelegation = serde_json::from_value(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "RoleDelegation",
                "metadata": {"name": name},
                "spec": {"principalRef": {"name": name}, "role": {"name": "AcrPull"},
                    "scope": format!("{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr")},
            }))?;
            rds.create(&PostParams::default(), &rd).await?;
            Ok(())
        }
    })
    .await?;
    let created = started.elapsed();
    eprintln!(
        "   created {n} + {n} objects in {:.1} s; throttle-limited minimum until Ready {min_seconds:.1} s",
        created.as_secs_f64()
    );
    let timeout = timeout_for(min_seconds, n);
    let mut last_progress = Instant::now();
    let ready_after = loop {
        if let (Some(a), Some(b)) = (sp_ready.all_at(), rd_ready.all_at()) {
            break a.max(b) - started;
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} ServicePrincipals and {} RoleDelegations Ready after {:?}",
                sp_ready.count(),
                rd_ready.count(),
                started.elapsed()
            );
        }
        operator.check()?;
        if last_progress.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "   {:.0} s: {} ServicePrincipals, {} RoleDelegations Ready",
                started.elapsed().as_secs_f64(),
                sp_ready.count(),
                rd_ready.count()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cpu_create = operator.cpu_seconds()? - cpu_start;
    let peak_create = sys::peak_rss_mib(operator.pid)?;
    let bench_cpu_create = sys::cpu_seconds("self")? - bench_cpu_start;
    let calls_create = Calls::take(&stage.emulator);
    let api_create = bench.operator_requests();
    let apiserver_create = diff(&apiserver_requests(client).await?, &apiserver_before);
    drop((sp_ready, rd_ready));
    operator.stop().await;
    let percent = (min_seconds >= NOT_THROTTLE_BOUND_SECONDS)
        .then(|| 100.0 * min_seconds / ready_after.as_secs_f64());
    eprintln!(
        "   all Ready after {:.1} s ({}); {:.2} Azure writes per object (minimum 4); peak RSS {peak_create:.1} MiB",
        ready_after.as_secs_f64(),
        match percent {
            Some(p) => format!("{p:.0}% of the throttle-limited maximum rate"),
            None => "not throttle-bound".into(),
        },
        calls_create.accepted_writes() as f64 / nf,
    );

    let (steady, operator) = steady_state(bench, stage, n).await?;

    let result = json!({
        "objects": n,
        "createdInSeconds": created.as_secs_f64(),
        "allReadyInSeconds": ready_after.as_secs_f64(),
        "objectsReadyPerSecond": nf / ready_after.as_secs_f64(),
        "throttleLimitedMinimum": minimum,
        "throttleBound": percent.is_some(),
        "percentOfThrottleLimitedMaximum": percent,
        "azure": {
            "writesPerObject": calls_create.accepted_writes() as f64 / nf,
            "minimumWritesPerObject": MIN_GRAPH_WRITES_PER_OBJECT + MIN_ARM_WRITES_PER_OBJECT,
            "writesPerObjectByOperation": calls_create.writes_by_kind(nf),
            "readsPerObject": calls_create.reads() as f64 / nf,
            "acceptedReadsPerObject": calls_create.accepted_reads() as f64 / nf,
            "tokenRequests": calls_create.tokens(),
            "throttled429s": calls_create.throttled(),
            "callsPerObject": calls_create.per(nf),
        },
        "apiServer": {
            "operator": api_create,
            "allClientsByVerb": apiserver_create,
        },
        "operator": {"peakRssMiB": peak_create, "cpuSeconds": cpu_create},
        "benchProcessCpuSeconds": bench_cpu_create,
        "steadyState": steady,
    });
    Ok((result, operator))
}

/// The operator's `*_INTERVAL` flags (periodic work) with their defaults, from its --help: each is divided
/// by the compression factor.
fn scaled_intervals(operator: &Path, factor: f64) -> anyhow::Result<Vec<(String, String, String)>> {
    let help = std::process::Command::new(operator)
        .args(["run", "--help"])
        .output()?;
    intervals_in_help(&String::from_utf8_lossy(&help.stdout), factor)
}

fn intervals_in_help(help: &str, factor: f64) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut blocks: Vec<String> = vec![];
    for line in help.lines() {
        if line.trim_start().starts_with("--") || blocks.is_empty() {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push(' ');
            b.push_str(line.trim());
        }
    }
    let field = |block: &str, key: &str| -> Option<String> {
        let rest = block.split(&format!("[{key}: ")).nth(1)?;
        Some(rest.split(']').next()?.trim().to_string())
    };
    let mut out = vec![];
    for block in blocks.iter().filter(|b| b.contains("<DURATION>")) {
        let (Some(env), Some(default)) = (field(block, "env"), field(block, "default")) else {
            continue;
        };
        let env = env.trim_end_matches('=').to_string();
        if !env.ends_with("_INTERVAL") {
            continue;
        }
        let scaled = parse_duration(&default)?.as_secs_f64() / factor;
        out.push((
            env,
            default,
            format!("{}ms", (scaled * 1000.0).round().max(1.0)),
        ));
    }
    Ok(out)
}

/// A compressed steady state on the same objects: a fresh operator whose periodic intervals are divided by
/// 3600 s / `--hour`, with the emulator's throttling scaled alike; measured from the end of its start-up pass
/// over `--hours` compressed hours. Returns the operator, still running, for the teardown.
async fn steady_state(bench: &Bench, stage: &Stage, n: usize) -> anyhow::Result<(Value, Operator)> {
    let hour = parse_duration(&bench.args.hour)?;
    let factor = HOUR.as_secs_f64() / hour.as_secs_f64();
    let intervals = scaled_intervals(&bench.args.operator, factor)?;
    let mut env: Vec<(String, String)> = intervals
        .iter()
        .map(|(k, _, v)| (k.clone(), v.clone()))
        .collect();
    for kv in &bench.args.steady_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--steady-env {kv}: expected KEY=VALUE"))?;
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    anyhow::ensure!(
        env.iter().any(|(k, _)| k == "RESYNC_INTERVAL"),
        "the operator has no RESYNC_INTERVAL flag to compress"
    );
    let scale = bench.args.steady_throttle_scale.unwrap_or(factor);
    let original_scale = {
        let mut knobs = stage.emulator.ctx.knobs.write();
        let original = knobs.throttling.scale;
        knobs.throttling.scale = original * scale;
        original
    };

    let mut operator = Operator::spawn(bench, stage, &env)?;
    // Its start-up pass (every object reconciled once) is not the steady state: wait until each kind has
    // been reconciled N times, from the operator's own metrics.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + n as u64 / 10);
    let startup = loop {
        operator.check()?;
        let counts = operator.reconciliations().await;
        if let Some(c) = &counts {
            let kinds = ["ServicePrincipal", "RoleDelegation"];
            if kinds
                .iter()
                .all(|k| c.get(*k).copied().unwrap_or(0.0) >= n as f64)
            {
                break json!({"endedAfterSeconds": started.elapsed().as_secs_f64()});
            }
            if c.is_empty() && started.elapsed() > Duration::from_secs(15) {
                // No reconciliation metric to go by: wait one compressed hour and a little.
                tokio::time::sleep(hour + Duration::from_secs(5)).await;
                break json!({"endedAfterSeconds": null, "note": "no entra_operator_reconciliations_total metric; waited one compressed hour"});
            }
        }
        if Instant::now() > deadline {
            break json!({"endedAfterSeconds": null, "note": format!("not every object was reconciled within {} s; measured anyway", (deadline - started).as_secs())});
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Calls::take(&stage.emulator);
    bench.operator_requests();
    let cpu_start = operator.cpu_seconds()?;
    let reconciled_before = operator.reconciliations().await.unwrap_or_default();
    let window = hour * bench.args.hours;
    let measuring = Instant::now();
    while measuring.elapsed() < window {
        operator.check()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let calls = Calls::take(&stage.emulator);
    let api = bench.operator_requests();
    let cpu = operator.cpu_seconds()? - cpu_start;
    let reconciled_after = operator.reconciliations().await.unwrap_or_default();
    // The compressed resync asks for each object to be reconciled once per compressed hour: fewer would
    // mean the operator did not keep up (or no longer resyncs each object), and per-hour figures read low.
    let reconciled: f64 = ["ServicePrincipal", "RoleDelegation"]
        .iter()
        .map(|k| {
            reconciled_after.get(*k).copied().unwrap_or(0.0)
                - reconciled_before.get(*k).copied().unwrap_or(0.0)
        })
        .sum();
    let rss = sys::rss_mib(operator.pid)?;
    let peak = sys::peak_rss_mib(operator.pid)?;
    stage.emulator.ctx.knobs.write().throttling.scale = original_scale;

    let per = n as f64 * bench.args.hours as f64;
    let hours = bench.args.hours as f64;
    let reads = calls.reads() as f64 / per;
    eprintln!(
        "   steady state: {reads:.2} Azure reads per object per hour (goal at most 0.1), {:.2} calls; RSS {rss:.1} MiB",
        calls.total() as f64 / per
    );
    let per_hour = |v: &Value| -> Value {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| (k.clone(), json!(round2(n.as_f64().unwrap_or(0.0) / hours))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Ok((
        json!({
            "compressedHourSeconds": hour.as_secs_f64(),
            "compressionFactor": factor,
            "hours": bench.args.hours,
            "operatorIntervals": intervals.iter().map(|(k, d, s)| json!({"env": k, "default": d, "compressed": s})).collect::<Vec<_>>(),
            "operatorEnv": env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "throttleScale": scale,
            "startUpPass": startup,
            "reconciliationsInWindow": {
                "measured": reconciled,
                "resyncsAskedFor": 2.0 * n as f64 * bench.args.hours as f64,
            },
            "azureCallsPerObjectPerHour": calls.total() as f64 / per,
            "azureReadsPerObjectPerHour": reads,
            "azureAcceptedReadsPerObjectPerHour": calls.accepted_reads() as f64 / per,
            "azureWritesPerObjectPerHour": calls.accepted_writes() as f64 / per,
            "azure429s": calls.throttled(),
            "tokenRequestsPerHour": calls.tokens() as f64 / hours,
            "callsPerObjectPerHour": calls.per(per),
            "apiServerOperatorRequestsPerHour": if api.is_null() { Value::Null } else { json!({
                "total": api["total"].as_f64().unwrap_or(0.0) / hours,
                "byVerb": per_hour(&api["byVerb"]),
            }) },
            "operatorRssMiB": rss,
            "operatorPeakRssMiB": peak,
            "operatorCpuSecondsPerHour": cpu / hours,
        }),
        operator,
    ))
}

/// The rotation storm. Its objects are created at once as in a scale run; once every rotation is settled
/// (Ready, holding the ServicePrincipal's first password), all rotations are made due at once by a new
/// spec.rotationToken, and each counts as done when status shows the new key delivered to the Secret, the
/// token observed, the previous password removed (no previousKeyId) and Ready.
async fn storm_run(bench: &Bench, r: usize) -> anyhow::Result<Value> {
    on_stage(bench, &format!("storm-{r}"), async |stage| {
        storm_measure(bench, stage, r).await
    })
    .await
}

async fn storm_measure(
    bench: &Bench,
    stage: &Stage,
    r: usize,
) -> anyhow::Result<(Value, Operator)> {
    let client = &bench.client;
    let sps: Api<ServicePrincipal> = Api::namespaced(client.clone(), &stage.ns);
    let crots: Api<CredentialRotation> = Api::namespaced(client.clone(), &stage.ns);
    let overlap = parse_duration(&bench.args.storm_overlap)?;
    let rf = r as f64;

    let create_min = Bucket::now(&stage.emulator, Limit::GraphWrites, &stage.caller)
        .map(|b| b.term(MIN_GRAPH_WRITES_PER_OBJECT * rf).seconds)
        .unwrap_or(0.0);
    let mut operator = Operator::spawn(bench, stage, &[])?;
    let settled = Tracker::start(crots.clone(), r, |c: &CredentialRotation| {
        c.status.as_ref().is_some_and(|s| {
            ready(&s.conditions) && s.current_key_id.is_some() && s.previous_key_id.is_none()
        })
    });
    settled.synced().await?;
    let started = Instant::now();
    create_all(bench, r, |i| {
        let (sps, crots) = (sps.clone(), crots.clone());
        let overlap = bench.args.storm_overlap.clone();
        async move {
            let name = format!("rot-{i}");
            let sp: ServicePrincipal = serde_json::from_value(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
                "metadata": {"name": name},
                "spec": {"displayName": name, "secret": {"name": format!("{name}-credentials")}},
            }))?;
            sps.create(&PostParams::default(), &sp).await?;
            let crot: CredentialRotation = serde_json::from_value(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotation",
                "metadata": {"name": name},
                "spec": {"servicePrincipalRef": {"name": name}, "rotateEvery": "720h",
                    "overlap": overlap, "rotationToken": "initial"},
            }))?;
            crots.create(&PostParams::default(), &crot).await?;
            Ok(())
        }
    })
    .await?;
    let timeout = timeout_for(create_min, r);
    let mut last_progress = Instant::now();
    let settled_after = loop {
        if let Some(at) = settled.all_at() {
            break at - started;
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} of {r} CredentialRotations settled after {:?}",
                settled.count(),
                started.elapsed()
            );
        }
        operator.check()?;
        if last_progress.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "   {:.0} s: {} CredentialRotations settled",
                started.elapsed().as_secs_f64(),
                settled.count()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(settled);
    eprintln!(
        "   {r} ServicePrincipals with a CredentialRotation settled after {:.1} s",
        settled_after.as_secs_f64()
    );
    if bench.args.storm_idle > 0 {
        eprintln!("   idle for {} s", bench.args.storm_idle);
        tokio::time::sleep(Duration::from_secs(bench.args.storm_idle)).await;
    }

    // Every rotation's key before the storm, and a watch for their completion.
    let before: std::collections::HashMap<String, String> = crots
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| Some((c.name_any(), c.status?.current_key_id?)))
        .collect();
    anyhow::ensure!(before.len() == r, "not every rotation holds a key");
    let token = format!("storm-{}", std::process::id());
    let before = std::sync::Arc::new(before);
    let delivered = {
        let before = before.clone();
        Tracker::start(crots.clone(), r, move |c: &CredentialRotation| {
            new_key_delivered(c, &before)
        })
    };
    let completed = {
        let (before, token) = (before.clone(), token.clone());
        Tracker::start(crots.clone(), r, move |c: &CredentialRotation| {
            new_key_delivered(c, &before)
                && c.status.as_ref().is_some_and(|s| {
                    s.previous_key_id.is_none()
                        && s.observed_rotation_token.as_deref() == Some(token.as_str())
                        && ready(&s.conditions)
                })
        })
    };
    delivered.synced().await?;
    completed.synced().await?;

    // The least time Graph's limits allow for an addPassword and a removePassword per rotation, from the
    // buckets' level now, and the overlap that separates the two.
    let writes = Bucket::now(&stage.emulator, Limit::GraphWrites, &stage.caller);
    let ru = Bucket::now(&stage.emulator, Limit::GraphResourceUnits, &stage.caller);
    let storm_minimum = |writes: Option<Bucket>, ru: Option<Bucket>| {
        let mut terms = vec![];
        if let Some(w) = writes {
            terms.push(w.term(2.0 * rf));
            let adds = ((rf - w.level) / w.per_second).max(0.0);
            let seconds = overlap.as_secs_f64() + adds;
            terms.push(azure::Term {
                name: "overlap after the last addPassword".into(),
                seconds,
                detail: json!({"limit": "overlap after the last addPassword", "seconds": seconds,
                    "formula": format!("{:.0} s + max(0, ({r} - {:.0}) / {}/s) = {seconds:.1} s",
                        overlap.as_secs_f64(), w.level.floor(), w.per_second)}),
            });
        }
        if let Some(u) = ru {
            terms.push(u.term(2.0 * rf * GRAPH_WRITE_RU));
        }
        if terms.is_empty() {
            terms.push(azure::Term {
                name: "overlap".into(),
                seconds: overlap.as_secs_f64(),
                detail: json!({"limit": "overlap", "seconds": overlap.as_secs_f64(),
                    "formula": "every removal waits the overlap after its addPassword (no throttling)"}),
            });
        }
        azure::minimum(terms)
    };
    let (min_seconds, minimum) = storm_minimum(writes, ru);
    let (_, minimum_full) = storm_minimum(writes.map(Bucket::full), ru.map(Bucket::full));
    Calls::take(&stage.emulator);
    bench.operator_requests();
    let apiserver_before = apiserver_requests(client).await?;
    let cpu_start = operator.cpu_seconds()?;
    eprintln!(
        "   Graph write bucket at {:.0} of {:.0}; minimum {min_seconds:.1} s; bumping spec.rotationToken on all {r}",
        writes.map(|w| w.level).unwrap_or(0.0),
        writes.map(|w| w.capacity).unwrap_or(0.0)
    );

    let started = Instant::now();
    create_all(bench, r, |i| {
        let crots = crots.clone();
        let token = token.clone();
        async move {
            crots
                .patch(
                    &format!("rot-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"rotationToken": token}})),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let bumped = started.elapsed();
    let timeout = timeout_for(min_seconds, r);
    let mut last_progress = Instant::now();
    let completed_after = loop {
        if let Some(at) = completed.all_at() {
            break at - started;
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} of {r} rotations completed ({} delivered) after {:?}",
                completed.count(),
                delivered.count(),
                started.elapsed()
            );
        }
        operator.check()?;
        if last_progress.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "   {:.0} s: {} new keys delivered, {} rotations completed",
                started.elapsed().as_secs_f64(),
                delivered.count(),
                completed.count()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delivered_after = delivered.all_at().map(|at| at - started);
    let mut times: Vec<f64> = completed
        .times()
        .into_iter()
        .map(|t| (t - started).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let quantile = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let cpu = operator.cpu_seconds()? - cpu_start;
    let peak = sys::peak_rss_mib(operator.pid)?;
    let calls = Calls::take(&stage.emulator);
    let api = bench.operator_requests();
    let apiserver = diff(&apiserver_requests(client).await?, &apiserver_before);
    drop((delivered, completed));
    let graph_writes = calls.accepted_writes() as f64 / rf;
    eprintln!(
        "   all {r} rotations completed after {:.1} s (minimum {min_seconds:.1} s); {graph_writes:.2} Graph writes per rotation (minimum 2); {} 429s",
        completed_after.as_secs_f64(),
        calls.throttled_total()
    );

    let result = json!({
        "rotations": r,
        "overlapSeconds": overlap.as_secs_f64(),
        "setUp": {
            "settledInSeconds": settled_after.as_secs_f64(),
            "idleBeforeStormSeconds": bench.args.storm_idle,
        },
        "graphWriteBucketAtStart": writes.map(|w| json!({"level": w.level.floor(), "capacity": w.capacity, "refillPerSecond": w.per_second})),
        "minimum": minimum,
        "minimumWithFullBucket": minimum_full,
        "rotationTokenBumpSeconds": bumped.as_secs_f64(),
        "allNewKeysDeliveredInSeconds": delivered_after.map(|d| d.as_secs_f64()),
        "allCompletedInSeconds": completed_after.as_secs_f64(),
        "completedInSecondsQuantiles": {"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99), "max": quantile(1.0)},
        "percentOfMinimum": (min_seconds > 0.0).then(|| 100.0 * min_seconds / completed_after.as_secs_f64()),
        "azure": {
            "graphWritesPerRotation": graph_writes,
            "minimumGraphWritesPerRotation": 2,
            "writesPerRotationByOperation": calls.writes_by_kind(rf),
            "readsPerRotation": calls.reads() as f64 / rf,
            "tokenRequests": calls.tokens(),
            "throttled429s": calls.throttled(),
            "callsPerRotation": calls.per(rf),
        },
        "apiServer": {"operator": api, "allClientsByVerb": apiserver},
        "operator": {"peakRssMiB": peak, "cpuSeconds": cpu},
    });
    Ok((result, operator))
}

fn new_key_delivered(
    c: &CredentialRotation,
    before: &std::collections::HashMap<String, String>,
) -> bool {
    let Some(status) = &c.status else {
        return false;
    };
    let Some(current) = status.current_key_id.as_deref() else {
        return false;
    };
    before.get(&c.name_any()).map(String::as_str) != Some(current)
        && status.targets.iter().any(|t| {
            t.kind == "Secret" && t.key_id.as_deref() == Some(current) && t.state == "Published"
        })
}

/// The API server's request counter by verb (from its /metrics), for the delta of one phase: every client.
async fn apiserver_requests(
    client: &Client,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(sum_by_label(&text, "apiserver_request_total", "verb"))
}

/// A Prometheus counter in text exposition, summed by one label's value.
fn sum_by_label(text: &str, metric: &str, label: &str) -> std::collections::BTreeMap<String, f64> {
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

fn diff(
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

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let d: entra_operator::api::Duration = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(d.as_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interval_flag_is_compressed_and_nothing_else() {
        let help = "Options:
      --resync-interval <DURATION>
          How often a converged object is compared with Azure again (a Go duration) [env:
          RESYNC_INTERVAL=] [default: 1h]
      --drift-interval <DURATION>
          How often Azure is asked what changed [env: DRIFT_INTERVAL=] [default: 5m]
      --principal-replication-window <DURATION>
          How long a role assignment keeps being retried [env:
          PRINCIPAL_REPLICATION_WINDOW=] [default: 60m]
      --concurrency <N>
          How many objects [env: CONCURRENCY=] [default: 8]
";
        let scaled = intervals_in_help(help, 180.0).unwrap();
        assert_eq!(
            scaled,
            [
                ("RESYNC_INTERVAL".into(), "1h".into(), "20000ms".into()),
                ("DRIFT_INTERVAL".into(), "5m".into(), "1667ms".into()),
            ]
        );
    }

    #[test]
    fn sizes_parse_with_separators_and_may_be_empty() {
        assert_eq!(parse_sizes("100,1000,5_000").unwrap().0, [100, 1000, 5000]);
        assert!(parse_sizes("").unwrap().0.is_empty());
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("x").is_err());
    }
}
