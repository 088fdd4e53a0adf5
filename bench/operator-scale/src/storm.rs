//! The rotation storm: R ServicePrincipals with a CredentialRotation each, settled; then every rotation made
//! due at once (spec.rotationToken bumped on all), and the time until each completed (new key in the Secret,
//! previous password removed after the overlap) against the least time Graph's write limit allows from the
//! bucket's level at that moment.

use std::time::{Duration, Instant};

use azure_emulator::limits::Limit;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, ServicePrincipal};

use crate::{
    Bench, MIN_GRAPH_WRITES_PER_OBJECT,
    azure::{self, Bucket, Calls, GRAPH_WRITE_RU},
    create::{create_all, create_service_principal, ready, timeout_for, wait_for_all},
    metrics::{apiserver_requests, diff, parse_duration},
    operator::Operator,
    stage::Stage,
    sys,
    track::Tracker,
};

/// The rotation storm. Its objects are created at once as in a scale run; once every rotation is settled
/// (Ready, holding the ServicePrincipal's first password), all rotations are made due at once by a new
/// spec.rotationToken, and each counts as done when status shows the new key delivered to the Secret, the
/// token observed, the previous password removed (no previousKeyId) and Ready.
pub async fn storm_measure(
    bench: &Bench,
    stage: &Stage,
    r: usize,
) -> anyhow::Result<(Value, Operator)> {
    let crots: Api<CredentialRotation> = Api::namespaced(bench.client.clone(), &stage.ns);
    let overlap = parse_duration(&bench.args.storm_overlap)?;
    let (mut operator, settled_after) = set_up(bench, stage, r).await?;
    let watch = Watch::start(&crots, r).await?;

    // The least time Graph's limits allow for an addPassword and a removePassword per rotation, from the
    // buckets' level now, and the overlap that separates the two.
    let writes = Bucket::now(&stage.emulator, Limit::GraphWrites, &stage.caller);
    let ru = Bucket::now(&stage.emulator, Limit::GraphResourceUnits, &stage.caller);
    let (min_seconds, minimum) = storm_minimum(writes, ru, r, overlap);
    let (_, minimum_full) =
        storm_minimum(writes.map(Bucket::full), ru.map(Bucket::full), r, overlap);
    Calls::take(&stage.emulator);
    bench.operator_requests();
    let apiserver_before = apiserver_requests(&bench.client).await?;
    let cpu_start = operator.cpu_seconds()?;
    eprintln!(
        "   Graph write bucket at {:.0} of {:.0}; minimum {min_seconds:.1} s; bumping spec.rotationToken on all {r}",
        writes.map(|w| w.level).unwrap_or(0.0),
        writes.map(|w| w.capacity).unwrap_or(0.0)
    );

    let started = Instant::now();
    bump_all(bench, &crots, &watch.token, r).await?;
    let bumped = started.elapsed();
    let completed_after = wait_for_all(
        &mut operator,
        started,
        timeout_for(min_seconds, r),
        || watch.completed.all_at(),
        || {
            format!(
                "{} new keys delivered, {} rotations completed",
                watch.delivered.count(),
                watch.completed.count()
            )
        },
        || {
            format!(
                "only {} of {r} rotations completed ({} delivered)",
                watch.completed.count(),
                watch.delivered.count()
            )
        },
    )
    .await?;
    let delivered_after = watch.delivered.all_at().map(|at| at - started);
    let quantiles = quantiles(&watch.completed, started);
    let cpu = operator.cpu_seconds()? - cpu_start;
    let peak = sys::peak_rss_mib(operator.pid)?;
    let calls = Calls::take(&stage.emulator);
    let api = bench.operator_requests();
    let apiserver = diff(&apiserver_requests(&bench.client).await?, &apiserver_before);
    drop(watch);
    let graph_writes = calls.accepted_writes() as f64 / r as f64;
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
        "completedInSecondsQuantiles": quantiles,
        "percentOfMinimum": (min_seconds > 0.0).then(|| 100.0 * min_seconds / completed_after.as_secs_f64()),
        "azure": {
            "graphWritesPerRotation": graph_writes,
            "minimumGraphWritesPerRotation": 2,
            "writesPerRotationByOperation": calls.writes_by_kind(r as f64),
            "readsPerRotation": calls.reads() as f64 / r as f64,
            "tokenRequests": calls.tokens(),
            "throttled429s": calls.throttled(),
            "callsPerRotation": calls.per(r as f64),
        },
        "apiServer": {"operator": api, "allClientsByVerb": apiserver},
        "operator": {"peakRssMiB": peak, "cpuSeconds": cpu},
    });
    Ok((result, operator))
}

/// When the rotations completed, seconds after `started`: median, p90, p99 and the last.
fn quantiles(completed: &Tracker, started: Instant) -> Value {
    let mut times: Vec<f64> = completed
        .times()
        .into_iter()
        .map(|t| (t - started).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let quantile = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    json!({"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99), "max": quantile(1.0)})
}

/// The storm's set-up: an operator, and R ServicePrincipals with a CredentialRotation each created at once
/// and waited for until every rotation is settled (Ready, holding a key, no previous one); then `--storm-idle`.
/// Returns the operator, still running, and how long settling took.
async fn set_up(bench: &Bench, stage: &Stage, r: usize) -> anyhow::Result<(Operator, Duration)> {
    let sps: Api<ServicePrincipal> = Api::namespaced(bench.client.clone(), &stage.ns);
    let crots: Api<CredentialRotation> = Api::namespaced(bench.client.clone(), &stage.ns);
    let create_min = Bucket::now(&stage.emulator, Limit::GraphWrites, &stage.caller)
        .map(|b| b.term(MIN_GRAPH_WRITES_PER_OBJECT * r as f64).seconds)
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
            create_service_principal(&sps, &name).await?;
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
    let settled_after = wait_for_all(
        &mut operator,
        started,
        timeout_for(create_min, r),
        || settled.all_at(),
        || format!("{} CredentialRotations settled", settled.count()),
        || {
            format!(
                "only {} of {r} CredentialRotations settled",
                settled.count()
            )
        },
    )
    .await?;
    drop(settled);
    eprintln!(
        "   {r} ServicePrincipals with a CredentialRotation settled after {:.1} s",
        settled_after.as_secs_f64()
    );
    if bench.args.storm_idle > 0 {
        eprintln!("   idle for {} s", bench.args.storm_idle);
        tokio::time::sleep(Duration::from_secs(bench.args.storm_idle)).await;
    }
    Ok((operator, settled_after))
}

/// Every rotation's key before the storm, the storm's rotationToken, and watches for its new keys delivered
/// and for each rotation completed.
struct Watch {
    token: String,
    delivered: Tracker,
    completed: Tracker,
}

impl Watch {
    async fn start(crots: &Api<CredentialRotation>, r: usize) -> anyhow::Result<Watch> {
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
        Ok(Watch {
            token,
            delivered,
            completed,
        })
    }
}

/// The least time for the storm: Graph's write and resource-unit buckets at their level (an addPassword and
/// a removePassword per rotation), and the overlap after the last addPassword the write bucket allows.
fn storm_minimum(
    writes: Option<Bucket>,
    ru: Option<Bucket>,
    r: usize,
    overlap: Duration,
) -> (f64, Value) {
    let rf = r as f64;
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
}

/// Makes every rotation due at once: a new spec.rotationToken on all R, as fast as the API server takes them.
async fn bump_all(
    bench: &Bench,
    crots: &Api<CredentialRotation>,
    token: &str,
    r: usize,
) -> anyhow::Result<()> {
    create_all(bench, r, |i| {
        let crots = crots.clone();
        let token = token.to_string();
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
    .await
}

pub fn new_key_delivered(
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
