//! The steady state: a compressed hour repeated with nothing changing, on the objects a scale run created. A
//! fresh operator whose periodic intervals are divided by 3600 s / `--hour`, the emulator's throttling scaled
//! alike; Azure calls (reads apart) per object per hour, reconciliations, memory.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    Bench, HOUR,
    azure::{Calls, round2},
    metrics::parse_duration,
    operator::Operator,
    stage::Stage,
    sys,
};

/// The operator's `*_INTERVAL` flags (periodic work) with their defaults, from its --help: each is divided
/// by the compression factor.
pub fn scaled_intervals(
    operator: &Path,
    factor: f64,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let help = std::process::Command::new(operator)
        .args(["run", "--help"])
        .output()?;
    intervals_in_help(&String::from_utf8_lossy(&help.stdout), factor)
}

pub fn intervals_in_help(help: &str, factor: f64) -> anyhow::Result<Vec<(String, String, String)>> {
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
pub async fn steady_state(
    bench: &Bench,
    stage: &Stage,
    n: usize,
) -> anyhow::Result<(Value, Operator)> {
    let hour = parse_duration(&bench.args.hour)?;
    let factor = HOUR.as_secs_f64() / hour.as_secs_f64();
    let intervals = scaled_intervals(&bench.args.operator, factor)?;
    let env = steady_env(bench, &intervals)?;
    let scale = bench.args.steady_throttle_scale.unwrap_or(factor);
    let original_scale = {
        let mut knobs = stage.emulator.ctx.knobs.write();
        let original = knobs.throttling.scale;
        knobs.throttling.scale = original * scale;
        original
    };

    let mut operator = Operator::spawn(bench, stage, &env)?;
    let startup = start_up_pass(&mut operator, n, hour).await?;
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

/// The steady-state operator's environment: the scaled intervals, then `--steady-env` over them.
fn steady_env(
    bench: &Bench,
    intervals: &[(String, String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
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
    Ok(env)
}

/// Its start-up pass (every object reconciled once) is not the steady state: waits until each kind has
/// been reconciled N times, from the operator's own metrics; says when it ended, or why it was not seen to.
async fn start_up_pass(operator: &mut Operator, n: usize, hour: Duration) -> anyhow::Result<Value> {
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
    Ok(startup)
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
}
