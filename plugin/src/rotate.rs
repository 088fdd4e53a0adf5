//! `kubectl entra rotate NAME [--wait]`: sets a CredentialRotation's spec.rotationToken to the current time (the
//! manual rotation the CRD offers, which also works from Git), and with --wait follows the rotation until every
//! target holds the new key, or one refuses it.

use std::time::Duration;

use anyhow::Context;
use entra_operator::api::{
    CredentialRotation, conditions, credential_rotation::CredentialRotationStatus,
};
use jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;

use crate::{cli::Format, cluster::Cluster, render};

/// Where a rotation stands against the token the plugin set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "state"
)]
pub enum Progress {
    /// The operator has not acted on the token yet.
    Waiting { reason: String },
    /// The new key is issued; `published` of `total` targets hold it.
    Publishing {
        key_id: String,
        published: usize,
        total: usize,
    },
    /// Every target holds the new key, and the rotation is Ready again.
    Done { key_id: String },
    /// A target refused the new key.
    Failed {
        key_id: String,
        target: String,
        message: String,
    },
}

/// The rotation's progress towards `token`, from its status.
pub fn progress(status: &CredentialRotationStatus, token: &str) -> Progress {
    let ready = conditions::find(&status.conditions, "Ready");
    let reason = ready.map_or("NoStatus", |c| c.reason.as_str()).to_string();
    let key = match &status.current_key_id {
        Some(key) if status.observed_rotation_token.as_deref() == Some(token) => key.clone(),
        _ => return Progress::Waiting { reason },
    };
    if let Some(failed) = status.targets.iter().find(|t| t.state == "Failed") {
        return Progress::Failed {
            key_id: key,
            target: format!("{} {}", failed.kind, failed.name),
            message: failed.message.clone().unwrap_or_default(),
        };
    }
    let published = status
        .targets
        .iter()
        .filter(|t| t.state == "Published" && t.key_id.as_deref() == Some(key.as_str()))
        .count();
    // Ready as well: the status may be written between clearing the targets and listing the new key's, and
    // Ready is True again only once the rotation has settled.
    if published == status.targets.len() && ready.is_some_and(|c| c.status == "True") {
        Progress::Done { key_id: key }
    } else {
        Progress::Publishing {
            key_id: key,
            published,
            total: status.targets.len(),
        }
    }
}

/// One line of the progress display.
pub fn line(p: &Progress) -> String {
    match p {
        Progress::Waiting { reason } => {
            format!("waiting for the operator to rotate (Ready: {reason})")
        }
        Progress::Publishing {
            key_id,
            published,
            total,
        } => {
            format!("new key {key_id}: {published}/{total} targets hold it")
        }
        Progress::Done { key_id } => format!("every target holds the new key {key_id}"),
        Progress::Failed {
            key_id,
            target,
            message,
        } => {
            format!("{target} refused the new key {key_id}: {message}")
        }
    }
}

/// The result, for -o json|yaml.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    namespace: String,
    name: String,
    rotation_token: String,
    progress: Option<Progress>,
}

/// Sets the token; with `wait`, follows the rotation. True when it failed or timed out (exit 1).
pub async fn run(
    cluster: &Cluster,
    name: &str,
    wait: Option<Duration>,
    format: Format,
) -> anyhow::Result<bool> {
    let ns = cluster.one_namespace()?;
    let api: Api<CredentialRotation> = Api::namespaced(cluster.client.clone(), ns);
    let token = Timestamp::now().to_string();
    let patch = json!({"spec": {"rotationToken": token}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("CredentialRotation {ns}/{name}"))?;
    if format == Format::Table {
        render::print(&format!(
            "CredentialRotation {ns}/{name}: spec.rotationToken set to {token}\n\
             If Git manages this object, set `spec.rotationToken: \"{token}\"` in its manifest too, or the next \
             sync reverts the field (the rotation, once made, stays).\n"
        ))?;
    }
    let mut outcome = Outcome {
        namespace: ns.into(),
        name: name.into(),
        rotation_token: token.clone(),
        progress: None,
    };
    if let Some(timeout) = wait {
        outcome.progress =
            Some(follow(&api, name, &token, timeout, format == Format::Table).await?);
    }
    let failed = !matches!(outcome.progress, None | Some(Progress::Done { .. }));
    if format != Format::Table {
        render::emit(format, &outcome, String::new)?;
    }
    Ok(failed)
}

/// Polls the rotation every two seconds, printing each change of progress, until it is done, failed, or
/// `timeout` passes (then the last progress, which the caller reports as a failure).
async fn follow(
    api: &Api<CredentialRotation>,
    name: &str,
    token: &str,
    timeout: Duration,
    show: bool,
) -> anyhow::Result<Progress> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<Progress> = None;
    loop {
        let status = api.get(name).await?.status.unwrap_or_default();
        let now = progress(&status, token);
        if show && last.as_ref() != Some(&now) {
            render::print(&format!("{}\n", line(&now)))?;
        }
        let finished = matches!(now, Progress::Done { .. } | Progress::Failed { .. });
        if finished || tokio::time::Instant::now() >= deadline {
            if !finished && show {
                render::print(&format!("gave up after {}s\n", timeout.as_secs()))?;
            }
            return Ok(now);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(observed: &str, key: &str, targets: &[(&str, &str)]) -> CredentialRotationStatus {
        let settled = targets
            .iter()
            .all(|(state, k)| *state == "Published" && k == &key);
        let (ready, reason) = if settled {
            ("True", "Ready")
        } else {
            ("False", "Rotating")
        };
        serde_json::from_value(json!({
            "observedRotationToken": observed,
            "currentKeyId": key,
            "targets": targets.iter().map(|(state, key)| json!({
                "kind": "Secret", "name": "creds", "keyId": key, "state": state, "message": "refused",
            })).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "",
                "lastTransitionTime": "2027-01-15T08:00:00Z"}],
        }))
        .unwrap()
    }

    #[test]
    fn a_rotation_is_followed_until_every_target_holds_the_new_key_or_one_fails() {
        let waiting = Progress::Waiting {
            reason: "Ready".into(),
        };
        assert_eq!(
            progress(&status("old", "k1", &[("Published", "k1")]), "t"),
            waiting
        );
        let mut unsettled = status("t", "k2", &[("Published", "k2")]);
        unsettled.conditions[0].status = "False".into();
        let publishing = Progress::Publishing {
            key_id: "k2".into(),
            published: 1,
            total: 1,
        };
        assert_eq!(
            progress(&unsettled, "t"),
            publishing,
            "not Done before Ready"
        );
        let publishing = progress(
            &status("t", "k2", &[("Published", "k2"), ("Pending", "k1")]),
            "t",
        );
        assert_eq!(
            publishing,
            Progress::Publishing {
                key_id: "k2".into(),
                published: 1,
                total: 2
            }
        );
        assert_eq!(line(&publishing), "new key k2: 1/2 targets hold it");
        let shown = serde_json::to_value(&publishing).unwrap();
        assert_eq!(
            shown,
            json!({"state": "publishing", "keyId": "k2", "published": 1, "total": 2})
        );
        let stale = progress(&status("t", "k2", &[("Published", "k1")]), "t");
        assert_eq!(
            stale,
            Progress::Publishing {
                key_id: "k2".into(),
                published: 0,
                total: 1
            }
        );
        let done = progress(
            &status("t", "k2", &[("Published", "k2"), ("Published", "k2")]),
            "t",
        );
        assert_eq!(
            done,
            Progress::Done {
                key_id: "k2".into()
            }
        );
        let failed = progress(
            &status("t", "k2", &[("Published", "k2"), ("Failed", "k1")]),
            "t",
        );
        assert_eq!(
            failed,
            Progress::Failed {
                key_id: "k2".into(),
                target: "Secret creds".into(),
                message: "refused".into()
            }
        );
    }
}
