//! The chaos: what the emulator gets wrong during the churn (faults, throttling, replication lag, latency),
//! and the operator killed with SIGKILL at random intervals and restarted, on a thread of its own (waiting for
//! its log lines blocks).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::{Rng, Timeline, at};
use crate::operator::Operator;

/// What the emulator does during the churn: ~10% 5xx, ~3% 429, ~1% gateway timeouts, latency on a quarter of
/// the calls, and replicas that lag behind new applications and principals. Throttling stays at Azure's limits.
fn chaos_knobs(seed: u64) -> Value {
    json!({
        "randomSeed": seed,
        "replication": {"graphNotFoundMs": 2000, "principalNotFoundMs": 5000, "principalNotFoundWithTypeMs": 2000},
        "faults": [
            {"rate": 0.07, "status": 503},
            {"rate": 0.03, "status": 500},
            {"rate": 0.03, "status": 429},
            {"rate": 0.01, "timeoutMs": 2000},
            {"rate": 0.25, "latencyMs": 250},
        ],
    })
}

/// The chaos knobs with `SOAK_KNOBS` merged over them (objects key by key).
pub(super) fn soak_knobs(seed: u64) -> Value {
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }
    let mut knobs = chaos_knobs(seed);
    if let Ok(text) = std::env::var("SOAK_KNOBS") {
        merge(
            &mut knobs,
            serde_json::from_str(&text).expect("SOAK_KNOBS is JSON"),
        );
    }
    knobs
}

pub(super) fn quiet_knobs() -> Value {
    json!({
        "replication": {"graphNotFoundMs": 0, "principalNotFoundMs": 0, "principalNotFoundWithTypeMs": 0},
        "faults": [],
    })
}

/// Stops a background loop when the soak ends, also when it ends in a panic.
pub(super) struct StopOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the kill loop hands back: the operator running last, the log of those it killed, when it killed and
/// how long each restart took until ready.
pub(super) struct Killer {
    pub(super) operator: Operator,
    pub(super) log: Vec<String>,
    pub(super) kills: Vec<f64>,
    pub(super) restart_seconds: Vec<f64>,
}

/// How the kill loop restarts the operator, and when it kills.
pub(super) struct Kills {
    pub(super) kubeconfig: PathBuf,
    pub(super) env: Vec<(String, String)>,
    /// Seconds between kills, drawn uniformly from this range.
    pub(super) every: (u64, u64),
    pub(super) seed: u64,
    pub(super) start: Instant,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) timeline: Timeline,
}

/// Kills the operator and restarts it until `stop`; blocks (run it on a thread of its own).
pub(super) fn kill_loop(mut operator: Operator, k: Kills) -> Killer {
    let Kills {
        kubeconfig,
        env,
        every,
        seed,
        start,
        stop,
        timeline,
    } = k;
    let mut rng = Rng(seed ^ 0x5eed_c4a0_5eed_c4a0);
    let (mut log, mut kills, mut restart_seconds) = (vec![], vec![], vec![]);
    loop {
        let due = Instant::now() + Duration::from_secs(rng.between(every.0, every.1));
        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        operator.signal(Signal::SIGKILL);
        let (_, lines) = operator.wait_exit(Duration::from_secs(10));
        kills.push(at(start));
        timeline
            .lock()
            .unwrap()
            .push((at(start), "operator killed (SIGKILL)".into()));
        log.extend(lines);
        log.push(format!("--- SIGKILL at {:.1}s ---", at(start)));
        let began = Instant::now();
        operator = Operator::start_with(&kubeconfig, &env);
        operator.wait_for("operator ready", Duration::from_secs(60));
        restart_seconds.push(began.elapsed().as_secs_f64());
    }
    Killer {
        operator,
        log,
        kills,
        restart_seconds,
    }
}
