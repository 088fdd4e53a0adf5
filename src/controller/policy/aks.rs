//! AKS clusters: whether a namespace's CredentialRotation may reset a cluster's service principal profile
//! (resetServicePrincipalProfile). The reset replaces the identity the cluster itself runs as, so naming a
//! cluster in spec.targets.aksClusters would otherwise hand it to whichever application the namespace
//! rotates. Pure: no I/O; what the cluster uses now is read by the caller and passed in.

use std::{borrow::Borrow, collections::BTreeMap};

use kube::ResourceExt;

use super::selecting;
use crate::{api::delegation_policy::DelegationPolicy, azure::scope::Scope};

/// The reset asked for: entry `index` of spec.targets.aksClusters.
pub struct Reset<'a> {
    pub index: usize,
    pub cluster: &'a str,
    /// servicePrincipalProfile.clientId as the cluster reports it now; None when it could not be read
    /// because the cluster does not exist (the reset then fails on its own, reported on the entry).
    pub current_client_id: Option<&'a str>,
    /// The application whose secret is rotated.
    pub app_id: &'a str,
    /// spec.targets.reassignAksClusters.
    pub reassign: bool,
}

/// Why a reset is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No selecting policy allows it.
    DeniedByPolicy(String),
    /// The cluster runs as another application and the spec does not ask to move it.
    NotUsingApplication(String),
}

/// Whether the rotation may reset `reset.cluster`: Ok names the policy that allows it.
pub fn may_reset(
    policies: &[impl Borrow<DelegationPolicy>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    reset: &Reset,
) -> Result<String, Refusal> {
    let field = format!("spec.targets.aksClusters[{}]", reset.index);
    let cluster = Scope::parse(reset.cluster)
        .map_err(|e| Refusal::DeniedByPolicy(format!("{field}: {e}")))?;
    // Every selecting policy that lists the cluster, by name: reassignment may come from any of them.
    let listing: Vec<&DelegationPolicy> = selecting(policies, labels)
        .into_iter()
        .filter(|p| {
            p.spec
                .aks_clusters
                .iter()
                // An entry that does not parse allows nothing: an administrator's typo must not open access.
                .filter_map(|s| Scope::parse(s).ok())
                .any(|s| s.contains(&cluster))
        })
        .collect();
    let Some(first) = listing.first() else {
        return Err(Refusal::DeniedByPolicy(format!(
            "{field}: no DelegationPolicy that selects namespace {namespace} lists cluster {cluster} (or a scope \
             containing it) in its aksClusters"
        )));
    };
    let uses = match reset.current_client_id {
        None => return Ok(first.name_any()),
        Some(current) if current.eq_ignore_ascii_case(reset.app_id) => {
            return Ok(first.name_any());
        }
        Some(current) => current,
    };
    if !reset.reassign {
        return Err(Refusal::NotUsingApplication(format!(
            "{field}: cluster {cluster} uses application {uses}, not application {} that this rotation rotates; \
             it is left as it is (set spec.targets.reassignAksClusters, allowed by a DelegationPolicy's \
             aksClusterReassignment, to move the cluster to this application)",
            reset.app_id
        )));
    }
    listing
        .iter()
        .find(|p| p.spec.aks_cluster_reassignment)
        .map(|p| p.name_any())
        .ok_or_else(|| {
            Refusal::DeniedByPolicy(format!(
                "spec.targets.reassignAksClusters: cluster {cluster} ({field}) uses application {uses}; no \
                 DelegationPolicy that selects namespace {namespace} and lists it in aksClusters sets \
                 aksClusterReassignment, so it is not moved to application {}",
                reset.app_id
            ))
        })
}

/// The normalised id of a cluster, for telling whether two rotations name the same one (ARM ids are
/// case-insensitive); None for text that is no ARM id.
pub fn cluster_key(cluster: &str) -> Option<String> {
    Scope::parse(cluster)
        .ok()
        .map(|s| s.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::policy::test_support::{labels, policy};

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const APP: &str = "aaaaaaaa-0000-4000-8000-00000000aaaa";
    const OTHER: &str = "bbbbbbbb-0000-4000-8000-00000000bbbb";

    fn cluster(rg: &str, name: &str) -> String {
        format!(
            "{SUB}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"
        )
    }

    fn listing(name: &str, team: &str, clusters: &[&str], reassignment: bool) -> DelegationPolicy {
        let mut p = policy(name, team, &[], &[]);
        p.spec.aks_clusters = clusters.iter().map(|s| s.to_string()).collect();
        p.spec.aks_cluster_reassignment = reassignment;
        p
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Allowed(&'static str),
        Denied(&'static str, &'static str),
        NotUsing(&'static str),
    }

    #[test]
    fn resets_are_decided_by_the_policy_and_the_clusters_current_application() {
        let prod = cluster("rg-aks", "prod");
        let rg = format!("{SUB}/resourceGroups/rg-aks");
        let app_upper = APP.to_uppercase();
        let upper = prod
            .to_uppercase()
            .replace("SUBSCRIPTIONS", "subscriptions");
        // (what, policies, the namespace's team, the cluster's current client id, spec reassign, wanted)
        type Case<'a> = (
            &'a str,
            Vec<DelegationPolicy>,
            &'a str,
            Option<&'a str>,
            bool,
            Want,
        );
        let cases: Vec<Case> = vec![
            (
                "no policy at all",
                vec![],
                "a",
                Some(APP),
                false,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "a policy for another namespace",
                vec![listing("p", "b", &[&prod], true)],
                "a",
                Some(APP),
                false,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "a selecting policy that lists other clusters",
                vec![listing("p", "a", &[&cluster("rg-aks", "dev")], true)],
                "a",
                Some(APP),
                false,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "a sibling resource group is no container",
                vec![listing(
                    "p",
                    "a",
                    &[&format!("{SUB}/resourceGroups/rg-ak")],
                    true,
                )],
                "a",
                Some(APP),
                false,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "a selecting policy that lists only role scopes",
                vec![{
                    let mut p = policy("p", "a", &[&rg], &["Contributor"]);
                    p.spec.aks_cluster_reassignment = true;
                    p
                }],
                "a",
                Some(APP),
                true,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "an unparsable entry allows nothing",
                vec![listing("p", "a", &["/subscriptions/*"], true)],
                "a",
                Some(APP),
                false,
                Want::Denied("spec.targets.aksClusters[0]", "aksClusters"),
            ),
            (
                "listed, uses the app",
                vec![listing("p", "a", &[&prod], false)],
                "a",
                Some(APP),
                false,
                Want::Allowed("p"),
            ),
            (
                "listed in another casing",
                vec![listing("p", "a", &[&upper], false)],
                "a",
                Some(&app_upper),
                false,
                Want::Allowed("p"),
            ),
            (
                "its resource group is listed",
                vec![listing("p", "a", &[&rg], false)],
                "a",
                Some(APP),
                false,
                Want::Allowed("p"),
            ),
            (
                "its subscription is listed",
                vec![listing("p", "a", &[SUB], false)],
                "a",
                Some(APP),
                false,
                Want::Allowed("p"),
            ),
            (
                "a cluster that could not be read",
                vec![listing("p", "a", &[&prod], false)],
                "a",
                None,
                false,
                Want::Allowed("p"),
            ),
            (
                "uses another app",
                vec![listing("p", "a", &[&prod], true)],
                "a",
                Some(OTHER),
                false,
                Want::NotUsing("spec.targets.aksClusters[0]"),
            ),
            (
                "reassignment asked, not allowed",
                vec![listing("p", "a", &[&prod], false)],
                "a",
                Some(OTHER),
                true,
                Want::Denied("spec.targets.reassignAksClusters", "aksClusterReassignment"),
            ),
            (
                "reassignment allowed by a policy that does not list the cluster",
                vec![
                    listing("p", "a", &[&prod], false),
                    listing("q", "a", &[&cluster("rg-aks", "dev")], true),
                ],
                "a",
                Some(OTHER),
                true,
                Want::Denied("spec.targets.reassignAksClusters", "aksClusterReassignment"),
            ),
            (
                "reassignment asked and allowed",
                vec![
                    listing("p", "a", &[&prod], false),
                    listing("q", "a", &[&rg], true),
                ],
                "a",
                Some(OTHER),
                true,
                Want::Allowed("q"),
            ),
            (
                "reassignment allowed, not asked",
                vec![listing("p", "a", &[&prod], true)],
                "a",
                Some("msi"),
                false,
                Want::NotUsing("spec.targets.aksClusters[0]"),
            ),
        ];
        for (what, policies, team, current, reassign, want) in cases {
            let reset = Reset {
                index: 0,
                cluster: &prod,
                current_client_id: current,
                app_id: APP,
                reassign,
            };
            let got = may_reset(&policies, "ns", &labels(team), &reset);
            match (&want, &got) {
                (Want::Allowed(name), Ok(p)) => assert_eq!(p, name, "{what}"),
                (Want::Denied(spec, field), Err(Refusal::DeniedByPolicy(m))) => {
                    assert!(
                        m.starts_with(spec) && m.contains(field) && m.contains("namespace ns"),
                        "{what}: {m}"
                    )
                }
                (Want::NotUsing(spec), Err(Refusal::NotUsingApplication(m))) => assert!(
                    m.starts_with(spec)
                        && m.contains(current.unwrap())
                        && m.contains(APP)
                        && m.contains("spec.targets.reassignAksClusters"),
                    "{what}: {m}"
                ),
                _ => panic!("{what}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_entry_index_is_named() {
        let reset = Reset {
            index: 3,
            cluster: &cluster("rg", "c"),
            current_client_id: Some(APP),
            app_id: APP,
            reassign: false,
        };
        let Err(Refusal::DeniedByPolicy(m)) =
            may_reset(&[] as &[DelegationPolicy], "ns", &labels("a"), &reset)
        else {
            panic!("denied")
        };
        assert!(m.starts_with("spec.targets.aksClusters[3]"), "{m}");
    }

    #[test]
    fn one_cluster_in_two_spellings_has_one_key() {
        let a = cluster("rg-aks", "prod");
        let b = a
            .replace("resourceGroups", "resourcegroups")
            .replace("prod", "PROD");
        assert_eq!(cluster_key(&a), cluster_key(&b));
        assert_ne!(cluster_key(&a), cluster_key(&cluster("rg-aks", "dev")));
        assert_eq!(cluster_key("not an id"), None);
    }
}
