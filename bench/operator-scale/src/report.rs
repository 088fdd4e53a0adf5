//! bench/results/operator-scale.json and its markdown rendering. A run of one part (the sizes, or the storm)
//! keeps the other part's last results, each with its own date and machine.

use std::path::Path;

use serde_json::{Value, json};

const GOAL_READS_PER_OBJECT_HOUR: f64 = 0.1;
const GOAL_PEAK_RSS_MIB: f64 = 64.0;
const GOAL_RSS_OBJECTS: u64 = 5000;
const GOAL_PERCENT_OF_MAXIMUM: f64 = 90.0;

pub fn write(out: &Path, scale: Option<Value>, storm: Option<Value>) -> anyhow::Result<String> {
    let json_path = out.join("operator-scale.json");
    let previous: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let report = json!({
        "benchmark": "operator-scale",
        "scale": scale.unwrap_or_else(|| previous["scale"].clone()),
        "storm": storm.unwrap_or_else(|| previous["storm"].clone()),
    });
    std::fs::create_dir_all(out)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(out.join("operator-scale.md"), markdown(&report))?;
    Ok(format!("{}/operator-scale.{{json,md}}", out.display()))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// 1234567 as "1,234,567".
fn int(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

fn list(map: &Value, digits: usize) -> String {
    map.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            if digits == 0 {
                format!("{k} {}", int(f(v)))
            } else {
                format!("{k} {:.*}", digits, f(v))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes per object by what they do, the minimum's operations first.
fn writes(map: &Value) -> String {
    const ORDER: [&str; 5] = [
        "app upsert",
        "SP upsert",
        "addPassword",
        "role assignment PUT",
        "removePassword",
    ];
    let mut entries: Vec<(&String, &Value)> = map.as_object().into_iter().flatten().collect();
    entries.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    entries
        .into_iter()
        .map(|(k, v)| format!("{k} {:.2}", f(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The operator's requests through the proxy: total, then by verb.
fn requests(counted: &Value) -> String {
    if counted["total"].is_null() {
        return "not counted (the operator ran without the counting proxy)".into();
    }
    format!(
        "{}: {}",
        int(f(&counted["total"])),
        list(&counted["byVerb"], 0)
    )
}

/// Azure's 429s: the total, then reads and writes.
fn throttled(t: &Value) -> String {
    format!(
        "{} (reads {}, writes {})",
        int(f(&t["total"])),
        int(f(&t["reads"])),
        int(f(&t["writes"]))
    )
}

fn machine(m: &Value) -> String {
    let load: Vec<String> = m["loadAverageAtStart"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("{:.2}", f(v)))
        .collect();
    format!(
        "{} CPUs ({}), {} GiB memory, Linux {}; load average at the start {}",
        m["cpus"],
        m["cpuModel"].as_str().unwrap_or("?"),
        m["memoryGiB"],
        m["kernel"].as_str().unwrap_or("?"),
        load.join(" / ")
    )
}

/// A warning when the operator reconciled fewer objects than the compressed resync asked for.
fn keep_up(window: &Value) -> String {
    let (measured, asked) = (f(&window["measured"]), f(&window["resyncsAskedFor"]));
    if measured < 0.9 * asked {
        format!(
            " (only {} reconciliations for the {} the compressed resync asks for: the operator did not \
             keep up, or no longer resyncs each object; per-hour figures may read low)",
            int(measured),
            int(asked)
        )
    } else {
        String::new()
    }
}

/// The limiter's buckets, as the run had them.
fn throttling(t: &Value) -> String {
    if t["enabled"].as_bool() == Some(false) {
        return "Throttling: off.".into();
    }
    let buckets: Vec<String> = t["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            format!(
                "{} {} refilling {}/s",
                b["limit"].as_str().unwrap_or("?"),
                int(f(&b["capacity"])),
                f(&b["refillPerSecond"])
            )
        })
        .collect();
    let scale = f(&t["scale"]);
    format!(
        "Throttling (tenant size {}): {}.{}",
        t["tenantSize"].as_str().unwrap_or("?"),
        buckets.join(", "),
        if scale == 1.0 {
            String::new()
        } else {
            format!(
                " **Scaled by {scale} (--throttle-scale): not Azure's documented limits, a trial run.**"
            )
        }
    )
}

fn minimum(min: &Value) -> String {
    let seconds = f(&min["seconds"]);
    let binding = min["binding"].as_str();
    let terms: Vec<String> = min["terms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}: {}",
                t["limit"].as_str().unwrap_or("?"),
                t["formula"].as_str().unwrap_or("?")
            )
        })
        .collect();
    match binding {
        Some(b) => format!("{seconds:.1} s, set by {b} ({})", terms.join("; ")),
        None => format!(
            "0 s: every minimum write fits in what the buckets hold ({})",
            terms.join("; ")
        ),
    }
}

pub fn markdown(report: &Value) -> String {
    let mut out = String::from(
        "# entra-operator at scale\n\n\
         On testenv (kube-apiserver and etcd on this machine) against the in-process Azure emulator with its \
         default knobs: throttling at Graph's and ARM's documented limits (token buckets per app for Graph, \
         per principal for ARM; each section lists them as the emulator's limiter applies them), no faults, \
         no replication delay. The operator is a release build, one \
         replica, watching one namespace, reaching the API server through a counting proxy in the benchmark so \
         that its own requests can be told from everyone else's. Throttle-limited minimums are computed from \
         the emulator's limiter (its buckets' capacity, refill and level at the start), for the fewest writes \
         the work needs. Produced by `make bench-scale` (SIZES=100,1000,5000 STORM=1000 runs everything) and \
         `make bench-storm`; every number below is measured, or derived from the limiter.\n\n",
    );
    let scale = &report["scale"];
    let runs: Vec<&Value> = scale["runs"].as_array().into_iter().flatten().collect();
    let storm = &report["storm"];

    out.push_str(&goals(scale, &runs));
    if !runs.is_empty() {
        out.push_str(&scale_section(scale, &runs));
    }
    if storm.is_object() {
        out.push_str(&storm_section(storm));
    }
    out.push_str(
        "Not compressed in the steady state: the access tokens' lifetime (an hour; a token request per \
         operator per hour, not per object) and the operator's in-memory role-definition cache (built-in roles \
         for an hour), both per operator rather than per object. Full data: \
         [operator-scale.json](operator-scale.json).\n",
    );
    out
}

/// The goals of issue 8, each with what was measured and whether it was met.
fn goals(scale: &Value, runs: &[&Value]) -> String {
    let mut out = String::new();
    out.push_str("## Goals\n\n");
    if f(&scale["throttling"]["scale"]) != 1.0 {
        out.push_str(
            "**A trial run: the emulator's throttling was scaled (--throttle-scale), so these are no \
             measurement against the goals.**\n\n",
        );
    }
    out.push_str("| goal | measured | met |\n|---|---|---|\n");
    let per_size = |value: &dyn Fn(&Value) -> String| -> String {
        runs.iter()
            .map(|r| format!("{}: {}", int(f(&r["objects"])), value(r)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let verdict = |all: bool, any: bool| {
        if !any {
            "not measured"
        } else if all {
            "yes"
        } else {
            "no"
        }
    };
    // Steady state reads.
    let reads_ok = runs
        .iter()
        .all(|r| f(&r["steadyState"]["azureReadsPerObjectPerHour"]) <= GOAL_READS_PER_OBJECT_HOUR);
    out.push_str(&format!(
        "| Steady state: at most {GOAL_READS_PER_OBJECT_HOUR} Azure reads per object per hour | {} | {} |\n",
        per_size(&|r| format!(
            "{:.2}",
            f(&r["steadyState"]["azureReadsPerObjectPerHour"])
        )),
        verdict(reads_ok, !runs.is_empty())
    ));
    // Peak RSS at 5,000.
    let peak =
        |r: &Value| f(&r["operator"]["peakRssMiB"]).max(f(&r["steadyState"]["operatorPeakRssMiB"]));
    let at_goal = runs
        .iter()
        .find(|r| r["objects"].as_u64() == Some(GOAL_RSS_OBJECTS));
    let rss_measured = match at_goal {
        Some(r) => format!("{:.1} MiB", peak(r)),
        None => format!(
            "no {} run{}",
            int(GOAL_RSS_OBJECTS as f64),
            runs.last()
                .map(|r| format!(" (largest, {}: {:.1} MiB)", int(f(&r["objects"])), peak(r)))
                .unwrap_or_default()
        ),
    };
    out.push_str(&format!(
        "| Peak RSS at most {GOAL_PEAK_RSS_MIB:.0} MiB with {} ServicePrincipals | {rss_measured} | {} |\n",
        int(GOAL_RSS_OBJECTS as f64),
        verdict(
            at_goal.is_some_and(|r| peak(r) <= GOAL_PEAK_RSS_MIB),
            at_goal.is_some()
        )
    ));
    // Creation rate.
    let bound: Vec<&&Value> = runs
        .iter()
        .filter(|r| r["throttleBound"].as_bool() == Some(true))
        .collect();
    out.push_str(&format!(
        "| Creation at {GOAL_PERCENT_OF_MAXIMUM:.0}% or more of the throttle-limited maximum rate | {} | {} |\n",
        per_size(&|r| match r["percentOfThrottleLimitedMaximum"].as_f64() {
            Some(p) => format!("{p:.0}%"),
            None => "not throttle-bound (minimum 0 s)".into(),
        }),
        if bound.is_empty() && !runs.is_empty() {
            "n/a: no size is throttle-bound"
        } else {
            verdict(
                bound
                    .iter()
                    .all(|r| f(&r["percentOfThrottleLimitedMaximum"]) >= GOAL_PERCENT_OF_MAXIMUM),
                !runs.is_empty(),
            )
        }
    ));
    // Writes per object.
    let writes_ok = runs.iter().all(|r| {
        (f(&r["azure"]["writesPerObject"]) - f(&r["azure"]["minimumWritesPerObject"])).abs() < 0.005
    });
    out.push_str(&format!(
        "| Azure writes per created object equal to the minimum (4) | {} | {} |\n\n",
        per_size(&|r| format!("{:.2}", f(&r["azure"]["writesPerObject"]))),
        verdict(writes_ok, !runs.is_empty())
    ));
    out
}

/// The scale runs: how they ran, a table per size, and the Azure calls of the largest by operation.
fn scale_section(scale: &Value, runs: &[&Value]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
            "## N ServicePrincipals, each with a RoleDelegation, created at once\n\n\
             Measured {}. Machine: {}. {}\n\n\
             Each ServicePrincipal has a Secret; each RoleDelegation grants AcrPull on the registry by \
             principalRef. \"All Ready\" runs from the first create to the moment the last object turned \
             Ready (seen through a watch). The minimum writes per object are app upsert, SP upsert and \
             addPassword (Graph) and the role assignment PUT (ARM). Steady state: a fresh operator on the \
             same objects, nothing changing, its periodic intervals divided by {:.0} (the default hour of \
             resync becomes {} s, a compressed hour; {}) and the emulator's throttling scaled by {} (at the \
             compression factor, a compressed hour refills what an hour does), measured over {} compressed hour(s) after its \
             start-up pass.\n\n",
            scale["generatedAt"].as_str().unwrap_or("?"),
            machine(&scale["machine"]),
            throttling(&scale["throttling"]),
            f(&runs[0]["steadyState"]["compressionFactor"]),
            f(&runs[0]["steadyState"]["compressedHourSeconds"]),
            runs[0]["steadyState"]["operatorIntervals"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| format!(
                    "{} {} → {}",
                    i["env"].as_str().unwrap_or("?"),
                    i["default"].as_str().unwrap_or("?"),
                    i["compressed"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(", "),
            f(&runs[0]["steadyState"]["throttleScale"]),
            scale["hours"],
        ));
    for r in runs {
        out.push_str(&run_table(r));
    }
    if let Some(last) = runs.last() {
        out.push_str(&calls_by_operation(last));
    }
    out
}

/// One size's measures, creating and in the steady state.
fn run_table(r: &Value) -> String {
    let mut out = String::new();
    let a = &r["azure"];
    let api = &r["apiServer"];
    out.push_str(&format!(
        "### {} ServicePrincipals\n\n| measure | value |\n|---|---|\n",
        int(f(&r["objects"]))
    ));
    let rows = [
                (
                    "all Ready".to_string(),
                    format!(
                        "{:.1} s ({:.1} objects/s; the benchmark's own creates took {:.1} s)",
                        f(&r["allReadyInSeconds"]),
                        f(&r["objectsReadyPerSecond"]),
                        f(&r["createdInSeconds"])
                    ),
                ),
                (
                    "throttle-limited minimum".into(),
                    minimum(&r["throttleLimitedMinimum"]),
                ),
                (
                    "creation rate, % of the throttle-limited maximum".into(),
                    match r["percentOfThrottleLimitedMaximum"].as_f64() {
                        Some(p) => format!("{p:.0}%"),
                        None => "n/a: not throttle-bound (the minimum is 0 s)".into(),
                    },
                ),
                (
                    format!(
                        "Azure writes per object (minimum {})",
                        int(f(&a["minimumWritesPerObject"]))
                    ),
                    format!(
                        "{:.2}: {}",
                        f(&a["writesPerObject"]),
                        writes(&a["writesPerObjectByOperation"])
                    ),
                ),
                (
                    "Azure reads per object".into(),
                    format!(
                        "{:.2} ({:.2} answered, the rest throttled)",
                        f(&a["readsPerObject"]),
                        f(&a["acceptedReadsPerObject"])
                    ),
                ),
                (
                    "Azure 429s".into(),
                    throttled(&a["throttled429s"]),
                ),
                (
                    "API server requests by the operator".into(),
                    requests(&api["operator"]),
                ),
                (
                    "API server requests, all clients (apiserver_request_total: the benchmark's creates and watches, kube-controller-manager, anyone else on testenv; a WATCH counts when it ends)".into(),
                    list(&api["allClientsByVerb"], 0),
                ),
                (
                    "operator peak RSS, CPU".into(),
                    format!(
                        "{:.1} MiB, {:.1} s",
                        f(&r["operator"]["peakRssMiB"]),
                        f(&r["operator"]["cpuSeconds"])
                    ),
                ),
            ];
    for (k, v) in rows.into_iter().chain(steady_rows(&r["steadyState"])) {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out.push('\n');
    out
}

/// The steady state's rows of a size's table.
fn steady_rows(s: &Value) -> [(String, String); 3] {
    [
        (
            "steady state: Azure calls per object per hour".into(),
            format!(
                "{:.2}: reads {:.2} ({:.2} answered), writes {:.2}; 429s {}{}",
                f(&s["azureCallsPerObjectPerHour"]),
                f(&s["azureReadsPerObjectPerHour"]),
                f(&s["azureAcceptedReadsPerObjectPerHour"]),
                f(&s["azureWritesPerObjectPerHour"]),
                int(f(&s["azure429s"]["total"])),
                keep_up(&s["reconciliationsInWindow"])
            ),
        ),
        (
            "steady state: API server requests by the operator per hour".into(),
            requests(&s["apiServerOperatorRequestsPerHour"]),
        ),
        (
            "steady state: operator RSS, CPU per hour".into(),
            format!(
                "{:.1} MiB (peak {:.1}), {:.1} s",
                f(&s["operatorRssMiB"]),
                f(&s["operatorPeakRssMiB"]),
                f(&s["operatorCpuSecondsPerHour"])
            ),
        ),
    ]
}

/// Azure calls per object by operation and answer, creating and per steady-state hour.
fn calls_by_operation(last: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Azure calls per object by operation and answer, {} objects:\n\n\
                 | operation | creating | steady state, per hour |\n|---|---:|---:|\n",
        int(f(&last["objects"]))
    ));
    let create = last["azure"]["callsPerObject"].as_object();
    let steady = last["steadyState"]["callsPerObjectPerHour"].as_object();
    let mut ops: Vec<&String> = create
        .into_iter()
        .flatten()
        .chain(steady.into_iter().flatten())
        .map(|(k, _)| k)
        .collect();
    ops.sort();
    ops.dedup();
    for op in ops {
        let cell = |m: Option<&serde_json::Map<String, Value>>| {
            m.and_then(|m| m.get(op))
                .map(|v| format!("{:.2}", f(v)))
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "| `{op}` | {} | {} |\n",
            cell(create),
            cell(steady)
        ));
    }
    out.push('\n');
    out
}

/// The rotation storm: how it ran and its measures.
fn storm_section(storm: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
            "## Rotation storm\n\nMeasured {}. Machine: {}. {}\n\n\
             {} ServicePrincipals, each with a CredentialRotation (overlap {:.0} s), created at once and left to \
             settle{}; then spec.rotationToken changed on all of them at once. A rotation is complete when its \
             status shows the new key in the Secret, the new token observed, Ready, and no previous key (the \
             previous password removed after the overlap). The minimum needs an addPassword and a \
             removePassword per rotation against Graph's write bucket as it stood when the storm began, and \
             the overlap between them.\n\n| measure | value |\n|---|---|\n",
            storm["generatedAt"].as_str().unwrap_or("?"),
            machine(&storm["machine"]),
            throttling(&storm["throttling"]),
            int(f(&storm["rotations"])),
            f(&storm["overlapSeconds"]),
            match storm["setUp"]["idleBeforeStormSeconds"].as_u64() {
                Some(s) if s > 0 => format!(", then {s} s idle"),
                _ => String::new(),
            },
        ));
    out.push_str(&storm_table(storm));
    out
}

fn storm_table(storm: &Value) -> String {
    let mut out = String::new();
    let a = &storm["azure"];
    let q = &storm["completedInSecondsQuantiles"];
    let bucket = &storm["graphWriteBucketAtStart"];
    let rows = [
        (
            "Graph write bucket when the storm began".to_string(),
            format!(
                "{} of {} (refill {}/s)",
                int(f(&bucket["level"])),
                int(f(&bucket["capacity"])),
                f(&bucket["refillPerSecond"])
            ),
        ),
        ("minimum".into(), minimum(&storm["minimum"])),
        (
            "minimum with a full bucket".into(),
            format!("{:.1} s", f(&storm["minimumWithFullBucket"]["seconds"])),
        ),
        (
            "all new keys delivered".into(),
            storm["allNewKeysDeliveredInSeconds"]
                .as_f64()
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "?".into()),
        ),
        (
            "all rotations completed".into(),
            format!(
                "{:.1} s (p50 {:.1}, p90 {:.1}, p99 {:.1}): {:.0}% of the throttle-limited maximum rate (the token changes took {:.1} s)",
                f(&storm["allCompletedInSeconds"]),
                f(&q["p50"]),
                f(&q["p90"]),
                f(&q["p99"]),
                f(&storm["percentOfMinimum"]),
                f(&storm["rotationTokenBumpSeconds"])
            ),
        ),
        (
            format!(
                "Azure writes per rotation (minimum {})",
                a["minimumGraphWritesPerRotation"]
            ),
            format!(
                "{:.2}: {}",
                f(&a["graphWritesPerRotation"]),
                writes(&a["writesPerRotationByOperation"])
            ),
        ),
        (
            "Azure reads per rotation".into(),
            format!("{:.2}", f(&a["readsPerRotation"])),
        ),
        ("Azure 429s".into(), throttled(&a["throttled429s"])),
        (
            "API server requests by the operator".into(),
            requests(&storm["apiServer"]["operator"]),
        ),
        (
            "operator peak RSS, CPU".into(),
            format!(
                "{:.1} MiB, {:.1} s",
                f(&storm["operator"]["peakRssMiB"]),
                f(&storm["operator"]["cpuSeconds"])
            ),
        ),
    ];
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_get_thousands_separators() {
        assert_eq!(int(5000.0), "5,000");
        assert_eq!(int(100.0), "100");
        assert_eq!(int(1234567.0), "1,234,567");
    }

    /// The committed bench/results/operator-scale.md is what the committed JSON renders to: the report's format is
    /// exactly the one the results were written in.
    #[test]
    fn the_committed_results_render_as_committed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results/");
        let read = |file: &str| std::fs::read_to_string(format!("{dir}{file}")).unwrap();
        let json: Value = serde_json::from_str(&read("operator-scale.json")).unwrap();
        assert_eq!(markdown(&json), read("operator-scale.md"));
    }
}
