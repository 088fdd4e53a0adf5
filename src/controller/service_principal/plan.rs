//! The decisions of a reconcile, pure: from the object, what `gather` read and the time, which steps `act`
//! takes and the status it writes. Nothing here reads Azure, the API server or the clock.
//!
//! The shortcut is decided here too, in two halves around the one read it makes: `shortcut` says, from the
//! object alone, whether the drift feeds and the Secret could be enough; `unchanged` decides from that Secret.

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};

use super::{
    Error, federated, federated::FederatedPlan, gather::Gathered, password, password::PasswordPlan,
};
use crate::{
    api::{
        SecretTarget, ServicePrincipal, ServicePrincipalStatus,
        conditions::{self, Progress},
        service_principal::CredentialStatus,
    },
    azure::{
        cloud::Cloud,
        graph::{Application, PasswordCredential},
    },
    controller::{
        Context, clock,
        credentials::{self, Held},
        naming, secrets,
    },
};

/// What the plans know besides the object and what was gathered: where the operator runs, and when.
pub struct Setting<'a> {
    pub tenant_id: &'a str,
    pub cloud: &'a Cloud,
    pub now: Timestamp,
}

impl<'a> Setting<'a> {
    /// The operator's setting, at the time of the call.
    pub fn of(ctx: &'a Context) -> Self {
        Setting {
            tenant_id: &ctx.tenant_id,
            cloud: &ctx.cloud,
            now: clock::now(),
        }
    }

    /// How `sp`'s Secret renders a password of `client_id`.
    pub fn delivery<'b>(
        &'b self,
        sp: &'b ServicePrincipal,
        client_id: &'b str,
        target: &'b SecretTarget,
    ) -> credentials::Delivery<'b> {
        credentials::Delivery {
            target,
            client_id,
            tenant_id: self.tenant_id,
            display_name: &sp.spec.display_name,
            cloud: self.cloud,
        }
    }
}

/// An object that may need nothing done: its status is complete and Ready for this generation. The drift
/// feeds must still vouch for `vouched`, and the Secret (if one is asked for) must hold the delivered
/// password as the spec renders it.
pub struct Shortcut<'a> {
    pub status: &'a ServicePrincipalStatus,
    pub app_id: &'a str,
    /// The application and the service principal.
    pub vouched: [&'a str; 2],
    /// The Secret to read, and the credential status says it delivers; None when no Secret is asked for.
    pub secret: Option<(&'a SecretTarget, &'a CredentialStatus)>,
}

/// The first half of the shortcut, before any read: None sends the reconcile through the full path.
pub fn shortcut(sp: &ServicePrincipal) -> Option<Shortcut<'_>> {
    let status = sp.status.as_ref()?;
    let (Some(app_id), Some(object_id), Some(principal_id)) = (
        status.app_id.as_deref(),
        status.object_id.as_deref(),
        status.service_principal_id.as_deref(),
    ) else {
        return None;
    };
    if status.observed_generation != sp.metadata.generation
        || !conditions::is_true(&status.conditions, conditions::READY)
    {
        return None;
    }
    let secret = match (&sp.spec.secret, &status.credential) {
        (None, None) => None,
        (Some(target), Some(credential)) if status.secret_name.as_ref() == Some(&target.name) => {
            Some((target, credential))
        }
        _ => return None,
    };
    Some(Shortcut {
        status,
        app_id,
        vouched: [object_id, principal_id],
        secret,
    })
}

/// The second half of the shortcut: whether `secret` (what the shortcut's read found, None if absent) still
/// holds the delivered password as the spec renders it. A template Secret, whose text cannot be read back,
/// stands as long as its templates are the spec's.
pub fn unchanged(
    sp: &ServicePrincipal,
    shortcut: &Shortcut,
    secret: Option<&Secret>,
    setting: &Setting,
) -> Result<bool, Error> {
    let Some((target, credential)) = shortcut.secret else {
        return Ok(true);
    };
    let Some(secret) = secret else {
        return Ok(false);
    };
    if !secrets::owned_by(secret, sp) || credentials::key_id(secret) != Some(&credential.key_id) {
        return Ok(false);
    }
    Ok(
        match credentials::held(secret, target, credential.hint.as_deref()) {
            Some(Held { text: None, .. }) => true,
            Some(held @ Held { text: Some(_), .. }) => {
                let text = held.text.as_deref().unwrap_or_default();
                held.format == target.format
                    && setting
                        .delivery(sp, shortcut.app_id, target)
                        .render(text)
                        .map_err(Error::Invalid)?
                        == held.as_text()
            }
            None => false,
        },
    )
}

/// The application's tags: the operator's ownership marks, then the spec's, which may not imitate them.
pub fn tags(sp: &ServicePrincipal, cluster_id: &str) -> Result<Vec<String>, Error> {
    use kube::ResourceExt;
    if let Some((i, tag)) = sp
        .spec
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.starts_with(naming::MARK_PREFIX))
    {
        return Err(Error::Invalid(format!(
            "spec.tags[{i}]: {tag:?}: tags beginning {} are the operator's ownership marks",
            naming::MARK_PREFIX
        )));
    }
    let mut tags = naming::ownership_tags(
        cluster_id,
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
    );
    tags.extend(sp.spec.tags.iter().cloned());
    Ok(tags)
}

/// The service principal: found, or to create.
#[derive(Debug, PartialEq)]
pub enum Principal {
    Found(String),
    Create,
}

/// What `act` does once the application is as the spec says, in this order. A failure in a later part is
/// returned only after the earlier parts are done, as one pass through them would.
#[derive(Debug)]
pub struct Plan {
    pub principal: Principal,
    pub federated: Result<FederatedPlan, Error>,
    pub password: Result<PasswordPlan, Error>,
}

pub fn plan(sp: &ServicePrincipal, gathered: &Gathered, setting: &Setting) -> Plan {
    Plan {
        principal: match &gathered.principal {
            Some(p) => Principal::Found(p.id.clone()),
            None => Principal::Create,
        },
        federated: federated::plan(
            sp,
            &gathered.app.app_id,
            &gathered.federated,
            gathered.all_ours,
        ),
        password: password::plan(sp, gathered, setting),
    }
}

/// The status of a converged object: what it holds in Azure, the password its Secret delivers (None when no
/// Secret is asked for), and Ready.
pub fn ready_status(
    sp: &ServicePrincipal,
    app: &Application,
    principal_id: &str,
    tenant_id: &str,
    federated: Vec<String>,
    delivered: Option<&PasswordCredential>,
    now: Time,
) -> ServicePrincipalStatus {
    let mut status = sp.status.clone().unwrap_or_default();
    status.app_id = Some(app.app_id.clone());
    status.object_id = Some(app.id.clone());
    status.service_principal_id = Some(principal_id.to_string());
    status.tenant_id = Some(tenant_id.to_string());
    status.federated_credentials = federated;
    status.observed_generation = sp.metadata.generation;
    match (&sp.spec.secret, delivered) {
        (Some(target), Some(delivered)) => {
            status.secret_name = Some(target.name.clone());
            status.credential = Some(CredentialStatus {
                key_id: delivered.key_id.clone(),
                hint: delivered.hint.clone(),
                display_name: delivered.display_name.clone(),
                start_date_time: delivered.start_date_time.map(Time),
                end_date_time: delivered.end_date_time.map(Time),
            });
        }
        _ => {
            status.secret_name = None;
            status.credential = None;
        }
    }
    let message = format!("application {} is ready", app.app_id);
    conditions::summarize(
        &mut status.conditions,
        Progress::Ready(&message),
        sp.metadata.generation,
        now,
    );
    status
}
