//! The tenancy boundary: every action the operator takes in Azure for an object is authorized here, for the
//! object's namespace, before it happens. A namespace is a tenant; the cluster's DelegationPolicies say what
//! each may do, and without a policy that allows an action it is denied. Pure: no I/O, so that every rule is
//! table-tested. One file per kind of action:
//!
//! - `grants`: role assignments (RoleDelegation scope, role, custom role);
//! - `applications`: existing applications (adoption by a ServicePrincipal, rotation by applicationId);
//! - `aks`: AKS clusters (resetting a cluster's service principal profile);
//! - `key_vaults`: Key Vaults (writing a secret into a vault, for a Key Vault target).

pub mod aks;
pub mod applications;
pub mod grants;
pub mod key_vaults;

use std::{borrow::Borrow, collections::BTreeMap};

use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
};

use crate::api::delegation_policy::DelegationPolicy;

pub use applications::may_rotate;
pub use grants::{Decision, PRIVILEGED, RoleAsked, can_assign_roles, decide};

/// The policies that select a namespace with `labels`, by name: so that the policy recorded as allowing
/// something does not depend on the store's order.
pub(crate) fn selecting<'a>(
    policies: &'a [impl Borrow<DelegationPolicy>],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a DelegationPolicy> {
    let mut selecting: Vec<&DelegationPolicy> = policies
        .iter()
        .map(Borrow::borrow)
        .filter(|p| selects(p, labels))
        .collect();
    selecting.sort_by_key(|p| p.name_any());
    selecting
}

fn selects(policy: &DelegationPolicy, labels: &BTreeMap<String, String>) -> bool {
    // A selector that does not parse selects nothing: an administrator's typo must not open access.
    Selector::try_from(policy.spec.namespace_selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Case-insensitive match of `text` against `pattern`, where '*' in the pattern matches any run of characters.
/// A '*' in the text is an ordinary character, so a wildcard action is allowed only by a pattern as broad.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let (p, t) = (p.as_bytes(), t.as_bytes());
    // Iterative wildcard matching with one backtrack point: linear enough for action strings.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use crate::api::delegation_policy::{DelegationPolicy, DelegationPolicySpec};

    /// A policy that selects namespaces labelled team=`team`, allowing `roles` at `scopes`.
    pub fn policy(name: &str, team: &str, scopes: &[&str], roles: &[&str]) -> DelegationPolicy {
        let mut p = DelegationPolicy::new(
            name,
            DelegationPolicySpec {
                namespace_selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("team".into(), team.into())])),
                    ..Default::default()
                },
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                roles: roles.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        p.metadata.name = Some(name.into());
        p
    }

    pub fn labels(team: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("team".into(), team.into())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_arm_action_patterns() {
        assert!(glob("*", "Microsoft.Compute/disks/read"));
        assert!(glob(
            "Microsoft.Compute/*/read",
            "microsoft.compute/disks/read"
        ));
        assert!(!glob("Microsoft.Compute/disks/*", "Microsoft.Compute/*"));
        assert!(!glob(
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/readx"
        ));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }
}
