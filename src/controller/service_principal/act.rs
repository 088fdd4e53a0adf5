//! Carries out a plan, in order, each step idempotent: the service principal, the federated credentials, the
//! password (or certificate). The crash-safety orderings live here: federated credential names reach status
//! before the credentials exist; a new credential's Secret is checked deliverable (by the plan) before it is
//! added, written at once after, and the credential removed again in the same reconcile if that write fails.
//! The new password's text (a new certificate's private key) goes from its making to the Secret write and
//! nowhere else.

use kube::runtime::events::EventType;
use tracing::warn;

use super::{
    Error,
    federated::FederatedPlan,
    gather::Gathered,
    password::{Deliver, PasswordPlan},
    plan::{self, Plan, Principal, Setting},
};
use crate::controller::reconcile;
use crate::{
    api::{
        KeyVaultSecretStatus, SecretTarget, ServicePrincipal, ServicePrincipalStatus,
        credential_rotation::TargetState,
    },
    api::{
        conditions::{self, Progress},
        protocol::ROTATED_BY_ANNOTATION,
    },
    azure::{
        certificate::Material,
        graph::{AppCredential, Application, NewPassword},
    },
    controller::{
        Context, clock,
        credentials::{self, Kind},
        issuance::{self, Fresh},
        key_vault, publish, secrets, verification,
    },
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Acts on `planned`; the status to write, the service principal's id, and when to look again while the
/// credential it delivers is being verified.
pub async fn act(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    planned: Plan,
    recorded: &mut Option<Vec<String>>,
) -> Result<(ServicePrincipalStatus, String, Option<Timestamp>), Error> {
    let app = &gathered.app;
    let principal = match planned.principal {
        Principal::Found(id) => id,
        Principal::Create => {
            let (_, p) = ctx.graph.upsert_service_principal(&app.app_id).await?;
            publish(
                ctx,
                sp,
                EventType::Normal,
                "ServicePrincipalCreated",
                &format!("Created service principal {}", p.id),
            )
            .await;
            p.id
        }
    };
    let federated = planned.federated?;
    let names = federated_credentials(sp, ctx, app, federated, recorded).await?;
    let mut vaults = None;
    let kind = Kind::of(&sp.spec);
    // The delivered credential's text, where it is at hand (issued now, or read back from the Secret).
    let mut delivered_text = None;
    let delivered = match (planned.password?, &sp.spec.secret) {
        (PasswordPlan::Withdraw(gone), _) => {
            // No Secret asked for: no credential either; remove any the operator issued before.
            for (kind, key) in gone {
                issuance::remove(&ctx.graph, app, kind, &key, None).await?;
            }
            None
        }
        (PasswordPlan::Deliver { deliver, stale }, Some(target)) => {
            let (password, issued) = deliver_password(sp, ctx, gathered, target, deliver).await?;
            let text = issued.or_else(|| held_text(gathered, target, &password, kind));
            if gathered.rotated_by.is_none() {
                // Before any stale password goes: no version may be left naming it.
                vaults =
                    Some(deliver_to_vaults(sp, ctx, gathered, &password, text.as_deref()).await?);
            }
            // The certificate delivered signs the proofs that remove the others (the application as read
            // does not show one added just now).
            let mut known = app.clone();
            let signer = match kind {
                Kind::Certificate => text.as_deref().and_then(|t| Material::from_pem(t).ok()),
                Kind::Password => None,
            };
            if kind == Kind::Certificate && !known.key_credentials.contains(&password) {
                known.key_credentials.push(password.clone());
            }
            remove_stale(sp, ctx, &known, &stale, signer.as_ref()).await?;
            delivered_text = text;
            Some(password)
        }
        // No Secret: the vaults alone hold the password.
        (PasswordPlan::Deliver { deliver, stale }, None) => {
            let (password, held) = deliver_in_vaults(sp, ctx, gathered, deliver).await?;
            vaults = held;
            remove_stale(sp, ctx, app, &stale, None).await?;
            Some(password)
        }
    };
    let mut status = plan::ready_status(
        sp,
        app,
        &principal,
        &ctx.tenant_id,
        names,
        delivered.as_ref(),
        clock::now_time(),
    );
    if let Some(vaults) = vaults {
        status.key_vault_secrets = vaults;
    }
    let verifying = match (&delivered, &delivered_text) {
        (Some(credential), Some(text)) => {
            verify(sp, ctx, &mut status, credential, text, kind).await
        }
        _ => None,
    };
    Ok((status, principal, verifying))
}

/// A credential this object delivers turns it Ready only once it has proved that Entra accepts it
/// everywhere (see `verification`): a round when one is due, recorded in status; until then the object is
/// Reconciling with reason VerifyingCredential, to look again when the next round is due (returned). Under
/// a CredentialRotation the rotation verifies what it publishes; a credential this object was Ready with
/// before verification existed is not verified again.
async fn verify(
    sp: &ServicePrincipal,
    ctx: &Context,
    status: &mut ServicePrincipalStatus,
    credential: &AppCredential,
    text: &str,
    kind: Kind,
) -> Option<Timestamp> {
    let before = sp.status.as_ref();
    let grandfathered = before.is_some_and(|b| {
        b.verification.is_none()
            && b.credential.as_ref().map(|c| &c.key_id) == Some(&credential.key_id)
            && conditions::is_true(&b.conditions, conditions::READY)
    });
    if grandfathered || sp.annotations().contains_key(ROTATED_BY_ANNOTATION) {
        return None;
    }
    let client_id = status.app_id.clone().unwrap_or_default();
    let candidate = verification::Candidate {
        key_id: &credential.key_id,
        client_id: &client_id,
        kind,
        text,
    };
    let (record, conditions) = (&mut status.verification, &mut status.conditions);
    let until =
        verification::advance(ctx, candidate, record, conditions, sp.metadata.generation).await?;
    let message = status
        .verification
        .as_ref()
        .map(verification::progress)
        .unwrap_or_default();
    let progress = Progress::Retrying {
        reason: "VerifyingCredential",
        message: &message,
    };
    conditions::summarize(
        &mut status.conditions,
        progress,
        sp.metadata.generation,
        clock::now_time(),
    );
    Some(until)
}

/// Delivers the planned password to the vaults when there is no Secret: one just issued goes straight into
/// them (and is removed again if they cannot take it: its text would be lost); one the first vault holds is
/// written to the others, its text read back from there only if one needs it. Under a CredentialRotation
/// the rotation publishes, and the vaults are left to it. The password, and what each vault holds.
async fn deliver_in_vaults(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    deliver: Deliver,
) -> Result<(AppCredential, Option<Vec<KeyVaultSecretStatus>>), Error> {
    let app = &gathered.app;
    let (password, text, issued) = match deliver {
        Deliver::Keep(password) | Deliver::Rerender(password, _) => {
            if gathered.rotated_by.is_some() {
                return Ok((password, None));
            }
            let text = text_in_vault(sp, ctx, gathered, &password).await?;
            (password, text, false)
        }
        Deliver::Issue { display_name, end } => {
            let new = ctx.graph.add_password(&app.id, &display_name, end).await?;
            let text = new.secret_text.secret().to_string();
            (new.credential, Some(text), true)
        }
    };
    match deliver_to_vaults(sp, ctx, gathered, &password, text.as_deref()).await {
        Ok(held) => {
            if issued {
                let note = format!("Issued password {} into Key Vault", password.key_id);
                publish(ctx, sp, EventType::Normal, "CredentialIssued", &note).await;
            }
            Ok((password, Some(held)))
        }
        Err(e) => {
            if issued
                && let Err(removal) = ctx.graph.remove_password(&app.id, &password.key_id).await
            {
                warn!(key_id = %password.key_id, error = %removal,
                    "could not remove the password whose delivery failed; the next delivery removes it");
            }
            Err(e)
        }
    }
}

/// The text of `password` as the first vault holds it, read only when some vault needs a new version.
async fn text_in_vault(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    password: &AppCredential,
) -> Result<Option<String>, Error> {
    let owner = &gathered.vault_owner;
    let key = password.key_id.as_str();
    let targets = &sp.spec.key_vault_secrets;
    let needs = targets
        .iter()
        .zip(&gathered.vaults)
        .any(|(target, versions)| {
            key_vault::decide("", target, versions, owner, Some(key), &[key]).is_ok_and(|d| d.write)
        });
    let (Some(first), Some(versions), true) = (targets.first(), gathered.vaults.first(), needs)
    else {
        return Ok(None);
    };
    let ours = [password];
    let Some((_, version)) = key_vault::held(versions, owner, &ours) else {
        return Ok(None);
    };
    let value = ctx
        .key_vault
        .value(&first.vault, &first.name, &version)
        .await?;
    Ok(key_vault::extract(first.format, value.secret()))
}

/// The text of `password` (of `kind`) as the Secret holds it (None for a template, which admission keeps
/// away from Key Vault targets).
fn held_text(
    gathered: &Gathered,
    target: &SecretTarget,
    password: &AppCredential,
    kind: Kind,
) -> Option<String> {
    let secret = gathered.secret.as_ref()?;
    credentials::held(secret, target, kind, credentials::expect(password, kind))?.text
}

/// The certificate of this object's that the Secret holds, whichever it is: what signs the proof for the
/// next one (a TLS Secret's renewal). None for a password, or a Secret that holds none.
fn held_certificate(
    sp: &ServicePrincipal,
    gathered: &Gathered,
    target: &SecretTarget,
) -> Option<Material> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let ours = credentials::ours(&gathered.app, Kind::Certificate, &ns, &name);
    let secret = gathered.secret.as_ref()?;
    let (_, held) = credentials::delivered(secret, &ours, target, Kind::Certificate, false)?;
    Material::from_pem(held.text.as_deref()?).ok()
}

/// Brings every Key Vault target to `password` (whose text is `text`): a new version where the newest does not
/// hold it, and every other enabled version of ours disabled, since this object keeps one password. What
/// each target holds, for status.
async fn deliver_to_vaults(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    password: &AppCredential,
    text: Option<&str>,
) -> Result<Vec<KeyVaultSecretStatus>, Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let owner = key_vault::owner_mark(&ctx.cluster_id, &ns, "ServicePrincipal", &name);
    let setting = Setting::of(ctx);
    let mut held = vec![];
    for (i, (target, versions)) in sp
        .spec
        .key_vault_secrets
        .iter()
        .zip(&gathered.vaults)
        .enumerate()
    {
        let field = format!("spec.keyVaultSecrets[{i}]");
        let live = [password.key_id.as_str()];
        let decision = key_vault::decide(
            &field,
            target,
            versions,
            &owner,
            Some(&password.key_id),
            &live,
        )
        .map_err(|c| Error::Conflict(c.0))?;
        let value = match (decision.write, text) {
            (false, _) => None,
            (true, Some(text)) => {
                let credential = setting.credential(sp, &gathered.app.app_id, text);
                Some(key_vault::render(target, &credential).map_err(Error::Invalid)?)
            }
            (true, None) => {
                return Err(Error::Invalid(format!(
                    "{field}: the client secret cannot be read back (from a template Secret, or from a first \
                     vault whose value no longer parses in its format); it goes with the next password"
                )));
            }
        };
        let current = value.as_deref().map(|v| (password, v));
        let version = key_vault::apply(ctx, target, &decision, &owner, current).await?;
        if decision.write {
            let note = format!(
                "Wrote password {} to Key Vault secret {} as version {}",
                password.key_id,
                target.display(),
                version.as_deref().unwrap_or_default()
            );
            publish(ctx, sp, EventType::Normal, "KeyVaultSecretWritten", &note).await;
        }
        let mut entry = KeyVaultSecretStatus {
            vault: target.vault.clone(),
            name: target.name.clone(),
            version,
            key_id: Some(password.key_id.clone()),
            state: TargetState::Published.as_str().into(),
            message: None,
            last_transition_time: Some(clock::now_time()),
        };
        // The time moves only when what the target holds does: an unchanged status is not written again.
        if let Some(before) = sp
            .status
            .iter()
            .flat_map(|s| &s.key_vault_secrets)
            .find(|b| {
                (&b.vault, &b.name, &b.version, &b.key_id, &b.state)
                    == (
                        &entry.vault,
                        &entry.name,
                        &entry.version,
                        &entry.key_id,
                        &entry.state,
                    )
            })
        {
            entry.last_transition_time = before.last_transition_time.clone();
        }
        held.push(entry);
    }
    Ok(held)
}

/// Records, creates, updates and removes federated credentials as planned; the names this object holds.
async fn federated_credentials(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    planned: FederatedPlan,
    recorded: &mut Option<Vec<String>>,
) -> Result<Vec<String>, Error> {
    if let Some(names) = planned.record {
        let mut status = sp.status.clone().unwrap_or_default();
        status.federated_credentials = names.clone();
        reconcile::write_status(ctx, sp, &status).await?;
        *recorded = Some(names);
    }
    for desired in &planned.upsert {
        ctx.graph
            .upsert_federated_credential(&app.id, desired)
            .await?;
    }
    for name in &planned.delete {
        ctx.graph.delete_federated_credential(&app.id, name).await?;
    }
    Ok(planned.names)
}

/// Puts the credential into the Secret as planned; the credential it delivers, and its text when it was
/// issued just now.
async fn deliver_password(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    target: &SecretTarget,
    deliver: Deliver,
) -> Result<(AppCredential, Option<String>), Error> {
    match deliver {
        Deliver::Keep(password) => Ok((password, None)),
        Deliver::Rerender(password, rendered) => {
            write_secret(sp, ctx, target, &password.key_id, rendered.0).await?;
            publish(
                ctx,
                sp,
                EventType::Normal,
                "SecretUpdated",
                &format!("Re-rendered Secret {} as {:?}", target.name, target.format),
            )
            .await;
            Ok((password, None))
        }
        Deliver::Issue { display_name, end } => {
            let new = issue(sp, ctx, gathered, target, &display_name, end).await?;
            Ok((new.credential, Some(new.secret_text.secret().to_string())))
        }
    }
}

/// Adds a password (or certificate: generated, or the TLS Secret's) and writes it into the Secret straight
/// away: a password's text exists nowhere else, and Graph will never show it again; a generated
/// certificate's private key exists nowhere else either.
async fn issue(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    target: &SecretTarget,
    display_name: &str,
    end: k8s_openapi::jiff::Timestamp,
) -> Result<NewPassword, Error> {
    let app = &gathered.app;
    let kind = Kind::of(&sp.spec);
    let fresh = Fresh::next(kind, gathered.source.as_ref(), &sp.spec.display_name, end)
        .map_err(|e| Error::Invalid(format!("spec.certificate: {e}")))?;
    let held = held_certificate(sp, gathered, target);
    let new = issuance::add(&ctx.graph, app, fresh, display_name, end, held.as_ref()).await?;
    let setting = Setting::of(ctx);
    let written = match setting
        .delivery(sp, &app.app_id, target)
        .render(new.secret_text.secret())
    {
        Ok(data) => write_secret(sp, ctx, target, &new.credential.key_id, data).await,
        Err(e) => Err(Error::Invalid(e)),
    };
    if let Err(e) = written {
        // Its text is lost with this reconcile: removed now, so that a delivery failing on every retry
        // (an immutable Secret, a quota, an admission webhook) leaves no trail of live passwords.
        if let Err(removal) =
            issuance::remove(&ctx.graph, app, kind, &new.credential.key_id, None).await
        {
            warn!(key_id = %new.credential.key_id, error = %removal,
                "could not remove the password whose delivery failed; the next delivery removes it");
        }
        return Err(e);
    }
    publish(
        ctx,
        sp,
        EventType::Normal,
        "CredentialIssued",
        &format!(
            "Issued {} {} into Secret {}",
            kind.noun(),
            new.credential.key_id,
            target.name
        ),
    )
    .await;
    Ok(new)
}

/// Removes this object's credentials the Secret does not deliver; `signer` (the certificate it delivers)
/// signs the proofs for certificates.
async fn remove_stale(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    stale: &[super::password::Gone],
    signer: Option<&Material>,
) -> Result<(), Error> {
    for (kind, key) in stale {
        issuance::remove(&ctx.graph, app, *kind, key, signer).await?;
        let note = format!("Removed {} {key} that was not delivered", kind.noun());
        publish(ctx, sp, EventType::Normal, "CredentialRemoved", &note).await;
    }
    Ok(())
}

async fn write_secret(
    sp: &ServicePrincipal,
    ctx: &Context,
    target: &SecretTarget,
    key_id: &str,
    data: std::collections::BTreeMap<String, String>,
) -> Result<(), Error> {
    let owner = secrets::Owner {
        object: sp,
        label: super::OWNER_LABEL,
    };
    secrets::write(&ctx.client, &owner, target, key_id, data).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controller::{naming, reconcile::Failure as _, service_principal::gather::Gathered},
        fixtures::{self, NAMESPACE, t0},
    };

    /// The Context's API server is unreachable, so the Secret write fails after addPassword: the new password
    /// is removed in the same reconcile, and the one delivered before stays (nothing stale is removed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_whose_secret_write_fails_is_removed_in_the_same_reconcile() {
        let (ctx, _azure) = fixtures::context().await;
        let sp = fixtures::service_principal("web");
        let key = naming::unique_name(&ctx.cluster_id, NAMESPACE, "web", "uid-web");
        ctx.graph
            .upsert_application_id(&key, &json!({"displayName": "web-app"}))
            .await
            .expect("created");
        let app = ctx
            .graph
            .application_by_unique_name(&key)
            .await
            .unwrap()
            .expect("visible");
        let end = t0() + k8s_openapi::jiff::SignedDuration::from_hours(24 * 365 * 10);
        let before = ctx
            .graph
            .add_password(&app.id, &naming::password_name(NAMESPACE, "web", 1), end)
            .await
            .expect("added");
        let planned = Plan {
            principal: Principal::Found("principal-web".into()),
            federated: Ok(FederatedPlan::default()),
            password: Ok(PasswordPlan::Deliver {
                deliver: Deliver::Issue {
                    display_name: naming::password_name(NAMESPACE, "web", 2),
                    end,
                },
                stale: vec![(Kind::Password, before.credential.key_id.clone())],
            }),
        };
        let gathered = Gathered {
            app: app.clone(),
            all_ours: true,
            principal: None,
            federated: vec![],
            secret: None,
            rotated_by: None,
            vaults: vec![],
            vault_owner: String::new(),
            source: None,
        };
        let err = act(&sp, &ctx, &gathered, planned, &mut None)
            .await
            .expect_err("the Secret cannot be written");
        assert_eq!(err.reason(), "KubernetesError");
        let after = ctx
            .graph
            .application_by_unique_name(&key)
            .await
            .unwrap()
            .expect("visible");
        let keys: Vec<&str> = after
            .password_credentials
            .iter()
            .map(|p| p.key_id.as_str())
            .collect();
        assert_eq!(keys, [before.credential.key_id.as_str()]);
    }
}
