//! The soak's report: what the churn, the chaos and the audit add up to (bench/results/chaos-soak.json and
//! its Markdown rendering), the story behind a finding, and the verdict a run must pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{Audited, Churned, Params, audit::CATEGORIES, chaos::soak_knobs};
use crate::harness::{Azure, emulator_get};

/// A finished soak: the report, the findings (empty when the audit was clean), the timeline and log lines
/// that explain them, and where the operator's log was kept.
pub struct Report {
    pub json: Value,
    pub findings: Vec<String>,
    pub explanation: String,
    pub log_file: PathBuf,
}

/// The report of a finished soak: the findings of both audits, the story behind them, and the figures.
pub(super) fn report(
    p: &Params,
    ns: &str,
    run: &Churned,
    audited: &Audited,
    log: &[String],
    log_file: PathBuf,
) -> Report {
    let mut findings: Vec<String> = audited
        .settled
        .lines()
        .into_iter()
        .map(|f| format!("after settling: {f}"))
        .collect();
    findings.extend(
        audited
            .emptied
            .lines()
            .into_iter()
            .map(|f| format!("after deleting everything: {f}")),
    );
    let timeline = run.timeline.lock().unwrap().clone();
    let explanation = if findings.is_empty() {
        String::new()
    } else {
        explain(&findings, &run.started, &timeline, log)
    };
    let counts = &run.churn.counts;
    let sampled = &audited.sampled;
    let json = json!({
        "benchmark": "chaos-soak",
        "date": jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC").to_string(),
        "machine": machine(),
        "seed": p.seed,
        "namespace": ns,
        "churnSeconds": (run.seconds * 10.0).round() / 10.0,
        "churnSteps": run.steps,
        "requestedChurnSeconds": p.churn.as_secs(),
        "maxLiveServicePrincipals": p.max_service_principals,
        "knobs": soak_knobs(p.seed),
        "throttling": "enabled at Azure's documented limits (the emulator's default)",
        "resyncInterval": "1h (the chart's default)",
        "killEverySeconds": [p.kill_every.0, p.kill_every.1],
        "kills": run.kills.len(),
        "killTimesSeconds": run.kills,
        "restartToReadySeconds": run.restart_seconds,
        "created": counts.created,
        "updated": counts.updated,
        "deleted": counts.deleted,
        "createdAndDeletedWithinSeconds": counts.created_and_deleted_at_once,
        "secretsDeleted": counts.secrets_deleted,
        "rotationsRequested": counts.rotations_requested,
        "apiErrors": counts.api_errors,
        "azureDuringChurn": run.chaos_calls,
        "operatorLog": log_summary(log),
        "passwordsAtOnce": {"samples": sampled.samples, "mostOnARotatedApplication": sampled.most_rotated,
            "mostOnAnyOtherApplication": sampled.most_other},
        "liveAtAudit": audited.live,
        "settleSeconds": (audited.settle_seconds * 10.0).round() / 10.0,
        "audit": audited.settled.counts(),
        "teardownSeconds": (audited.teardown_seconds * 10.0).round() / 10.0,
        "auditAfterDeletingEverything": audited.emptied.counts(),
        "findings": findings,
    });
    Report {
        json,
        findings,
        explanation,
        log_file,
    }
}

pub(super) async fn calls(azure: &Azure) -> Value {
    emulator_get(azure, "/_emulator/calls").await
}

/// Graph and ARM answers by status class: what the operator saw of the chaos.
pub(super) fn answers(calls: &Value) -> Value {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for (route, statuses) in calls.as_object().into_iter().flatten() {
        if !(route.starts_with("graph ") || route.starts_with("arm ")) {
            continue;
        }
        for (status, n) in statuses.as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            total += n;
            *by_status.entry(status.clone()).or_default() += n;
            // Refusals other than the injected ones and not-found: worth a look.
            if status.starts_with('4') && !["404", "429"].contains(&status.as_str()) {
                *refused.entry(format!("{route} {status}")).or_default() += n;
            }
        }
    }
    let sum = |pred: &dyn Fn(u16) -> bool| -> u64 {
        by_status
            .iter()
            .filter(|(s, _)| s.parse().is_ok_and(pred))
            .map(|(_, n)| n)
            .sum()
    };
    json!({
        "graphAndArmCalls": total,
        "answered5xx": sum(&|s| s >= 500),
        "answered429": sum(&|s| s == 429),
        "answered504": sum(&|s| s == 504),
        "byStatus": by_status,
        "other4xxByRoute": refused,
    })
}

pub(super) fn machine() -> Value {
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
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0);
    json!({"cpus": cpus, "cpuModel": model, "memoryGiB": mem_gib})
}

/// What the operator's log says: reconcile failures by reason, rotations issued.
pub(super) fn log_summary(log: &[String]) -> Value {
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut rotations = 0;
    for line in log {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["message"].as_str() {
            Some("reconcile failed") => {
                *failures
                    .entry(v["reason"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1
            }
            Some("rotated the client secret") => rotations += 1,
            _ => {}
        }
    }
    json!({"reconcileFailuresByReason": failures, "rotationsIssued": rotations})
}

/// The timeline entries and log lines that name the objects a finding names.
pub(super) fn explain(
    findings: &[String],
    started: &str,
    timeline: &[(f64, String)],
    log: &[String],
) -> String {
    let names: BTreeSet<String> = findings
        .iter()
        .flat_map(|f| {
            f.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("sp-"))
                .map(|w| {
                    w.trim_end_matches("-credentials")
                        .trim_end_matches("-rotation")
                        .trim_end_matches("-a")
                        .trim_end_matches("-b")
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mentions = |text: &str| {
        names.iter().any(|n| {
            text.match_indices(n.as_str()).any(|(i, _)| {
                !text[i + n.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        })
    };
    let mut out = format!("timeline of the objects named (seconds after {started}):\n");
    for (t, what) in timeline {
        if mentions(what) || what.starts_with("operator killed") {
            out.push_str(&format!("  {t:>7.1}s {what}\n"));
        }
    }
    let lines: Vec<&String> = log.iter().filter(|l| mentions(l)).collect();
    out.push_str(&format!(
        "operator log lines naming them (last 60 of {}):\n",
        lines.len()
    ));
    for l in lines.iter().skip(lines.len().saturating_sub(60)) {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

/// The report in Markdown, as bench/results/chaos-soak.md holds it.
pub fn markdown(r: &Value) -> String {
    let mut out = intro(r);
    out.push_str(&summary_table(r));
    out.push_str(&audit_table(r));
    out
}

/// What ran, on what, and how to repeat it.
fn intro(r: &Value) -> String {
    let m = &r["machine"];
    let mut out = format!(
        "# Chaos soak with a leak audit\n\n\
         ServicePrincipals (each with a Secret), RoleDelegations and CredentialRotations created, changed, rotated \
         and deleted at random for {churn} s while the in-process Azure emulator fails Graph and ARM calls, delays \
         replication and adds latency, and the operator (debug build, one replica, the chart's RBAC) is killed with \
         SIGKILL every {k0}-{k1} s and restarted. Then the faults stop, the operator converges, and the audit compares \
         Azure with the cluster; last, everything is deleted and audited again. Machine: {cpus} CPUs ({model}), \
         {mem} GiB, shared with other work. Produced by `make soak SOAK_SECONDS={churn_int}` on \
         {date}; `SOAK_SEED={seed}` repeats its choices.\n\n",
        churn = r["churnSeconds"],
        churn_int = r["requestedChurnSeconds"],
        k0 = r["killEverySeconds"][0],
        k1 = r["killEverySeconds"][1],
        cpus = m["cpus"],
        model = m["cpuModel"].as_str().unwrap_or(""),
        mem = m["memoryGiB"],
        seed = r["seed"],
        date = r["date"].as_str().unwrap_or(""),
    );
    out.push_str(&format!(
        "Knobs during the churn: faults `{}`; replication `{}`; throttling {}; operator resync {}.\n\n",
        r["knobs"]["faults"], r["knobs"]["replication"], r["throttling"].as_str().unwrap_or(""),
        r["resyncInterval"].as_str().unwrap_or("")
    ));
    out
}

/// One row a number: what the churn did, what Azure answered, how long the audit took to be clean.
fn summary_table(r: &Value) -> String {
    let azure = &r["azureDuringChurn"];
    let mut out = String::new();
    out.push_str("| | |\n|---|---:|\n");
    for (label, value) in [
        ("churn steps", r["churnSteps"].to_string()),
        ("created", row(&r["created"])),
        ("updated", row(&r["updated"])),
        ("deleted", row(&r["deleted"])),
        (
            "ServicePrincipals created and deleted within 2.5 s",
            r["createdAndDeletedWithinSeconds"].to_string(),
        ),
        (
            "Secrets deleted behind the operator's back",
            r["secretsDeleted"].to_string(),
        ),
        (
            "rotations requested (rotationToken)",
            r["rotationsRequested"].to_string(),
        ),
        (
            "rotations issued (operator log)",
            r["operatorLog"]["rotationsIssued"].to_string(),
        ),
        ("SIGKILLs", r["kills"].to_string()),
        (
            "Kubernetes API errors in the churn's own calls",
            r["apiErrors"].as_array().map_or(0, Vec::len).to_string(),
        ),
        (
            "Graph and ARM calls during the churn",
            azure["graphAndArmCalls"].to_string(),
        ),
        (
            "answered 5xx (504 timeouts included) / 429",
            format!(
                "{} ({}) / {}",
                azure["answered5xx"], azure["answered504"], azure["answered429"]
            ),
        ),
        (
            "most passwords on one application at once: rotated / other",
            format!(
                "{} / {}",
                r["passwordsAtOnce"]["mostOnARotatedApplication"],
                r["passwordsAtOnce"]["mostOnAnyOtherApplication"]
            ),
        ),
        ("live at the audit", row(&r["liveAtAudit"])),
        (
            "seconds until the audit was clean once the faults stopped",
            if r["findings"].as_array().is_some_and(Vec::is_empty) {
                r["settleSeconds"].to_string()
            } else {
                format!("not clean; gave up after {}", r["settleSeconds"])
            },
        ),
        (
            "seconds to delete everything",
            r["teardownSeconds"].to_string(),
        ),
    ] {
        out.push_str(&format!("| {label} | {value} |\n"));
    }
    out
}

/// The findings by category, after converging and after deleting everything, and the operator's failures.
fn audit_table(r: &Value) -> String {
    let mut out = String::new();
    out.push_str(
        "\nThe audit: every live object Ready for its generation with its spec applied; every Secret signs in \
         (token endpoint, 200); each application holds exactly one password, the one its Secret names (a rotation \
         keeps the previous one only for its 3 s overlap, and at most two at any time); nothing in Azure that no \
         live object accounts for. Objects of the emulator's seed are left out.\n\n\
         | finding | after converging | after deleting everything |\n|---|---:|---:|\n",
    );
    for c in CATEGORIES {
        out.push_str(&format!(
            "| {c} | {} | {} |\n",
            r["audit"][c], r["auditAfterDeletingEverything"][c]
        ));
    }
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    if !findings.is_empty() {
        out.push_str("\nFindings:\n\n");
        for f in findings {
            out.push_str(&format!("- {}\n", f.as_str().unwrap_or_default()));
        }
    }
    let failures = &r["operatorLog"]["reconcileFailuresByReason"];
    out.push_str(&format!(
        "\nReconcile failures the operator logged, by reason: {}.\n",
        row(failures)
    ));
    out
}

/// A map's entries on one line: `key value, key value`.
fn row(map: &Value) -> String {
    map.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// That the soak did what it says: churned every kind, rotated, killed, and met faults.
fn assert_chaos_happened(r: &Value) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    for kind in ["ServicePrincipal", "RoleDelegation", "CredentialRotation"] {
        assert!(n(&r["created"][kind]) > 0, "no {kind} created: {r}");
    }
    assert!(
        n(&r["deleted"]["ServicePrincipal"]) > 0,
        "nothing deleted: {r}"
    );
    assert!(
        r["updated"].as_object().is_some_and(|u| u.len() >= 3),
        "too few kinds of update: {r}"
    );
    // Requested here; the audit checks that each rotation's last token was acted on.
    assert!(n(&r["rotationsRequested"]) > 0, "no rotation: {r}");
    assert!(n(&r["kills"]) >= 2, "fewer than two kills: {r}");
    assert!(
        n(&r["azureDuringChurn"]["answered5xx"]) > 0
            && n(&r["azureDuringChurn"]["answered429"]) > 0,
        "no faults met: {r}"
    );
}

/// Prints the report and fails (panics) unless the chaos happened and the audit found nothing.
pub fn verdict(report: &Report) {
    println!("{}", serde_json::to_string_pretty(&report.json).unwrap());
    assert_chaos_happened(&report.json);
    assert!(
        report.findings.is_empty(),
        "the audit found {} problems (operator log: {}):\n{}\n{}",
        report.findings.len(),
        report.log_file.display(),
        report.findings.join("\n"),
        report.explanation
    );
}

/// Writes the report to `dir` as chaos-soak.json and chaos-soak.md.
pub fn write(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("chaos-soak.json"),
        serde_json::to_string_pretty(&report.json)? + "\n",
    )?;
    std::fs::write(dir.join("chaos-soak.md"), markdown(&report.json))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed bench/results/chaos-soak.md is what the committed JSON renders to: the report's format is
    /// exactly the one the results were written in.
    #[test]
    fn the_committed_results_render_as_committed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/");
        let read = |file: &str| std::fs::read_to_string(format!("{dir}{file}")).unwrap();
        let json: Value = serde_json::from_str(&read("chaos-soak.json")).unwrap();
        assert_eq!(markdown(&json), read("chaos-soak.md"));
    }

    #[test]
    fn graph_and_arm_answers_are_counted_by_class_and_odd_refusals_named() {
        let calls = json!({
            "graph POST /applications": {"201": 10, "503": 2, "429": 1},
            "arm PUT {scope}/roleAssignments/{name}": {"201": 4, "504": 1, "403": 2},
            "graph GET /applications/{id}": {"404": 3},
            "token POST /{tenant}/oauth2/v2.0/token": {"200": 7, "500": 9},
        });
        let a = answers(&calls);
        let cases = [
            (
                "every Graph and ARM call, tokens apart",
                "graphAndArmCalls",
                json!(23),
            ),
            ("5xx, timeouts included", "answered5xx", json!(3)),
            ("429", "answered429", json!(1)),
            ("gateway timeouts", "answered504", json!(1)),
            (
                "refusals other than 404 and 429, by route",
                "other4xxByRoute",
                json!({"arm PUT {scope}/roleAssignments/{name} 403": 2}),
            ),
        ];
        for (name, key, want) in cases {
            assert_eq!(a[key], want, "{name}");
        }
    }

    #[test]
    fn the_log_summary_counts_failures_by_reason_and_rotations() {
        let log = [
            r#"{"message": "reconcile failed", "reason": "AzureUnavailable"}"#,
            r#"{"message": "reconcile failed", "reason": "AzureUnavailable"}"#,
            r#"{"message": "reconcile failed"}"#,
            r#"{"message": "rotated the client secret"}"#,
            "--- SIGKILL at 12.0s ---",
        ]
        .map(String::from);
        assert_eq!(
            log_summary(&log),
            json!({"reconcileFailuresByReason": {"AzureUnavailable": 2, "?": 1}, "rotationsIssued": 1})
        );
    }
}
