//! The rotation's decisions, without I/O. The schedule: whether a rotation is due and why, when the next one
//! is, when the previous secret may go, and how close the current one is to expiring. And the plan: from the
//! spec, the status, what was gathered and the time, the status to write and the ordered steps that act
//! takes. Every crash-safety rule of the rotation is decided here: how status catches up with the Secret,
//! which passwords are left behind and which are on their way, when the previous one goes, when to rotate.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

use super::{
    Error,
    gather::{Gathered, Issued},
    targets::{self, all_published, holds},
};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus,
        credential_rotation::{SIGN_IN_TARGET, TargetKind, WorkloadKind},
    },
    azure::graph::AppCredential,
    controller::{credentials, key_vault, secrets},
};

/// Why a rotation happens now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// No credential the rotation knows of yet.
    Initial,
    /// spec.rotationToken changed.
    Manual,
    /// rotateEvery has passed since the last rotation.
    Scheduled,
    /// The current secret expires within renewBefore.
    Expiring,
    /// The TLS Secret a certificate comes from holds a new one (cert-manager renewed it).
    Renewed,
    /// A rotation interrupted while its new credential was being verified, taken up again.
    Resumed,
}

impl Trigger {
    /// The trigger `as_str` names (how the staging Secret remembers why its rotation began).
    pub fn parse(text: &str) -> Option<Trigger> {
        [
            Trigger::Initial,
            Trigger::Manual,
            Trigger::Scheduled,
            Trigger::Expiring,
            Trigger::Renewed,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
            Trigger::Expiring => "expiring",
            Trigger::Renewed => "renewed",
            Trigger::Resumed => "resumed",
        }
    }
}

/// The schedule from the spec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Schedule {
    pub rotate_every: Option<Duration>,
    pub renew_before: Option<Duration>,
}

/// The current credential as far as the schedule cares.
#[derive(Clone, Copy, Debug)]
pub struct Current {
    /// When it was issued (the last rotation).
    pub issued: Timestamp,
    pub expires: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// When the current credential is due: rotateEvery after it was issued, or renewBefore its expiry, whichever
/// comes first.
pub fn next_rotation(schedule: Schedule, current: Current) -> Option<Timestamp> {
    let by_age = schedule.rotate_every.map(|d| add(current.issued, d));
    let by_expiry = match (schedule.renew_before, current.expires) {
        (Some(d), Some(expires)) => Some(sub(expires, d)),
        _ => None,
    };
    match (by_age, by_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether to rotate now, and why. `token_changed` when spec.rotationToken differs from the one last acted on.
pub fn due(
    now: Timestamp,
    schedule: Schedule,
    current: Option<Current>,
    token_changed: bool,
) -> Option<Trigger> {
    let Some(current) = current else {
        return Some(Trigger::Initial);
    };
    if token_changed {
        return Some(Trigger::Manual);
    }
    if current.expires.is_some_and(|e| e <= now) {
        return Some(Trigger::Expiring);
    }
    let next = next_rotation(schedule, current)?;
    if next > now {
        return None;
    }
    let by_age = schedule
        .rotate_every
        .is_some_and(|d| add(current.issued, d) <= now);
    Some(if by_age {
        Trigger::Scheduled
    } else {
        Trigger::Expiring
    })
}

/// How the current credential stands against its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Fine,
    /// Within renewBefore of expiring (or, without renewBefore, within a tenth of its lifetime).
    Soon,
    Expired,
}

pub fn expiry(now: Timestamp, current: Current, renew_before: Option<Duration>) -> Expiry {
    let Some(expires) = current.expires else {
        return Expiry::Fine;
    };
    if expires <= now {
        return Expiry::Expired;
    }
    let warn = renew_before.unwrap_or_else(|| {
        let lifetime = expires.duration_since(current.issued);
        Duration::try_from(lifetime / 10).unwrap_or_default()
    });
    if sub(expires, warn) <= now {
        Expiry::Soon
    } else {
        Expiry::Fine
    }
}

/// How long until the next thing the rotation has to do (a rotation, or removing the previous secret), so that
/// the controller wakes exactly then rather than polling. At least a second (also when `resync` is shorter:
/// never a busy loop); at most `resync`.
pub fn wake_in(now: Timestamp, moments: &[Option<Timestamp>], resync: Duration) -> Duration {
    // Not `clamp`, which panics when its bounds cross: a resync under a second is a valid flag value.
    moments
        .iter()
        .flatten()
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .min()
        .unwrap_or(resync)
        .min(resync)
        .max(Duration::from_secs(1))
}

/// How long a password may exist unpublished before it counts as left behind by a crash: far longer than
/// adding it and writing the Secret take, short enough that the next rotation is not held up for long.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(15);

/// One thing act does. Act takes the steps in order and stops at the first that fails; each can be taken
/// again after a crash without harm (a removal of what is gone, a write of what is there, a reset followed
/// by its recorded operation).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// Remove a password of ours that neither status nor the Secret knows: left by a crash between adding it
    /// and writing the Secret, so nobody has its text.
    RemoveLeftover { key_id: String },
    /// Remove the previous password: its overlap is over and every target holds its successor.
    RemovePrevious { key_id: String },
    /// Render the Secret with a stand-in text: a template that cannot render fails before a password exists.
    CheckTemplates,
    /// Write status saying `previous` (the current password) becomes the previous one, before the next one
    /// exists: a Secret found holding a newer password after that is this rotation's own interrupted work.
    RecordIntent { previous: String },
    /// Add password number `serial`, valid for `lifetime` from when it is added.
    AddPassword { serial: u64, lifetime: Duration },
    /// Write the new credential's text to the staging Secret at once (it exists nowhere else), where it
    /// waits, unseen by consumers, until it is verified; with the reason the rotation began.
    Stage { trigger: Trigger },
    /// Prove that Entra accepts the newest credential everywhere (see `verification`): a round of sign-ins
    /// when one is due; stop and look again at the next round until enough have passed.
    Verify,
    /// Write the new credential to the Secret (or, without one, to the first Key Vault target), make it
    /// current, and drop the staging Secret.
    WriteSecret { trigger: Trigger },
    /// Delete a staging Secret that holds nothing to publish (its credential is published, or gone).
    DropStaging,
    /// Record when the current password expires and when the next rotation is due.
    RecordSchedule,
    /// Record that the Secret holds the current key; forget the targets the spec no longer names.
    PublishSecret,
    /// Disable `versions` of the subject's Key Vault target `index`: they hold a password that is about to be
    /// removed (or is gone), so no version is left enabled that no longer signs in.
    DisableVersions { index: usize, versions: Vec<String> },
    /// Write the current key to the subject's Key Vault target `index` as a new version.
    PublishKeyVault { index: usize, name: String },
    /// Reset spec.targets.aksClusters[index] to the current key.
    ResetCluster { index: usize, cluster: String },
    /// Restart spec.targets.restartWorkloads[index] for the current key.
    RestartWorkload {
        index: usize,
        kind: WorkloadKind,
        name: String,
    },
    /// Stop, saying what is missing, unless every target above took the key.
    RequirePublished,
    /// Count a rotation that every target has just taken.
    CountCompleted,
    /// The previous password's overlap starts: it goes at `until`.
    StartOverlap { until: Timestamp },
    /// Stop here, with `reason`, and look again at `until`.
    Wait {
        reason: &'static str,
        message: String,
        until: Timestamp,
    },
}

impl Step {
    /// What the step changes in status once it has been taken (nothing for most).
    pub(crate) fn record(&self, status: &mut CredentialRotationStatus) {
        match self {
            Step::RemovePrevious { .. } => {
                status.previous_key_id = None;
                status.previous_key_removal_time = None;
            }
            Step::RecordIntent { previous } => {
                status.previous_key_id = Some(previous.clone());
                status.previous_key_removal_time = None;
            }
            Step::StartOverlap { until } => status.previous_key_removal_time = Some(Time(*until)),
            _ => {}
        }
    }
}

/// What a reconcile does: the status to start from (what was read, made to agree with the Secret; safe to
/// write whatever happens next), then the steps.
#[derive(Debug)]
pub(crate) struct Plan {
    pub status: CredentialRotationStatus,
    pub steps: Vec<Step>,
}

/// The schedule from the spec.
fn schedule(crot: &CredentialRotation) -> Schedule {
    Schedule {
        rotate_every: crot.spec.rotate_every.as_ref().map(|d| d.as_std()),
        renew_before: crot.spec.renew_before.as_ref().map(|d| d.as_std()),
    }
}

/// renewBefore must leave a new secret some time before it is due, or every secret would be due at once.
pub(crate) fn renewal_fits(crot: &CredentialRotation, lifetime: Duration) -> Result<(), Error> {
    match &crot.spec.renew_before {
        Some(renew) if renew.as_std() >= lifetime => Err(Error::Invalid(format!(
            "spec.renewBefore ({renew}) must be shorter than the credential lifetime ({}s), or every secret would \
             be due as soon as it is issued",
            lifetime.as_secs()
        ))),
        _ => Ok(()),
    }
}

/// Plans one reconcile. `finishing`: the rotation is being deleted, so it finishes what runs and starts no
/// new rotation. An Err refuses before anything is done, with status as it was.
pub(crate) fn plan(
    crot: &CredentialRotation,
    status: &CredentialRotationStatus,
    gathered: &Gathered,
    now: Timestamp,
    finishing: bool,
) -> Result<Plan, Error> {
    let ns = crot.namespace().unwrap_or_default();
    clusters_cleared(crot, gathered)?;
    secret_ours(crot, gathered, &ns)?;
    let ours = gathered.ours(&ns);
    let published = gathered.published.as_ref().map(|p| &p.credential);
    let mut status = catch_up(crot, status, gathered, &ours, now);
    vaults_catch_up(&mut status, gathered);
    // The status each step leaves behind, so that a later decision sees what an earlier step changed.
    let mut steps = Steps {
        projected: status.clone(),
        list: vec![],
    };
    let pending = gathered
        .pending
        .as_ref()
        .map(|p| p.credential.key_id.as_str());
    let in_flight = leftovers(&ours, &steps.projected, pending, now);
    let removing = removals(crot, gathered, &steps.projected, in_flight.left_behind, now);
    // Every version naming a password about to go is disabled first (and one naming a password already gone).
    for step in retirement(gathered, &ours, &removing) {
        steps.take(step);
    }
    for step in removing {
        steps.take(step);
    }
    // A new credential waiting to be verified is this rotation's own work under way: it goes on first.
    let mut rotating = false;
    if let Some(pending) = &gathered.pending {
        let trigger = gathered.staged_trigger.as_deref().and_then(Trigger::parse);
        for step in resume(&steps.projected, pending, trigger) {
            steps.take(step);
        }
        rotating = true;
    } else if gathered.staging.is_some() {
        steps.take(Step::DropStaging);
    }
    // Rotate when due (a lost Secret is due at once): at most two of the operator's passwords at any time.
    if let Some(trigger) = due_now(crot, &steps.projected, published, gathered, now)
        && !finishing
        && !rotating
    {
        let projected = &steps.projected;
        if let Some(until) = projected
            .previous_key_removal_time
            .as_ref()
            .map(|t| t.0)
            .filter(|_| projected.previous_key_id.is_some())
            .or(in_flight.until)
        {
            let message = format!(
                "a {} rotation is due; it starts when the previous secret's overlap ends",
                trigger.as_str()
            );
            let reason = "WaitingForOverlap";
            steps.take(Step::Wait {
                reason,
                message,
                until,
            });
            return Ok(steps.plan(status));
        }
        if projected.previous_key_id.is_none() {
            for step in rotation(gathered, &ours, projected, trigger, &ns) {
                steps.take(step);
            }
            rotating = true;
        }
    }
    let key = match (rotating, published) {
        (true, _) => None,
        (false, Some(p)) => Some(p.key_id.as_str()),
        (false, None) => {
            let message = format!(
                "{} holds no password of this rotation yet; waiting for the previous one's overlap",
                gathered.subject.home()
            );
            let until = now.checked_add(SignedDuration::from_secs(5)).unwrap_or(now);
            let reason = "WaitingForPublication";
            steps.take(Step::Wait {
                reason,
                message,
                until,
            });
            return Ok(steps.plan(status));
        }
    };
    for step in publication(crot, gathered, &steps.projected, key, now) {
        steps.take(step);
    }
    Ok(steps.plan(status))
}

/// The passwords this reconcile removes: those a crash left behind (`left_behind`), and the previous one once
/// its overlap has passed and every target holds its successor.
fn removals(
    crot: &CredentialRotation,
    gathered: &Gathered,
    status: &CredentialRotationStatus,
    left_behind: Vec<String>,
    now: Timestamp,
) -> Vec<Step> {
    let mut removing: Vec<Step> = left_behind
        .into_iter()
        .map(|key_id| Step::RemoveLeftover { key_id })
        .collect();
    let secret = gathered.subject.secret_name();
    if let Some(old) = status.previous_key_id.clone()
        && status
            .previous_key_removal_time
            .as_ref()
            .is_some_and(|t| t.0 <= now)
        && all_published(crot, status, secret, &vault_names(gathered))
    {
        removing.push(Step::RemovePrevious { key_id: old });
    }
    removing
}

/// The steps planned so far, and the status they leave behind.
struct Steps {
    projected: CredentialRotationStatus,
    list: Vec<Step>,
}

impl Steps {
    fn take(&mut self, step: Step) {
        step.record(&mut self.projected);
        self.list.push(step);
    }

    fn plan(self, status: CredentialRotationStatus) -> Plan {
        Plan {
            status,
            steps: self.list,
        }
    }
}

/// How status names each of the subject's Key Vault targets.
pub(super) fn vault_names(gathered: &Gathered) -> Vec<String> {
    gathered
        .subject
        .vaults
        .iter()
        .map(|v| v.target.display())
        .collect()
}

/// A Key Vault target that status says holds the current key, but whose versions say otherwise (a version
/// disabled or written by hand, a secret deleted), is published again: its entry is forgotten.
fn vaults_catch_up(status: &mut CredentialRotationStatus, gathered: &Gathered) {
    let Some(current) = status.current_key_id.clone() else {
        return;
    };
    for ((v, versions), name) in gathered
        .subject
        .vaults
        .iter()
        .zip(&gathered.vaults)
        .zip(vault_names(gathered))
    {
        let owner = &gathered.vault_owner;
        let holds = key_vault::decide(
            &v.field,
            &v.target,
            versions,
            owner,
            Some(&current),
            &[&current],
        )
        .is_ok_and(|d| !d.write);
        if !holds {
            status
                .targets
                .retain(|t| !(t.kind == TargetKind::KeyVaultSecret.as_str() && t.name == name));
        }
    }
}

/// The DisableVersions steps that must come before `removing`: every enabled version of ours whose password
/// will not be on the application once those steps are taken.
fn retirement(gathered: &Gathered, ours: &[&AppCredential], removing: &[Step]) -> Vec<Step> {
    let gone: Vec<&str> = removing
        .iter()
        .filter_map(|s| match s {
            Step::RemoveLeftover { key_id } | Step::RemovePrevious { key_id } => {
                Some(key_id.as_str())
            }
            _ => None,
        })
        .collect();
    let live: Vec<&str> = ours
        .iter()
        .map(|p| p.key_id.as_str())
        .filter(|k| !gone.contains(k))
        .collect();
    let owner = &gathered.vault_owner;
    let mut steps = vec![];
    for (index, (v, versions)) in gathered
        .subject
        .vaults
        .iter()
        .zip(&gathered.vaults)
        .enumerate()
    {
        // A conflict is reported when the target is published; nothing of ours is disabled there.
        if let Ok(d) = key_vault::decide(&v.field, &v.target, versions, owner, None, &live)
            && !d.disable.is_empty()
        {
            steps.push(Step::DisableVersions {
                index,
                versions: d.disable,
            });
        }
    }
    steps
}

/// Every cluster the spec names must have been cleared in this reconcile: a policy that no longer lists one
/// (or a claim that moved) stops the rotation before anything is written.
fn clusters_cleared(crot: &CredentialRotation, gathered: &Gathered) -> Result<(), Error> {
    for (i, cluster) in crot.spec.targets.aks_clusters.iter().enumerate() {
        if !gathered.cleared.allows(cluster) {
            return Err(Error::DeniedByPolicy(format!(
                "spec.targets.aksClusters[{i}]: cluster {cluster} was not authorized by a DelegationPolicy's \
                 aksClusters in this reconcile"
            )));
        }
    }
    Ok(())
}

/// A Secret that exists is written only when it is ours: the ServicePrincipal's, or the rotation's own.
/// Without a Secret the first vault target keeps the text: it too must be ours, before a password is added.
fn secret_ours(crot: &CredentialRotation, gathered: &Gathered, ns: &str) -> Result<(), Error> {
    if gathered.subject.secret.is_none()
        && let (Some(home), Some(versions)) =
            (gathered.subject.vaults.first(), gathered.vaults.first())
    {
        key_vault::decide(
            &home.field,
            &home.target,
            versions,
            &gathered.vault_owner,
            None,
            &[],
        )
        .map_err(|c| Error::SecretConflict(c.0))?;
    }
    let owned = |secret: &k8s_openapi::api::core::v1::Secret| match &gathered.subject.sp {
        Some(sp) => secrets::owned_by(secret, sp),
        None => secrets::owned_by(secret, crot),
    };
    let foreign = [&gathered.secret, &gathered.staging]
        .into_iter()
        .flatten()
        .find(|s| !owned(s));
    match foreign {
        None => Ok(()),
        Some(secret) => Err(Error::SecretConflict(format!(
            "spec.targets.secret: Secret {ns}/{} exists and is not owned by this rotation (or its \
             ServicePrincipal); it is left untouched",
            secret.metadata.name.as_deref().unwrap_or_default()
        ))),
    }
}

/// Status brought in line with the Secret. A rotation records its intent (previous = current) before it adds
/// a password, so a Secret that moved on to a newer password of ours after that is this rotation's own work,
/// interrupted before status was written; anything else in the Secret is adopted as it is.
fn catch_up(
    crot: &CredentialRotation,
    status: &CredentialRotationStatus,
    gathered: &Gathered,
    ours: &[&AppCredential],
    now: Timestamp,
) -> CredentialRotationStatus {
    let ns = crot.namespace().unwrap_or_default();
    let owner = &gathered.subject.owner;
    let serial = |key: &str| {
        ours.iter()
            .find(|p| p.key_id == key)
            .and_then(|p| credentials::serial(p, &ns, owner))
    };
    let known = |key: &Option<String>| key.clone().filter(|k| serial(k).is_some());
    let mut status = status.clone();
    status.current_key_id = known(&status.current_key_id);
    status.previous_key_id = known(&status.previous_key_id);
    if let Some(p) = gathered.published.as_ref().map(|p| &p.credential)
        && status.current_key_id.as_deref() != Some(p.key_id.as_str())
    {
        let intent =
            status.previous_key_id.is_some() && status.previous_key_id == status.current_key_id;
        let newer = match status.current_key_id.as_deref() {
            Some(c) => serial(&p.key_id) > serial(c),
            None => false,
        };
        status.current_key_id = Some(p.key_id.clone());
        status.last_rotation_time = p.start_date_time.map(Time);
        status.targets.clear();
        if !(intent && newer) {
            // The ServicePrincipal's first password, or one from before: consumers already read it, so it
            // restarts nothing, and a rotationToken present from the start is no request to rotate.
            targets::workloads_hold(crot, &mut status, &p.key_id, now);
            if status.observed_rotation_token.is_none() {
                status.observed_rotation_token = crot.spec.rotation_token.clone();
            }
        }
    }
    if status.previous_key_id.is_some()
        && status.previous_key_id == status.current_key_id
        && gathered.pending.is_none()
    {
        // An intent whose password never reached the Secret (nor the staging one): nothing to keep apart.
        status.previous_key_id = None;
        status.previous_key_removal_time = None;
    }
    if status.previous_key_id.is_none() {
        status.previous_key_removal_time = None;
    }
    status
}

/// The steps that take up a rotation whose new credential (`pending`) waits in the staging Secret: its intent
/// recorded again if status lost it, then the verification and the Secret.
fn resume(
    status: &CredentialRotationStatus,
    pending: &Issued,
    gathered_trigger: Option<Trigger>,
) -> Vec<Step> {
    let mut steps = vec![];
    if let Some(current) = status.current_key_id.clone()
        && status.previous_key_id.as_ref() != Some(&current)
        && current != pending.credential.key_id
    {
        steps.push(Step::RecordIntent { previous: current });
    }
    steps.push(Step::Verify);
    let trigger = gathered_trigger.unwrap_or(Trigger::Resumed);
    steps.push(Step::WriteSecret { trigger });
    steps
}

/// Passwords of ours that are neither current nor previous.
struct Leftovers {
    /// Old enough not to be on their way into the Secret right now: left behind by a crash.
    left_behind: Vec<String>,
    /// When the youngest of the others stops counting as on its way.
    until: Option<Timestamp>,
}

fn leftovers(
    ours: &[&AppCredential],
    status: &CredentialRotationStatus,
    pending: Option<&str>,
    now: Timestamp,
) -> Leftovers {
    let mut found = Leftovers {
        left_behind: vec![],
        until: None,
    };
    for p in ours.iter().filter(|p| {
        status.current_key_id.as_deref() != Some(p.key_id.as_str())
            && status.previous_key_id.as_deref() != Some(p.key_id.as_str())
            && pending != Some(p.key_id.as_str())
    }) {
        let grace_end = p.start_date_time.and_then(|t| {
            t.checked_add(SignedDuration::try_from(DELIVERY_GRACE).ok()?)
                .ok()
        });
        match grace_end {
            Some(end) if end > now => found.until = Some(found.until.map_or(end, |t| t.max(end))),
            _ => found.left_behind.push(p.key_id.clone()),
        }
    }
    found
}

/// Whether a rotation is due now, and why: the current credential is the published one. A certificate from
/// a TLS Secret is due when that Secret holds another one, and only then: the rotation cannot mint it, so
/// the schedule and rotationToken have nothing to act on (renewBefore still warns as expiry nears).
fn due_now(
    crot: &CredentialRotation,
    status: &CredentialRotationStatus,
    published: Option<&AppCredential>,
    gathered: &Gathered,
    now: Timestamp,
) -> Option<Trigger> {
    if let (Some(source), Some(p)) = (&gathered.subject.source, published) {
        let same = p.custom_key_identifier.as_deref() == Some(source.thumbprint().as_str());
        return (!same).then_some(Trigger::Renewed);
    }
    let current = published.map(|p| Current {
        issued: status
            .last_rotation_time
            .as_ref()
            .map(|t| t.0)
            .or(p.start_date_time)
            .unwrap_or(now),
        expires: p.end_date_time,
    });
    let token_changed = crot.spec.rotation_token.is_some()
        && crot.spec.rotation_token != status.observed_rotation_token;
    due(now, schedule(crot), current, token_changed)
}

/// The steps of one rotation: the intent recorded before the password exists, the password, then (with a
/// Secret) the staging Secret and the verification before the Secret; without one the first Key Vault target
/// is where the text is kept, so it is written at once and verified after.
fn rotation(
    gathered: &Gathered,
    ours: &[&AppCredential],
    status: &CredentialRotationStatus,
    trigger: Trigger,
    ns: &str,
) -> Vec<Step> {
    let mut steps = vec![Step::CheckTemplates];
    if let Some(previous) = status.current_key_id.clone() {
        steps.push(Step::RecordIntent { previous });
    }
    steps.push(Step::AddPassword {
        serial: credentials::next_serial(ours, ns, &gathered.subject.owner),
        lifetime: gathered.subject.lifetime,
    });
    if gathered.subject.secret.is_some() {
        steps.push(Step::Stage { trigger });
        steps.push(Step::Verify);
    }
    steps.push(Step::WriteSecret { trigger });
    steps
}

/// The steps that publish the current key (`key`; None: the one a rotation is issuing now, which no target
/// holds yet): every target that does not hold it, then the overlap of the previous one.
fn publication(
    crot: &CredentialRotation,
    gathered: &Gathered,
    status: &CredentialRotationStatus,
    key: Option<&str>,
    now: Timestamp,
) -> Vec<Step> {
    let needs = |kind: TargetKind, name: &str| key.is_none_or(|k| !holds(status, kind, name, k));
    let spec = &crot.spec.targets;
    let mut steps = vec![Step::RecordSchedule, Step::PublishSecret];
    if needs(TargetKind::SignIn, SIGN_IN_TARGET) {
        steps.push(Step::Verify);
    }
    // After the sign-in: a reader of the vault never gets a secret that does not sign in yet.
    for (index, name) in vault_names(gathered).into_iter().enumerate() {
        // Without a Secret, a rotation's WriteSecret has just written the first vault: it keeps the text.
        let home = gathered.subject.secret.is_none() && index == 0;
        if needs(TargetKind::KeyVaultSecret, &name) && !(home && key.is_none()) {
            steps.push(Step::PublishKeyVault { index, name });
        }
    }
    for (index, cluster) in spec.aks_clusters.iter().enumerate() {
        if needs(TargetKind::AksCluster, cluster) {
            let cluster = cluster.clone();
            steps.push(Step::ResetCluster { index, cluster });
        }
    }
    for (index, w) in spec.restart_workloads.iter().enumerate() {
        if needs(TargetKind::Workload(w.kind), &w.name) {
            let (kind, name) = (w.kind, w.name.clone());
            steps.push(Step::RestartWorkload { index, kind, name });
        }
    }
    steps.push(Step::RequirePublished);
    if key.is_none()
        || !all_published(
            crot,
            status,
            gathered.subject.secret_name(),
            &vault_names(gathered),
        )
    {
        steps.push(Step::CountCompleted);
    }
    if status.previous_key_id.is_some() && status.previous_key_removal_time.is_none() {
        let until = now
            .checked_add(SignedDuration::try_from(crot.spec.overlap.as_std()).unwrap_or_default())
            .unwrap_or(Timestamp::MAX);
        steps.push(Step::StartOverlap { until });
    }
    steps
}

/// When the current password `credential` expires and when the next rotation is due, as status says them.
pub(crate) fn record_schedule(
    crot: &CredentialRotation,
    status: &mut CredentialRotationStatus,
    credential: &AppCredential,
    now: Timestamp,
) {
    status.expires_at = credential.end_date_time.map(Time);
    let current = Current {
        issued: status
            .last_rotation_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        expires: credential.end_date_time,
    };
    status.next_rotation_time = next_rotation(schedule(crot), current).map(Time);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_earlier_of_age_and_expiry_decides() {
        let both = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: Some(secs(30)),
        };
        let current = Current {
            issued: t(0),
            expires: Some(t(120)),
        };
        assert_eq!(next_rotation(both, current), Some(t(90)));
        let age_only = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: None,
        };
        assert_eq!(next_rotation(age_only, current), Some(t(100)));
        assert_eq!(due(t(89), both, Some(current), false), None);
        assert_eq!(
            due(t(90), both, Some(current), false),
            Some(Trigger::Expiring)
        );
        assert_eq!(
            due(t(100), age_only, Some(current), false),
            Some(Trigger::Scheduled)
        );
    }

    #[test]
    fn first_manual_and_expired_rotations() {
        let s = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: None,
        };
        assert_eq!(due(t(0), s, None, false), Some(Trigger::Initial));
        let current = Current {
            issued: t(0),
            expires: Some(t(50)),
        };
        assert_eq!(due(t(10), s, Some(current), true), Some(Trigger::Manual));
        assert_eq!(
            due(t(60), s, Some(current), false),
            Some(Trigger::Expiring),
            "an expired secret is renewed whatever the schedule says"
        );
    }

    #[test]
    fn expiry_warns_within_renew_before_or_the_last_tenth() {
        let current = Current {
            issued: t(0),
            expires: Some(t(100)),
        };
        assert_eq!(expiry(t(50), current, Some(secs(30))), Expiry::Fine);
        assert_eq!(expiry(t(75), current, Some(secs(30))), Expiry::Soon);
        assert_eq!(expiry(t(89), current, None), Expiry::Fine);
        assert_eq!(expiry(t(91), current, None), Expiry::Soon);
        assert_eq!(expiry(t(100), current, None), Expiry::Expired);
    }

    #[test]
    fn wakes_at_the_nearest_moment_within_bounds() {
        let hour = secs(3600);
        assert_eq!(
            wake_in(t(0), &[Some(t(30)), Some(t(10)), None], hour),
            secs(10)
        );
        assert_eq!(
            wake_in(t(0), &[Some(t(-5))], hour),
            secs(1),
            "overdue: soon"
        );
        assert_eq!(wake_in(t(0), &[None], hour), hour);
        assert_eq!(wake_in(t(0), &[Some(t(7200))], hour), hour);
    }

    // Timestamps anywhere in jiff's range and durations anywhere in std's, whatever admission allows: the
    // schedule is computed without panicking, and wakes stay within their bounds.
    fn timestamp() -> impl proptest::strategy::Strategy<Value = Timestamp> {
        (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap())
    }

    fn duration() -> impl proptest::strategy::Strategy<Value = Duration> {
        proptest::prop_oneof![
            (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (0u64..=10 * 365 * 86_400).prop_map(Duration::from_secs),
            (0u64..2_000).prop_map(Duration::from_millis),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn the_schedule_never_panics(
            now in timestamp(),
            issued in timestamp(),
            expires in proptest::option::of(timestamp()),
            rotate_every in proptest::option::of(duration()),
            renew_before in proptest::option::of(duration()),
            token_changed in any::<bool>(),
            resync in duration(),
            moments in proptest::collection::vec(proptest::option::of(timestamp()), 0..4),
        ) {
            let schedule = Schedule { rotate_every, renew_before };
            let current = Current { issued, expires };
            let _ = next_rotation(schedule, current);
            let _ = due(now, schedule, Some(current), token_changed);
            let _ = expiry(now, current, renew_before);
            let wake = wake_in(now, &moments, resync);
            prop_assert!(wake >= secs(1), "{wake:?}");
            prop_assert!(wake <= resync.max(secs(1)), "{wake:?}");
        }
    }

    #[test]
    fn a_resync_under_a_second_still_wakes_after_a_second() {
        assert_eq!(wake_in(t(0), &[Some(t(30))], Duration::ZERO), secs(1));
        assert_eq!(wake_in(t(0), &[None], Duration::from_millis(500)), secs(1));
    }
}
