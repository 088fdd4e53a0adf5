//! `kubectl entra policy explain -n NS --role ROLE --scope SCOPE [--principal ID]`: runs the operator's own
//! guardrail decision (`controller::policy::grants::decide`) against the cluster's DelegationPolicies and the
//! namespace's labels, and says which policy allows a RoleDelegation asking for that, or why each denies it.

use anyhow::Context;
use entra_operator::{
    api::{DelegationPolicy, delegation_policy::ViolationAction},
    azure::scope::{RoleDefinitionId, Scope},
    controller::policy::grants::{self, Decision, PrincipalAsked, RoleAsked},
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::ListParams};
use serde::Serialize;

use crate::{cli::Format, cluster::Cluster, render};

/// The answer, for people and scripts.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub namespace: String,
    pub role: String,
    pub scope: String,
    pub principal: Option<String>,
    pub allowed: bool,
    /// The allowing policy.
    pub policy: Option<String>,
    pub violations: Option<ViolationAction>,
    /// Why it is denied: each selecting policy and the field that refuses it.
    pub message: Option<String>,
}

/// The role as a RoleDelegation would name it: a definition GUID or id asks by id, anything else by name.
fn role_asked<'a>(text: &'a str, id: &'a Option<RoleDefinitionId>) -> RoleAsked<'a> {
    match id {
        Some(id) => RoleAsked::Id(id.guid()),
        None => RoleAsked::Name(text),
    }
}

/// Decides as the operator does before it asks Azure anything (so without what Azure says of the role's
/// definition: a role that can assign roles is refused later unless a policy names it).
pub fn explain(
    policies: &[DelegationPolicy],
    namespace: &Namespace,
    role: &str,
    scope: &str,
    principal: Option<&str>,
) -> anyhow::Result<Explanation> {
    let parsed = Scope::parse(scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
    let id = RoleDefinitionId::parse(role).ok();
    let labels = namespace.metadata.labels.clone().unwrap_or_default();
    let ns = namespace.metadata.name.clone().unwrap_or_default();
    let decision = grants::decide(
        policies,
        &ns,
        &labels,
        &parsed,
        role_asked(role, &id),
        PrincipalAsked::of(principal, None),
        None,
    );
    let mut out = Explanation {
        namespace: ns,
        role: role.to_string(),
        scope: scope.to_string(),
        principal: principal.map(str::to_string),
        allowed: false,
        policy: None,
        violations: None,
        message: None,
    };
    match decision {
        Decision::Allowed { policy, violations } => {
            out.allowed = true;
            out.policy = Some(policy);
            out.violations = Some(violations);
        }
        Decision::Denied { message, .. } => out.message = Some(message),
    }
    Ok(out)
}

pub fn text(e: &Explanation) -> String {
    let who = e
        .principal
        .as_deref()
        .map_or("its own ServicePrincipal".to_string(), |p| {
            format!("principal {p}")
        });
    let head = format!(
        "A RoleDelegation in {} granting {} at {} to {who}: ",
        e.namespace, e.role, e.scope
    );
    match (&e.policy, &e.message) {
        (Some(policy), _) if e.allowed => format!(
            "{head}allowed by DelegationPolicy {policy} (violations: {:?})\n",
            e.violations.unwrap_or_default()
        ),
        (_, message) => format!("{head}denied\n{}\n", message.as_deref().unwrap_or_default()),
    }
}

/// Explains; true when denied (exit 1).
pub async fn run(
    cluster: &Cluster,
    role: &str,
    scope: &str,
    principal: Option<&str>,
    format: Format,
) -> anyhow::Result<bool> {
    let ns = cluster.one_namespace()?;
    let namespace = Api::<Namespace>::all(cluster.client.clone())
        .get(ns)
        .await
        .with_context(|| format!("namespace {ns}"))?;
    let policies = Api::<DelegationPolicy>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing DelegationPolicies")?
        .items;
    let explanation = explain(&policies, &namespace, role, scope, principal)?;
    render::emit(format, &explanation, || text(&explanation))?;
    Ok(!explanation.allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUB: &str = "/subscriptions/00000000-0000-4000-8000-000000000001";

    fn namespace(team: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": team, "labels": {"team": team}}}))
            .unwrap()
    }

    fn policy(name: &str, team: &str, roles: &[&str]) -> DelegationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "DelegationPolicy",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": {"matchLabels": {"team": team}},
                "scopes": [format!("{SUB}/resourceGroups/{team}-web")], "roles": roles},
        }))
        .unwrap()
    }

    #[test]
    fn the_operators_own_decision_says_which_policy_allows_or_why_each_denies() {
        let policies = [
            policy("a-readers", "a", &["Reader"]),
            policy("b-all", "b", &["Reader", "Contributor"]),
        ];
        let rg = format!("{SUB}/resourceGroups/a-web");
        let allowed = explain(&policies, &namespace("a"), "Reader", &rg, None).unwrap();
        assert!(allowed.allowed, "{allowed:?}");
        assert_eq!(allowed.policy.as_deref(), Some("a-readers"));
        assert!(
            text(&allowed).contains("allowed by DelegationPolicy a-readers"),
            "{}",
            text(&allowed)
        );
        let denied = explain(&policies, &namespace("a"), "Contributor", &rg, None).unwrap();
        assert!(!denied.allowed);
        let why = denied.message.clone().unwrap();
        assert!(why.contains("a-readers") && !why.contains("b-all"), "{why}");
        let elsewhere = format!("{SUB}/resourceGroups/b-web");
        assert!(
            !explain(&policies, &namespace("a"), "Reader", &elsewhere, None)
                .unwrap()
                .allowed
        );
        assert!(explain(&policies, &namespace("a"), "Reader", "not-a-scope", None).is_err());
    }
}
