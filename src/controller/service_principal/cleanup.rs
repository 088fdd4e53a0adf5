//! Deleting a ServicePrincipal, honouring spec.deletionPolicy: the application created for it goes (with its
//! passwords, federated credentials and service principal, and purged if asked); on an adopted one only what
//! this object added, and only if it held it; under Orphan everything stays in Azure. The owned Secret goes
//! in every case. `teardown` and `steps` decide, purely; `cleanup` reads and acts.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::DeleteParams,
    runtime::{controller::Action, events::EventType},
};
use tracing::info;

use super::Error;
use crate::controller::policy::key_vaults::may_write;
use crate::{
    api::{DeletionPolicy, ServicePrincipal, conditions, protocol},
    azure::{error::ErrorClass, graph::Application},
    controller::{
        Context, clock,
        credentials::{self, Kind},
        issuance, key_vault, naming, publish, secrets,
    },
};

/// How long a delete believes that an application it cannot find does not exist, when one may have been
/// created moments ago: Graph's reads can miss a new object for a few seconds (replication).
const REPLICATION_GRACE: Duration = Duration::from_secs(20);
/// An object younger than this may have created an application without living to record it.
const YOUNG: Duration = Duration::from_secs(600);

/// What the delete does in Azure, and which application it looks up first.
#[derive(Debug, PartialEq)]
pub enum Teardown {
    /// deletionPolicy Orphan: the application is left in Azure, nothing is read.
    Orphan,
    /// The application created for this object, found by its uniqueName, goes.
    Created { unique_name: String },
    /// Never the adopted application itself: only what this object added to it.
    Adopted { app_id: String },
}

pub fn teardown(sp: &ServicePrincipal, cluster_id: &str) -> Teardown {
    match (&sp.spec.deletion_policy, &sp.spec.adopt) {
        (DeletionPolicy::Orphan, _) => Teardown::Orphan,
        (DeletionPolicy::Delete, None) => Teardown::Created {
            unique_name: naming::unique_name(
                cluster_id,
                &sp.namespace().unwrap_or_default(),
                &sp.name_any(),
                &sp.uid().unwrap_or_default(),
            ),
        },
        (DeletionPolicy::Delete, Some(adopt)) => Teardown::Adopted {
            app_id: adopt.app_id.clone(),
        },
    }
}

/// One write of a delete.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// An Event saying the application stays.
    Orphaned,
    /// Deleting the application removes its passwords, federated credentials and service principal.
    DeleteApplication {
        id: String,
        unique_name: String,
    },
    /// Purges a deleted object (the service principal first: its deleted item is reachable through the
    /// application's), so that it does not count against the tenant's quota.
    Purge(String),
    /// The application was not found, but one may exist (status names one, the last reconcile waited for
    /// replication, or the object is young enough that a crash may have hidden a create): delete by the
    /// recorded id, and keep looking until misses have held for `REPLICATION_GRACE`. A miss believed too soon
    /// leaks the application for good.
    WaitOutReplication {
        recorded: Option<String>,
    },
    RemovePassword {
        object_id: String,
        key_id: String,
    },
    /// A certificate this object added to an adopted application (PATCH keyCredentials: the Secret holding
    /// its key may be gone already, so no proof is signed).
    RemoveCertificate {
        app_id: String,
        key_id: String,
    },
    DeleteFederatedCredential {
        object_id: String,
        name: String,
    },
}

/// The delete's writes in Azure, in order, from what the lookup `teardown` asks for found (`found`).
pub fn steps(
    sp: &ServicePrincipal,
    teardown: &Teardown,
    found: Option<&Application>,
    cluster_id: &str,
    now: Timestamp,
) -> Vec<Step> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let status = sp.status.as_ref();
    match (teardown, found) {
        (Teardown::Orphan, _) => vec![Step::Orphaned],
        (Teardown::Created { unique_name }, Some(app)) => {
            let mut steps = vec![Step::DeleteApplication {
                id: app.id.clone(),
                unique_name: unique_name.clone(),
            }];
            if sp.spec.purge_on_delete {
                steps.extend(
                    status
                        .and_then(|s| s.service_principal_id.clone())
                        .map(Step::Purge),
                );
                steps.push(Step::Purge(app.id.clone()));
            }
            steps
        }
        (Teardown::Created { .. }, None) if may_exist(sp, now) => vec![Step::WaitOutReplication {
            recorded: status.and_then(|s| s.object_id.clone()),
        }],
        (Teardown::Created { .. }, None) => vec![],
        // Only if it held the application (its marks name this object, as its adoption wrote them before
        // adding anything). An object whose adoption was denied or lost to another holder added nothing: the
        // passwords of its name and the credentials there are someone else's.
        (Teardown::Adopted { .. }, Some(app))
            if naming::ownership_marks(&app.tags).object_of(cluster_id)
                == Some(&format!("{ns}/{name}")) =>
        {
            let passwords = credentials::ours(app, Kind::Password, &ns, &name)
                .into_iter()
                .map(|p| Step::RemovePassword {
                    object_id: app.id.clone(),
                    key_id: p.key_id.clone(),
                });
            let certificates = credentials::ours(app, Kind::Certificate, &ns, &name)
                .into_iter()
                .map(|p| Step::RemoveCertificate {
                    app_id: app.app_id.clone(),
                    key_id: p.key_id.clone(),
                });
            let federated = status
                .iter()
                .flat_map(|s| s.federated_credentials.iter())
                .map(|fic| Step::DeleteFederatedCredential {
                    object_id: app.id.clone(),
                    name: fic.clone(),
                });
            passwords.chain(certificates).chain(federated).collect()
        }
        // Gone, or held by another: nothing of this object's is there.
        (Teardown::Adopted { .. }, _) => vec![],
    }
}

/// Whether an application this object cannot find may still exist (see `Step::WaitOutReplication`).
fn may_exist(sp: &ServicePrincipal, now: Timestamp) -> bool {
    let status = sp.status.as_ref();
    let recorded = status.is_some_and(|s| s.object_id.is_some());
    let replicating = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == protocol::WAITING_FOR_REPLICATION)
    });
    let young = sp
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).as_secs() < YOUNG.as_secs() as i64);
    recorded || replicating || young
}

pub async fn cleanup(sp: &ServicePrincipal, ctx: &Context) -> Result<Action, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let teardown = teardown(sp, &ctx.cluster_id);
    let found = match &teardown {
        Teardown::Orphan => None,
        Teardown::Created { unique_name } => {
            ctx.graph.application_by_unique_name(unique_name).await?
        }
        Teardown::Adopted { app_id } => match ctx.graph.application_by_app_id(app_id).await {
            Ok(found) => found,
            // Never the operator's to touch: nothing of this object's is there.
            Err(e) if e.class() == ErrorClass::Forbidden => None,
            Err(e) => return Err(e.into()),
        },
    };
    if teardown != Teardown::Orphan {
        // Before the passwords go: no vault is left holding one that no longer signs in.
        remove_from_vaults(sp, ctx).await?;
    }
    for step in steps(sp, &teardown, found.as_ref(), &ctx.cluster_id, clock::now()) {
        execute(sp, ctx, step).await?;
    }
    if let Some(target) = &sp.spec.secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(secret) = secrets.get_opt(&target.name).await?
            && secrets::owned_by(&secret, sp)
        {
            secrets
                .delete(&target.name, &DeleteParams::default())
                .await?;
        }
    }
    ctx.metrics
        .set_credential(["ServicePrincipal", &ns, &name], None);
    for target in &sp.spec.key_vault_secrets {
        let object = ["ServicePrincipal", ns.as_str(), name.as_str()];
        ctx.metrics
            .set_vault_expiry(object, target.vault_name(), &target.name, None);
    }
    if let Some(status) = &sp.status {
        ctx.drift.forget(
            &[&status.object_id, &status.service_principal_id]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
    }
    Ok(Action::await_change())
}

/// Removes this object's Key Vault secrets (see `key_vault::remove`), in the vaults a policy still lets the
/// namespace write to; one it no longer may is left as it is, with a Warning, rather than holding up the
/// delete for good.
async fn remove_from_vaults(sp: &ServicePrincipal, ctx: &Context) -> Result<(), Error> {
    let targets = &sp.spec.key_vault_secrets;
    if targets.is_empty() {
        return Ok(());
    }
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let labels = super::application::namespace_labels(ctx, &ns).await?;
    let owner = key_vault::owner_mark(&ctx.cluster_id, &ns, "ServicePrincipal", &name);
    let policies = ctx.policies.state();
    for (i, target) in targets.iter().enumerate() {
        let field = format!("spec.keyVaultSecrets[{i}].vault");
        if let Err(denied) = may_write(&policies, &ns, &labels, &field, &target.vault) {
            let note = format!(
                "Left Key Vault secret {} in place: {denied}",
                target.display()
            );
            publish(ctx, sp, EventType::Warning, "KeyVaultSecretLeft", &note).await;
            continue;
        }
        key_vault::remove(ctx, target, &owner, sp.spec.purge_on_delete).await?;
    }
    Ok(())
}

async fn execute(sp: &ServicePrincipal, ctx: &Context, step: Step) -> Result<(), Error> {
    match step {
        Step::Orphaned => {
            publish(
                ctx,
                sp,
                EventType::Normal,
                "Orphaned",
                "deletionPolicy Orphan: the application is left in Azure",
            )
            .await;
        }
        Step::DeleteApplication { id, unique_name } => {
            ctx.graph.delete_application(&id).await?;
            let object = format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any());
            info!(object = %object, unique_name = %unique_name, "deleted application");
        }
        Step::Purge(id) => ctx.graph.purge_deleted(&id).await?,
        Step::WaitOutReplication { recorded } => {
            if let Some(id) = &recorded
                && ctx.graph.delete_application(id).await?
            {
                return Ok(());
            }
            if !ctx
                .absences
                .held_for(&sp.uid().unwrap_or_default(), REPLICATION_GRACE)
            {
                return Err(Error::NotYetVisible("the application to delete", None));
            }
        }
        Step::RemovePassword { object_id, key_id } => {
            ctx.graph.remove_password(&object_id, &key_id).await?
        }
        Step::RemoveCertificate { app_id, key_id } => {
            if let Some(app) = ctx.graph.application_by_app_id(&app_id).await? {
                issuance::remove(&ctx.graph, &app, Kind::Certificate, &key_id, None).await?
            }
        }
        Step::DeleteFederatedCredential { object_id, name } => {
            ctx.graph
                .delete_federated_credential(&object_id, &name)
                .await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::SignedDuration,
    };
    use serde_json::json;

    use super::*;
    use crate::{
        api::ServicePrincipalStatus,
        fixtures::{
            CLUSTER_ID, NAMESPACE, application, key_id, password, service_principal_with, t0,
        },
    };

    /// An hour after the fixtures' objects were created: no longer young.
    fn later() -> Timestamp {
        t0() + SignedDuration::from_hours(1)
    }

    fn status(object_id: Option<&str>, federated: &[&str]) -> ServicePrincipalStatus {
        ServicePrincipalStatus {
            object_id: object_id.map(str::to_string),
            service_principal_id: Some("principal-web".into()),
            federated_credentials: federated.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn web(spec: serde_json::Value, status: Option<ServicePrincipalStatus>) -> ServicePrincipal {
        let mut sp = service_principal_with("web", spec);
        sp.status = status;
        sp
    }

    #[test]
    fn a_delete_under_each_deletion_policy() {
        let adopt = json!({"adopt": {"appId": "app-web"}});
        let ours = application(
            "web",
            vec![
                password("web", 1, t0(), 365),
                password("other", 1, t0(), 365),
            ],
        );
        let theirs = application("someone", vec![password("web", 1, t0(), 365)]);
        let mut replicating = status(None, &[]);
        replicating.conditions = vec![Condition {
            type_: conditions::READY.into(),
            status: "False".into(),
            reason: protocol::WAITING_FOR_REPLICATION.into(),
            message: String::new(),
            last_transition_time: Time(t0()),
            observed_generation: Some(1),
        }];
        let delete_app = || Step::DeleteApplication {
            id: "object-web".into(),
            unique_name: naming::unique_name(CLUSTER_ID, NAMESPACE, "web", "uid-web"),
        };
        let table = [
            (
                "Orphan",
                web(json!({"deletionPolicy": "Orphan"}), None),
                Some(&ours),
                later(),
                vec![Step::Orphaned],
            ),
            (
                "Orphan, adopted",
                web(
                    json!({"deletionPolicy": "Orphan", "adopt": {"appId": "app-web"}}),
                    None,
                ),
                Some(&ours),
                later(),
                vec![Step::Orphaned],
            ),
            (
                "Delete: the application found",
                web(json!({}), None),
                Some(&ours),
                later(),
                vec![delete_app()],
            ),
            (
                "Delete and purge: the service principal first",
                web(
                    json!({"purgeOnDelete": true}),
                    Some(status(Some("object-web"), &[])),
                ),
                Some(&ours),
                later(),
                vec![
                    delete_app(),
                    Step::Purge("principal-web".into()),
                    Step::Purge("object-web".into()),
                ],
            ),
            (
                "Delete: not found, old, nothing recorded",
                web(json!({}), None),
                None,
                later(),
                vec![],
            ),
            (
                "Delete: not found, young",
                web(json!({}), None),
                None,
                t0(),
                vec![Step::WaitOutReplication { recorded: None }],
            ),
            (
                "Delete: not found, an id recorded",
                web(json!({}), Some(status(Some("object-web"), &[]))),
                None,
                later(),
                vec![Step::WaitOutReplication {
                    recorded: Some("object-web".into()),
                }],
            ),
            (
                "Delete: not found, waiting for replication",
                web(json!({}), Some(replicating)),
                None,
                later(),
                vec![Step::WaitOutReplication { recorded: None }],
            ),
            (
                "Delete, adopted and held: only what this object added",
                web(adopt.clone(), Some(status(Some("object-web"), &["mine"]))),
                Some(&ours),
                later(),
                vec![
                    Step::RemovePassword {
                        object_id: "object-web".into(),
                        key_id: key_id("web", 1),
                    },
                    Step::DeleteFederatedCredential {
                        object_id: "object-web".into(),
                        name: "mine".into(),
                    },
                ],
            ),
            (
                "Delete, adopted but held by another: nothing",
                web(adopt.clone(), Some(status(None, &["mine"]))),
                Some(&theirs),
                later(),
                vec![],
            ),
            (
                "Delete, adopted, gone",
                web(adopt, None),
                None,
                t0(),
                vec![],
            ),
        ];
        for (name, sp, found, now, want) in table {
            let teardown = teardown(&sp, CLUSTER_ID);
            assert_eq!(
                steps(&sp, &teardown, found, CLUSTER_ID, now),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn teardown_looks_up_the_application_by_how_the_object_holds_it() {
        assert_eq!(
            teardown(&web(json!({"deletionPolicy": "Orphan"}), None), CLUSTER_ID),
            Teardown::Orphan
        );
        assert_eq!(
            teardown(&web(json!({}), None), CLUSTER_ID),
            Teardown::Created {
                unique_name: naming::unique_name(CLUSTER_ID, NAMESPACE, "web", "uid-web")
            }
        );
        assert_eq!(
            teardown(&web(json!({"adopt": {"appId": "app-x"}}), None), CLUSTER_ID),
            Teardown::Adopted {
                app_id: "app-x".into()
            }
        );
    }
}
