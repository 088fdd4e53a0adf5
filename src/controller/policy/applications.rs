//! Applications: whether a namespace may act on an existing Entra application it did not create (rotate its
//! client secrets by applicationId, adopt it with a ServicePrincipal's spec.adopt). Pure: no I/O.

use std::{borrow::Borrow, collections::BTreeMap};

use kube::ResourceExt;

use super::selecting;
use crate::{api::delegation_policy::DelegationPolicy, controller::naming::Marks};

/// Whether a CredentialRotation in the namespace may rotate the secrets of application `app_id`: Ok names the
/// policy that lists it.
pub fn may_rotate(
    policies: &[impl Borrow<DelegationPolicy>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    app_id: &str,
) -> Result<String, String> {
    selecting(policies, labels)
        .iter()
        .find(|p| p.spec.applications.iter().any(|a| a.eq_ignore_ascii_case(app_id)))
        .map(|p| p.name_any())
        .ok_or_else(|| {
            format!(
                "spec.applicationId: no DelegationPolicy that selects namespace {namespace} lists application {app_id} \
                 in its applications"
            )
        })
}

/// Why a ServicePrincipal may adopt an application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Its ownership marks say that this cluster created it for this very object (namespace and name), e.g.
    /// left in Azure by a deleted object of the same name with deletionPolicy Orphan: the namespace's own.
    CreatedForIt,
    /// A policy that selects the namespace lists it in `applications`: the policy's name.
    Listed(String),
}

/// Whether ServicePrincipal `namespace/name` of cluster `cluster_id` may adopt application `app_id`, whose
/// ownership marks are `marks` (None when the operator cannot read the application). Being owned by the
/// operator's identity is no ground: that identity owns every application it created for any namespace.
pub fn may_adopt(
    policies: &[impl Borrow<DelegationPolicy>],
    cluster_id: &str,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    app_id: &str,
    marks: Option<&Marks>,
) -> Result<Adoption, String> {
    if marks.is_some_and(|m| m.created_for(cluster_id, namespace, name)) {
        return Ok(Adoption::CreatedForIt);
    }
    selecting(policies, labels)
        .iter()
        .find(|p| p.spec.applications.iter().any(|a| a.eq_ignore_ascii_case(app_id)))
        .map(|p| Adoption::Listed(p.name_any()))
        .ok_or_else(|| {
            format!(
                "spec.adopt.appId: application {app_id} was not created by this cluster for {namespace}/{name}, \
                 and no DelegationPolicy that selects namespace {namespace} lists it in its applications"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::policy::test_support::{labels, policy};

    #[test]
    fn applications_are_rotated_only_where_a_policy_lists_them() {
        let mut p = policy("aks", "a", &[], &[]);
        p.spec.applications = vec!["5A5A5A5A-0000-4000-8000-000000005A5A".into()];
        let app = "5a5a5a5a-0000-4000-8000-000000005a5a";
        assert_eq!(
            may_rotate(std::slice::from_ref(&p), "ns", &labels("a"), app),
            Ok("aks".into())
        );
        let e = may_rotate(&[p], "ns", &labels("b"), app).unwrap_err();
        assert!(e.starts_with("spec.applicationId"), "{e}");
    }

    #[test]
    fn adoption_needs_marks_naming_this_object_or_a_policy_listing_the_application() {
        use crate::controller::naming::{ADOPTED_MARK, ownership_marks, ownership_tags};
        let app = "5a5a5a5a-0000-4000-8000-000000005a5a";
        let mut listing = policy("legacy", "a", &[], &[]);
        listing.spec.applications = vec![app.to_uppercase()];
        // A policy that allows other things (roles, other applications) is no ground.
        let mut other = policy("other", "a", &["/subscriptions/s"], &["*"]);
        other.spec.applications = vec!["f1f1f1f1-0000-4000-8000-00000000f1f1".into()];
        let own = ownership_marks(&ownership_tags("c1", "ns", "sp"));
        let adopted = ownership_marks(
            &ownership_tags("c1", "ns", "sp")
                .into_iter()
                .chain([ADOPTED_MARK.to_string()])
                .collect::<Vec<_>>(),
        );
        let none: [DelegationPolicy; 0] = [];
        // (case, policies, cluster, namespace, name, marks, expected: Err(()) is a denial)
        type Row<'a> = (
            &'a str,
            &'a [DelegationPolicy],
            &'a str,
            &'a str,
            &'a str,
            Option<&'a Marks>,
            Result<Adoption, ()>,
        );
        let table: Vec<Row> = vec![
            (
                "created for it, no policy",
                &none,
                "c1",
                "ns",
                "sp",
                Some(&own),
                Ok(Adoption::CreatedForIt),
            ),
            (
                "another object's",
                &none,
                "c1",
                "ns",
                "thief",
                Some(&own),
                Err(()),
            ),
            (
                "another namespace's",
                &none,
                "c1",
                "intruder",
                "sp",
                Some(&own),
                Err(()),
            ),
            (
                "another cluster's",
                &none,
                "c2",
                "ns",
                "sp",
                Some(&own),
                Err(()),
            ),
            (
                "adopted before, policy gone",
                &none,
                "c1",
                "ns",
                "sp",
                Some(&adopted),
                Err(()),
            ),
            (
                "unmarked, no policy",
                &none,
                "c1",
                "ns",
                "sp",
                None,
                Err(()),
            ),
            (
                "policy allows other things",
                std::slice::from_ref(&other),
                "c1",
                "ns",
                "thief",
                Some(&own),
                Err(()),
            ),
            (
                "listed",
                std::slice::from_ref(&listing),
                "c1",
                "ns",
                "thief",
                None,
                Ok(Adoption::Listed("legacy".into())),
            ),
            (
                "listed, adopted before",
                std::slice::from_ref(&listing),
                "c1",
                "ns",
                "sp",
                Some(&adopted),
                Ok(Adoption::Listed("legacy".into())),
            ),
        ];
        for (what, policies, cluster, ns, name, marks, want) in table {
            let got = may_adopt(policies, cluster, ns, name, &labels("a"), app, marks);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}"),
                (Err(e), Err(())) => {
                    assert!(
                        e.starts_with("spec.adopt.appId")
                            && e.contains(app)
                            && e.contains("applications"),
                        "{what}: {e}"
                    );
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
        // The listing policy must select the namespace.
        assert!(may_adopt(&[listing], "c1", "ns", "thief", &labels("b"), app, None).is_err());
    }
}
