//! `kubectl entra expiring --within 30d`: every credential that expires within the window (or has expired),
//! soonest first; the exit code says whether there is any, for scripts and alerts.

use anyhow::Context;
use entra_operator::api::{CredentialRotation, CredentialWatch, ServicePrincipal};
use jiff::Timestamp;
use kube::{ResourceExt, api::ListParams};
use serde::Serialize;

use crate::{
    cli::Format,
    cluster::Cluster,
    render::{self, Cell, Colour},
};

/// One credential and where it was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiring {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    /// The application the credential is on, when the object says (a CredentialWatch's applications).
    pub app_id: Option<String>,
    pub key_id: String,
    pub expires: Timestamp,
}

/// The window: a Go duration (`720h`, as the CRDs take them, parsed by the operator's own parser) or a whole
/// number of days (`30d`, which Go's syntax lacks and people type).
pub fn window(text: &str) -> Result<std::time::Duration, String> {
    if let Some(days) = text.strip_suffix('d')
        && !days.is_empty()
        && days.bytes().all(|b| b.is_ascii_digit())
    {
        let hours = days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(24))
            .ok_or_else(|| format!("--within {text:?} is too long"))?;
        return window(&format!("{hours}h"));
    }
    let duration: entra_operator::api::Duration = text.parse()?;
    Ok(duration.as_std())
}

/// Those of `all` that expire before `now + within`, soonest first.
pub fn within(
    mut all: Vec<Expiring>,
    now: Timestamp,
    within: std::time::Duration,
) -> Vec<Expiring> {
    let end = jiff::SignedDuration::try_from(within)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    all.retain(|e| e.expires <= end);
    all.sort_by(|a, b| {
        (a.expires, a.kind, &a.namespace, &a.name, &a.key_id).cmp(&(
            b.expires,
            b.kind,
            &b.namespace,
            &b.name,
            &b.key_id,
        ))
    });
    all
}

fn seen(
    kind: &'static str,
    object: &impl ResourceExt,
    app_id: Option<String>,
    key_id: &str,
    expires: Timestamp,
) -> Expiring {
    Expiring {
        kind,
        namespace: object.namespace(),
        name: object.name_any(),
        app_id,
        key_id: key_id.to_string(),
        expires,
    }
}

/// Every credential with an expiry that the objects' statuses report.
pub async fn credentials(cluster: &Cluster) -> anyhow::Result<Vec<Expiring>> {
    let lp = ListParams::default();
    let mut all = vec![];
    for sp in cluster
        .api::<ServicePrincipal>()
        .list(&lp)
        .await
        .context("listing ServicePrincipals")?
    {
        let status = sp.status.clone().unwrap_or_default();
        if let Some(c) = &status.credential
            && let Some(end) = &c.end_date_time
        {
            all.push(seen(
                "ServicePrincipal",
                &sp,
                status.app_id.clone(),
                &c.key_id,
                end.0,
            ));
        }
    }
    for crot in cluster
        .api::<CredentialRotation>()
        .list(&lp)
        .await
        .context("listing CredentialRotations")?
    {
        let status = crot.status.clone().unwrap_or_default();
        if let (Some(key), Some(end)) = (&status.current_key_id, &status.expires_at) {
            all.push(seen(
                "CredentialRotation",
                &crot,
                crot.spec.application_id.clone(),
                key,
                end.0,
            ));
        }
    }
    let watches = kube::Api::<CredentialWatch>::all(cluster.client.clone());
    for watch in watches
        .list(&lp)
        .await
        .context("listing CredentialWatches")?
    {
        for app in watch.status.iter().flat_map(|s| &s.applications) {
            for c in &app.credentials {
                if let Some(end) = &c.end_date_time {
                    all.push(seen(
                        "CredentialWatch",
                        &watch,
                        Some(app.app_id.clone()),
                        &c.key_id,
                        end.0,
                    ));
                }
            }
        }
    }
    Ok(all)
}

pub fn table(rows: &[Expiring], now: Timestamp, colour: bool) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|e| {
            let expired = e.expires <= now;
            vec![
                Cell::from(e.kind),
                Cell::from(e.namespace.as_deref().unwrap_or("-")),
                Cell::from(e.name.as_str()),
                Cell::from(e.app_id.as_deref().unwrap_or("-")),
                Cell::from(e.key_id.as_str()),
                Cell {
                    text: render::when(e.expires, now),
                    colour: Some(if expired { Colour::Red } else { Colour::Yellow }),
                },
            ]
        })
        .collect();
    let headers = ["KIND", "NAMESPACE", "NAME", "APP ID", "KEY ID", "EXPIRES"];
    render::table(&headers, &cells, colour)
}

/// Lists what expires in the window; true when anything does (the caller exits 1).
pub async fn run(cluster: &Cluster, within_text: &str, format: Format) -> anyhow::Result<bool> {
    let span = window(within_text).map_err(|e| anyhow::anyhow!("--within: {e}"))?;
    let now = Timestamp::now();
    let rows = within(credentials(cluster).await?, now, span);
    if rows.is_empty() && format == Format::Table {
        render::print(&format!("Nothing expires within {within_text}.\n"))?;
    } else {
        render::emit(format, &rows, || table(&rows, now, render::colour_on()))?;
    }
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn windows_are_go_durations_or_days() {
        let h = |n: u64| std::time::Duration::from_secs(n * 3600);
        let cases: [(&str, Result<std::time::Duration, ()>); 8] = [
            ("30d", Ok(h(720))),
            ("720h", Ok(h(720))),
            ("1h30m", Ok(std::time::Duration::from_secs(5400))),
            ("1s", Ok(std::time::Duration::from_secs(1))),
            ("10000h", Ok(h(10_000))),
            ("d", Err(())),
            ("30 days", Err(())),
            ("99999999999999999999d", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(window(text).map_err(|_| ()), want, "{text}");
        }
    }

    fn credential(name: &str, expires: Timestamp) -> Expiring {
        Expiring {
            kind: "ServicePrincipal",
            namespace: Some("ns".into()),
            name: name.into(),
            app_id: None,
            key_id: "k".into(),
            expires,
        }
    }

    #[test]
    fn the_window_keeps_the_expired_and_the_soon_soonest_first() {
        let all = vec![
            credential("late", t(100)),
            credential("edge", t(60)),
            credential("expired", t(-5)),
            credential("soon", t(30)),
        ];
        let names = |rows: Vec<Expiring>| rows.into_iter().map(|e| e.name).collect::<Vec<_>>();
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(
            names(within(all.clone(), t(0), minute)),
            ["expired", "soon", "edge"]
        );
        assert_eq!(
            names(within(all.clone(), t(0), std::time::Duration::ZERO)),
            ["expired"]
        );
        assert_eq!(
            names(within(all, t(-10), std::time::Duration::ZERO)),
            Vec::<String>::new()
        );
    }
}
