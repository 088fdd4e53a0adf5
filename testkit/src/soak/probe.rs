//! A probe during the churn: the most passwords an application holds at once. A CredentialRotation promises at
//! most two of the operator's passwords at any time; others are reported as seen. It also remembers whose
//! service principal each id was, to name the object an orphaned role assignment was made for.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kube::{Api, ResourceExt, api::ListParams};
use serde_json::Value;

use entra_operator::api::{CredentialRotation, ServicePrincipal};

use super::at;

#[derive(Default)]
pub(super) struct Sampled {
    pub(super) samples: u64,
    pub(super) most_rotated: usize,
    pub(super) most_other: usize,
    pub(super) over_two: BTreeMap<String, String>,
}

impl Sampled {
    /// Counts the operator's passwords on each application of a live ServicePrincipal in one state of the
    /// emulator (`world`); `rotated` names the objects a rotation has taken over.
    fn count(
        &mut self,
        world: &Value,
        app_of: &BTreeMap<String, String>,
        rotated: &BTreeMap<String, String>,
        start: Instant,
    ) {
        let out = self;
        for app in world["directory"]["applications"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Some(owner) = app["appId"].as_str().and_then(|a| app_of.get(a)) else {
                continue;
            };
            let ours = app["passwordCredentials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["displayName"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("entra-operator:"))
                })
                .count();
            match rotated.get(owner) {
                Some(rotation) => {
                    out.most_rotated = out.most_rotated.max(ours);
                    if ours > 2 && !out.over_two.contains_key(owner) {
                        out.over_two.insert(
                        owner.clone(),
                        format!(
                            "ServicePrincipal {owner}: {ours} passwords on application {} at {:.1}s while \
                             CredentialRotation {rotation} manages it",
                            app["appId"].as_str().unwrap_or_default(),
                            at(start)
                        ),
                    );
                    }
                }
                None => out.most_other = out.most_other.max(ours),
            }
        }
    }
}

/// Service principal id -> the ServicePrincipal it was last seen on, to name the object an orphaned role
/// assignment was made for.
pub(super) type Identities = Arc<Mutex<BTreeMap<String, String>>>;

pub(super) async fn sample(
    sps: Api<ServicePrincipal>,
    crots: Api<CredentialRotation>,
    azure: (reqwest::Client, String),
    identities: Identities,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Sampled {
    let mut out = Sampled::default();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (Ok(rotations), Ok(objects)) = (
            crots.list(&ListParams::default()).await,
            sps.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        // Rotated: a rotation has taken the object's password over (it published one).
        let rotated: BTreeMap<String, String> = rotations
            .items
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.current_key_id.is_some())
            })
            .filter_map(|c| {
                Some((
                    c.spec.service_principal_ref.as_ref()?.name.clone(),
                    c.name_any(),
                ))
            })
            .collect();
        let mut app_of: BTreeMap<String, String> = BTreeMap::new();
        for sp in &objects.items {
            if let Some(s) = &sp.status
                && let (Some(app), Some(principal)) = (&s.app_id, &s.service_principal_id)
            {
                app_of.insert(app.clone(), sp.name_any());
                identities
                    .lock()
                    .unwrap()
                    .insert(principal.to_ascii_lowercase(), sp.name_any());
            }
        }
        let Ok(resp) = azure
            .0
            .get(format!("{}/_emulator/state", azure.1))
            .send()
            .await
        else {
            continue;
        };
        let Ok(world) = resp.json::<Value>().await else {
            continue;
        };
        out.samples += 1;
        out.count(&world, &app_of, &rotated, start);
    }
    out
}
