//! Carries out a plan, in order, each step idempotent: the service principal, the federated credentials, the
//! password. The crash-safety orderings live here: federated credential names reach status before the
//! credentials exist; a new password's Secret is checked deliverable (by the plan) before addPassword, written
//! at once after it, and the password removed again in the same reconcile if that write fails. The new
//! password's text goes from addPassword to the Secret write and nowhere else.

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
    api::{SecretTarget, ServicePrincipal, ServicePrincipalStatus},
    azure::graph::{Application, PasswordCredential},
    controller::{Context, clock, publish, secrets},
};

/// Acts on `planned`; the status to write and the service principal's id.
pub async fn act(
    sp: &ServicePrincipal,
    ctx: &Context,
    gathered: &Gathered,
    planned: Plan,
    recorded: &mut Option<Vec<String>>,
) -> Result<(ServicePrincipalStatus, String), Error> {
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
    let delivered = match (planned.password?, &sp.spec.secret) {
        (PasswordPlan::Withdraw(keys), _) => {
            // No Secret asked for: no password either; remove any the operator issued before.
            for key in keys {
                ctx.graph.remove_password(&app.id, &key).await?;
            }
            None
        }
        (PasswordPlan::Deliver { deliver, stale }, Some(target)) => {
            let password = deliver_password(sp, ctx, app, target, deliver).await?;
            remove_stale(sp, ctx, app, &stale).await?;
            Some(password)
        }
        // The password plan delivers only when a Secret is asked for.
        (PasswordPlan::Deliver { .. }, None) => None,
    };
    let status = plan::ready_status(
        sp,
        app,
        &principal,
        &ctx.tenant_id,
        names,
        delivered.as_ref(),
        clock::now_time(),
    );
    Ok((status, principal))
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

/// Puts the password into the Secret as planned; the password it delivers.
async fn deliver_password(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    target: &SecretTarget,
    deliver: Deliver,
) -> Result<PasswordCredential, Error> {
    match deliver {
        Deliver::Keep(password) => Ok(password),
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
            Ok(password)
        }
        Deliver::Issue { display_name, end } => {
            issue(sp, ctx, app, target, &display_name, end).await
        }
    }
}

/// Adds a password and writes it into the Secret straight away: the text exists nowhere else, and Graph will
/// never show it again.
async fn issue(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    target: &SecretTarget,
    display_name: &str,
    end: k8s_openapi::jiff::Timestamp,
) -> Result<PasswordCredential, Error> {
    let new = ctx.graph.add_password(&app.id, display_name, end).await?;
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
        if let Err(removal) = ctx
            .graph
            .remove_password(&app.id, &new.credential.key_id)
            .await
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
            "Issued password {} into Secret {}",
            new.credential.key_id, target.name
        ),
    )
    .await;
    Ok(new.credential)
}

/// Removes this object's passwords the Secret does not deliver.
async fn remove_stale(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    stale: &[String],
) -> Result<(), Error> {
    for key in stale {
        ctx.graph.remove_password(&app.id, key).await?;
        publish(
            ctx,
            sp,
            EventType::Normal,
            "CredentialRemoved",
            &format!("Removed password {key} that was not delivered"),
        )
        .await;
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
                stale: vec![before.credential.key_id.clone()],
            }),
        };
        let gathered = Gathered {
            app: app.clone(),
            all_ours: true,
            principal: None,
            federated: vec![],
            secret: None,
            rotated_by: None,
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
