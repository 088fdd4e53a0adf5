//! The churn: a model of what should exist, and random steps that change it through the API server. Every
//! choice comes from the soak's seeded [`Rng`], in the same order for the same seed.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, RoleDelegation, ServicePrincipal};

use super::{Rng, Timeline, at};

pub(super) const RG: &str =
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared";
const REGISTRY: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr";
const VAULT: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv";

/// A ServicePrincipal has up to two RoleDelegations, one per lane. The lanes' roles differ, so two delegations
/// never name the same assignment (its name is derived from scope, role and principal): two delegations of one
/// grant would share, and delete, one assignment, which is not what this soak is about.
pub(super) struct Lane {
    pub(super) roles: [&'static str; 2],
    scopes: [&'static str; 2],
}
pub(super) const LANES: [Lane; 2] = [
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

/// What the churn did, for the report.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) created: BTreeMap<&'static str, u64>,
    pub(super) updated: BTreeMap<&'static str, u64>,
    pub(super) deleted: BTreeMap<&'static str, u64>,
    pub(super) rotations_requested: u64,
    pub(super) secrets_deleted: u64,
    pub(super) created_and_deleted_at_once: u64,
    pub(super) api_errors: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Step {
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

pub(super) struct Churn {
    sps: Api<ServicePrincipal>,
    rds: Api<RoleDelegation>,
    crots: Api<CredentialRotation>,
    secrets: Api<Secret>,
    live: Vec<SpSlot>,
    serial: u32,
    pub(super) rng: Rng,
    max: usize,
    pub(super) counts: Counts,
    start: Instant,
    /// (seconds, what happened), for explaining a finding.
    timeline: Timeline,
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
/// The steps that apply to what lives now, with their weights: creations while fewer than `max` live,
/// changes and deletions only of what exists.
fn steps(live: &[SpSlot], max: usize) -> Vec<(Step, u32)> {
    let n = live.len();
    let mut steps = vec![];
    if n < max {
        steps.push((Step::CreateServicePrincipal, 20));
        steps.push((Step::CreateAndDeleteAtOnce, 4));
    }
    if n > 0 {
        steps.push((Step::ChangeSecretFormat, 10));
        steps.push((Step::RenameAndRetag, 4));
        steps.push((Step::DeleteSecret, 3));
        steps.push((Step::DeleteServicePrincipal, 8));
    }
    if live.iter().any(|s| s.rds.iter().any(Option::is_none)) {
        steps.push((Step::CreateRoleDelegation, 6));
    }
    if live.iter().any(|s| s.rds.iter().any(Option::is_some)) {
        steps.push((Step::ChangeRoleOrScope, 12));
        steps.push((Step::DeleteRoleDelegation, 5));
    }
    if live.iter().any(|s| s.rotation.is_none()) {
        steps.push((Step::CreateRotation, 6));
    }
    if live.iter().any(|s| s.rotation.is_some()) {
        steps.push((Step::BumpRotationToken, 12));
        steps.push((Step::DeleteRotation, 4));
    }
    steps
}

impl Churn {
    /// An empty model over the namespace's objects, up to `max` live ServicePrincipals.
    pub(super) fn new(
        apis: &super::audit::Cx<'_>,
        seed: u64,
        max: usize,
        start: Instant,
        timeline: Timeline,
    ) -> Churn {
        Churn {
            sps: apis.sps.clone(),
            rds: apis.rds.clone(),
            crots: apis.crots.clone(),
            secrets: apis.secrets.clone(),
            live: vec![],
            serial: 0,
            rng: Rng(seed),
            max,
            counts: Counts::default(),
            start,
            timeline,
        }
    }

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

    /// (ServicePrincipal, lane) of the live objects whose lane holds a RoleDelegation (`taken`), or not.
    fn lanes(&self, taken: bool) -> Vec<(usize, usize)> {
        self.live
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                (0..2)
                    .filter(move |l| s.rds[*l].is_some() == taken)
                    .map(move |l| (i, l))
            })
            .collect()
    }

    /// The live objects with a CredentialRotation (`with`), or without.
    fn with_rotation(&self, with: bool) -> Vec<usize> {
        (0..self.live.len())
            .filter(|i| self.live[*i].rotation.is_some() == with)
            .collect()
    }

    fn steps(&self) -> Vec<(Step, u32)> {
        steps(&self.live, self.max)
    }

    /// One random step, drawn by weight from those that apply to what lives now.
    pub(super) async fn step(&mut self) -> Step {
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
            Step::CreateServicePrincipal => self.create_sp_and_more().await,
            Step::CreateAndDeleteAtOnce => self.create_and_delete_at_once().await,
            Step::ChangeSecretFormat => self.change_secret_format().await,
            Step::RenameAndRetag => self.rename_and_retag().await,
            Step::DeleteSecret => self.delete_secret().await,
            Step::DeleteServicePrincipal => self.delete_any_sp().await,
            Step::CreateRoleDelegation => self.create_any_rd().await,
            Step::ChangeRoleOrScope => self.change_role_or_scope().await,
            Step::DeleteRoleDelegation => self.delete_any_rd().await,
            Step::CreateRotation => self.create_any_rotation().await,
            Step::BumpRotationToken => self.bump_rotation_token().await,
            Step::DeleteRotation => self.delete_any_rotation().await,
        }
        step
    }

    async fn create_sp_and_more(&mut self) {
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

    async fn create_and_delete_at_once(&mut self) {
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

    async fn change_secret_format(&mut self) {
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

    async fn rename_and_retag(&mut self) {
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

    async fn delete_secret(&mut self) {
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

    async fn delete_any_sp(&mut self) {
        let i = self.rng.below(self.live.len());
        let staggered = self.rng.chance(0.5);
        self.delete_sp(i, staggered).await;
    }

    async fn create_any_rd(&mut self) {
        let open = self.lanes(false);
        let (i, lane) = open[self.rng.below(open.len())];
        self.create_rd(i, lane).await;
    }

    async fn change_role_or_scope(&mut self) {
        let taken = self.lanes(true);
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

    async fn delete_any_rd(&mut self) {
        let taken = self.lanes(true);
        let (i, lane) = taken[self.rng.below(taken.len())];
        let rd = self.live[i].rds[lane].take().unwrap();
        self.delete_rd(&rd.name).await;
    }

    async fn create_any_rotation(&mut self) {
        let open = self.with_rotation(false);
        let i = open[self.rng.below(open.len())];
        self.create_rotation(i).await;
    }

    async fn bump_rotation_token(&mut self) {
        let with = self.with_rotation(true);
        let i = with[self.rng.below(with.len())];
        let (name, token) = self.live[i].rotation.clone().unwrap();
        match self
            .crots
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rotationToken": format!("t{}", token + 1)}})),
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

    async fn delete_any_rotation(&mut self) {
        let with = self.with_rotation(true);
        let i = with[self.rng.below(with.len())];
        let (name, _) = self.live[i].rotation.take().unwrap();
        self.delete_crot(&name).await;
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
        self.delete(self.rds.clone(), "RoleDelegation", name).await;
    }

    async fn delete_crot(&mut self, name: &str) {
        self.delete(self.crots.clone(), "CredentialRotation", name)
            .await;
    }

    /// Deletes the `kind` object `name`, counting and noting it, or the failure.
    async fn delete<K>(&mut self, api: Api<K>, kind: &'static str, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                Self::bump(&mut self.counts.deleted, kind);
                self.note(format!("{kind} {name} deleted"));
            }
            Err(e) => self.failed(&format!("delete {kind} {name}"), e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(rds: [bool; 2], rotation: bool) -> SpSlot {
        let rd = |on: bool| {
            on.then(|| RdSlot {
                name: "rd".into(),
                role: 0,
                scope: 0,
            })
        };
        SpSlot {
            name: "sp-1".into(),
            format: "env",
            revision: 0,
            rds: [rd(rds[0]), rd(rds[1])],
            rotation: rotation.then(|| ("sp-1-rotation".into(), 0)),
        }
    }

    #[test]
    fn only_steps_that_apply_to_what_lives_are_drawn() {
        use Step::*;
        let cases: Vec<(&str, Vec<SpSlot>, usize, Vec<Step>)> = vec![
            (
                "nothing lives: only creations",
                vec![],
                2,
                vec![CreateServicePrincipal, CreateAndDeleteAtOnce],
            ),
            (
                "at the maximum, bare: no creation, a delegation or rotation may be added",
                vec![slot([false, false], false), slot([false, false], false)],
                2,
                vec![
                    ChangeSecretFormat,
                    RenameAndRetag,
                    DeleteSecret,
                    DeleteServicePrincipal,
                    CreateRoleDelegation,
                    CreateRotation,
                ],
            ),
            (
                "fully dressed below the maximum: everything but adding a delegation or rotation",
                vec![slot([true, true], true)],
                2,
                vec![
                    CreateServicePrincipal,
                    CreateAndDeleteAtOnce,
                    ChangeSecretFormat,
                    RenameAndRetag,
                    DeleteSecret,
                    DeleteServicePrincipal,
                    ChangeRoleOrScope,
                    DeleteRoleDelegation,
                    BumpRotationToken,
                    DeleteRotation,
                ],
            ),
            (
                "one lane taken: delegations may be added, changed and deleted",
                vec![slot([false, true], false)],
                1,
                vec![
                    ChangeSecretFormat,
                    RenameAndRetag,
                    DeleteSecret,
                    DeleteServicePrincipal,
                    CreateRoleDelegation,
                    ChangeRoleOrScope,
                    DeleteRoleDelegation,
                    CreateRotation,
                ],
            ),
        ];
        for (name, live, max, want) in cases {
            let drawn: Vec<Step> = steps(&live, max).into_iter().map(|(s, _)| s).collect();
            assert_eq!(drawn, want, "{name}");
        }
    }

    #[test]
    fn lanes_of_a_delegation_never_share_a_role() {
        for lane in &LANES {
            for other in &LANES {
                if std::ptr::eq(lane, other) {
                    continue;
                }
                assert!(lane.roles.iter().all(|r| !other.roles.contains(r)));
            }
        }
    }
}
