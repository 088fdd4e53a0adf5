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
//! `chaos_soak_short` runs in `make test` and fails on any finding; `chaos_soak_long` (ignored) runs with
//! `make soak SOAK_SECONDS=300` and writes bench/results/chaos-soak.json and chaos-soak.md. Operator logs go
//! to target/soak/. `SOAK_SEED` repeats a run's choices (the timing of kills and reconciles still varies);
//! `SOAK_KNOBS` (JSON) is merged over the chaos knobs, e.g. `{"replication": {"graphNotFoundMs": 0}}`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use entra_operator::{
    api::{CredentialRotation, DelegationPolicy, RoleDelegation, ServicePrincipal},
    controller::naming,
};

use crate::{
    harness::{Setup, emulator_http, knobs, ready_of, state, teardown, token_status},
    operator_run::{Azure, Operator},
    support::MANIFEST_DIR,
};

const RG: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared";
const REGISTRY: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr";
const VAULT: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv";

/// A ServicePrincipal has up to two RoleDelegations, one per lane. The lanes' roles differ, so two delegations
/// never name the same assignment (its name is derived from scope, role and principal): two delegations of one
/// grant would share, and delete, one assignment, which is not what this soak is about.
struct Lane {
    roles: [&'static str; 2],
    scopes: [&'static str; 2],
}
const LANES: [Lane; 2] = [
    Lane {
        roles: ["AcrPull", "AcrPush"],
        scopes: [REGISTRY, RG],
    },
    Lane {
        roles: ["Reader", "Key Vault Secrets User"],
        scopes: [VAULT, RG],
    },
];
const FORMATS: [&str; 4] = ["env", "az", "sdk-auth", "azure.json"];
/// A rotation's overlap: the previous password goes this long after its successor is published.
const OVERLAP: &str = "3s";

#[derive(Clone, Debug)]
struct Params {
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

    fn short() -> Params {
        Params {
            churn: Duration::from_secs(50),
            kill_every: (10, 20),
            max_service_principals: 5,
            pause_ms: (250, 900),
            settle: Duration::from_secs(90),
            seed: Params::seed(),
        }
    }

    fn long(seconds: u64) -> Params {
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
fn soak_knobs(seed: u64) -> Value {
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

fn quiet_knobs() -> Value {
    json!({
        "replication": {"graphNotFoundMs": 0, "principalNotFoundMs": 0, "principalNotFoundWithTypeMs": 0},
        "faults": [],
    })
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

// ---------------------------------------------------------------------------------------------------------
// The churn: a model of what should exist, and random steps that change it through the API server.

struct RdSlot {
    name: String,
    role: usize,
    scope: usize,
}

struct SpSlot {
    name: String,
    format: &'static str,
    revision: u32,
    rds: [Option<RdSlot>; 2],
    rotation: Option<(String, u32)>,
}

#[derive(Default)]
struct Counts {
    created: BTreeMap<&'static str, u64>,
    updated: BTreeMap<&'static str, u64>,
    deleted: BTreeMap<&'static str, u64>,
    rotations_requested: u64,
    secrets_deleted: u64,
    created_and_deleted_at_once: u64,
    api_errors: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    CreateServicePrincipal,
    CreateAndDeleteAtOnce,
    ChangeSecretFormat,
    RenameAndRetag,
    DeleteSecret,
    DeleteServicePrincipal,
    CreateRoleDelegation,
    ChangeRoleOrScope,
    DeleteRoleDelegation,
    CreateRotation,
    BumpRotationToken,
    DeleteRotation,
}

struct Churn {
    sps: Api<ServicePrincipal>,
    rds: Api<RoleDelegation>,
    crots: Api<CredentialRotation>,
    secrets: Api<Secret>,
    live: Vec<SpSlot>,
    serial: u32,
    rng: Rng,
    max: usize,
    counts: Counts,
    start: Instant,
    /// (seconds, what happened), for explaining a finding.
    timeline: Arc<Mutex<Vec<(f64, String)>>>,
}

fn object<K: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "labels": {"soak": "yes"}}, "spec": spec,
    }))
    .unwrap()
}

fn rd_spec(sp: &str, lane: usize, role: usize, scope: usize) -> Value {
    json!({"principalRef": {"name": sp}, "role": {"name": LANES[lane].roles[role]}, "scope": LANES[lane].scopes[scope]})
}

impl Churn {
    fn note(&self, what: String) {
        self.timeline.lock().unwrap().push((at(self.start), what));
    }

    fn failed(&mut self, what: &str, e: kube::Error) {
        let line = format!("{:.1}s {what}: {e}", at(self.start));
        self.note(format!("API error: {what}: {e}"));
        self.counts.api_errors.push(line);
    }

    fn bump(map: &mut BTreeMap<&'static str, u64>, key: &'static str) {
        *map.entry(key).or_default() += 1;
    }

    fn steps(&self) -> Vec<(Step, u32)> {
        let n = self.live.len();
        let mut steps = vec![];
        if n < self.max {
            steps.push((Step::CreateServicePrincipal, 20));
            steps.push((Step::CreateAndDeleteAtOnce, 4));
        }
        if n > 0 {
            steps.push((Step::ChangeSecretFormat, 10));
            steps.push((Step::RenameAndRetag, 4));
            steps.push((Step::DeleteSecret, 3));
            steps.push((Step::DeleteServicePrincipal, 8));
        }
        if self.live.iter().any(|s| s.rds.iter().any(Option::is_none)) {
            steps.push((Step::CreateRoleDelegation, 6));
        }
        if self.live.iter().any(|s| s.rds.iter().any(Option::is_some)) {
            steps.push((Step::ChangeRoleOrScope, 12));
            steps.push((Step::DeleteRoleDelegation, 5));
        }
        if self.live.iter().any(|s| s.rotation.is_none()) {
            steps.push((Step::CreateRotation, 6));
        }
        if self.live.iter().any(|s| s.rotation.is_some()) {
            steps.push((Step::BumpRotationToken, 12));
            steps.push((Step::DeleteRotation, 4));
        }
        steps
    }

    async fn step(&mut self) -> Step {
        let steps = self.steps();
        let total: u32 = steps.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.below(total as usize) as u32;
        let step = steps
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(s, _)| *s)
            .unwrap();
        match step {
            Step::CreateServicePrincipal => {
                if let Some(i) = self.create_sp().await {
                    // Often with its delegations and rotation straight away, before it is Ready.
                    for lane in 0..2 {
                        if self.rng.chance(if lane == 0 { 0.6 } else { 0.3 }) {
                            self.create_rd(i, lane).await;
                        }
                    }
                    if self.rng.chance(0.4) {
                        self.create_rotation(i).await;
                    }
                }
            }
            Step::CreateAndDeleteAtOnce => {
                // Applied and reverted a moment later, as a GitOps rollback does.
                if let Some(i) = self.create_sp().await {
                    if self.rng.chance(0.5) {
                        self.create_rd(i, 0).await;
                    }
                    let wait = self.rng.between(0, 2500);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    self.counts.created_and_deleted_at_once += 1;
                    self.delete_sp(i, false).await;
                }
            }
            Step::ChangeSecretFormat => {
                let i = self.rng.below(self.live.len());
                let others: Vec<&'static str> = FORMATS
                    .iter()
                    .copied()
                    .filter(|f| *f != self.live[i].format)
                    .collect();
                let format = others[self.rng.below(others.len())];
                let name = self.live[i].name.clone();
                match self
                    .sps
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"secret": {"format": format}}})),
                    )
                    .await
                {
                    Ok(_) => {
                        self.live[i].format = format;
                        Self::bump(&mut self.counts.updated, "ServicePrincipal secret format");
                        self.note(format!(
                            "ServicePrincipal {name}: secret format -> {format}"
                        ));
                    }
                    Err(e) => self.failed(&format!("patch ServicePrincipal {name}"), e),
                }
            }
            Step::RenameAndRetag => {
                let i = self.rng.below(self.live.len());
                let (name, revision) = (self.live[i].name.clone(), self.live[i].revision + 1);
                match self
                    .sps
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"displayName": format!("{name}-r{revision}"), "tags": [format!("soak-revision:{revision}")]}})),
                    )
                    .await
                {
                    Ok(_) => {
                        self.live[i].revision = revision;
                        Self::bump(&mut self.counts.updated, "ServicePrincipal displayName and tags");
                        self.note(format!("ServicePrincipal {name}: renamed, revision {revision}"));
                    }
                    Err(e) => self.failed(&format!("patch ServicePrincipal {name}"), e),
                }
            }
            Step::DeleteSecret => {
                let i = self.rng.below(self.live.len());
                let secret = format!("{}-credentials", self.live[i].name);
                match self.secrets.delete(&secret, &DeleteParams::default()).await {
                    Ok(_) => {
                        self.counts.secrets_deleted += 1;
                        self.note(format!("Secret {secret} deleted (lost)"));
                    }
                    // Not written yet: nothing was lost.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => self.failed(&format!("delete Secret {secret}"), e),
                }
            }
            Step::DeleteServicePrincipal => {
                let i = self.rng.below(self.live.len());
                let staggered = self.rng.chance(0.5);
                self.delete_sp(i, staggered).await;
            }
            Step::CreateRoleDelegation => {
                let open: Vec<(usize, usize)> = self
                    .live
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| (0..2).filter(|l| s.rds[*l].is_none()).map(move |l| (i, l)))
                    .collect();
                let (i, lane) = open[self.rng.below(open.len())];
                self.create_rd(i, lane).await;
            }
            Step::ChangeRoleOrScope => {
                let taken: Vec<(usize, usize)> = self
                    .live
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| (0..2).filter(|l| s.rds[*l].is_some()).map(move |l| (i, l)))
                    .collect();
                let (i, lane) = taken[self.rng.below(taken.len())];
                let change_role = self.rng.chance(0.5);
                let sp = self.live[i].name.clone();
                let rd = self.live[i].rds[lane].as_ref().unwrap();
                let (name, mut role, mut scope) = (rd.name.clone(), rd.role, rd.scope);
                if change_role {
                    role = 1 - role;
                } else {
                    scope = 1 - scope;
                }
                match self
                    .rds
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": rd_spec(&sp, lane, role, scope)})),
                    )
                    .await
                {
                    Ok(_) => {
                        let rd = self.live[i].rds[lane].as_mut().unwrap();
                        (rd.role, rd.scope) = (role, scope);
                        let what = if change_role {
                            "RoleDelegation role"
                        } else {
                            "RoleDelegation scope"
                        };
                        Self::bump(&mut self.counts.updated, what);
                        self.note(format!(
                            "RoleDelegation {name}: {} at {}",
                            LANES[lane].roles[role], LANES[lane].scopes[scope]
                        ));
                    }
                    Err(e) => self.failed(&format!("patch RoleDelegation {name}"), e),
                }
            }
            Step::DeleteRoleDelegation => {
                let taken: Vec<(usize, usize)> = self
                    .live
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| (0..2).filter(|l| s.rds[*l].is_some()).map(move |l| (i, l)))
                    .collect();
                let (i, lane) = taken[self.rng.below(taken.len())];
                let rd = self.live[i].rds[lane].take().unwrap();
                self.delete_rd(&rd.name).await;
            }
            Step::CreateRotation => {
                let open: Vec<usize> = (0..self.live.len())
                    .filter(|i| self.live[*i].rotation.is_none())
                    .collect();
                let i = open[self.rng.below(open.len())];
                self.create_rotation(i).await;
            }
            Step::BumpRotationToken => {
                let with: Vec<usize> = (0..self.live.len())
                    .filter(|i| self.live[*i].rotation.is_some())
                    .collect();
                let i = with[self.rng.below(with.len())];
                let (name, token) = self.live[i].rotation.clone().unwrap();
                match self
                    .crots
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"spec": {"rotationToken": format!("t{}", token + 1)}}),
                        ),
                    )
                    .await
                {
                    Ok(_) => {
                        self.live[i].rotation = Some((name.clone(), token + 1));
                        self.counts.rotations_requested += 1;
                        Self::bump(&mut self.counts.updated, "CredentialRotation rotationToken");
                        self.note(format!(
                            "CredentialRotation {name}: rotationToken t{}",
                            token + 1
                        ));
                    }
                    Err(e) => self.failed(&format!("patch CredentialRotation {name}"), e),
                }
            }
            Step::DeleteRotation => {
                let with: Vec<usize> = (0..self.live.len())
                    .filter(|i| self.live[*i].rotation.is_some())
                    .collect();
                let i = with[self.rng.below(with.len())];
                let (name, _) = self.live[i].rotation.take().unwrap();
                self.delete_crot(&name).await;
            }
        }
        step
    }

    async fn create_sp(&mut self) -> Option<usize> {
        self.serial += 1;
        let name = format!("sp-{}", self.serial);
        let format = FORMATS[self.rng.below(FORMATS.len())];
        let sp: ServicePrincipal = object(
            "ServicePrincipal",
            &name,
            json!({"displayName": format!("{name}-r0"), "tags": ["soak-revision:0"],
                "secret": {"name": format!("{name}-credentials"), "format": format}}),
        );
        match self.sps.create(&PostParams::default(), &sp).await {
            Ok(_) => {
                Self::bump(&mut self.counts.created, "ServicePrincipal");
                self.note(format!("ServicePrincipal {name} created ({format})"));
                self.live.push(SpSlot {
                    name,
                    format,
                    revision: 0,
                    rds: [None, None],
                    rotation: None,
                });
                Some(self.live.len() - 1)
            }
            Err(e) => {
                self.failed(&format!("create ServicePrincipal {name}"), e);
                None
            }
        }
    }

    async fn create_rd(&mut self, i: usize, lane: usize) {
        let sp = self.live[i].name.clone();
        let name = format!("{sp}-{}", ["a", "b"][lane]);
        let (role, scope) = (self.rng.below(2), self.rng.below(2));
        let rd: RoleDelegation = object("RoleDelegation", &name, rd_spec(&sp, lane, role, scope));
        match self.rds.create(&PostParams::default(), &rd).await {
            Ok(_) => {
                Self::bump(&mut self.counts.created, "RoleDelegation");
                self.note(format!(
                    "RoleDelegation {name} created: {} at {}",
                    LANES[lane].roles[role], LANES[lane].scopes[scope]
                ));
                self.live[i].rds[lane] = Some(RdSlot { name, role, scope });
            }
            Err(e) => self.failed(&format!("create RoleDelegation {name}"), e),
        }
    }

    async fn create_rotation(&mut self, i: usize) {
        let sp = self.live[i].name.clone();
        let name = format!("{sp}-rotation");
        // Rotations on request only (rotationToken): renewBefore is far from the 24h lifetime.
        let crot: CredentialRotation = object(
            "CredentialRotation",
            &name,
            json!({"servicePrincipalRef": {"name": sp}, "renewBefore": "1m", "credentialLifetime": "24h", "overlap": OVERLAP}),
        );
        match self.crots.create(&PostParams::default(), &crot).await {
            Ok(_) => {
                Self::bump(&mut self.counts.created, "CredentialRotation");
                self.note(format!("CredentialRotation {name} created"));
                self.live[i].rotation = Some((name, 0));
            }
            Err(e) => self.failed(&format!("create CredentialRotation {name}"), e),
        }
    }

    async fn delete_rd(&mut self, name: &str) {
        match self.rds.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                Self::bump(&mut self.counts.deleted, "RoleDelegation");
                self.note(format!("RoleDelegation {name} deleted"));
            }
            Err(e) => self.failed(&format!("delete RoleDelegation {name}"), e),
        }
    }

    async fn delete_crot(&mut self, name: &str) {
        match self.crots.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                Self::bump(&mut self.counts.deleted, "CredentialRotation");
                self.note(format!("CredentialRotation {name} deleted"));
            }
            Err(e) => self.failed(&format!("delete CredentialRotation {name}"), e),
        }
    }

    /// Deletes a ServicePrincipal with its delegations and rotation: all at once, or the ServicePrincipal
    /// first and the rest a moment later.
    async fn delete_sp(&mut self, i: usize, staggered: bool) {
        let slot = self.live.remove(i);
        match self.sps.delete(&slot.name, &DeleteParams::default()).await {
            Ok(_) => {
                Self::bump(&mut self.counts.deleted, "ServicePrincipal");
                self.note(format!("ServicePrincipal {} deleted", slot.name));
            }
            Err(e) => self.failed(&format!("delete ServicePrincipal {}", slot.name), e),
        }
        if staggered {
            let wait = self.rng.between(200, 2000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        for rd in slot.rds.into_iter().flatten() {
            self.delete_rd(&rd.name).await;
        }
        if let Some((name, _)) = slot.rotation {
            self.delete_crot(&name).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The operator, killed with SIGKILL at random intervals and restarted, on a thread of its own (waiting for
// its log lines blocks).

/// Stops a background loop when the soak ends, also when it ends in a panic.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Killer {
    operator: Operator,
    log: Vec<String>,
    kills: Vec<f64>,
    restart_seconds: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn kill_loop(
    mut operator: Operator,
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
    every: (u64, u64),
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    timeline: Arc<Mutex<Vec<(f64, String)>>>,
) -> Killer {
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

// ---------------------------------------------------------------------------------------------------------
// A probe during the churn: the most passwords an application holds at once. A CredentialRotation promises at
// most two of the operator's passwords at any time; others are reported as seen.

#[derive(Default)]
struct Sampled {
    samples: u64,
    most_rotated: usize,
    most_other: usize,
    over_two: BTreeMap<String, String>,
}

/// Service principal id -> the ServicePrincipal it was last seen on, to name the object an orphaned role
/// assignment was made for.
type Identities = Arc<Mutex<BTreeMap<String, String>>>;

async fn sample(
    sps: Api<ServicePrincipal>,
    crots: Api<CredentialRotation>,
    azure: (reqwest::Client, String),
    identities: Identities,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Sampled {
    let mut out = Sampled::default();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (Ok(rotations), Ok(objects)) = (
            crots.list(&ListParams::default()).await,
            sps.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        // Rotated: a rotation has taken the object's password over (it published one).
        let rotated: BTreeMap<String, String> = rotations
            .items
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.current_key_id.is_some())
            })
            .filter_map(|c| {
                Some((
                    c.spec.service_principal_ref.as_ref()?.name.clone(),
                    c.name_any(),
                ))
            })
            .collect();
        let mut app_of: BTreeMap<String, String> = BTreeMap::new();
        for sp in &objects.items {
            if let Some(s) = &sp.status
                && let (Some(app), Some(principal)) = (&s.app_id, &s.service_principal_id)
            {
                app_of.insert(app.clone(), sp.name_any());
                identities
                    .lock()
                    .unwrap()
                    .insert(principal.to_ascii_lowercase(), sp.name_any());
            }
        }
        let Ok(resp) = azure
            .0
            .get(format!("{}/_emulator/state", azure.1))
            .send()
            .await
        else {
            continue;
        };
        let Ok(world) = resp.json::<Value>().await else {
            continue;
        };
        out.samples += 1;
        for app in world["directory"]["applications"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Some(owner) = app["appId"].as_str().and_then(|a| app_of.get(a)) else {
                continue;
            };
            let ours = app["passwordCredentials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["displayName"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("entra-operator:"))
                })
                .count();
            match rotated.get(owner) {
                Some(rotation) => {
                    out.most_rotated = out.most_rotated.max(ours);
                    if ours > 2 && !out.over_two.contains_key(owner) {
                        out.over_two.insert(
                            owner.clone(),
                            format!(
                                "ServicePrincipal {owner}: {ours} passwords on application {} at {:.1}s while \
                                 CredentialRotation {rotation} manages it",
                                app["appId"].as_str().unwrap_or_default(),
                                at(start)
                            ),
                        );
                    }
                }
                None => out.most_other = out.most_other.max(ours),
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// The audit: Azure (the emulator's state) against the cluster.

const NOT_READY: &str = "live object not Ready";
const STUCK: &str = "object stuck deleting";
const NOT_APPLIED: &str = "spec not applied (Azure, Secret or status)";
const NO_SIGN_IN: &str = "Secret missing or does not sign in";
const MISSING: &str = "application or service principal missing";
const ORPHAN_APP: &str = "orphan application";
const ORPHAN_SP: &str = "orphan service principal";
const PASSWORDS: &str = "password not accounted for";
const RA_MISSING: &str = "role assignment missing";
const ORPHAN_RA: &str = "orphan role assignment";
const ORPHAN_ROLE: &str = "orphan custom role";
const ORPHAN_SECRET: &str = "orphan Secret";
const OVER_TWO: &str = "more than two passwords under a rotation (during churn)";
const CATEGORIES: [&str; 13] = [
    NOT_READY,
    STUCK,
    NOT_APPLIED,
    NO_SIGN_IN,
    MISSING,
    ORPHAN_APP,
    ORPHAN_SP,
    PASSWORDS,
    RA_MISSING,
    ORPHAN_RA,
    ORPHAN_ROLE,
    ORPHAN_SECRET,
    OVER_TWO,
];

#[derive(Clone, Debug)]
struct Audit(BTreeMap<&'static str, Vec<String>>);

impl Audit {
    fn new() -> Audit {
        Audit(CATEGORIES.iter().map(|c| (*c, vec![])).collect())
    }
    fn add(&mut self, category: &'static str, finding: String) {
        self.0.entry(category).or_default().push(finding);
    }
    fn total(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
    fn counts(&self) -> Value {
        json!(
            self.0
                .iter()
                .map(|(c, f)| (c.to_string(), f.len()))
                .collect::<BTreeMap<_, _>>()
        )
    }
    fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|(c, f)| f.iter().map(move |f| format!("{c}: {f}")))
            .collect()
    }
}

/// What the emulator held before the operator ran: never the operator's, never audited.
struct Baseline {
    apps: BTreeSet<String>,
    principals: BTreeSet<String>,
    assignments: BTreeSet<String>,
    custom_roles: BTreeSet<String>,
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

impl Baseline {
    fn of(world: &Value) -> Baseline {
        Baseline {
            apps: keys(&world["directory"]["applications"]),
            principals: keys(&world["directory"]["servicePrincipals"]),
            assignments: keys(&world["arm"]["roleAssignments"]),
            custom_roles: keys(&world["arm"]["customRoles"]),
        }
    }
}

/// Everything the audit reads through.
struct Cx<'a> {
    azure: &'a Azure,
    ns: String,
    cluster_id: String,
    baseline: Baseline,
    identities: Identities,
    sps: Api<ServicePrincipal>,
    rds: Api<RoleDelegation>,
    crots: Api<CredentialRotation>,
    secrets: Api<Secret>,
}

fn new_items<'v>(map: &'v Value, baseline: &BTreeSet<String>) -> Vec<(String, &'v Value)> {
    map.as_object()
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| !baseline.contains(&k.to_ascii_lowercase()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn guid_of(definition_id: &str) -> String {
    definition_id
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Ready=True for the current generation.
fn check_ready<K: serde::Serialize + Resource>(audit: &mut Audit, who: &str, object: &K) {
    let value = serde_json::to_value(object).unwrap();
    let generation = value["metadata"]["generation"].as_i64();
    let observed = value["status"]["observedGeneration"].as_i64();
    match ready_of(object) {
        Some((s, _, _)) if s == "True" && observed == generation => {}
        Some((s, reason, message)) => audit.add(
            NOT_READY,
            format!(
                "{who}: Ready={s} {reason}: {message} (generation {generation:?}, observed {observed:?})"
            ),
        ),
        None => audit.add(NOT_READY, format!("{who}: no Ready condition")),
    }
}

/// The client id and secret a Secret of `format` holds.
fn credential_in(secret: &Secret, format: &str) -> Option<(String, String)> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let doc = |k: &str| serde_json::from_str::<Value>(&get(k)?).ok();
    match format {
        "env" => Some((get("AZURE_CLIENT_ID")?, get("AZURE_CLIENT_SECRET")?)),
        "az" => Some((get("appId")?, get("password")?)),
        "sdk-auth" => {
            let d = doc("sdk-auth.json")?;
            Some((
                d["clientId"].as_str()?.into(),
                d["clientSecret"].as_str()?.into(),
            ))
        }
        "azure.json" => {
            let d = doc("azure.json")?;
            Some((
                d["aadClientId"].as_str()?.into(),
                d["aadClientSecret"].as_str()?.into(),
            ))
        }
        _ => None,
    }
}

fn format_of(sp: &ServicePrincipal) -> String {
    sp.spec
        .secret
        .as_ref()
        .and_then(|s| serde_json::to_value(s.format).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One consistent-enough view: the emulator's state (without its seed) and the namespace's objects.
struct Snapshot {
    apps: Vec<(String, Value)>,
    principals: Vec<(String, Value)>,
    assignments: BTreeMap<String, Value>,
    custom_roles: Vec<(String, Value)>,
    sps: Vec<ServicePrincipal>,
    rds: Vec<RoleDelegation>,
    crots: Vec<CredentialRotation>,
    secrets: Vec<Secret>,
}

impl Snapshot {
    async fn read(cx: &Cx<'_>) -> Snapshot {
        let world = state(cx.azure).await;
        let lp = ListParams::default();
        let owned = |map: &Value, baseline: &BTreeSet<String>| -> Vec<(String, Value)> {
            new_items(map, baseline)
                .into_iter()
                .map(|(k, v)| (k, v.clone()))
                .collect()
        };
        Snapshot {
            apps: owned(&world["directory"]["applications"], &cx.baseline.apps),
            principals: owned(
                &world["directory"]["servicePrincipals"],
                &cx.baseline.principals,
            ),
            assignments: owned(&world["arm"]["roleAssignments"], &cx.baseline.assignments)
                .into_iter()
                .collect(),
            custom_roles: owned(&world["arm"]["customRoles"], &cx.baseline.custom_roles),
            sps: cx.sps.list(&lp).await.unwrap().items,
            rds: cx.rds.list(&lp).await.unwrap().items,
            crots: cx.crots.list(&lp).await.unwrap().items,
            secrets: cx.secrets.list(&lp).await.unwrap().items,
        }
    }

    fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name_any() == name)
    }

    fn sp(&self, name: &str) -> Option<&ServicePrincipal> {
        self.sps.iter().find(|s| s.name_any() == name)
    }

    fn rotation_of(&self, sp: &str) -> Option<&CredentialRotation> {
        self.crots.iter().find(|c| {
            c.spec
                .service_principal_ref
                .as_ref()
                .is_some_and(|r| r.name == sp)
        })
    }
}

/// What the live objects account for in Azure.
#[derive(Default)]
struct Accounted {
    /// appIds (lowercase).
    apps: BTreeSet<String>,
    /// Assignment id (lowercase) -> the RoleDelegations whose status names it.
    assignments: BTreeMap<String, Vec<String>>,
    /// Service principal id (lowercase) -> its live ServicePrincipal.
    principals: BTreeMap<String, String>,
}

/// Compares the emulator's state with the cluster. `texts` collects every secret text seen (to check that no
/// log holds one); they are never printed.
async fn audit(cx: &Cx<'_>, texts: &mut BTreeSet<String>) -> Audit {
    let snap = Snapshot::read(cx).await;
    let mut a = Audit::new();
    let mut accounted = Accounted::default();
    for sp in &snap.sps {
        audit_service_principal(cx, &snap, sp, &mut a, &mut accounted, texts).await;
    }
    for rd in &snap.rds {
        audit_role_delegation(&snap, rd, &mut a, &mut accounted);
    }
    for crot in &snap.crots {
        audit_rotation(&snap, crot, &mut a);
    }
    audit_leftovers(cx, &snap, &accounted, &mut a);
    a
}

/// Ready; the application, its service principal and the Secret as the spec says; the Secret signs in; the
/// application holds exactly the Secret's password.
async fn audit_service_principal(
    cx: &Cx<'_>,
    snap: &Snapshot,
    sp: &ServicePrincipal,
    a: &mut Audit,
    accounted: &mut Accounted,
    texts: &mut BTreeSet<String>,
) {
    let name = sp.name_any();
    let who = format!("ServicePrincipal {name}");
    let status = sp.status.clone().unwrap_or_default();
    if let Some(app) = &status.app_id {
        accounted.apps.insert(app.to_ascii_lowercase());
    }
    if sp.metadata.deletion_timestamp.is_some() {
        a.add(STUCK, format!("{who}: {:?}", ready_of(sp)));
        return;
    }
    check_ready(a, &who, sp);
    let Some(app_id) = status.app_id.clone() else {
        a.add(MISSING, format!("{who}: no status.appId"));
        return;
    };
    if let Some(p) = &status.service_principal_id {
        accounted
            .principals
            .insert(p.to_ascii_lowercase(), name.clone());
    }
    let Some((_, app)) = snap
        .apps
        .iter()
        .find(|(_, v)| v["appId"].as_str() == Some(app_id.as_str()))
    else {
        a.add(
            MISSING,
            format!("{who}: application {app_id} is not in Azure"),
        );
        return;
    };
    let unique = naming::unique_name(&cx.cluster_id, &cx.ns, &name, &sp.uid().unwrap());
    let mut want_tags = naming::ownership_tags(&cx.cluster_id, &cx.ns, &name);
    want_tags.extend(sp.spec.tags.iter().cloned());
    let have_tags: BTreeSet<&str> = app["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if app["uniqueName"].as_str() != Some(unique.as_str())
        || app["displayName"].as_str() != Some(sp.spec.display_name.as_str())
        || !want_tags.iter().all(|t| have_tags.contains(t.as_str()))
    {
        a.add(
            NOT_APPLIED,
            format!(
                "{who}: application {app_id} has uniqueName {}, displayName {}, tags {have_tags:?}; the spec wants \
                 {unique}, {}, {want_tags:?}",
                app["uniqueName"], app["displayName"], sp.spec.display_name
            ),
        );
    }
    let holders: Vec<&String> = snap
        .principals
        .iter()
        .filter(|(_, p)| p["appId"].as_str() == Some(app_id.as_str()))
        .map(|(id, _)| id)
        .collect();
    if holders.len() != 1
        || status
            .service_principal_id
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_ref()
            != Some(holders[0])
    {
        a.add(
            MISSING,
            format!(
                "{who}: service principals of {app_id} in Azure {holders:?}, status says {:?}",
                status.service_principal_id
            ),
        );
    }

    // The Secret signs in with the application's credential, in the format the spec asks for.
    let Some(target) = &sp.spec.secret else {
        return;
    };
    let format = format_of(sp);
    let delivered = match snap.secret(&target.name) {
        None => {
            a.add(NO_SIGN_IN, format!("{who}: no Secret {}", target.name));
            None
        }
        Some(secret)
            if !secret
                .owner_references()
                .iter()
                .any(|r| Some(&r.uid) == sp.uid().as_ref()) =>
        {
            a.add(
                NO_SIGN_IN,
                format!("{who}: Secret {} is not owned by it", target.name),
            );
            None
        }
        Some(secret) => {
            let annotations = secret.annotations();
            let key = annotations.get("entra-operator.io/key-id").cloned();
            if annotations.get("entra-operator.io/format") != Some(&format) {
                a.add(
                    NOT_APPLIED,
                    format!(
                        "{who}: Secret {} is in format {:?}, the spec asks for {format}",
                        target.name,
                        annotations.get("entra-operator.io/format")
                    ),
                );
            }
            match credential_in(secret, &format) {
                None => a.add(
                    NO_SIGN_IN,
                    format!("{who}: Secret {} holds no {format} credential", target.name),
                ),
                Some((client, text)) => {
                    texts.insert(text.clone());
                    let signed_in = token_status(cx.azure, &client, &text).await;
                    if client != app_id || signed_in != 200 {
                        a.add(
                            NO_SIGN_IN,
                            format!(
                                "{who}: Secret {} (client {client}, key {key:?}) signs in with {signed_in}",
                                target.name
                            ),
                        );
                    }
                }
            }
            key
        }
    };
    if let (Some(key), Some(credential)) = (&delivered, &status.credential)
        && &credential.key_id != key
    {
        a.add(
            NOT_APPLIED,
            format!(
                "{who}: status.credential names key {}, the Secret holds {key}",
                credential.key_id
            ),
        );
    }

    // Exactly one password once settled: the one the Secret holds (a rotation's previous one goes after its
    // overlap), and none but the operator's own for this object.
    let prefix = format!("entra-operator:{}/{name}:", cx.ns);
    let passwords: Vec<(String, String)> = app["passwordCredentials"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["keyId"].as_str().unwrap_or_default().to_string(),
                p["displayName"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let unexpected: Vec<String> = passwords
        .iter()
        .filter(|(k, d)| !d.starts_with(&prefix) || delivered.as_ref() != Some(k))
        .map(|(k, d)| format!("{k} ({d})"))
        .collect();
    if !unexpected.is_empty() || passwords.len() != 1 {
        let rotation = snap.rotation_of(&name).map(|c| {
            let s = c.status.clone().unwrap_or_default();
            format!(
                "; CredentialRotation {} has current {:?}, previous {:?} (removal {:?})",
                c.name_any(),
                s.current_key_id,
                s.previous_key_id,
                s.previous_key_removal_time.map(|t| t.0.to_string())
            )
        });
        a.add(
            PASSWORDS,
            format!(
                "{who}: application {app_id} holds {} passwords, not accounted for: {unexpected:?}; the Secret \
                 holds {delivered:?}{}",
                passwords.len(),
                rotation.unwrap_or_default()
            ),
        );
    }
}

/// Ready; the assignment its status names exists, with the spec's role and scope and its principal's id.
fn audit_role_delegation(
    snap: &Snapshot,
    rd: &RoleDelegation,
    a: &mut Audit,
    accounted: &mut Accounted,
) {
    let who = format!("RoleDelegation {}", rd.name_any());
    let status = rd.status.clone().unwrap_or_default();
    for id in status
        .role_assignment_id
        .iter()
        .chain(status.pending_removal.iter())
    {
        accounted
            .assignments
            .entry(id.to_ascii_lowercase())
            .or_default()
            .push(rd.name_any());
    }
    if rd.metadata.deletion_timestamp.is_some() {
        a.add(STUCK, format!("{who}: {:?}", ready_of(rd)));
        return;
    }
    check_ready(a, &who, rd);
    if !status.pending_removal.is_empty() {
        a.add(
            NOT_APPLIED,
            format!("{who}: still to remove: {:?}", status.pending_removal),
        );
    }
    let Some(id) = status.role_assignment_id.clone() else {
        a.add(RA_MISSING, format!("{who}: no status.roleAssignmentId"));
        return;
    };
    let Some(found) = snap.assignments.get(&id.to_ascii_lowercase()) else {
        a.add(RA_MISSING, format!("{who}: {id} is not in Azure"));
        return;
    };
    let principal = rd
        .spec
        .principal_ref
        .as_ref()
        .and_then(|r| snap.sp(&r.name))
        .and_then(|s| s.status.as_ref()?.service_principal_id.clone());
    let role = rd.spec.role.name.clone().unwrap_or_default();
    let same = |field: &str, want: Option<&str>| {
        want.is_some_and(|w| {
            found[field]
                .as_str()
                .is_some_and(|f| f.eq_ignore_ascii_case(w))
        })
    };
    let applied = same("scope", Some(&rd.spec.scope))
        && same("principalId", principal.as_deref())
        && status
            .role_name
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(&role))
        && status.role_definition_id.as_deref().map(guid_of)
            == found["roleDefinitionId"].as_str().map(guid_of);
    if !applied {
        a.add(
            NOT_APPLIED,
            format!(
                "{who}: Azure holds {} for {} at {} (status: {:?}); the spec wants {role} for {principal:?} at {}",
                found["roleDefinitionId"],
                found["principalId"],
                found["scope"],
                status.role_name,
                rd.spec.scope
            ),
        );
    }
}

/// Ready; its current key is the one in the Secret; the last rotationToken was acted on.
fn audit_rotation(snap: &Snapshot, crot: &CredentialRotation, a: &mut Audit) {
    let who = format!("CredentialRotation {}", crot.name_any());
    if crot.metadata.deletion_timestamp.is_some() {
        a.add(STUCK, format!("{who}: {:?}", ready_of(crot)));
        return;
    }
    check_ready(a, &who, crot);
    let status = crot.status.clone().unwrap_or_default();
    let secret_key = crot
        .spec
        .service_principal_ref
        .as_ref()
        .and_then(|r| snap.sp(&r.name))
        .and_then(|s| snap.secret(&s.spec.secret.as_ref()?.name))
        .and_then(|s| s.annotations().get("entra-operator.io/key-id").cloned());
    if status.current_key_id != secret_key
        || crot.spec.rotation_token.is_some()
            && status.observed_rotation_token != crot.spec.rotation_token
    {
        a.add(
            NOT_APPLIED,
            format!(
                "{who}: current key {:?}, Secret holds {secret_key:?}; rotationToken {:?} observed {:?}",
                status.current_key_id, crot.spec.rotation_token, status.observed_rotation_token
            ),
        );
    }
}

/// What Azure (and the namespace) holds that no live object accounts for.
fn audit_leftovers(cx: &Cx<'_>, snap: &Snapshot, accounted: &Accounted, a: &mut Audit) {
    for (id, app) in &snap.apps {
        let app_id = app["appId"].as_str().unwrap_or_default();
        if accounted.apps.contains(&app_id.to_ascii_lowercase()) {
            continue;
        }
        let object = app["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|t| t.strip_prefix("entra-operator/object="))
            .unwrap_or("?")
            .to_string();
        a.add(
            ORPHAN_APP,
            format!(
                "application {app_id} (object id {id}, displayName {}, uniqueName {}, of {object}) with {} \
                 passwords, created {}",
                app["displayName"],
                app["uniqueName"],
                app["passwordCredentials"].as_array().map_or(0, Vec::len),
                app["createdDateTime"]
            ),
        );
    }
    for (id, principal) in &snap.principals {
        let app_id = principal["appId"].as_str().unwrap_or_default();
        if !accounted.apps.contains(&app_id.to_ascii_lowercase()) {
            a.add(
                ORPHAN_SP,
                format!("service principal {id} of application {app_id}"),
            );
        }
    }
    for (id, found) in &snap.assignments {
        let principal = found["principalId"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match accounted.assignments.get(id) {
            Some(by) if by.len() == 1 => {}
            Some(by) => a.add(
                ORPHAN_RA,
                format!("{id} is claimed by several RoleDelegations: {by:?}"),
            ),
            None => {
                let whose = match (
                    accounted.principals.get(&principal),
                    cx.identities.lock().unwrap().get(&principal),
                ) {
                    (Some(sp), _) => format!("the principal of live ServicePrincipal {sp}"),
                    (None, Some(sp)) => format!("the principal of deleted ServicePrincipal {sp}"),
                    (None, None) => "a principal no live ServicePrincipal has".into(),
                };
                a.add(
                    ORPHAN_RA,
                    format!(
                        "{} (role {}, principal {principal}, {whose}) claimed by no RoleDelegation",
                        found["id"],
                        guid_of(found["roleDefinitionId"].as_str().unwrap_or_default()),
                    ),
                );
            }
        }
    }
    for (guid, role) in &snap.custom_roles {
        a.add(
            ORPHAN_ROLE,
            format!("custom role {guid} ({})", role["roleName"]),
        );
    }
    for secret in &snap.secrets {
        let labels = secret.labels();
        let Some(owner) = labels
            .get("entra-operator.io/service-principal")
            .or_else(|| labels.get("entra-operator.io/credential-rotation"))
        else {
            continue;
        };
        let live = snap.sps.iter().any(|sp| {
            sp.metadata.deletion_timestamp.is_none()
                && sp
                    .spec
                    .secret
                    .as_ref()
                    .is_some_and(|t| t.name == secret.name_any())
        });
        if !live {
            a.add(
                ORPHAN_SECRET,
                format!("Secret {} of {owner}", secret.name_any()),
            );
        }
    }
}

/// Audits until clean or `limit` passes; returns the last audit and how long it took. Findings that nothing
/// can heal end the wait early once unchanged for half a minute: what Azure holds for no live object is never
/// looked at again by the operator.
async fn settle(cx: &Cx<'_>, texts: &mut BTreeSet<String>, limit: Duration) -> (Audit, f64) {
    const FINAL: [&str; 4] = [ORPHAN_APP, ORPHAN_SP, ORPHAN_RA, ORPHAN_ROLE];
    let began = Instant::now();
    let mut last: Option<(Vec<String>, Instant)> = None;
    loop {
        let found = audit(cx, texts).await;
        let lines = found.lines();
        let healable = found
            .0
            .iter()
            .any(|(c, f)| !f.is_empty() && !FINAL.contains(c));
        let unchanged_since = match &last {
            Some((before, since)) if *before == lines => *since,
            _ => Instant::now(),
        };
        let stuck = !healable && unchanged_since.elapsed() > Duration::from_secs(30);
        if found.total() == 0 || stuck || began.elapsed() > limit {
            return (found, began.elapsed().as_secs_f64());
        }
        last = Some((lines, unchanged_since));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------

async fn calls(azure: &Azure) -> Value {
    emulator_http(azure)
        .get(format!("{}/_emulator/calls", azure.emulator.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Graph and ARM answers by status class: what the operator saw of the chaos.
fn answers(calls: &Value) -> Value {
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
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0);
    json!({"cpus": cpus, "cpuModel": model, "memoryGiB": mem_gib})
}

/// What the operator's log says: reconcile failures by reason, rotations issued.
fn log_summary(log: &[String]) -> Value {
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
fn explain(
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

struct Report {
    json: Value,
    findings: Vec<String>,
    explanation: String,
    log_file: PathBuf,
}

async fn put_policy(admin: &kube::Client, ns: &str) -> String {
    let roles: Vec<&str> = LANES.iter().flat_map(|l| l.roles).collect();
    crate::harness::put_policy(admin, ns, "soak", json!({"scopes": [RG], "roles": roles})).await
}

/// Deletes every object and waits for the finalizers; returns what is still there after `limit`, with its
/// finalizer removed (so that the namespace can go; the audit that follows reports what it left in Azure).
async fn delete_everything(cx: &Cx<'_>, limit: Duration) -> Vec<String> {
    let dp = DeleteParams::default();
    let lp = ListParams::default();
    cx.crots.delete_collection(&dp, &lp).await.unwrap();
    cx.rds.delete_collection(&dp, &lp).await.unwrap();
    cx.sps.delete_collection(&dp, &lp).await.unwrap();
    let began = Instant::now();
    loop {
        let left: Vec<String> = cx
            .crots
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .map(|o| format!("CredentialRotation {}: {:?}", o.name_any(), ready_of(o)))
            .chain(
                cx.rds
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|o| format!("RoleDelegation {}: {:?}", o.name_any(), ready_of(o))),
            )
            .chain(
                cx.sps
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|o| format!("ServicePrincipal {}: {:?}", o.name_any(), ready_of(o))),
            )
            .collect();
        if left.is_empty() {
            return left;
        }
        if began.elapsed() > limit {
            let unstick = Patch::Merge(json!({"metadata": {"finalizers": null}}));
            let pp = PatchParams::default();
            for o in cx.crots.list(&lp).await.unwrap() {
                let _ = cx.crots.patch(&o.name_any(), &pp, &unstick).await;
            }
            for o in cx.rds.list(&lp).await.unwrap() {
                let _ = cx.rds.patch(&o.name_any(), &pp, &unstick).await;
            }
            for o in cx.sps.list(&lp).await.unwrap() {
                let _ = cx.sps.patch(&o.name_any(), &pp, &unstick).await;
            }
            return left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn soak(p: Params) -> Report {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("soak").await;
    let policy = put_policy(&admin, &ns.name).await;
    let cluster_id = azure
        .env
        .iter()
        .find(|(k, _)| k == "ENTRA_OPERATOR_CLUSTER_ID")
        .unwrap()
        .1
        .clone();
    let cx = Cx {
        azure: &azure,
        ns: ns.name.clone(),
        cluster_id,
        baseline: Baseline::of(&state(&azure).await),
        identities: Arc::default(),
        sps: Api::namespaced(admin.clone(), &ns.name),
        rds: Api::namespaced(admin.clone(), &ns.name),
        crots: Api::namespaced(admin.clone(), &ns.name),
        secrets: Api::namespaced(admin.clone(), &ns.name),
    };
    println!(
        "chaos soak in {} (seed {}): {}s of churn, kills every {}-{}s, up to {} ServicePrincipals",
        ns.name,
        p.seed,
        p.churn.as_secs(),
        p.kill_every.0,
        p.kill_every.1,
        p.max_service_principals
    );

    let operator = {
        let (k, e) = (kubeconfig.clone(), azure.env.clone());
        tokio::task::spawn_blocking(move || {
            let mut operator = Operator::start_with(&k, &e);
            operator.wait_for("operator ready", Duration::from_secs(60));
            operator
        })
        .await
        .unwrap()
    };
    knobs(&azure, soak_knobs(p.seed)).await;
    emulator_http(&azure)
        .delete(format!("{}/_emulator/calls", azure.emulator.base_url))
        .send()
        .await
        .unwrap();

    let start = Instant::now();
    let started = jiff::Timestamp::now().to_string();
    let timeline = Arc::new(Mutex::new(vec![]));
    let stop_kills = Arc::new(AtomicBool::new(false));
    let _stop_kills = StopOnDrop(stop_kills.clone());
    let killer = {
        let (k, e, stop, t) = (
            kubeconfig.clone(),
            azure.env.clone(),
            stop_kills.clone(),
            timeline.clone(),
        );
        let (every, seed) = (p.kill_every, p.seed);
        std::thread::spawn(move || kill_loop(operator, k, e, every, seed, start, stop, t))
    };
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let _stop_sampling = StopOnDrop(stop_sampling.clone());
    let sampler = tokio::spawn(sample(
        cx.sps.clone(),
        cx.crots.clone(),
        (emulator_http(&azure), azure.emulator.base_url.clone()),
        cx.identities.clone(),
        stop_sampling.clone(),
        start,
    ));

    let mut churn = Churn {
        sps: cx.sps.clone(),
        rds: cx.rds.clone(),
        crots: cx.crots.clone(),
        secrets: cx.secrets.clone(),
        live: vec![],
        serial: 0,
        rng: Rng(p.seed),
        max: p.max_service_principals,
        counts: Counts::default(),
        start,
        timeline: timeline.clone(),
    };
    let mut steps = 0u64;
    while start.elapsed() < p.churn {
        churn.step().await;
        steps += 1;
        let pause = churn.rng.between(p.pause_ms.0, p.pause_ms.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let churn_seconds = start.elapsed().as_secs_f64();
    stop_kills.store(true, Ordering::Relaxed);
    let Killer {
        operator,
        mut log,
        kills,
        restart_seconds,
    } = tokio::task::spawn_blocking(move || killer.join().expect("the kill loop panicked"))
        .await
        .unwrap();
    let chaos_calls = answers(&calls(&azure).await);
    knobs(&azure, quiet_knobs()).await;
    timeline
        .lock()
        .unwrap()
        .push((at(start), "churn over; faults off".into()));
    println!(
        "churn over after {churn_seconds:.0}s: {steps} steps, {} kills, Azure answers {chaos_calls}",
        kills.len()
    );

    // Converge, then audit.
    let mut texts = BTreeSet::new();
    let (mut settled, settle_seconds) = settle(&cx, &mut texts, p.settle).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let sampled = sampler.await.unwrap();
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

    // Everything deleted: Azure must be back to its seed.
    let began = Instant::now();
    let stuck = delete_everything(&cx, Duration::from_secs(90)).await;
    let (mut emptied, _) = settle(&cx, &mut texts, Duration::from_secs(30)).await;
    for s in stuck {
        emptied.add(STUCK, s);
    }
    let teardown_seconds = began.elapsed().as_secs_f64();
    println!(
        "after deleting everything ({teardown_seconds:.0}s): {} findings",
        emptied.total()
    );

    log.extend(operator.stop());
    let leaked_secret = texts
        .iter()
        .any(|t| log.iter().any(|l| l.contains(t.as_str())));
    assert!(
        !leaked_secret,
        "a client secret appears in the operator's log"
    );

    let log_dir = Path::new(MANIFEST_DIR).join("target/soak");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log_file = log_dir.join(format!("{}.log", ns.name));
    std::fs::write(&log_file, log.join("\n")).unwrap();

    let mut findings: Vec<String> = settled
        .lines()
        .into_iter()
        .map(|f| format!("after settling: {f}"))
        .collect();
    findings.extend(
        emptied
            .lines()
            .into_iter()
            .map(|f| format!("after deleting everything: {f}")),
    );
    let timeline = timeline.lock().unwrap().clone();
    let explanation = if findings.is_empty() {
        String::new()
    } else {
        explain(&findings, &started, &timeline, &log)
    };
    let counts = &churn.counts;
    let json = json!({
        "benchmark": "chaos-soak",
        "date": jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC").to_string(),
        "machine": machine(),
        "seed": p.seed,
        "namespace": ns.name,
        "churnSeconds": (churn_seconds * 10.0).round() / 10.0,
        "churnSteps": steps,
        "requestedChurnSeconds": p.churn.as_secs(),
        "maxLiveServicePrincipals": p.max_service_principals,
        "knobs": soak_knobs(p.seed),
        "throttling": "enabled at Azure's documented limits (the emulator's default)",
        "resyncInterval": "1h (the chart's default)",
        "killEverySeconds": [p.kill_every.0, p.kill_every.1],
        "kills": kills.len(),
        "killTimesSeconds": kills,
        "restartToReadySeconds": restart_seconds,
        "created": counts.created,
        "updated": counts.updated,
        "deleted": counts.deleted,
        "createdAndDeletedWithinSeconds": counts.created_and_deleted_at_once,
        "secretsDeleted": counts.secrets_deleted,
        "rotationsRequested": counts.rotations_requested,
        "apiErrors": counts.api_errors,
        "azureDuringChurn": chaos_calls,
        "operatorLog": log_summary(&log),
        "passwordsAtOnce": {"samples": sampled.samples, "mostOnARotatedApplication": sampled.most_rotated,
            "mostOnAnyOtherApplication": sampled.most_other},
        "liveAtAudit": live,
        "settleSeconds": (settle_seconds * 10.0).round() / 10.0,
        "audit": settled.counts(),
        "teardownSeconds": (teardown_seconds * 10.0).round() / 10.0,
        "auditAfterDeletingEverything": emptied.counts(),
        "findings": findings,
    });
    Api::<DelegationPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await
        .unwrap();
    teardown(rbac, azure, ns).await;
    Report {
        json,
        findings,
        explanation,
        log_file,
    }
}

fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let row = |map: &Value| -> String {
        map.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let azure = &r["azureDuringChurn"];
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

fn verdict(report: &Report) {
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

// Four workers: the emulator, the churn, the probe and the audit share them; the kill loop has its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_soak_short() {
    let report = soak(Params::short()).await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by `make soak` (SOAK_SECONDS, default 300)"]
async fn chaos_soak_long() {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let report = soak(Params::long(seconds)).await;
    let dir = Path::new(MANIFEST_DIR).join("bench/results");
    std::fs::write(
        dir.join("chaos-soak.json"),
        serde_json::to_string_pretty(&report.json).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join("chaos-soak.md"), markdown(&report.json)).unwrap();
    verdict(&report);
}
