//! What a rotation rotates: the application, whose passwords on it are the rotation's (a ServicePrincipal's
//! with servicePrincipalRef, the rotation's own with applicationId), and the Secret their text goes to.
//! `resolve` does the reads; what they mean is decided by the pure functions beside it.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{Context, Error, targets};
use crate::{
    api::{
        CredentialRotation, KeyVaultSecretTarget, SecretFormat, SecretTarget, ServicePrincipal,
        conditions,
        protocol::{self, ROTATED_BY_ANNOTATION},
    },
    azure::{
        certificate::Material,
        error::{AzureError, ErrorClass},
        graph::Application,
    },
    controller::{
        claims::{self, Claimant},
        credentials::{self, Kind},
        naming, policy,
        service_principal::certificate_source,
    },
};

/// The application whose password is rotated, and everything needed to name, render and publish it.
#[derive(Clone, Debug)]
pub struct Subject {
    pub app: Application,
    /// Whose passwords these are (the displayName's `{ns}/{owner}`): the ServicePrincipal's, or the rotation's.
    pub owner: String,
    /// The Secret the new password is written to at once; None for a ServicePrincipal without one, whose
    /// first Key Vault target keeps the client secret instead (see [`Subject::home`]).
    pub secret: Option<SecretTarget>,
    pub display_name: String,
    pub lifetime: Duration,
    pub sp: Option<ServicePrincipal>,
    /// The Key Vault secrets each new password is published to, with the spec field naming each: the
    /// ServicePrincipal's, then the rotation's own (a target named twice is published once).
    pub vaults: Vec<VaultTarget>,
    /// Client secrets, or certificates (the ServicePrincipal's spec.certificate).
    pub kind: Kind,
    /// The certificate the ServicePrincipal's TLS Secret (spec.certificate.secretRef) holds now: each
    /// renewal of it is the next certificate, instead of one the operator generates.
    pub source: Option<Material>,
}

/// A Key Vault target and the spec field that names it.
#[derive(Clone, Debug, PartialEq)]
pub struct VaultTarget {
    pub field: String,
    pub target: KeyVaultSecretTarget,
}

impl Subject {
    /// How messages name where the password's text is kept: the Secret, else the first vault target.
    pub fn home(&self) -> String {
        match (&self.secret, self.vaults.first()) {
            (Some(secret), _) => format!("Secret {}", secret.name),
            (None, Some(v)) => format!("Key Vault secret {}", v.target.display()),
            (None, None) => "nowhere".into(),
        }
    }

    /// The Secret's name, if the text is kept in one.
    pub fn secret_name(&self) -> Option<&str> {
        self.secret.as_ref().map(|s| s.name.as_str())
    }

    /// The kind of the object the passwords (and the vaults' versions) belong to.
    pub fn owner_kind(&self) -> &'static str {
        match self.sp {
            Some(_) => "ServicePrincipal",
            None => "CredentialRotation",
        }
    }
}

/// The vault targets of a rotation of `sp` (if through a ServicePrincipal).
pub(super) fn vault_targets(
    crot: &CredentialRotation,
    sp: Option<&ServicePrincipal>,
) -> Vec<VaultTarget> {
    let of_sp = sp.into_iter().flat_map(|sp| {
        sp.spec
            .key_vault_secrets
            .iter()
            .enumerate()
            .map(|(i, t)| VaultTarget {
                field: format!(
                    "ServicePrincipal {} spec.keyVaultSecrets[{i}]",
                    sp.name_any()
                ),
                target: t.clone(),
            })
    });
    let own = crot
        .spec
        .targets
        .key_vault_secrets
        .iter()
        .enumerate()
        .map(|(i, t)| VaultTarget {
            field: format!("spec.targets.keyVaultSecrets[{i}]"),
            target: t.clone(),
        });
    let mut all: Vec<VaultTarget> = vec![];
    for v in of_sp.chain(own) {
        let same = |o: &VaultTarget| {
            o.target.vault.eq_ignore_ascii_case(&v.target.vault)
                && o.target.name.eq_ignore_ascii_case(&v.target.name)
        };
        if !all.iter().any(same) {
            all.push(v);
        }
    }
    all
}

/// Finds the application and where its secret goes; checks what the spec may do.
pub(super) async fn resolve(crot: &CredentialRotation, ctx: &Context) -> Result<Subject, Error> {
    match &crot.spec.service_principal_ref {
        Some(reference) => through_service_principal(crot, ctx, &reference.name).await,
        None => by_application_id(crot, ctx).await,
    }
}

async fn through_service_principal(
    crot: &CredentialRotation,
    ctx: &Context,
    name: &str,
) -> Result<Subject, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let sps: Api<ServicePrincipal> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(sp) = sps.get_opt(name).await? else {
        return Err(Error::ServicePrincipalNotFound(format!(
            "spec.servicePrincipalRef.name: ServicePrincipal {name} does not exist in namespace {ns}"
        )));
    };
    let secret = service_principal_secret(crot, &sp)?;
    // One rotation per ServicePrincipal: two would each take the other's passwords for leftovers.
    if let Some(other) = rival(crot, &sp)
        && Api::<CredentialRotation>::namespaced(ctx.client.clone(), &ns)
            .get_opt(other)
            .await?
            .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
    {
        return Err(Error::Conflict(format!(
            "spec.servicePrincipalRef.name: CredentialRotation {other} already rotates ServicePrincipal {name}"
        )));
    }
    // From now on the ServicePrincipal leaves its passwords to this rotation: marked before anything else,
    // even while the ServicePrincipal is not Ready, since it reads the mark to wait for this rotation.
    if !marked(crot, &sp) {
        sps.patch_metadata(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {ROTATED_BY_ANNOTATION: crot.name_any()}}}),
            ),
        )
        .await?;
    }
    let kind = Kind::of(&sp.spec);
    certificate_targets(crot, kind)?;
    let Some(app_id) = ready_application(&sp) else {
        return Err(Error::WaitingForServicePrincipal(format!(
            "spec.servicePrincipalRef.name: waiting for ServicePrincipal {name} to be Ready"
        )));
    };
    let app = ctx
        .graph
        .application_by_app_id(&app_id)
        .await?
        .ok_or_else(|| {
            Error::WaitingForServicePrincipal(format!("application {app_id} is not visible yet"))
        })?;
    let source = certificate_source(&sp, ctx)
        .await
        .map_err(|e| Error::WaitingForServicePrincipal(e.to_string()))?;
    Ok(Subject {
        app,
        owner: name.to_string(),
        secret,
        display_name: sp.spec.display_name.clone(),
        lifetime: lifetime(crot, Some(&sp)),
        vaults: vault_targets(crot, Some(&sp)),
        sp: Some(sp),
        kind,
        source,
    })
}

/// A certificate goes to the Secret alone: AKS's resetServicePrincipalProfile and the Key Vault targets take
/// a client secret.
fn certificate_targets(crot: &CredentialRotation, kind: Kind) -> Result<(), Error> {
    let targets = &crot.spec.targets;
    if kind != Kind::Certificate {
        return Ok(());
    }
    let field = match () {
        _ if !targets.aks_clusters.is_empty() => "spec.targets.aksClusters",
        _ if !targets.key_vault_secrets.is_empty() => "spec.targets.keyVaultSecrets",
        _ => return Ok(()),
    };
    Err(Error::Invalid(format!(
        "{field}: the ServicePrincipal signs in with a certificate, and this target takes a client secret only"
    )))
}

async fn by_application_id(crot: &CredentialRotation, ctx: &Context) -> Result<Subject, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let app_id = crot.spec.application_id.as_deref().ok_or_else(|| {
        Error::Invalid("spec: one of servicePrincipalRef and applicationId must be set".into())
    })?;
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get(&ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    policy::may_rotate(&ctx.policies.state(), &ns, &labels, app_id)
        .map_err(Error::DeniedByPolicy)?;
    claim_application(crot, ctx, app_id).await?;
    let app = found(app_id, ctx.graph.application_by_app_id(app_id).await)?;
    not_foreign(&app, app_id, &ctx.cluster_id)?;
    Ok(Subject {
        display_name: app.display_name.clone(),
        app,
        owner: crot.name_any(),
        secret: Some(own_secret(crot)),
        lifetime: lifetime(crot, None),
        vaults: vault_targets(crot, None),
        sp: None,
        kind: Kind::Password,
        source: None,
    })
}

/// The Secret a ServicePrincipal's rotation writes: the ServicePrincipal's own, which targets.secret may
/// only repeat.
fn service_principal_secret(
    crot: &CredentialRotation,
    sp: &ServicePrincipal,
) -> Result<Option<SecretTarget>, Error> {
    let name = sp.name_any();
    let Some(secret) = sp.spec.secret.clone() else {
        // Its first Key Vault target keeps the client secret instead; a Secret named here would be a second
        // home for it, which the ServicePrincipal does not have.
        if !sp.spec.key_vault_secrets.is_empty() && crot.spec.targets.secret.is_none() {
            return Ok(None);
        }
        return Err(Error::Invalid(format!(
            "spec.servicePrincipalRef.name: ServicePrincipal {name} has no spec.secret{} to rotate",
            if sp.spec.key_vault_secrets.is_empty() {
                " or keyVaultSecrets"
            } else {
                " (leave spec.targets.secret unset: its Key Vault secrets hold the client secret)"
            }
        )));
    };
    if let Some(target) = &crot.spec.targets.secret
        && target.name != secret.name
    {
        return Err(Error::Invalid(format!(
            "spec.targets.secret: with servicePrincipalRef the ServicePrincipal's Secret ({}) is the one \
             rotated; leave targets.secret unset",
            secret.name
        )));
    }
    Ok(Some(secret))
}

/// Another rotation the ServicePrincipal says rotates it, whose existence is to be checked.
fn rival<'a>(crot: &CredentialRotation, sp: &'a ServicePrincipal) -> Option<&'a str> {
    sp.annotations()
        .get(ROTATED_BY_ANNOTATION)
        .filter(|other| **other != crot.name_any())
        .map(String::as_str)
}

/// Whether the ServicePrincipal already names this rotation as the one rotating it.
fn marked(crot: &CredentialRotation, sp: &ServicePrincipal) -> bool {
    sp.annotations().get(ROTATED_BY_ANNOTATION) == Some(&crot.name_any())
}

/// The ServicePrincipal's application, once it is Ready, or waiting for this very rotation (its Secret lost
/// or edited, which only the rotation may re-issue): waiting on each other would leave the Secret missing
/// for good.
fn ready_application(sp: &ServicePrincipal) -> Option<String> {
    let status = sp.status.as_ref()?;
    let waiting_for_us = status.app_id.is_some()
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == protocol::WAITING_FOR_ROTATION);
    let ready = conditions::is_true(&status.conditions, conditions::READY) || waiting_for_us;
    status.app_id.clone().filter(|_| ready)
}

/// A new password's lifetime: the rotation's, else the ServicePrincipal's, else the default.
fn lifetime(crot: &CredentialRotation, sp: Option<&ServicePrincipal>) -> Duration {
    crot.spec
        .credential_lifetime
        .as_ref()
        .map(|d| d.as_std())
        .or(sp.and_then(|sp| sp.spec.credential_lifetime.as_ref().map(|d| d.as_std())))
        .unwrap_or(credentials::DEFAULT_LIFETIME)
}

/// The Secret a rotation by applicationId writes itself: targets.secret, else `{name}-credential`.
pub(super) fn own_secret(crot: &CredentialRotation) -> SecretTarget {
    crot.spec.targets.secret.clone().unwrap_or(SecretTarget {
        name: format!("{}-credential", crot.name_any()),
        format: SecretFormat::Env,
        templates: None,
        mount_path: None,
    })
}

/// What Graph's answer for `app_id` means for a rotation by id: a refusal is an application the operator
/// does not own.
fn found(
    app_id: &str,
    answer: Result<Option<Application>, AzureError>,
) -> Result<Application, Error> {
    match answer {
        Ok(Some(app)) => Ok(app),
        Ok(None) => Err(Error::ApplicationNotFound(format!(
            "spec.applicationId: no application {app_id} exists in the tenant"
        ))),
        Err(e) if e.class() == ErrorClass::Forbidden => Err(Error::ApplicationNotOwned(format!(
            "spec.applicationId: the operator's identity does not own application {app_id} ({}); add it as \
             an owner to let the operator rotate its secret",
            e.code()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Another cluster's operator manages it: rotating here would cut that cluster's consumers off.
fn not_foreign(app: &Application, app_id: &str, cluster_id: &str) -> Result<(), Error> {
    match naming::ownership_marks(&app.tags).other_cluster(cluster_id) {
        Some(other) => Err(Error::Claimed(format!(
            "spec.applicationId: application {app_id} belongs to the entra-operator of another cluster (its tag \
             entra-operator/cluster={other}); it is left to that cluster"
        ))),
        None => Ok(()),
    }
}

/// An application rotated by id is held by one object: a ServicePrincipal of this cluster that created or
/// adopted it (whose rotation goes through servicePrincipalRef, in its namespace), else the oldest
/// CredentialRotation naming it. Decided from the stores, so every reconcile of every claimant agrees. An
/// object that names an application its namespace may not take holds nothing: naming it first blocks no one.
async fn claim_application(
    crot: &CredentialRotation,
    ctx: &Context,
    app_id: &str,
) -> Result<(), Error> {
    let same = |id: Option<&str>| id.is_some_and(|id| id.eq_ignore_ascii_case(app_id));
    let policies = ctx.policies.state();
    let mut labels_of = BTreeMap::new();
    let mut holders = vec![];
    for sp in ctx.claims.service_principals().iter() {
        let has = same(sp.status.as_ref().and_then(|s| s.app_id.as_deref()));
        let adopts = same(sp.spec.adopt.as_ref().map(|a| a.app_id.as_str()));
        if !has && !adopts {
            continue;
        }
        let claimant = Claimant::of(sp.as_ref());
        // status.appId is set only for an application it created or was allowed to adopt; spec.adopt counts
        // where a policy lists the application for its namespace.
        if !has {
            let labels =
                targets::namespace_labels(ctx, &mut labels_of, &claimant.namespace).await?;
            if policy::may_rotate(&policies, &claimant.namespace, &labels, app_id).is_err() {
                continue;
            }
        }
        holders.push(claimant);
    }
    // The oldest, so that the message does not change from one reconcile to the next.
    if let Some(sp) =
        holders
            .into_iter()
            .reduce(|a, b| match claims::check(&a, std::slice::from_ref(&b)) {
                Ok(()) => a,
                Err(_) => b,
            })
    {
        return Err(Error::Claimed(format!(
            "spec.applicationId: application {app_id} belongs to {sp}; rotate its secret with a CredentialRotation \
             in namespace {} whose servicePrincipalRef names {} instead",
            sp.namespace, sp.name
        )));
    }
    let me = Claimant::of(crot);
    let mut claimants = vec![];
    for other in ctx.claims.rotations().iter() {
        let claimant = Claimant::of(other.as_ref());
        if !same(other.spec.application_id.as_deref())
            || (claimant.namespace == me.namespace && claimant.name == me.name)
        {
            continue;
        }
        let labels = targets::namespace_labels(ctx, &mut labels_of, &claimant.namespace).await?;
        if policy::may_rotate(&policies, &claimant.namespace, &labels, app_id).is_ok() {
            claimants.push(claimant);
        }
    }
    claims::check(&me, &claimants).map_err(|holder| {
        Error::Claimed(format!(
            "spec.applicationId: application {app_id} is rotated by {holder}, the oldest rotation naming it; this rotation \
             changes nothing until {holder} is deleted"
        ))
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    use super::*;
    use crate::{
        api::ServicePrincipalStatus,
        fixtures::{credential_rotation, credential_rotation_with, service_principal_with, t0},
    };

    fn ready(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: conditions::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(t0()),
        }]
    }

    /// What the rotation `rot` decides of a ServicePrincipal `web` before any Azure call.
    #[derive(Debug, PartialEq)]
    struct Decided {
        secret: Result<String, &'static str>,
        rival: Option<String>,
        marked: bool,
        application: Option<String>,
        lifetime_days: u64,
    }

    fn decide(crot: &CredentialRotation, sp: &ServicePrincipal) -> Decided {
        Decided {
            secret: service_principal_secret(crot, sp)
                .map(|s| s.map(|s| s.name).unwrap_or_default())
                .map_err(|e| reconcile::Failure::reason(&e)),
            rival: rival(crot, sp).map(str::to_string),
            marked: marked(crot, sp),
            application: ready_application(sp),
            lifetime_days: lifetime(crot, Some(sp)).as_secs() / 86_400,
        }
    }

    use crate::controller::reconcile;

    #[test]
    fn a_service_principal_is_rotated_once_ready_and_by_one_rotation() {
        let sp = |overrides: serde_json::Value, app: Option<&str>, cond: Vec<Condition>| {
            let mut sp = service_principal_with("web", overrides);
            sp.status = Some(ServicePrincipalStatus {
                app_id: app.map(str::to_string),
                conditions: cond,
                ..Default::default()
            });
            sp
        };
        let annotated = |sp: ServicePrincipal, by: &str| {
            let mut sp = sp;
            sp.annotations_mut()
                .insert(ROTATED_BY_ANNOTATION.into(), by.into());
            sp
        };
        let rot = credential_rotation("rot", "web");
        let decided =
            |secret, rival: Option<&str>, marked, application: Option<&str>, days| Decided {
                secret,
                rival: rival.map(str::to_string),
                marked,
                application: application.map(str::to_string),
                lifetime_days: days,
            };
        let cases = [
            (
                "Ready and not yet marked: marked now, its application rotated",
                rot.clone(),
                sp(json!({}), Some("app"), ready("True", "Ready")),
                decided(Ok("web".into()), None, false, Some("app"), 365),
            ),
            (
                "already marked by this rotation: no patch",
                rot.clone(),
                annotated(sp(json!({}), Some("app"), ready("True", "Ready")), "rot"),
                decided(Ok("web".into()), None, true, Some("app"), 365),
            ),
            (
                "marked by another rotation: that one is looked up",
                rot.clone(),
                annotated(sp(json!({}), Some("app"), ready("True", "Ready")), "other"),
                decided(Ok("web".into()), Some("other"), false, Some("app"), 365),
            ),
            (
                "not Ready yet: the rotation waits",
                rot.clone(),
                sp(json!({}), None, ready("False", "Creating")),
                decided(Ok("web".into()), None, false, None, 365),
            ),
            (
                "waiting for this rotation to re-issue its Secret: rotated, or both would wait",
                rot.clone(),
                sp(
                    json!({}),
                    Some("app"),
                    ready("False", protocol::WAITING_FOR_ROTATION),
                ),
                decided(Ok("web".into()), None, false, Some("app"), 365),
            ),
            (
                "failing for another reason: not rotated",
                rot.clone(),
                sp(
                    json!({}),
                    Some("app"),
                    ready("False", "AzurePermissionDenied"),
                ),
                decided(Ok("web".into()), None, false, None, 365),
            ),
            (
                "the ServicePrincipal's lifetime applies when the rotation sets none",
                rot.clone(),
                sp(
                    json!({"credentialLifetime": "240h"}),
                    Some("app"),
                    ready("True", "Ready"),
                ),
                decided(Ok("web".into()), None, false, Some("app"), 10),
            ),
            (
                "the rotation's lifetime comes first",
                credential_rotation_with(
                    "rot",
                    json!({"servicePrincipalRef": {"name": "web"}, "credentialLifetime": "48h"}),
                ),
                sp(
                    json!({"credentialLifetime": "240h"}),
                    Some("app"),
                    ready("True", "Ready"),
                ),
                decided(Ok("web".into()), None, false, Some("app"), 2),
            ),
            (
                "targets.secret naming another Secret than the ServicePrincipal's is refused",
                credential_rotation_with(
                    "rot",
                    json!({"servicePrincipalRef": {"name": "web"}, "targets": {"secret": {"name": "x", "format": "env"}}}),
                ),
                sp(json!({}), Some("app"), ready("True", "Ready")),
                decided(Err("InvalidSpec"), None, false, Some("app"), 365),
            ),
        ];
        for (name, crot, sp, expected) in cases {
            assert_eq!(decide(&crot, &sp), expected, "{name}");
        }
    }

    #[test]
    fn graphs_answer_and_the_ownership_tags_decide_a_rotation_by_id() {
        let app = crate::fixtures::application("rot", vec![]);
        let forbidden = AzureError::Api {
            operation: "test",
            status: 403,
            code: "Authorization_RequestDenied".into(),
            message: String::new(),
            request_id: None,
            retry_after: None,
        };
        let reason = |r: Result<Application, Error>| r.map(|a| a.app_id).map_err(|e| e.to_string());
        assert_eq!(
            reason(found("id", Ok(Some(app.clone())))),
            Ok(app.app_id.clone())
        );
        let missing = reason(found("id", Ok(None))).unwrap_err();
        assert!(missing.contains("no application id exists"), "{missing}");
        let not_owned = found("id", Err(forbidden)).unwrap_err();
        assert_eq!(
            reconcile::Failure::reason(&not_owned),
            "ApplicationNotOwned"
        );
        assert!(not_foreign(&app, "id", crate::fixtures::CLUSTER_ID).is_ok());
        let elsewhere = not_foreign(&app, "id", "another-cluster").unwrap_err();
        assert_eq!(reconcile::Failure::reason(&elsewhere), "Conflict");
        let by_id = credential_rotation_with("rot", json!({"applicationId": "id"}));
        assert_eq!(own_secret(&by_id).name, "rot-credential");
    }
}
