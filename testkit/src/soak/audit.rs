//! The audit: Azure (the emulator's state) against the cluster. Every live object Ready with its spec applied,
//! every Secret signs in, each application holds exactly the password its Secret names, and nothing in Azure
//! that no live object accounts for; objects of the emulator's seed are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use entra_operator::{
    api::{CredentialRotation, RoleDelegation, ServicePrincipal},
    controller::naming,
};

use super::probe::Identities;
use crate::harness::{Azure, ready_of, state, token_status};

const NOT_READY: &str = "live object not Ready";
pub(super) const STUCK: &str = "object stuck deleting";
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
pub(super) const OVER_TWO: &str = "more than two passwords under a rotation (during churn)";
pub(super) const CATEGORIES: [&str; 13] = [
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

/// Findings by category (every category present, empty or not, so that a report lists them all).
#[derive(Clone, Debug)]
pub(super) struct Audit(BTreeMap<&'static str, Vec<String>>);

impl Audit {
    fn new() -> Audit {
        Audit(CATEGORIES.iter().map(|c| (*c, vec![])).collect())
    }
    pub(super) fn add(&mut self, category: &'static str, finding: String) {
        self.0.entry(category).or_default().push(finding);
    }
    pub(super) fn total(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
    pub(super) fn counts(&self) -> Value {
        json!(
            self.0
                .iter()
                .map(|(c, f)| (c.to_string(), f.len()))
                .collect::<BTreeMap<_, _>>()
        )
    }
    pub(super) fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|(c, f)| f.iter().map(move |f| format!("{c}: {f}")))
            .collect()
    }
}

/// What the emulator held before the operator ran: never the operator's, never audited.
pub(super) struct Baseline {
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
    pub(super) fn of(world: &Value) -> Baseline {
        Baseline {
            apps: keys(&world["directory"]["applications"]),
            principals: keys(&world["directory"]["servicePrincipals"]),
            assignments: keys(&world["arm"]["roleAssignments"]),
            custom_roles: keys(&world["arm"]["customRoles"]),
        }
    }
}

/// Everything the audit reads through.
pub(super) struct Cx<'a> {
    pub(super) azure: &'a Azure,
    pub(super) ns: String,
    pub(super) cluster_id: String,
    pub(super) baseline: Baseline,
    pub(super) identities: Identities,
    pub(super) sps: Api<ServicePrincipal>,
    pub(super) rds: Api<RoleDelegation>,
    pub(super) crots: Api<CredentialRotation>,
    pub(super) secrets: Api<Secret>,
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
    audit_application(cx, snap, sp, app, a);

    // The Secret signs in with the application's credential, in the format the spec asks for.
    let Some(target) = &sp.spec.secret else {
        return;
    };
    let delivered = audit_secret(cx, snap, sp, &target.name, a, texts).await;
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

    audit_passwords(cx, snap, sp, app, &delivered, a);
}

/// The application as the spec says (unique name, display name, tags), and exactly one service principal of
/// it, the one status names.
fn audit_application(
    cx: &Cx<'_>,
    snap: &Snapshot,
    sp: &ServicePrincipal,
    app: &Value,
    a: &mut Audit,
) {
    let name = sp.name_any();
    let who = format!("ServicePrincipal {name}");
    let status = sp.status.clone().unwrap_or_default();
    let app_id = app["appId"].as_str().unwrap_or_default();
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
        .filter(|(_, p)| p["appId"].as_str() == Some(app_id))
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
}

/// The Secret: owned by the object, in the spec's format, holding a credential of the object's application
/// that signs in. Returns the key id the Secret names.
async fn audit_secret(
    cx: &Cx<'_>,
    snap: &Snapshot,
    sp: &ServicePrincipal,
    secret_name: &str,
    a: &mut Audit,
    texts: &mut BTreeSet<String>,
) -> Option<String> {
    let who = format!("ServicePrincipal {}", sp.name_any());
    let app_id = sp
        .status
        .as_ref()
        .and_then(|s| s.app_id.clone())
        .unwrap_or_default();
    let format = format_of(sp);
    match snap.secret(secret_name) {
        None => {
            a.add(NO_SIGN_IN, format!("{who}: no Secret {}", secret_name));
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
                format!("{who}: Secret {} is not owned by it", secret_name),
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
                        secret_name,
                        annotations.get("entra-operator.io/format")
                    ),
                );
            }
            match credential_in(secret, &format) {
                None => a.add(
                    NO_SIGN_IN,
                    format!("{who}: Secret {} holds no {format} credential", secret_name),
                ),
                Some((client, text)) => {
                    texts.insert(text.clone());
                    let signed_in = token_status(cx.azure, &client, &text).await;
                    if client != app_id || signed_in != 200 {
                        a.add(
                            NO_SIGN_IN,
                            format!(
                                "{who}: Secret {} (client {client}, key {key:?}) signs in with {signed_in}",
                                secret_name
                            ),
                        );
                    }
                }
            }
            key
        }
    }
}

/// Exactly one password once settled: the one the Secret holds (a rotation's previous one goes after its
/// overlap), and none but the operator's own for this object.
fn audit_passwords(
    cx: &Cx<'_>,
    snap: &Snapshot,
    sp: &ServicePrincipal,
    app: &Value,
    delivered: &Option<String>,
    a: &mut Audit,
) {
    let name = sp.name_any();
    let who = format!("ServicePrincipal {name}");
    let app_id = app["appId"].as_str().unwrap_or_default();
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
    audit_orphan_secrets(snap, a);
}

/// The operator's Secrets that no live ServicePrincipal names.
fn audit_orphan_secrets(snap: &Snapshot, a: &mut Audit) {
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
pub(super) async fn settle(
    cx: &Cx<'_>,
    texts: &mut BTreeSet<String>,
    limit: Duration,
) -> (Audit, f64) {
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

/// Deletes every object and waits for the finalizers; returns what is still there after `limit`, with its
/// finalizer removed (so that the namespace can go; the audit that follows reports what it left in Azure).
pub(super) async fn delete_everything(cx: &Cx<'_>, limit: Duration) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_credential_is_read_where_each_format_puts_it() {
        let both = Some(("app".to_string(), "text".to_string()));
        let cases = [
            (
                "env",
                secret(&[("AZURE_CLIENT_ID", "app"), ("AZURE_CLIENT_SECRET", "text")]),
                "env",
                both.clone(),
            ),
            (
                "az",
                secret(&[("appId", "app"), ("password", "text")]),
                "az",
                both.clone(),
            ),
            (
                "sdk-auth",
                secret(&[(
                    "sdk-auth.json",
                    r#"{"clientId": "app", "clientSecret": "text"}"#,
                )]),
                "sdk-auth",
                both.clone(),
            ),
            (
                "azure.json",
                secret(&[(
                    "azure.json",
                    r#"{"aadClientId": "app", "aadClientSecret": "text"}"#,
                )]),
                "azure.json",
                both.clone(),
            ),
            (
                "env keys read as az",
                secret(&[("AZURE_CLIENT_ID", "app"), ("AZURE_CLIENT_SECRET", "text")]),
                "az",
                None,
            ),
            (
                "the secret text missing",
                secret(&[("AZURE_CLIENT_ID", "app")]),
                "env",
                None,
            ),
            (
                "a document that is not JSON",
                secret(&[("azure.json", "aadClientId: app")]),
                "azure.json",
                None,
            ),
            (
                "an unknown format",
                secret(&[("AZURE_CLIENT_ID", "app"), ("AZURE_CLIENT_SECRET", "text")]),
                "ini",
                None,
            ),
        ];
        for (name, secret, format, want) in cases {
            assert_eq!(credential_in(&secret, format), want, "{name}");
        }
    }

    #[test]
    fn only_the_operators_new_items_are_audited() {
        let baseline: BTreeSet<String> = ["seed-app".to_string()].into();
        let map = json!({"SEED-APP": {}, "New-App": {"x": 1}});
        let items: Vec<String> = new_items(&map, &baseline)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(items, ["new-app"]);
        assert_eq!(
            guid_of("/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/ABC-1"),
            "abc-1"
        );
    }
}
