//! A bounded chaos soak with a leak audit. ServicePrincipals (each with its Secret), RoleDelegations and
//! CredentialRotations are created, changed, rotated and deleted at random while the emulator fails about 10%
//! of Graph and ARM calls with a 5xx, answers some with 429, delays replication and adds latency, and the
//! operator (under the chart's RBAC) is killed with SIGKILL every ~20 s and restarted.
//!
//! Then the faults stop, the operator converges, and an audit compares Azure with the cluster: every live
//! object Ready with its spec applied, every Secret signs in, each application holds exactly the password its
//! Secret names, and nothing in Azure (applications, service principals, passwords, role assignments, custom
//! roles) that no live object accounts for. Last, everything is deleted and Azure must be back to its seed.
//!
//! The short soak (`soak::chaos_soak_short` in tests/integration) runs in `make test` and fails on any
//! finding; the long one is the `chaos-soak` bench binary (bench/chaos-soak), run by `make soak
//! SOAK_SECONDS=300`, which writes bench/results/chaos-soak.json and chaos-soak.md. Operator logs go to
//! target/soak/. `SOAK_SEED` repeats a run's choices (the timing of kills and reconciles still varies);
//! `SOAK_KNOBS` (JSON) is merged over the chaos knobs, e.g. `{"replication": {"graphNotFoundMs": 0}}`.
//!
//! By concern: [`churn`] changes objects, [`chaos`] injects faults and kills, [`probe`] watches passwords during
//! the churn, [`audit`] compares Azure with the cluster, and [`report`] writes it all up; this module runs them
//! in order.

mod audit;
mod chaos;
mod churn;
mod probe;
mod report;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::{Value, json};

use entra_operator::api::DelegationPolicy;

pub use self::report::{Report, markdown, verdict, write};
use self::{
    audit::{Audit, Baseline, Cx, OVER_TWO, STUCK, delete_everything, settle},
    chaos::{Killer, Kills, StopOnDrop, kill_loop, quiet_knobs, soak_knobs},
    churn::{Churn, LANES, RG},
    probe::{Sampled, sample},
    report::{answers, calls},
};
use crate::{
    harness::{self, Azure, Setup, emulator_http, knobs, reset_calls, state, teardown},
    operator::Operator,
};

/// How long and how hard a soak churns.
#[derive(Clone, Debug)]
pub struct Params {
    churn: Duration,
    /// Seconds between kills, drawn uniformly from this range.
    kill_every: (u64, u64),
    max_service_principals: usize,
    /// Pause between two churn steps, in milliseconds, drawn uniformly.
    pause_ms: (u64, u64),
    /// How long the operator gets to converge once the faults stop.
    settle: Duration,
    seed: u64,
}

impl Params {
    fn seed() -> u64 {
        std::env::var("SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    % 1_000_000_007
            })
    }

    /// The soak `make test` runs: under a minute of churn, a handful of objects.
    pub fn short() -> Params {
        Params {
            churn: Duration::from_secs(50),
            kill_every: (10, 20),
            max_service_principals: 5,
            pause_ms: (250, 900),
            settle: Duration::from_secs(90),
            seed: Params::seed(),
        }
    }

    /// The soak `make soak` runs: `seconds` of churn, more objects.
    pub fn long(seconds: u64) -> Params {
        Params {
            churn: Duration::from_secs(seconds),
            kill_every: (12, 28),
            max_service_principals: 12,
            pause_ms: (200, 800),
            settle: Duration::from_secs(180),
            seed: Params::seed(),
        }
    }
}

/// splitmix64: enough randomness for choosing steps, and repeatable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Seconds since the soak started, for the timeline.
fn at(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// (seconds after the start, what happened), for explaining a finding.
type Timeline = Arc<Mutex<Vec<(f64, String)>>>;

async fn put_policy(admin: &kube::Client, ns: &str) -> String {
    let roles: Vec<&str> = LANES.iter().flat_map(|l| l.roles).collect();
    harness::put_policy(admin, ns, "soak", json!({"scopes": [RG], "roles": roles})).await
}

/// Runs a soak on a namespace of its own: churn under chaos, converge and audit, delete everything and audit
/// again. Fails (panics) if a client secret reaches the operator's log; the findings are the caller's to judge
/// (see [`verdict`]).
pub async fn soak(p: Params) -> Report {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("soak").await;
    let policy = put_policy(&admin, &ns.name).await;
    let cx = audit_context(&admin, &ns.name, &azure).await;
    println!(
        "chaos soak in {} (seed {}): {}s of churn, kills every {}-{}s, up to {} ServicePrincipals",
        ns.name,
        p.seed,
        p.churn.as_secs(),
        p.kill_every.0,
        p.kill_every.1,
        p.max_service_principals
    );

    let operator = first_operator(&kubeconfig, &azure, p.seed).await;
    let (
        run,
        Killer {
            operator, mut log, ..
        },
        sampling,
    ) = churn_under_chaos(&p, &cx, operator, &kubeconfig).await;
    let audited = converge_and_audit(&p, &cx, sampling).await;

    log.extend(operator.stop());
    let leaked_secret = audited
        .texts
        .iter()
        .any(|t| log.iter().any(|l| l.contains(t.as_str())));
    assert!(
        !leaked_secret,
        "a client secret appears in the operator's log"
    );
    let log_file = keep_log(&ns.name, &log);
    let report = report::report(&p, &ns.name, &run, &audited, &log, log_file);
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await
        .unwrap();
    teardown(rbac, azure, ns).await;
    report
}

/// What the audit reads through: the emulator, and the namespace's objects as admin.
async fn audit_context<'a>(admin: &kube::Client, ns: &str, azure: &'a Azure) -> Cx<'a> {
    Cx {
        azure,
        ns: ns.to_string(),
        cluster_id: azure.cluster_id(),
        baseline: Baseline::of(&state(azure).await),
        identities: Arc::default(),
        sps: Api::namespaced(admin.clone(), ns),
        rds: Api::namespaced(admin.clone(), ns),
        crots: Api::namespaced(admin.clone(), ns),
        secrets: Api::namespaced(admin.clone(), ns),
    }
}

/// The operator, ready, before the faults start; then the faults on and the emulator's call counts reset, so
/// that they count the churn only.
async fn first_operator(kubeconfig: &Path, azure: &Azure, seed: u64) -> Operator {
    let operator = {
        let (k, e) = (kubeconfig.to_path_buf(), azure.env.clone());
        tokio::task::spawn_blocking(move || {
            let mut operator = Operator::start_with(&k, &e);
            operator.wait_for("operator ready", Duration::from_secs(60));
            operator
        })
        .await
        .unwrap()
    };
    knobs(azure, soak_knobs(seed)).await;
    reset_calls(azure).await;
    operator
}

/// What the churn phase leaves for the report.
struct Churned {
    churn: Churn,
    steps: u64,
    seconds: f64,
    /// Graph and ARM answers during the churn.
    chaos_calls: Value,
    /// When the churn began, as a timestamp.
    started: String,
    timeline: Timeline,
    kills: Vec<f64>,
    restart_seconds: Vec<f64>,
}

/// The probe, still running: it watches on through the settling.
struct Sampling {
    task: tokio::task::JoinHandle<Sampled>,
    stop: Arc<AtomicBool>,
    _stop_on_drop: StopOnDrop,
}

/// The churn for `p.churn`, the operator killed and restarted meanwhile and the probe sampling; then the kills
/// and the faults stop. Returns the last operator (running) with the log of the killed ones, and the probe.
async fn churn_under_chaos(
    p: &Params,
    cx: &Cx<'_>,
    operator: Operator,
    kubeconfig: &Path,
) -> (Churned, Killer, Sampling) {
    let start = Instant::now();
    let started = jiff::Timestamp::now().to_string();
    let timeline: Timeline = Arc::new(Mutex::new(vec![]));
    let stop_kills = Arc::new(AtomicBool::new(false));
    let _stop_kills = StopOnDrop(stop_kills.clone());
    let killer = {
        let kills = Kills {
            kubeconfig: kubeconfig.to_path_buf(),
            env: cx.azure.env.clone(),
            every: p.kill_every,
            seed: p.seed,
            start,
            stop: stop_kills.clone(),
            timeline: timeline.clone(),
        };
        std::thread::spawn(move || kill_loop(operator, kills))
    };
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampling = Sampling {
        task: tokio::spawn(sample(
            cx.sps.clone(),
            cx.crots.clone(),
            (emulator_http(cx.azure), cx.azure.emulator.base_url.clone()),
            cx.identities.clone(),
            stop_sampling.clone(),
            start,
        )),
        _stop_on_drop: StopOnDrop(stop_sampling.clone()),
        stop: stop_sampling,
    };

    let mut churn = Churn::new(
        cx,
        p.seed,
        p.max_service_principals,
        start,
        timeline.clone(),
    );
    let mut steps = 0u64;
    while start.elapsed() < p.churn {
        churn.step().await;
        steps += 1;
        let pause = churn.rng.between(p.pause_ms.0, p.pause_ms.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    stop_kills.store(true, Ordering::Relaxed);
    let mut killer =
        tokio::task::spawn_blocking(move || killer.join().expect("the kill loop panicked"))
            .await
            .unwrap();
    let chaos_calls = answers(&calls(cx.azure).await);
    knobs(cx.azure, quiet_knobs()).await;
    timeline
        .lock()
        .unwrap()
        .push((at(start), "churn over; faults off".into()));
    println!(
        "churn over after {seconds:.0}s: {steps} steps, {} kills, Azure answers {chaos_calls}",
        killer.kills.len()
    );
    let churned = Churned {
        churn,
        steps,
        seconds,
        chaos_calls,
        started,
        timeline,
        kills: std::mem::take(&mut killer.kills),
        restart_seconds: std::mem::take(&mut killer.restart_seconds),
    };
    (churned, killer, sampling)
}

/// What the audits found: once converged (with what the probe saw during the churn), and once everything was
/// deleted; `texts` holds every secret text the audit read, to look for in the log (never printed).
struct Audited {
    settled: Audit,
    settle_seconds: f64,
    sampled: Sampled,
    live: Value,
    emptied: Audit,
    teardown_seconds: f64,
    texts: BTreeSet<String>,
}

/// Lets the operator converge, audits, stops the probe; then deletes everything and audits again (Azure must
/// be back to its seed).
async fn converge_and_audit(p: &Params, cx: &Cx<'_>, sampling: Sampling) -> Audited {
    let mut texts = BTreeSet::new();
    let (mut settled, settle_seconds) = settle(cx, &mut texts, p.settle).await;
    sampling.stop.store(true, Ordering::Relaxed);
    let sampled = sampling.task.await.unwrap();
    for finding in sampled.over_two.values() {
        settled.add(OVER_TWO, finding.clone());
    }
    println!(
        "audit after {settle_seconds:.0}s of settling: {} findings",
        settled.total()
    );
    let live = json!({
        "ServicePrincipal": cx.sps.list(&ListParams::default()).await.unwrap().items.len(),
        "RoleDelegation": cx.rds.list(&ListParams::default()).await.unwrap().items.len(),
        "CredentialRotation": cx.crots.list(&ListParams::default()).await.unwrap().items.len(),
    });

    let began = Instant::now();
    let stuck = delete_everything(cx, Duration::from_secs(90)).await;
    let (mut emptied, _) = settle(cx, &mut texts, Duration::from_secs(30)).await;
    for s in stuck {
        emptied.add(STUCK, s);
    }
    let teardown_seconds = began.elapsed().as_secs_f64();
    println!(
        "after deleting everything ({teardown_seconds:.0}s): {} findings",
        emptied.total()
    );
    Audited {
        settled,
        settle_seconds,
        sampled,
        live,
        emptied,
        teardown_seconds,
        texts,
    }
}

/// Keeps the whole operator log (every run, killed or not) in target/soak/.
fn keep_log(ns: &str, log: &[String]) -> std::path::PathBuf {
    let log_dir = crate::repo_root().join("target/soak");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log_file = log_dir.join(format!("{ns}.log"));
    std::fs::write(&log_file, log.join("\n")).unwrap();
    log_file
}
