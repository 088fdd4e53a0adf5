//! The scale run: N ServicePrincipals, each with a RoleDelegation (AcrPull on the registry), created at once;
//! the time until every object is Ready against the least time the emulator's throttling allows, Azure calls
//! per object, the operator's API server requests, memory and CPU. Then the steady state on the same objects.

use std::time::{Duration, Instant};

use anyhow::bail;
use azure_emulator::limits::Limit;
use futures::{TryStreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};

use entra_operator::api::{
    RoleDelegation, ServicePrincipal,
    conditions::{READY, is_true},
};

use crate::{
    Bench, MIN_ARM_WRITES_PER_OBJECT, MIN_GRAPH_WRITES_PER_OBJECT, NOT_THROTTLE_BOUND_SECONDS, SUB,
    azure::{self, Bucket, Calls, GRAPH_WRITE_RU},
    metrics::{apiserver_requests, diff},
    operator::Operator,
    stage::Stage,
    steady::steady_state,
    sys,
    track::Tracker,
};

pub fn ready_sp(sp: &ServicePrincipal) -> bool {
    sp.status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, READY))
}

pub fn ready_rd(rd: &RoleDelegation) -> bool {
    rd.status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, READY))
}

pub fn ready(conditions: &[Condition]) -> bool {
    is_true(conditions, READY)
}

/// Creates `n` objects (or pairs) at once, as fast as the API server takes them.
pub async fn create_all<F, Fut>(bench: &Bench, n: usize, create: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter((0..n).map(anyhow::Ok))
        .try_for_each_concurrent(bench.args.client_concurrency, create)
        .await
}

/// How long a phase may take before the run is called failed: generous, it only guards against a hang.
pub fn timeout_for(min_seconds: f64, n: usize) -> Duration {
    Duration::from_secs_f64(300.0 + 3.0 * min_seconds + n as f64 / 2.0)
}

pub async fn scale_measure(
    bench: &Bench,
    stage: &Stage,
    n: usize,
) -> anyhow::Result<(Value, Operator)> {
    let client = &bench.client;
    let sps: Api<ServicePrincipal> = Api::namespaced(client.clone(), &stage.ns);
    let rds: Api<RoleDelegation> = Api::namespaced(client.clone(), &stage.ns);

    let nf = n as f64;
    let (min_seconds, minimum) = create_minimum(stage, n);

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
    create_pairs(bench, &sps, &rds, n).await?;
    let created = started.elapsed();
    eprintln!(
        "   created {n} + {n} objects in {:.1} s; throttle-limited minimum until Ready {min_seconds:.1} s",
        created.as_secs_f64()
    );
    let ready_after = wait_for_all(
        &mut operator,
        started,
        timeout_for(min_seconds, n),
        || Some(sp_ready.all_at()?.max(rd_ready.all_at()?)),
        || {
            format!(
                "{} ServicePrincipals, {} RoleDelegations Ready",
                sp_ready.count(),
                rd_ready.count()
            )
        },
        || {
            format!(
                "only {} ServicePrincipals and {} RoleDelegations Ready",
                sp_ready.count(),
                rd_ready.count()
            )
        },
    )
    .await?;
    let cpu_create = operator.cpu_seconds()? - cpu_start;
    let peak_create = sys::peak_rss_mib(operator.pid)?;
    let bench_cpu_create = sys::cpu_seconds("self")? - bench_cpu_start;
    let calls_create = Calls::take(&stage.emulator);
    let api_create = bench.operator_requests();
    let apiserver_create = diff(&apiserver_requests(client).await?, &apiserver_before);
    drop((sp_ready, rd_ready));
    operator.stop().await;
    let percent = say_ready(ready_after, min_seconds, &calls_create, n, peak_create);

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

/// Says how soon everything was Ready; returns it as a percentage of the throttle-limited maximum rate (None
/// when the throttling does not bound creation).
fn say_ready(
    ready_after: Duration,
    min_seconds: f64,
    calls: &Calls,
    n: usize,
    peak_create: f64,
) -> Option<f64> {
    let percent = (min_seconds >= NOT_THROTTLE_BOUND_SECONDS)
        .then(|| 100.0 * min_seconds / ready_after.as_secs_f64());
    eprintln!(
        "   all Ready after {:.1} s ({}); {:.2} Azure writes per object (minimum 4); peak RSS {peak_create:.1} MiB",
        ready_after.as_secs_f64(),
        match percent {
            Some(p) => format!("{p:.0}% of the throttle-limited maximum rate"),
            None => "not throttle-bound".into(),
        },
        calls.accepted_writes() as f64 / n as f64,
    );
    percent
}

/// The least time the throttling allows for the writes N objects need, from the buckets as they are now
/// (full: a fresh emulator).
fn create_minimum(stage: &Stage, n: usize) -> (f64, Value) {
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
    azure::minimum(terms)
}

/// N ServicePrincipals `app-{i}`, each with a RoleDelegation of AcrPull on the registry, created at once.
async fn create_pairs(
    bench: &Bench,
    sps: &Api<ServicePrincipal>,
    rds: &Api<RoleDelegation>,
    n: usize,
) -> anyhow::Result<()> {
    create_all(bench, n, |i| {
        let (sps, rds) = (sps.clone(), rds.clone());
        async move {
            let name = format!("app-{i}");
            create_service_principal(&sps, &name).await?;
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
    .await
}

/// A ServicePrincipal `name` with its Secret `{name}-credentials`, as every object of a run starts.
pub async fn create_service_principal(
    sps: &Api<ServicePrincipal>,
    name: &str,
) -> anyhow::Result<()> {
    let sp: ServicePrincipal = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
        "metadata": {"name": name},
        "spec": {"displayName": name, "secret": {"name": format!("{name}-credentials")}},
    }))?;
    sps.create(&PostParams::default(), &sp).await?;
    Ok(())
}

/// Waits until `all_at` says when everything was done, failing after `timeout` (with `failure`, what was done
/// by then) or as soon as the operator exits; says how far it got (`progress`) every 15 s. Returns the time
/// from `started` until everything was done.
pub async fn wait_for_all(
    operator: &mut Operator,
    started: Instant,
    timeout: Duration,
    all_at: impl Fn() -> Option<Instant>,
    progress: impl Fn() -> String,
    failure: impl Fn() -> String,
) -> anyhow::Result<Duration> {
    let mut last_progress = Instant::now();
    loop {
        if let Some(at) = all_at() {
            return Ok(at - started);
        }
        if started.elapsed() > timeout {
            bail!("{} after {:?}", failure(), started.elapsed());
        }
        operator.check()?;
        if last_progress.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "   {:.0} s: {}",
                started.elapsed().as_secs_f64(),
                progress()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
