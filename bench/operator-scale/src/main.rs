//! Scale benchmark for entra-operator: N ServicePrincipals, each with a RoleDelegation (AcrPull on the
//! registry), created at once on the local control plane, against an in-process Azure emulator. Measures the
//! time until every object is Ready, the Azure calls per object by operation against the minimum, the API
//! server requests by verb, the operator's peak RSS and CPU time; then a steady state of a few resync periods
//! with nothing changing. Writes bench/results/operator-scale.{json,md}.
//!
//! Needs `make testenv-up` and a release build of the operator (`make bench-scale` does both).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use entra_operator::api::{DelegationPolicy, RoleDelegation, ServicePrincipal};

#[derive(Parser)]
struct Args {
    /// Object counts to run, each on a fresh operator and emulator.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sizes: Vec<usize>,
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
    /// The resync interval of the steady-state phase: the "compressed hour".
    #[arg(long, default_value = "20s")]
    resync: String,
    /// How many resync periods the steady state lasts.
    #[arg(long, default_value_t = 3)]
    periods: u32,
    /// Where to write the report.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
const OPERATOR_APP: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const OPERATOR_SECRET: &str = "bench-operator-secret";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.operator.exists(),
        "{} not found: cargo build --release -p entra-operator",
        args.operator.display()
    );
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).with_context(|| {
        format!(
            "{}: start testenv with `make testenv-up`",
            args.kubeconfig.display()
        )
    })?;
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?,
    )?;
    install_crds(&client).await?;
    let mut runs = vec![];
    for &n in &args.sizes {
        eprintln!("== {n} objects");
        runs.push(run(&client, &args, n).await?);
    }
    let report = json!({
        "benchmark": "operator-scale",
        "machine": machine(),
        "resyncInterval": args.resync,
        "runs": runs,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("operator-scale.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(args.out.join("operator-scale.md"), markdown(&report))?;
    eprintln!("wrote {}/operator-scale.{{json,md}}", args.out.display());
    Ok(())
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

async fn run(client: &Client, args: &Args, n: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let mut config = azure_emulator::config::Config::default_seed();
    config.seed.applications[0].client_secrets = vec![OPERATOR_SECRET.into()];
    let emulator = azure_emulator::start(azure_emulator::Options {
        config,
        state_dir: dir.path().join("emulator"),
        persist: false,
        listen: "127.0.0.1:0".parse()?,
        hostnames: vec![],
    })
    .await?;

    let ns = format!("bench-{n}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let policies: Api<DelegationPolicy> = Api::all(client.clone());
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

    let apiserver_before = apiserver_requests(client).await?;
    // Creation with the default resync (1h): a short one would resync objects while others are created.
    let mut operator = spawn_operator(args, &emulator, &ns, "1h")?;
    let pid = operator.id().context("operator pid")?;
    let cpu_start = cpu_seconds(pid)?;

    // Everything created at once (as fast as the API server takes it), then wait for all to be Ready.
    let sps: Api<ServicePrincipal> = Api::namespaced(client.clone(), &ns);
    let rds: Api<RoleDelegation> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
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
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let created = started.elapsed();
    let mut peak_rss = 0;
    let ready_after = loop {
        peak_rss = peak_rss.max(rss_kib(pid)?);
        let ready_sps = count_ready(&sps).await?;
        let ready_rds = count_ready(&rds).await?;
        if ready_sps == n && ready_rds == n {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120 + n as u64) {
            bail!(
                "only {ready_sps} ServicePrincipals and {ready_rds} RoleDelegations Ready after {:?}",
                started.elapsed()
            );
        }
        if let Some(status) = operator.try_wait()? {
            bail!("the operator exited: {status}");
        }
        // Once a second: listing N objects of two kinds is load on the API server too.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let cpu_create = cpu_seconds(pid)? - cpu_start;
    let calls_create = take_calls(&emulator);
    let apiserver_create = diff(&apiserver_requests(client).await?, &apiserver_before);
    eprintln!(
        "   all Ready after {ready_after:?}; peak RSS {} MiB",
        peak_rss / 1024
    );

    // Steady state over a compressed hour: a fresh operator whose resync is `--resync` (standing for the
    // default hour), measured after its start-up pass and one resync, over `--periods` resyncs.
    let _ = operator.kill().await;
    let mut operator = spawn_operator(args, &emulator, &ns, &args.resync)?;
    let pid = operator.id().context("operator pid")?;
    let resync: Duration = parse_seconds(&args.resync)?;
    tokio::time::sleep(resync + Duration::from_secs(5)).await;
    take_calls(&emulator);
    let steady_for = resync * args.periods;
    let steady_cpu_start = cpu_seconds(pid)?;
    let steady_started = Instant::now();
    while steady_started.elapsed() < steady_for {
        peak_rss = peak_rss.max(rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let calls_steady = take_calls(&emulator);
    let cpu_steady = cpu_seconds(pid)? - steady_cpu_start;
    let rss_steady = rss_kib(pid)?;

    let per_object = |calls: &BTreeMap<String, u64>| -> Value {
        calls
            .iter()
            .map(|(op, count)| {
                (
                    op.clone(),
                    json!((*count as f64 / n as f64 * 100.0).round() / 100.0),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let writes: u64 = calls_create
        .iter()
        .filter(|(op, _)| !op.contains(" GET ") && !op.starts_with("token") && op.ends_with(" 2xx"))
        .map(|(_, c)| c)
        .sum();
    let throttled = |calls: &BTreeMap<String, u64>| -> u64 {
        calls
            .iter()
            .filter(|(op, _)| op.ends_with(" 429"))
            .map(|(_, c)| c)
            .sum()
    };
    let steady_total: u64 = calls_steady.values().sum();
    let steady_accepted: u64 = calls_steady
        .iter()
        .filter(|(op, _)| op.ends_with(" 2xx"))
        .map(|(_, c)| c)
        .sum();
    let result = json!({
        "objects": n,
        "createdInSeconds": created.as_secs_f64(),
        "allReadyInSeconds": ready_after.as_secs_f64(),
        "objectsReadyPerSecond": n as f64 / ready_after.as_secs_f64(),
        "azureCallsPerObject": per_object(&calls_create),
        "azureWritesPerObject": writes as f64 / n as f64,
        "azure429sWhileCreating": throttled(&calls_create),
        "minimumWritesPerObject": 4,
        "apiServerRequestsByVerb": apiserver_create,
        "operatorPeakRssMiB": peak_rss as f64 / 1024.0,
        "operatorCpuSecondsCreate": cpu_create,
        "steadyState": {
            "seconds": steady_for.as_secs_f64(),
            "resyncPeriods": args.periods,
            "azureCallsPerObjectPerResync": steady_total as f64 / n as f64 / args.periods as f64,
            "azureAcceptedCallsPerObjectPerResync": steady_accepted as f64 / n as f64 / args.periods as f64,
            "azure429s": throttled(&calls_steady),
            "azureCallsPerObject": per_object(&calls_steady),
            "operatorCpuSeconds": cpu_steady,
            "operatorRssMiB": rss_steady as f64 / 1024.0,
        },
    });

    // Clean up: delete everything through the operator (which removes the applications and assignments),
    // then stop it.
    rds.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    sps.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 5);
    while Instant::now() < deadline
        && (!sps
            .list_metadata(&ListParams::default().limit(1))
            .await?
            .items
            .is_empty()
            || !rds
                .list_metadata(&ListParams::default().limit(1))
                .await?
                .items
                .is_empty())
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = operator.kill().await;
    let _ = policies.delete(&ns, &DeleteParams::default()).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    emulator.shutdown().await?;
    Ok(result)
}

fn spawn_operator(
    args: &Args,
    emulator: &azure_emulator::Running,
    ns: &str,
    resync: &str,
) -> anyhow::Result<tokio::process::Child> {
    let base = &emulator.base_url;
    Ok(tokio::process::Command::new(&args.operator)
        .args(["run", "--log-format", "json", "--kubeconfig"])
        .arg(&args.kubeconfig)
        .env_clear()
        .envs([
            ("AZURE_CLOUD", "custom".to_string()),
            ("AZURE_AUTHORITY_HOST", base.clone()),
            ("AZURE_GRAPH_ENDPOINT", format!("{base}/v1.0")),
            ("AZURE_RESOURCE_MANAGER_ENDPOINT", base.clone()),
            ("AZURE_CA_FILE", emulator.ca_file.display().to_string()),
            ("AZURE_CREDENTIAL", "client-secret".into()),
            ("AZURE_CLIENT_ID", OPERATOR_APP.into()),
            ("AZURE_CLIENT_SECRET", OPERATOR_SECRET.into()),
            (
                "AZURE_TENANT_ID",
                azure_emulator::config::Config::default_seed()
                    .seed
                    .tenant_id,
            ),
            ("ENTRA_OPERATOR_CLUSTER_ID", format!("bench-{ns}")),
            ("WATCH_NAMESPACES", ns.to_string()),
            ("METRICS_ADDR", "127.0.0.1:0".into()),
            ("RESYNC_INTERVAL", resync.to_string()),
            ("RUST_LOG", "warn".into()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn count_ready<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let list: Vec<Value> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    Ok(list
        .iter()
        .filter(|o| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count())
}

/// The emulator's calls since the last take, by operation and status class ("GET /x 2xx", "GET /x 429"), and
/// resets them.
fn take_calls(emulator: &azure_emulator::Running) -> BTreeMap<String, u64> {
    let mut calls = emulator.ctx.calls.lock();
    let mut taken = BTreeMap::new();
    for (op, by_status) in calls.iter() {
        for (status, n) in by_status {
            let class = match status {
                200..=299 => "2xx".to_string(),
                s => s.to_string(),
            };
            *taken.entry(format!("{op} {class}")).or_insert(0) += n;
        }
    }
    calls.clear();
    taken
}

/// The API server's request counter by verb (from its /metrics), for the delta of one phase.
async fn apiserver_requests(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut by_verb = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_verb.entry(verb.to_string()).or_insert(0.0) += count;
    }
    Ok(by_verb)
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> Value {
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

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of /proc/pid/stat (12 and 13 after the command name).
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn parse_seconds(text: &str) -> anyhow::Result<Duration> {
    let d: entra_operator::api::Duration = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(d.as_std())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 / 1024.0).round())
        .unwrap_or(0.0);
    json!({"cpus": cpus, "cpuModel": model, "memoryGiB": mem_gib})
}

fn markdown(report: &Value) -> String {
    let m = &report["machine"];
    let mut out = format!(
        "# entra-operator at scale\n\nN ServicePrincipals (with a Secret) and N RoleDelegations (AcrPull on the registry, by \
         principalRef), created at once on testenv (kube-apiserver v1.37) against the in-process Azure emulator \
         with its default knobs (throttling at Graph's and ARM's documented limits, no faults, no replication delay). The operator is a release build, one replica, watching one namespace. \
         Machine: {} CPUs ({}), {} GiB. Produced by `make bench-scale`.\n\n",
        m["cpus"],
        m["cpuModel"].as_str().unwrap_or(""),
        m["memoryGiB"]
    );
    out.push_str("| objects | all Ready (s) | objects/s | accepted Azure writes per object (minimum 4) | 429s while creating | peak RSS (MiB) | CPU s (create) | steady: Azure calls per object per resync (accepted) | steady: 429s | steady CPU s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in report["runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {} | {:.1} | {:.1} | {:.2} ({:.2}) | {} | {:.1} |\n",
            r["objects"],
            r["allReadyInSeconds"].as_f64().unwrap_or(0.0),
            r["objectsReadyPerSecond"].as_f64().unwrap_or(0.0),
            r["azureWritesPerObject"].as_f64().unwrap_or(0.0),
            r["azure429sWhileCreating"],
            r["operatorPeakRssMiB"].as_f64().unwrap_or(0.0),
            r["operatorCpuSecondsCreate"].as_f64().unwrap_or(0.0),
            r["steadyState"]["azureCallsPerObjectPerResync"]
                .as_f64()
                .unwrap_or(0.0),
            r["steadyState"]["azureAcceptedCallsPerObjectPerResync"]
                .as_f64()
                .unwrap_or(0.0),
            r["steadyState"]["azure429s"],
            r["steadyState"]["operatorCpuSeconds"]
                .as_f64()
                .unwrap_or(0.0),
        ));
    }
    if let Some(last) = report["runs"].as_array().and_then(|r| r.last()) {
        out.push_str(&format!(
            "\nAzure calls per object while creating {} objects:\n\n| operation | per object |\n|---|---:|\n",
            last["objects"]
        ));
        for (op, n) in last["azureCallsPerObject"]
            .as_object()
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("| `{op}` | {n} |\n"));
        }
        out.push_str("\nAPI server requests while creating (all clients, the benchmark's own creates and polls included):\n\n| verb | requests |\n|---|---:|\n");
        for (verb, n) in last["apiServerRequestsByVerb"]
            .as_object()
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("| {verb} | {n} |\n"));
        }
        out.push_str("\nSteady state (nothing changing), Azure calls per object over the whole window:\n\n| operation | per object |\n|---|---:|\n");
        for (op, n) in last["steadyState"]["azureCallsPerObject"]
            .as_object()
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("| `{op}` | {n} |\n"));
        }
    }
    out
}
