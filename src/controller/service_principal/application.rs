//! The application a ServicePrincipal converges: the one created for it (found by its derived uniqueName), or
//! an existing one spec.adopt names, adopted only once authorized by a policy or its ownership marks and
//! claimed against every other object that may want it. Read first, written only when something differs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt, runtime::events::EventType};
use serde_json::json;
use tracing::info;

use super::{Error, federated::foreign_credential};
use crate::{
    api::ServicePrincipal,
    azure::{
        error::ErrorClass,
        graph::{Application, FederatedIdentityCredential},
    },
    controller::{
        Context,
        claims::{self, Claimant},
        naming,
        policy::{self, applications::Adoption},
        publish,
    },
};

/// The application as the spec says, and what was read of it on the way.
pub struct Found {
    pub app: Application,
    /// Its federated credentials, when the adoption read them (before anything was written).
    pub federated: Option<Vec<FederatedIdentityCredential>>,
    /// Whether every credential on it is this object's: created for it (or adopted on that ground).
    pub all_ours: bool,
}

/// The application, created, updated or adopted as the spec says (`tags`: see `plan::tags`).
pub async fn ensure(
    sp: &ServicePrincipal,
    ctx: &Context,
    tags: Vec<String>,
) -> Result<Found, Error> {
    Ok(match &sp.spec.adopt {
        Some(adopt) => {
            let adopted = adopted_application(ctx, sp, &adopt.app_id, tags).await?;
            Found {
                all_ours: adopted.ground == Adoption::CreatedForIt,
                federated: Some(adopted.credentials),
                app: adopted.app,
            }
        }
        None => {
            let key = naming::unique_name(
                &ctx.cluster_id,
                &sp.namespace().unwrap_or_default(),
                &sp.name_any(),
                &sp.uid().unwrap_or_default(),
            );
            let fields =
                json!({"displayName": sp.spec.display_name, "notes": sp.spec.notes, "tags": tags});
            Found {
                app: created_application(ctx, sp, &key, &fields, &tags).await?,
                federated: None,
                all_ours: true,
            }
        }
    })
}

/// The application this object created (found by its uniqueName), created or updated as the spec says.
async fn created_application(
    ctx: &Context,
    sp: &ServicePrincipal,
    key: &str,
    fields: &serde_json::Value,
    tags: &[String],
) -> Result<Application, Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    Ok(match ctx.graph.application_by_unique_name(key).await? {
        Some(app) if app_matches(&app, &sp.spec.display_name, sp.spec.notes.as_deref(), tags) => {
            app
        }
        found => {
            let (_, created_id) = ctx.graph.upsert_application_id(key, fields).await?;
            if found.is_none() {
                info!(object = %format!("{ns}/{name}"), unique_name = %key, "created application");
                publish(
                    ctx,
                    sp,
                    EventType::Normal,
                    "ApplicationCreated",
                    &format!("Created application {key}"),
                )
                .await;
            }
            ctx.graph
                .application_by_unique_name(key)
                .await?
                .ok_or(Error::NotYetVisible("the application", created_id))?
        }
    })
}

/// An application spec.adopt names, once adopting it is authorized and claimed.
struct Adopted {
    app: Application,
    ground: Adoption,
    /// Its federated credentials, read before anything was written.
    credentials: Vec<FederatedIdentityCredential>,
}

/// An existing application named by spec.adopt, updated in place (never renamed by uniqueName) once three
/// things hold, decided before any write: this object may adopt it (`policy::applications::may_adopt`: being
/// owned by the operator's identity proves nothing, since that identity owns every namespace's
/// applications), no other object holds it (`claim`), and none of spec.federatedCredentials would overwrite
/// a credential of the same name that this object did not add.
async fn adopted_application(
    ctx: &Context,
    sp: &ServicePrincipal,
    app_id: &str,
    mut tags: Vec<String>,
) -> Result<Adopted, Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let (app, marks, ground) = authorized(ctx, sp, app_id).await?;
    claim(ctx, sp, app_id, &marks).await?;
    let credentials = ctx.graph.federated_credentials(&app.id).await?;
    if ground != Adoption::CreatedForIt
        && let Some(message) = foreign_credential(sp, app_id, &credentials)
    {
        return Err(Error::Conflict(message));
    }
    if matches!(ground, Adoption::Listed(_)) {
        tags.push(naming::ADOPTED_MARK.to_string());
    }
    let app = if app_matches(&app, &sp.spec.display_name, sp.spec.notes.as_deref(), &tags) {
        app
    } else {
        if let Adoption::Listed(policy) = &ground {
            info!(object = %format!("{ns}/{name}"), app_id, policy = %policy, "adopting an application a policy lists");
        }
        let fields =
            json!({"displayName": sp.spec.display_name, "notes": sp.spec.notes, "tags": tags});
        ctx.graph.update_application(&app.id, &fields).await?;
        ctx.graph
            .application_by_app_id(app_id)
            .await?
            .ok_or(Error::NotYetVisible("the adopted application", None))?
    };
    Ok(Adopted {
        app,
        ground,
        credentials,
    })
}

/// The application spec.adopt names, its ownership marks (none if it could not be read) and the ground on
/// which this object may adopt it. Authorization first: a namespace with no ground learns nothing about who
/// holds the application, or whether it exists.
async fn authorized(
    ctx: &Context,
    sp: &ServicePrincipal,
    app_id: &str,
) -> Result<(Application, naming::Marks, Adoption), Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let labels = namespace_labels(ctx, &ns).await?;
    let read = match ctx.graph.application_by_app_id(app_id).await {
        Ok(app) => Ok(app),
        Err(e) if e.class() == ErrorClass::Forbidden => Err(e),
        Err(e) => return Err(e.into()),
    };
    let marks = match &read {
        Ok(Some(app)) => Some(naming::ownership_marks(&app.tags)),
        _ => None,
    };
    let ground = policy::applications::may_adopt(
        &ctx.policies.state(),
        &ctx.cluster_id,
        &ns,
        &name,
        &labels,
        app_id,
        marks.as_ref(),
    )
    .map_err(Error::DeniedByPolicy)?;
    match read {
        Ok(Some(app)) => Ok((app, marks.unwrap_or_default(), ground)),
        Ok(None) => Err(Error::Adoption(format!(
            "spec.adopt.appId: no application {app_id} exists"
        ))),
        Err(e) => Err(Error::Adoption(format!(
            "spec.adopt.appId: the operator's identity does not own application {app_id} ({})",
            e.code()
        ))),
    }
}

/// The labels policies select the namespace by.
pub(super) async fn namespace_labels(
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, String>, Error> {
    Ok(Api::<Namespace>::all(ctx.client.clone())
        .get(ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default())
}

/// How strongly a ServicePrincipal holds an application: the lower, the stronger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    /// It created the application (its status records it, or the marks name it, and it adopts nothing).
    Creator,
    /// It adopts the application, and the marks (written by its adoption) name it.
    Marked,
    /// It adopts the application, and its status records it (an adoption before marks were checked).
    Recorded,
    /// It asks to adopt the application, and has not yet.
    Asking,
}

/// How `sp` holds application `app_id`, whose ownership marks are `marks`; None if it does not claim it.
fn hold(
    sp: &ServicePrincipal,
    cluster_id: &str,
    app_id: &str,
    marks: &naming::Marks,
) -> Option<Hold> {
    let recorded = sp
        .status
        .as_ref()
        .and_then(|s| s.app_id.as_deref())
        .is_some_and(|a| a.eq_ignore_ascii_case(app_id));
    let adopting = sp
        .spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.app_id.eq_ignore_ascii_case(app_id));
    let named = marks.object_of(cluster_id)
        == Some(&format!(
            "{}/{}",
            sp.namespace().unwrap_or_default(),
            sp.name_any()
        ));
    match () {
        _ if sp.spec.adopt.is_none() && (recorded || named) => Some(Hold::Creator),
        _ if adopting && named => Some(Hold::Marked),
        _ if adopting && recorded => Some(Hold::Recorded),
        _ if adopting => Some(Hold::Asking),
        _ => None,
    }
}

/// Whether `me`, holding as `mine`, may act on what `others` also claim: the strongest hold wins, and among
/// equals the oldest object (`claims::check`). Err names the holder.
fn holder(me: &Claimant, mine: Hold, others: &[(Hold, Claimant)]) -> Result<(), Claimant> {
    let Some(best) = others.iter().map(|(h, _)| *h).min() else {
        return Ok(());
    };
    let strongest: Vec<Claimant> = others
        .iter()
        .filter(|(h, _)| *h == best)
        .map(|(_, c)| c.clone())
        .collect();
    if best < mine {
        let oldest = strongest
            .iter()
            .find(|c| claims::check(c, &strongest).is_ok())
            .unwrap_or(&strongest[0]);
        return Err(oldest.clone());
    }
    if best == mine {
        return claims::check(me, &strongest);
    }
    Ok(())
}

/// The exclusive claim on an adopted application: another cluster named by its marks, another
/// ServicePrincipal of this cluster that holds it (created it, adopted it, or may adopt it and is older), or
/// a CredentialRotation that may rotate it by spec.applicationId and is older, holds it instead; this object
/// then gets a Conflict naming the holder and writes nothing. Objects that ask but have no ground hold
/// nothing, so that a denied object cannot block an allowed one.
async fn claim(
    ctx: &Context,
    sp: &ServicePrincipal,
    app_id: &str,
    marks: &naming::Marks,
) -> Result<(), Error> {
    let conflict = |holder: String| {
        Error::Conflict(format!(
            "spec.adopt.appId: application {app_id} is held by {holder}; this object changes nothing in it"
        ))
    };
    if let Some(cluster) = marks.other_cluster(&ctx.cluster_id) {
        let objects = marks.objects.join(", ");
        return Err(conflict(format!("cluster {cluster} (object {objects})")));
    }
    let me = Claimant::of(sp);
    let mine = hold(sp, &ctx.cluster_id, app_id, marks).unwrap_or(Hold::Asking);
    let policies = ctx.policies.state();
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut others = vec![];
    for other in ctx.claims.service_principals() {
        let them = Claimant::of(other.as_ref());
        if them.namespace == me.namespace && them.name == me.name {
            continue;
        }
        let Some(theirs) = hold(&other, &ctx.cluster_id, app_id, marks) else {
            continue;
        };
        if theirs == Hold::Asking {
            if !labels.contains_key(&them.namespace) {
                let found = namespace_labels(ctx, &them.namespace).await?;
                labels.insert(them.namespace.clone(), found);
            }
            let allowed = policy::applications::may_adopt(
                &policies,
                &ctx.cluster_id,
                &them.namespace,
                &them.name,
                &labels[&them.namespace],
                app_id,
                Some(marks),
            );
            if allowed.is_err() {
                continue;
            }
        }
        others.push((theirs, them));
    }
    holder(&me, mine, &others).map_err(|h| conflict(h.to_string()))?;
    let mut rotations = vec![];
    for rotation in ctx.claims.rotations() {
        if !rotation
            .spec
            .application_id
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(app_id))
        {
            continue;
        }
        let them = Claimant::of(rotation.as_ref());
        if !labels.contains_key(&them.namespace) {
            let found = namespace_labels(ctx, &them.namespace).await?;
            labels.insert(them.namespace.clone(), found);
        }
        if policy::may_rotate(&policies, &them.namespace, &labels[&them.namespace], app_id).is_ok()
        {
            rotations.push(them);
        }
    }
    claims::check(&me, &rotations).map_err(|h| conflict(h.to_string()))
}

fn app_matches(
    app: &Application,
    display_name: &str,
    notes: Option<&str>,
    tags: &[String],
) -> bool {
    let mut have = app.tags.clone();
    let mut want = tags.to_vec();
    have.sort();
    want.sort();
    app.display_name == display_name && app.notes.as_deref() == notes && have == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServicePrincipalSpec, ServicePrincipalStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const APP: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";

    fn sp(ns: &str, name: &str, created: i64, adopt: bool, recorded: bool) -> ServicePrincipal {
        let mut spec: ServicePrincipalSpec =
            serde_json::from_value(json!({"displayName": name})).unwrap();
        if adopt {
            spec.adopt = Some(crate::api::service_principal::Adopt {
                app_id: APP.to_uppercase(),
            });
        }
        let mut sp = ServicePrincipal::new(name, spec);
        sp.metadata.namespace = Some(ns.into());
        sp.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        if recorded {
            sp.status = Some(ServicePrincipalStatus {
                app_id: Some(APP.into()),
                ..Default::default()
            });
        }
        sp
    }

    #[test]
    fn how_an_object_holds_an_application() {
        let marks = naming::ownership_marks(&naming::ownership_tags("c1", "a", "owner"));
        let table = [
            (
                "created it (status)",
                sp("b", "x", 1, false, true),
                Some(Hold::Creator),
            ),
            (
                "created it (marks)",
                sp("a", "owner", 1, false, false),
                Some(Hold::Creator),
            ),
            (
                "adopted it, marked",
                sp("a", "owner", 1, true, true),
                Some(Hold::Marked),
            ),
            (
                "adopted it, recorded",
                sp("b", "x", 1, true, true),
                Some(Hold::Recorded),
            ),
            ("asks", sp("b", "x", 1, true, false), Some(Hold::Asking)),
            ("unrelated", sp("b", "x", 1, false, false), None),
        ];
        for (what, object, want) in table {
            assert_eq!(hold(&object, "c1", APP, &marks), want, "{what}");
        }
        // Marks of another cluster name nobody here.
        assert_eq!(
            hold(&sp("a", "owner", 1, true, false), "c2", APP, &marks),
            Some(Hold::Asking)
        );
    }

    #[test]
    fn the_strongest_hold_wins_then_the_oldest_object() {
        let c = |ns: &str, created: i64| Claimant::of(&sp(ns, "x", created, true, false));
        let (old, new) = (c("old", 100), c("new", 200));
        // Holding beats age: a victim that created or adopted the application keeps it against an older asker.
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Creator, new.clone())]),
            Err(new.clone())
        );
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Marked, new.clone())]),
            Err(new.clone())
        );
        assert_eq!(
            holder(&new, Hold::Marked, &[(Hold::Asking, old.clone())]),
            Ok(())
        );
        // Among equals the oldest, whatever order the store lists them in.
        assert_eq!(
            holder(&new, Hold::Asking, &[(Hold::Asking, old.clone())]),
            Err(old.clone())
        );
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Asking, new.clone())]),
            Ok(())
        );
        let older = c("older", 50);
        assert_eq!(
            holder(
                &new,
                Hold::Asking,
                &[
                    (Hold::Recorded, old.clone()),
                    (Hold::Recorded, older.clone())
                ]
            ),
            Err(older.clone())
        );
        assert_eq!(holder(&new, Hold::Asking, &[]), Ok(()), "alone");
    }

    #[test]
    fn a_same_named_credential_this_object_did_not_add_is_foreign() {
        let fic = |name: &str| FederatedIdentityCredential {
            id: String::new(),
            name: name.into(),
            issuer: "https://issuer".into(),
            subject: "system:serviceaccount:a:b".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
        };
        let mut adopter = sp("a", "x", 1, true, false);
        adopter.spec.federated_credentials = serde_json::from_value(json!([
            {"name": "mine", "issuer": "https://issuer", "subject": "s"},
            {"name": "Shared", "issuer": "https://issuer", "subject": "s"},
        ]))
        .unwrap();
        let current = [fic("shared"), fic("theirs")];
        let message = foreign_credential(&adopter, APP, &current).unwrap();
        assert!(
            message.starts_with("spec.federatedCredentials[1].name:") && message.contains("Shared"),
            "{message}"
        );
        adopter.status = Some(ServicePrincipalStatus {
            federated_credentials: vec!["mine".into(), "shared".into()],
            ..Default::default()
        });
        let current = [fic("shared"), fic("mine"), fic("theirs")];
        assert_eq!(
            foreign_credential(&adopter, APP, &current),
            None,
            "both its own"
        );
        assert_eq!(
            foreign_credential(&adopter, APP, &[fic("theirs")]),
            None,
            "no name taken"
        );
    }
}
