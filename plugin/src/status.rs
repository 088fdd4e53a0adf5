//! `kubectl entra status`: one row per object (Ready, why, when its credential expires, when it rotates
//! next), the most urgent first.

use entra_operator::api::{
    CredentialRotation, CredentialWatch, RoleDelegation, ServicePrincipal, conditions,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{ResourceExt, api::ListParams};
use serde::Serialize;

use crate::{
    cli::Format,
    cluster::Cluster,
    render::{self, Cell},
};

/// One object's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub kind: &'static str,
    /// None for a cluster-scoped kind (CredentialWatch).
    pub namespace: Option<String>,
    pub name: String,
    /// The Ready condition's status: True, False, Unknown, or Unknown when there is none yet.
    pub ready: String,
    pub reason: String,
    pub expires: Option<Timestamp>,
    pub next_rotation: Option<Timestamp>,
}

impl Row {
    fn new(kind: &'static str, object: &impl ResourceExt, conditions: &[Condition]) -> Row {
        let ready = conditions::find(conditions, "Ready");
        Row {
            kind,
            namespace: object.namespace(),
            name: object.name_any(),
            ready: ready.map_or("Unknown", |c| c.status.as_str()).to_string(),
            reason: ready.map_or("NoStatus", |c| c.reason.as_str()).to_string(),
            expires: None,
            next_rotation: None,
        }
    }
}

fn at(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

pub fn service_principal(sp: &ServicePrincipal) -> Row {
    let status = sp.status.clone().unwrap_or_default();
    let mut row = Row::new("ServicePrincipal", sp, &status.conditions);
    row.expires = status.credential.and_then(|c| at(&c.end_date_time));
    row
}

pub fn role_delegation(rd: &RoleDelegation) -> Row {
    let status = rd.status.clone().unwrap_or_default();
    Row::new("RoleDelegation", rd, &status.conditions)
}

pub fn credential_rotation(crot: &CredentialRotation) -> Row {
    let status = crot.status.clone().unwrap_or_default();
    let mut row = Row::new("CredentialRotation", crot, &status.conditions);
    row.expires = at(&status.expires_at);
    row.next_rotation = at(&status.next_rotation_time);
    row
}

pub fn credential_watch(watch: &CredentialWatch) -> Row {
    let status = watch.status.clone().unwrap_or_default();
    let mut row = Row::new("CredentialWatch", watch, &status.conditions);
    row.expires = at(&status.earliest_expiry);
    row
}

/// Most urgent first: not Ready before Ready, then the soonest expiry (none last), then the soonest
/// rotation, then by kind, namespace and name so that the order is stable.
pub fn sort_most_urgent(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        let key = |r: &Row| {
            (
                r.ready == "True",
                r.expires.is_none(),
                r.expires,
                r.next_rotation.is_none(),
                r.next_rotation,
            )
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)))
    });
}

/// Every object of the four kinds in the namespace asked for (CredentialWatches are cluster-scoped: all).
pub async fn rows(cluster: &Cluster) -> anyhow::Result<Vec<Row>> {
    let lp = ListParams::default();
    let mut rows = vec![];
    for sp in cluster.api::<ServicePrincipal>().list(&lp).await? {
        rows.push(service_principal(&sp));
    }
    for rd in cluster.api::<RoleDelegation>().list(&lp).await? {
        rows.push(role_delegation(&rd));
    }
    for crot in cluster.api::<CredentialRotation>().list(&lp).await? {
        rows.push(credential_rotation(&crot));
    }
    let watches = kube::Api::<CredentialWatch>::all(cluster.client.clone());
    for watch in watches.list(&lp).await? {
        rows.push(credential_watch(&watch));
    }
    sort_most_urgent(&mut rows);
    Ok(rows)
}

pub fn table(rows: &[Row], now: Timestamp, colour: bool) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            vec![
                Cell::from(r.kind),
                Cell::from(r.namespace.as_deref().unwrap_or("-")),
                Cell::from(r.name.as_str()),
                render::ready_cell(&r.ready),
                Cell::from(r.reason.as_str()),
                Cell::from(render::maybe_when(r.expires, now)),
                Cell::from(render::maybe_when(r.next_rotation, now)),
            ]
        })
        .collect();
    let headers = [
        "KIND",
        "NAMESPACE",
        "NAME",
        "READY",
        "REASON",
        "EXPIRES",
        "NEXT ROTATION",
    ];
    render::table(&headers, &cells, colour)
}

pub async fn list(cluster: &Cluster, format: Format) -> anyhow::Result<()> {
    let rows = rows(cluster).await?;
    if rows.is_empty() && format == Format::Table {
        return render::print("No entra-operator objects found.\n");
    }
    let now = Timestamp::now();
    render::emit(format, &rows, || table(&rows, now, render::colour_on()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn row(name: &str, ready: &str, expires: Option<Timestamp>) -> Row {
        Row {
            kind: "ServicePrincipal",
            namespace: Some("ns".into()),
            name: name.into(),
            ready: ready.into(),
            reason: String::new(),
            expires,
            next_rotation: None,
        }
    }

    #[test]
    fn the_most_urgent_come_first() {
        let mut rows = vec![
            row("ready-never-expires", "True", None),
            row("ready-late", "True", t(900)),
            row("unknown-late", "Unknown", t(500)),
            row("ready-soon", "True", t(10)),
            row("failed-no-expiry", "False", None),
            row("failed-soon", "False", t(20)),
        ];
        sort_most_urgent(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "failed-soon",
                "unknown-late",
                "failed-no-expiry",
                "ready-soon",
                "ready-late",
                "ready-never-expires"
            ]
        );
    }

    #[test]
    fn a_row_reads_ready_expiry_and_rotation_from_status() {
        let crot: CredentialRotation = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotation",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"serviceprincipalRef": null, "applicationId": "a", "targets": {}},
            "status": {
                "expiresAt": "2027-01-15T08:00:10Z", "nextRotationTime": "2027-01-15T08:00:05Z",
                "conditions": [{"type": "Ready", "status": "False", "reason": "TargetFailed",
                    "message": "", "lastTransitionTime": "2027-01-15T08:00:00Z"}],
            },
        }))
        .unwrap();
        let r = credential_rotation(&crot);
        assert_eq!(
            (r.ready.as_str(), r.reason.as_str()),
            ("False", "TargetFailed")
        );
        assert_eq!((r.expires, r.next_rotation), (t(10), t(5)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["expires"], "2027-01-15T08:00:10Z");
        assert_eq!(json["nextRotation"], "2027-01-15T08:00:05Z");
        let sp: ServicePrincipal = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": "p", "namespace": "ns"}, "spec": {"displayName": "p"},
        }))
        .unwrap();
        let r = service_principal(&sp);
        assert_eq!(
            (r.ready.as_str(), r.reason.as_str(), r.expires),
            ("Unknown", "NoStatus", None)
        );
    }
}
