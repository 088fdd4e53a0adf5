//! Applications: whether a namespace may act on an existing Entra application it did not create (rotate its
//! client secrets by applicationId). Pure: no I/O.

use std::{borrow::Borrow, collections::BTreeMap};

use kube::ResourceExt;

use super::selecting;
use crate::api::delegation_policy::DelegationPolicy;

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

}
