//! The one credential (a password, or a certificate) a ServicePrincipal delivers to its Secret, decided from
//! what the Secret holds and the credentials this object issued: keep it, re-render the Secret (a format
//! change: same credential), or issue a new one; then remove every other credential of this object's (those
//! a crash left undelivered, one the Secret no longer holds, and those of the kind the spec no longer asks
//! for), unless a CredentialRotation manages them. A certificate from a TLS Secret is issued again when that
//! Secret is renewed. Pure; `act` carries it out.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::ResourceExt;

use super::{Error, gather::Gathered, plan::Setting};
use crate::{
    api::{SecretTarget, ServicePrincipal},
    azure::{
        certificate::Material,
        graph::{AppCredential, Application},
        keyvault::SecretVersion,
    },
    controller::{
        credentials::{self, Held, Kind},
        key_vault, naming, secrets,
    },
};

/// A credential of this object's to remove: its kind and its key id.
pub type Gone = (Kind, String);

/// A Secret's data rendered from a password's text. Its Debug names the keys only: the values hold the text.
#[derive(Clone, PartialEq)]
pub struct Rendered(pub BTreeMap<String, String>);

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the Secret gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Deliver {
    /// It holds this password, rendered as the spec says.
    Keep(AppCredential),
    /// It holds this password, rendered otherwise (the format or the templates changed): written again.
    Rerender(AppCredential, Rendered),
    /// It holds none of this object's passwords (lost, edited, never written, or a crash after addPassword):
    /// a new one, named and dated so, goes straight into it.
    Issue {
        display_name: String,
        end: Timestamp,
    },
}

impl Deliver {
    /// The password the Secret already holds, if it is to keep holding it.
    pub fn kept(&self) -> Option<&AppCredential> {
        match self {
            Deliver::Keep(p) | Deliver::Rerender(p, _) => Some(p),
            Deliver::Issue { .. } => None,
        }
    }
}

// One plan per reconcile, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum PasswordPlan {
    /// No Secret asked for: no credential either; every one this object issued goes.
    Withdraw(Vec<Gone>),
    /// `deliver`, then remove `stale`: this object's other credentials.
    Deliver { deliver: Deliver, stale: Vec<Gone> },
}

/// The password plan. Under a CredentialRotation (`gathered.rotated_by`) nothing is removed, since the rotation
/// keeps its previous password through the overlap and may be adding the next one; and a lost or edited
/// Secret is the rotation's to repair (WaitingForRotation): issuing here could make a third password, or
/// replace one an AKS cluster still uses. The first password is still issued here.
pub fn plan(
    sp: &ServicePrincipal,
    gathered: &Gathered,
    setting: &Setting,
) -> Result<PasswordPlan, Error> {
    let kind = Kind::of(&sp.spec);
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let ours = credentials::ours(&gathered.app, kind, &ns, &name);
    let Some(target) = &sp.spec.secret else {
        if kind == Kind::Certificate {
            return Err(Error::Invalid(
                "spec.certificate: a certificate credential needs spec.secret, where its private key is delivered"
                    .into(),
            ));
        }
        if !sp.spec.key_vault_secrets.is_empty() {
            return in_vault(sp, gathered, setting, &ours);
        }
        let all = [Kind::Password, Kind::Certificate]
            .into_iter()
            .flat_map(|k| {
                credentials::ours(&gathered.app, k, &ns, &name)
                    .into_iter()
                    .map(move |p| (k, p.key_id.clone()))
            });
        return Ok(PasswordPlan::Withdraw(all.collect()));
    };
    let app_id = &gathered.app.app_id;
    let under_rotation = gathered.rotated_by.is_some();
    let found = Found {
        ours: &ours,
        secret: gathered.secret.as_ref(),
        source: gathered.source.as_ref(),
    };
    let deliver = choose(sp, target, app_id, &found, under_rotation, setting)?;
    if let Deliver::Issue { .. } = &deliver {
        if !ours.is_empty()
            && let Some(rotation) = &gathered.rotated_by
        {
            return Err(Error::ManagedByRotation(format!(
                "CredentialRotation {rotation} manages this object's password; it re-issues Secret {}",
                target.name
            )));
        }
        // Before the password exists: a spec that cannot be delivered must not add one on every retry.
        setting
            .delivery(sp, app_id, target)
            .check()
            .map_err(Error::Invalid)?;
    }
    let mut stale = match &gathered.rotated_by {
        Some(_) => vec![],
        None => others(&deliver, &ours, kind),
    };
    stale.extend(switched(sp, &gathered.app));
    Ok(PasswordPlan::Deliver { deliver, stale })
}

/// What `choose` decides from besides the spec: this object's credentials of the kind it asks for, its
/// Secret as read, and the certificate its TLS Secret holds now (if it names one).
struct Found<'a> {
    ours: &'a [&'a AppCredential],
    secret: Option<&'a Secret>,
    source: Option<&'a Material>,
}

/// This object's credentials of the kind the spec no longer asks for (it switched between a client secret
/// and a certificate): they go once the Secret holds the new kind, under a rotation too, which rotates only
/// the kind the spec asks for.
fn switched(sp: &ServicePrincipal, app: &Application) -> Vec<Gone> {
    let other = match Kind::of(&sp.spec) {
        Kind::Password => Kind::Certificate,
        Kind::Certificate => Kind::Password,
    };
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    credentials::ours(app, other, &ns, &name)
        .into_iter()
        .map(|p| (other, p.key_id.clone()))
        .collect()
}

/// Whether the plan depends on a CredentialRotation: some credential of this object's is not the one the
/// Secret keeps (or its TLS Secret was renewed), so `gather` reads whether a rotation manages them (and only
/// then: it is a read of the API server, not the cache).
pub fn asks_rotation(
    sp: &ServicePrincipal,
    app: &Application,
    secret: Option<&Secret>,
    source: Option<&Material>,
    setting: &Setting,
) -> bool {
    let Some(target) = &sp.spec.secret else {
        return false;
    };
    let kind = Kind::of(&sp.spec);
    let ours = credentials::ours(
        app,
        kind,
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
    );
    let found = Found {
        ours: &ours,
        secret,
        source,
    };
    match choose(sp, target, &app.app_id, &found, false, setting) {
        Ok(deliver) => !others(&deliver, &ours, kind).is_empty(),
        Err(_) => false,
    }
}

/// The credentials of `ours` other than the one `deliver` keeps.
fn others(deliver: &Deliver, ours: &[&AppCredential], kind: Kind) -> Vec<Gone> {
    let kept = deliver.kept().map(|p| &p.key_id);
    ours.iter()
        .filter(|p| Some(&p.key_id) != kept)
        .map(|p| (kind, p.key_id.clone()))
        .collect()
}

/// What the Secret gets, from what it holds of this object's credentials on application `app_id` (see
/// [`Found`]). A Secret someone else owns is never touched. A certificate from a TLS Secret that has since
/// been renewed is issued anew, unless a CredentialRotation (`under_rotation`) follows the renewal with its
/// overlap.
fn choose(
    sp: &ServicePrincipal,
    target: &SecretTarget,
    app_id: &str,
    found: &Found,
    under_rotation: bool,
    setting: &Setting,
) -> Result<Deliver, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let kind = Kind::of(&sp.spec);
    if let Some(secret) = found.secret
        && !secrets::owned_by(secret, sp)
    {
        return Err(Error::SecretConflict(format!("{ns}/{}", target.name)));
    }
    let ours = found.ours;
    let delivered = found
        .secret
        .and_then(|s| credentials::delivered(s, ours, target, kind, true))
        .filter(|(p, _)| under_rotation || !renewed(p, found.source));
    Ok(match delivered {
        Some((password, Held { text: None, .. })) => Deliver::Keep(password.clone()),
        Some((password, held)) => {
            let text = held.text.as_deref().unwrap_or_default();
            let rendered = setting
                .delivery(sp, app_id, target)
                .render(text)
                .map_err(Error::Invalid)?;
            if held.format != target.format || rendered != held.as_text() {
                Deliver::Rerender(password.clone(), Rendered(rendered))
            } else {
                Deliver::Keep(password.clone())
            }
        }
        None => issue(sp, ours, setting),
    })
}

/// Whether the TLS Secret now holds another certificate than `delivered`.
fn renewed(delivered: &AppCredential, source: Option<&Material>) -> bool {
    source.is_some_and(|m| {
        delivered.custom_key_identifier.as_deref() != Some(m.thumbprint().as_str())
    })
}

/// A new password for `sp`, numbered after `ours`, valid for the spec's lifetime from now.
fn issue(sp: &ServicePrincipal, ours: &[&AppCredential], setting: &Setting) -> Deliver {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let lifetime = sp
        .spec
        .credential_lifetime
        .as_ref()
        .map(|d| d.as_std())
        .unwrap_or(credentials::DEFAULT_LIFETIME);
    let serial = credentials::next_serial(ours, &ns, &name);
    Deliver::Issue {
        display_name: naming::password_name(&ns, &name, serial),
        end: credentials::expiry(setting.now, lifetime),
    }
}

/// Without a Kubernetes Secret the first Key Vault target is where the password's text lives: the password
/// its newest version of ours holds is kept, or a new one is issued into the vaults. The other passwords of
/// this object's go, as with a Secret, unless a CredentialRotation manages them.
fn in_vault(
    sp: &ServicePrincipal,
    gathered: &Gathered,
    setting: &Setting,
    ours: &[&AppCredential],
) -> Result<PasswordPlan, Error> {
    // Before a password is issued: a vault someone else wrote to would refuse it on every retry.
    let targets = sp.spec.key_vault_secrets.iter().zip(&gathered.vaults);
    for (i, (target, versions)) in targets.enumerate() {
        let field = format!("spec.keyVaultSecrets[{i}]");
        key_vault::decide(&field, target, versions, &gathered.vault_owner, None, &[])
            .map_err(|c| Error::Conflict(c.0))?;
    }
    let held = gathered
        .vaults
        .first()
        .and_then(|versions| key_vault::held(versions, &gathered.vault_owner, ours));
    let deliver = match held {
        Some((password, _)) => Deliver::Keep(password.clone()),
        None => {
            if !ours.is_empty()
                && let Some(rotation) = &gathered.rotated_by
            {
                return Err(Error::ManagedByRotation(format!(
                    "CredentialRotation {rotation} manages this object's password; it re-issues Key Vault secret {}",
                    sp.spec.key_vault_secrets[0].display()
                )));
            }
            issue(sp, ours, setting)
        }
    };
    let stale = match &gathered.rotated_by {
        Some(_) => vec![],
        None => others(&deliver, ours, Kind::Password),
    };
    Ok(PasswordPlan::Deliver { deliver, stale })
}

/// Whether the plan of a ServicePrincipal without a Secret depends on a CredentialRotation: some password of
/// this object's is not the one its first vault holds (see [`asks_rotation`]).
pub fn asks_rotation_in_vault(
    sp: &ServicePrincipal,
    app: &Application,
    vaults: &[Vec<SecretVersion>],
    owner: &str,
) -> bool {
    let ours = credentials::ours(
        app,
        Kind::Password,
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
    );
    let held = vaults
        .first()
        .and_then(|versions| key_vault::held(versions, owner, &ours))
        .map(|(p, _)| p.key_id.clone());
    ours.iter().any(|p| Some(&p.key_id) != held.as_ref())
}
