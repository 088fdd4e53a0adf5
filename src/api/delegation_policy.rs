//! `DelegationPolicy`: what the cluster's administrators allow namespaces to grant in Azure. Cluster-scoped,
//! so that a namespace cannot write its own.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ARM_SCOPE_MESSAGE, ARM_SCOPE_PATTERN, GUID_PATTERN, KEY_VAULT_SCOPE_MESSAGE,
    KEY_VAULT_SCOPE_PATTERN,
};

/// Which namespaces may grant which roles at which scopes. A RoleDelegation is allowed when one policy that
/// selects its namespace allows both its scope and its role; without such a policy nothing is granted.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "entra-operator.io",
    version = "v1alpha1",
    kind = "DelegationPolicy",
    shortname = "dpol",
    category = "entra",
    derive = "PartialEq",
    doc = "What namespaces may grant in Azure: for the namespaces it selects, the ARM scopes and the roles \
           RoleDelegations may use. Nothing is granted without a policy that allows it.",
    printcolumn(name = "Violations", type_ = "string", json_path = ".spec.violations"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DelegationPolicySpec {
    /// The namespaces this policy applies to. An empty selector ({}) selects every namespace.
    pub namespace_selector: LabelSelector,

    /// ARM scopes under which delegations may be made: a delegation's scope must be one of these or below one
    /// (segment by segment, case-insensitively), e.g. a resource group allows every resource in it.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(s, s.matches('{ARM_SCOPE_PATTERN}'))")).message(ARM_SCOPE_MESSAGE))]
    pub scopes: Vec<String>,

    /// Roles that may be granted, by name ("AcrPull") or definition GUID, compared case-insensitively. "*"
    /// allows every role except the privileged ones (Owner, User Access Administrator, Role Based Access
    /// Control Administrator), which are allowed only when named here. A delegation by role id matches an
    /// entry by GUID (or the privileged roles' names).
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub roles: Vec<String>,

    /// Whether, and with which actions, namespaces may define custom roles. Without it, custom roles are denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_roles: Option<CustomRolePolicy>,

    /// Application (client) ids of existing applications, not created for the namespace, that the selected
    /// namespaces may take over: CredentialRotations may rotate their client secrets (spec.applicationId), e.g.
    /// the service principal of an existing AKS cluster, and ServicePrincipals may adopt them (spec.adopt). The
    /// operator's identity must also own them. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = GUID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub applications: Vec<String>,

    /// Object ids of principals (managed identities, service principals of other applications) that
    /// RoleDelegations in the selected namespaces may grant roles to with spec.principalId. A ServicePrincipal
    /// of the delegation's own namespace (spec.principalRef) needs no entry. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = GUID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub principals: Vec<String>,

    /// ARM scopes of AKS clusters whose service principal profile CredentialRotations in the selected
    /// namespaces may reset (spec.targets.aksClusters): a cluster's id, or a resource group or subscription
    /// containing it. Only a cluster that already uses the rotated application is reset, unless
    /// aksClusterReassignment allows more. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(s, s.matches('{ARM_SCOPE_PATTERN}'))")).message(ARM_SCOPE_MESSAGE))]
    pub aks_clusters: Vec<String>,

    /// Whether a CredentialRotation that asks for it (spec.targets.reassignAksClusters) may move a cluster
    /// listed in aksClusters from the application it uses now to the rotated one. Default false: a cluster is
    /// reset only with a new secret of the application it already uses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aks_cluster_reassignment: bool,

    /// Key Vaults in which the selected namespaces' objects may write secrets (a ServicePrincipal's or a
    /// CredentialRotation's Key Vault targets): each entry is the ARM id of a vault
    /// (/subscriptions/{id}/resourceGroups/{name}/providers/Microsoft.KeyVault/vaults/{name}), or of a resource
    /// group or subscription, which allows every vault in it. Compared case-insensitively and segment by
    /// segment: resourceGroups/rg allows no vault in rg2. Default none: without a selecting policy that lists
    /// the vault or a scope containing it, nothing is written to it, since the operator's identity can write to
    /// every vault it is given for the whole cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(s, s.matches('{KEY_VAULT_SCOPE_PATTERN}'))")).message(KEY_VAULT_SCOPE_MESSAGE))]
    pub key_vaults: Vec<String>,

    /// What happens to a delegation whose assignment exists but that this policy (or its change) no longer
    /// allows: Report keeps the assignment and reports DeniedByPolicy; Revoke also removes it from Azure.
    #[serde(default)]
    pub violations: ViolationAction,
}

/// The custom roles a namespace may define.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomRolePolicy {
    /// Patterns every action and data action of the custom role must match ("*" matches any text, e.g.
    /// "Microsoft.Compute/disks/*"). A role's own wildcard is matched as text, so "Microsoft.Compute/*" in a
    /// role needs a pattern at least that broad.
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 512)))]
    pub allowed_actions: Vec<String>,
}

/// What to do with an assignment the policy no longer allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ViolationAction {
    /// Keep the assignment and report DeniedByPolicy.
    #[default]
    Report,
    /// Remove the assignment from Azure and report DeniedByPolicy.
    Revoke,
}
