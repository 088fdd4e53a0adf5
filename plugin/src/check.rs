//! `kubectl entra check`: whether the operator can do its job, as far as the cluster shows it: its CRDs are
//! installed as this plugin (and so the operator of the same version) defines them, and a replica holds the
//! leader-election Lease and keeps renewing it.

use entra_operator::api;
use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::Lease,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::{
    cli::{CheckArgs, Format},
    cluster::Cluster,
    render::{self, Cell, Colour},
};

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

fn finding(check: impl Into<String>, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        ok,
        detail: detail.into(),
    }
}

/// Whether the installed CRD is the one this version defines: same versions, same schemas, same served and
/// storage flags (what decides what the API server accepts and returns).
pub fn crd_matches(
    expected: &CustomResourceDefinition,
    installed: Option<&CustomResourceDefinition>,
) -> Finding {
    let name = expected.name_any();
    let Some(installed) = installed else {
        return finding(
            format!("CRD {name}"),
            false,
            "not installed: apply crds/ (or install the chart)",
        );
    };
    // Only what the operator defines and the API server keeps as given (it defaults other fields of a CRD).
    let versions = |crd: &CustomResourceDefinition| {
        let shown: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| {
                (
                    &v.name,
                    v.served,
                    v.storage,
                    serde_json::to_value(&v.schema).unwrap_or_default(),
                )
            })
            .collect();
        serde_json::to_value(shown).unwrap_or_default()
    };
    if versions(installed) == versions(expected) {
        let served: Vec<&str> = expected
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        finding(
            format!("CRD {name}"),
            true,
            format!(
                "installed, {} as this version defines it",
                served.join(", ")
            ),
        )
    } else {
        finding(
            format!("CRD {name}"),
            false,
            "installed, but not as this version defines it: upgrade the CRDs (or this plugin) to match the operator",
        )
    }
}

/// Whether a replica leads: the Lease names a holder and was renewed within its duration of `now`.
pub fn leads(lease: Option<&Lease>, now: Timestamp) -> Finding {
    let check = "operator leader";
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return finding(
            check,
            false,
            "no Lease: the operator is not running, or runs without --leader-election",
        );
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match renewed {
        Some(at) if !holder.is_empty() && now.as_second() - at.as_second() <= duration => {
            let ago = now.as_second() - at.as_second();
            finding(
                check,
                true,
                format!("{holder} holds the Lease (renewed {ago}s ago)"),
            )
        }
        _ => finding(
            check,
            false,
            format!("the Lease has run out (last holder {holder:?}): no replica leads"),
        ),
    }
}

pub async fn run(cluster: &Cluster, args: &CheckArgs, format: Format) -> anyhow::Result<bool> {
    let crds = Api::<CustomResourceDefinition>::all(cluster.client.clone());
    let mut findings = vec![];
    for expected in api::crds() {
        let installed = crds.get_opt(&expected.name_any()).await?;
        findings.push(crd_matches(&expected, installed.as_ref()));
    }
    let leases = Api::<Lease>::namespaced(cluster.client.clone(), &args.operator_namespace);
    let lease = leases.get_opt(&args.lease).await?;
    findings.push(leads(lease.as_ref(), Timestamp::now()));
    render::emit(format, &findings, || table(&findings, render::colour_on()))?;
    Ok(findings.iter().any(|f| !f.ok))
}

fn table(findings: &[Finding], colour: bool) -> String {
    let rows: Vec<Vec<Cell>> = findings
        .iter()
        .map(|f| {
            let (text, c) = if f.ok {
                ("ok", Colour::Green)
            } else {
                ("FAIL", Colour::Red)
            };
            vec![
                Cell::from(f.check.as_str()),
                Cell {
                    text: text.into(),
                    colour: Some(c),
                },
                Cell::from(f.detail.as_str()),
            ]
        })
        .collect();
    render::table(&["CHECK", "RESULT", "DETAIL"], &rows, colour)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_crd_matches_only_as_this_version_defines_it() {
        let expected = api::crds().remove(0);
        assert!(crd_matches(&expected, Some(&expected)).ok);
        assert!(!crd_matches(&expected, None).ok);
        let mut older = expected.clone();
        older.spec.versions[0].schema = None;
        let f = crd_matches(&expected, Some(&older));
        assert!(!f.ok && f.detail.contains("upgrade"), "{f:?}");
    }

    #[test]
    fn a_replica_leads_while_it_renews_the_lease_within_its_duration() {
        let now: Timestamp = "2027-01-15T08:00:30Z".parse().unwrap();
        let lease = |holder: &str, renewed: &str| -> Lease {
            serde_json::from_value(json!({"metadata": {"name": "entra-operator"}, "spec": {
                "holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}}))
            .unwrap()
        };
        let fresh = leads(Some(&lease("pod-a", "2027-01-15T08:00:20.000000Z")), now);
        assert!(
            fresh.ok && fresh.detail.contains("pod-a") && fresh.detail.contains("10s ago"),
            "{fresh:?}"
        );
        assert!(!leads(Some(&lease("pod-a", "2027-01-15T08:00:00.000000Z")), now).ok);
        assert!(!leads(Some(&lease("", "2027-01-15T08:00:29.000000Z")), now).ok);
        assert!(!leads(None, now).ok);
    }
}
