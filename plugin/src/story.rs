//! `kubectl entra status KIND NAME`: one object's whole story: its conditions, its recent Events, its
//! rotation targets and verification, and the Azure ids it stands for.

use anyhow::bail;
use entra_operator::api::{CredentialRotation, CredentialWatch, RoleDelegation, ServicePrincipal};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{cli::Format, cluster::Cluster, render, status};

/// The kinds `status` tells stories of, by any name kubectl would accept for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ServicePrincipal,
    RoleDelegation,
    CredentialRotation,
    CredentialWatch,
}

/// The kind a user typed: its kind name, plural or short name (the CRDs' shortNames), any case.
pub fn kind(text: &str) -> anyhow::Result<Kind> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "sp" | "serviceprincipal" | "serviceprincipals" => Kind::ServicePrincipal,
        "rd" | "roledelegation" | "roledelegations" => Kind::RoleDelegation,
        "crot" | "credentialrotation" | "credentialrotations" => Kind::CredentialRotation,
        "cwatch" | "credentialwatch" | "credentialwatches" => Kind::CredentialWatch,
        _ => bail!(
            "unknown kind {text:?}: one of serviceprincipal (sp), roledelegation (rd), \
             credentialrotation (crot), credentialwatch (cwatch)"
        ),
    })
}

/// One Event about the object, as `kubectl events` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Happened {
    pub time: Option<Timestamp>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
}

/// The whole story.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Story {
    #[serde(flatten)]
    pub row: status::Row,
    pub conditions: Vec<Condition>,
    pub events: Vec<Happened>,
    /// A rotation's targets (status.targets), empty otherwise.
    pub targets: Value,
    pub verification: Value,
    /// appId, objectId, servicePrincipalId, tenantId, roleAssignmentId: those the object has.
    pub azure_ids: Value,
}

pub async fn show(
    cluster: &Cluster,
    kind_text: &str,
    name: &str,
    format: Format,
) -> anyhow::Result<()> {
    let kind = kind(kind_text)?;
    let mut story = match kind {
        Kind::CredentialWatch => {
            let watch = kube::Api::<CredentialWatch>::all(cluster.client.clone())
                .get(name)
                .await?;
            let status = watch.status.clone().unwrap_or_default();
            story(
                status::credential_watch(&watch),
                status.conditions,
                json!({}),
                json!(null),
                json!({}),
            )
        }
        _ => namespaced(cluster, kind, name).await?,
    };
    story.events = events(cluster, &story.row).await?;
    let now = Timestamp::now();
    render::emit(format, &story, || text(&story, now))
}

fn story(
    row: status::Row,
    conditions: Vec<Condition>,
    targets: Value,
    verification: Value,
    ids: Value,
) -> Story {
    let azure_ids = match ids {
        // Only the ids the object has, so that the output names no field that is empty.
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    };
    Story {
        row,
        conditions,
        events: vec![],
        targets,
        verification,
        azure_ids,
    }
}

async fn namespaced(cluster: &Cluster, kind: Kind, name: &str) -> anyhow::Result<Story> {
    let ns = cluster.one_namespace()?;
    let client = cluster.client.clone();
    Ok(match kind {
        Kind::ServicePrincipal => {
            let sp = kube::Api::<ServicePrincipal>::namespaced(client, ns)
                .get(name)
                .await?;
            let s = sp.status.clone().unwrap_or_default();
            let ids = json!({"appId": s.app_id, "objectId": s.object_id,
                "servicePrincipalId": s.service_principal_id, "tenantId": s.tenant_id,
                "credentialKeyId": s.credential.as_ref().map(|c| &c.key_id)});
            story(
                status::service_principal(&sp),
                s.conditions,
                json!([]),
                json!(s.verification),
                ids,
            )
        }
        Kind::RoleDelegation => {
            let rd = kube::Api::<RoleDelegation>::namespaced(client, ns)
                .get(name)
                .await?;
            let s = rd.status.clone().unwrap_or_default();
            let ids = json!({"roleAssignmentId": s.role_assignment_id,
                "roleDefinitionId": s.role_definition_id, "principalId": s.principal_id});
            story(
                status::role_delegation(&rd),
                s.conditions,
                json!([]),
                json!(null),
                ids,
            )
        }
        Kind::CredentialRotation => {
            let crot = kube::Api::<CredentialRotation>::namespaced(client, ns)
                .get(name)
                .await?;
            let s = crot.status.clone().unwrap_or_default();
            let ids = json!({"appId": crot.spec.application_id, "currentKeyId": s.current_key_id,
                "previousKeyId": s.previous_key_id});
            story(
                status::credential_rotation(&crot),
                s.conditions,
                json!(s.targets),
                json!(s.verification),
                ids,
            )
        }
        Kind::CredentialWatch => unreachable!("cluster-scoped: show() reads it"),
    })
}

/// The object's Events (events.k8s.io/v1, `regarding` it), oldest first, the last ten.
async fn events(cluster: &Cluster, row: &status::Row) -> anyhow::Result<Vec<Happened>> {
    let api: kube::Api<Event> = match &row.namespace {
        Some(ns) => kube::Api::namespaced(cluster.client.clone(), ns),
        None => kube::Api::all(cluster.client.clone()),
    };
    let mut happened: Vec<Happened> = api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(&row.name) && r.kind.as_deref() == Some(row.kind)
            })
        })
        .map(|e| Happened {
            time: e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0)),
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
        })
        .collect();
    happened.sort_by_key(|h| h.time);
    let skip = happened.len().saturating_sub(10);
    Ok(happened.into_iter().skip(skip).collect())
}

/// The story as text, section by section.
pub fn text(story: &Story, now: Timestamp) -> String {
    let r = &story.row;
    let mut out = format!(
        "{} {}/{}\nReady:          {} ({})\nExpires:        {}\nNext rotation:  {}\n",
        r.kind,
        r.namespace.as_deref().unwrap_or("-"),
        r.name,
        r.ready,
        r.reason,
        render::maybe_when(r.expires, now),
        render::maybe_when(r.next_rotation, now),
    );
    out.push_str("\nConditions:\n");
    for c in &story.conditions {
        out.push_str(&format!(
            "  {} {} {}: {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    if let Value::Object(ids) = &story.azure_ids {
        out.push_str("\nAzure ids:\n");
        for (k, v) in ids {
            out.push_str(&format!(
                "  {k}: {}\n",
                v.as_str().unwrap_or(&v.to_string())
            ));
        }
    }
    if let Value::Array(targets) = &story.targets
        && !targets.is_empty()
    {
        out.push_str("\nTargets:\n");
        for t in targets {
            let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
            out.push_str(&format!(
                "  {} {}: {} (key {})\n",
                s("kind"),
                s("name"),
                s("state"),
                s("keyId")
            ));
        }
    }
    if !story.verification.is_null() {
        let v = &story.verification;
        out.push_str(&format!(
            "\nVerification:   key {}: {}/{} sign-ins over {}, last failure {}\n",
            v["keyId"].as_str().unwrap_or("-"),
            v["successes"],
            v["required"],
            v["window"].as_str().unwrap_or("-"),
            v["lastFailure"].as_str().unwrap_or("none"),
        ));
    }
    out.push_str("\nEvents:\n");
    for e in &story.events {
        let time = render::maybe_when(e.time, now);
        out.push_str(&format!("  {time}  {} {}: {}\n", e.type_, e.reason, e.note));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_as_kubectl_reads_them() {
        let cases = [
            ("sp", Kind::ServicePrincipal),
            ("ServicePrincipal", Kind::ServicePrincipal),
            ("roledelegations", Kind::RoleDelegation),
            ("crot", Kind::CredentialRotation),
            ("cwatch", Kind::CredentialWatch),
        ];
        for (text, want) in cases {
            assert_eq!(kind(text).unwrap(), want, "{text}");
        }
        assert!(kind("secret").unwrap_err().to_string().contains("(crot)"));
    }

    #[test]
    fn azure_ids_name_only_what_the_object_has() {
        let row = status::Row {
            kind: "RoleDelegation",
            namespace: Some("ns".into()),
            name: "r".into(),
            ready: "True".into(),
            reason: "Assigned".into(),
            expires: None,
            next_rotation: None,
        };
        let s = story(
            row,
            vec![],
            json!([]),
            json!(null),
            json!({"roleAssignmentId": "x", "principalId": null}),
        );
        assert_eq!(s.azure_ids, json!({"roleAssignmentId": "x"}));
        let shown = text(&s, Timestamp::UNIX_EPOCH);
        assert!(shown.contains("Ready:          True (Assigned)"), "{shown}");
        assert!(shown.contains("  roleAssignmentId: x\n"), "{shown}");
        assert!(!shown.contains("Verification"), "{shown}");
    }
}
