//! `CredentialRotation`: renews a service principal's client secret before it expires and pushes it out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{
        AKS_CLUSTER_PATTERN, Duration, GUID_PATTERN, LocalObjectReference, OBJECT_NAME_PATTERN,
        SecretTarget, VerificationStatus,
    },
    key_vault::KeyVaultSecretTarget,
};

/// Whose secret to rotate, when, and where to publish each new one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "entra-operator.io",
    version = "v1alpha1",
    kind = "CredentialRotation",
    namespaced,
    status = "CredentialRotationStatus",
    shortname = "crot",
    category = "entra",
    derive = "PartialEq",
    doc = "Keeps a client secret fresh: adds a new one on schedule, publishes it to the Secret, AKS clusters and \
           workloads, keeps the previous one valid for an overlap, then removes it.",
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotationTime"
    ),
    printcolumn(
        name = "Last Rotation",
        type_ = "date",
        json_path = ".status.lastRotationTime"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.servicePrincipalRef) != has(self.applicationId)")
    .message("exactly one of servicePrincipalRef and applicationId must be set")
    .field_path(".servicePrincipalRef"))]
#[x_kube(validation = Rule::new("has(self.servicePrincipalRef) == has(oldSelf.servicePrincipalRef)")
    .message("the rotation's target (servicePrincipalRef or applicationId) is immutable")
    .field_path(".servicePrincipalRef"))]
#[x_kube(validation = Rule::new("has(self.rotateEvery) || has(self.renewBefore)")
    .message("at least one of rotateEvery and renewBefore must be set")
    .field_path(".rotateEvery"))]
#[x_kube(validation = Rule::new("!has(self.rotateEvery) || duration(self.overlap) < duration(self.rotateEvery)")
    .message("overlap must be shorter than rotateEvery, or two rotations would overlap")
    .field_path(".overlap"))]
#[x_kube(validation = Rule::new("!has(self.rotateEvery) || !has(self.credentialLifetime) || duration(self.rotateEvery) < duration(self.credentialLifetime)")
    .message("rotateEvery must be shorter than credentialLifetime, or the secret would expire before it is renewed")
    .field_path(".rotateEvery"))]
#[x_kube(validation = Rule::new("!has(self.credentialLifetime) || duration(self.overlap) < duration(self.credentialLifetime)")
    .message("overlap must be shorter than credentialLifetime, or the previous secret would expire during it")
    .field_path(".overlap"))]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || !has(self.credentialLifetime) || duration(self.renewBefore) < duration(self.credentialLifetime)")
    .message("renewBefore must be shorter than credentialLifetime")
    .field_path(".renewBefore"))]
#[x_kube(validation = Rule::new("has(self.servicePrincipalRef) || (has(self.targets) && (has(self.targets.secret) || (has(self.targets.aksClusters) && size(self.targets.aksClusters) > 0) || (has(self.targets.keyVaultSecrets) && size(self.targets.keyVaultSecrets) > 0)))")
    .message("with applicationId, name at least one target to publish to: targets.secret, targets.aksClusters or targets.keyVaultSecrets")
    .field_path(".targets"))]
#[x_kube(validation = Rule::new("!has(self.applicationId) || !has(self.targets) || !has(self.targets.secret) || self.targets.secret.format != 'tls'")
    .message("a rotation by applicationId renews a client secret, which the tls format cannot carry")
    .field_path(".targets.secret.format"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationSpec {
    /// A ServicePrincipal in this namespace: the rotation then manages that object's client secret. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("servicePrincipalRef is immutable"))]
    pub service_principal_ref: Option<LocalObjectReference>,

    /// Application (client) id of an existing application that no ServicePrincipal manages, e.g. the service
    /// principal of an existing AKS cluster. The operator's identity must own it, and a policy must allow it for
    /// this namespace. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("applicationId is immutable"))]
    pub application_id: Option<String>,

    /// Rotate this long after the previous rotation, as a Go duration (e.g. 720h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub rotate_every: Option<Duration>,

    /// Rotate when the current secret expires within this duration (e.g. 720h), whatever rotateEvery says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub renew_before: Option<Duration>,

    /// How long the previous secret stays valid after the new one is published, so that every consumer can
    /// pick the new one up. Default 1h.
    #[serde(default = "default_overlap")]
    pub overlap: Duration,

    /// Lifetime of each new secret. Default: the ServicePrincipal's credentialLifetime, else 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub credential_lifetime: Option<Duration>,

    /// Change this value (any string, e.g. a date) to rotate once now: a manual rotation that works in GitOps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rotation_token: Option<String>,

    /// Where each new secret is published.
    #[serde(default)]
    pub targets: RotationTargets,
}

fn default_overlap() -> Duration {
    "1h".parse().expect("a valid duration")
}

/// Where a new secret goes before the previous one is removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationTargets {
    /// The Secret to write. Default: the ServicePrincipal's Secret. Required with applicationId unless only AKS
    /// clusters consume the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,

    /// ARM ids of AKS clusters that use this service principal: each gets the new secret through
    /// resetServicePrincipalProfile before the previous secret is removed.
    #[serde(default)]
    #[schemars(length(max = 20), inner(length(max = 1024)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(c, c.matches('{AKS_CLUSTER_PATTERN}'))"))
        .message("every entry must be the ARM id of an AKS cluster: \
                  /subscriptions/{id}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"))]
    pub aks_clusters: Vec<String>,

    /// Move each cluster in aksClusters to this application even when it uses another one now (its
    /// servicePrincipalProfile.clientId differs). A DelegationPolicy that lists the cluster must also set
    /// aksClusterReassignment. Default false: a cluster is reset only with a new secret of the application it
    /// already uses, so a rotation can never take over a cluster by naming it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reassign_aks_clusters: bool,

    /// Azure Key Vault secrets that receive each new secret as a new version (exp and nbf from the password),
    /// once it signs in; the version holding the previous secret is disabled before that secret is removed.
    /// With servicePrincipalRef, the ServicePrincipal's keyVaultSecrets are published as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["vault".into(), "name".into()]))]
    pub key_vault_secrets: Vec<KeyVaultSecretTarget>,

    /// Workloads in this namespace to restart (through a pod-template annotation) once per rotation, after the
    /// Secret holds the new secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kind".into(), "name".into()]))]
    pub restart_workloads: Vec<WorkloadRef>,
}

/// A workload to restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Kind of the workload.
    pub kind: WorkloadKind,
    /// Name of the workload, in the rotation's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Kinds of workload that can be restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The kind as Kubernetes (and `TargetStatus::kind`) names it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// What `TargetStatus::kind` names: one name each, so that the controller that writes an entry and the one
/// that reads it back (and whoever reads status) cannot spell it two ways. The field stays a string in the
/// schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// The Kubernetes Secret the secret is delivered to.
    Secret,
    /// The check that the new secret signs in to Entra (its name is [`SIGN_IN_TARGET`]).
    SignIn,
    /// An AKS cluster's service principal profile.
    AksCluster,
    /// A workload restarted to read the new secret.
    Workload(WorkloadKind),
    /// An Azure Key Vault secret (named `{vault}/{secret}`).
    KeyVaultSecret,
}

/// The name of the one [`TargetKind::SignIn`] entry.
pub const SIGN_IN_TARGET: &str = "entra";

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Secret => "Secret",
            TargetKind::SignIn => "SignIn",
            TargetKind::AksCluster => "AKSCluster",
            TargetKind::Workload(kind) => kind.as_str(),
            TargetKind::KeyVaultSecret => "KeyVaultSecret",
        }
    }
}

/// What `TargetStatus::state` says of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// The target holds the key.
    Published,
    /// On its way: a reset running, a rollout not finished, a sign-in not replicated yet.
    Pending,
    /// The target refused the key.
    Failed,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Published => "Published",
            TargetState::Pending => "Pending",
            TargetState::Failed => "Failed",
        }
    }
}

/// The observed state of a CredentialRotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationStatus {
    /// Entra key id of the current (newest published) secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    /// Entra key id of the previous secret, still valid during the overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// When the previous secret is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_removal_time: Option<Time>,
    /// When the last rotation completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the next rotation is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// When the current secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// How many rotations have completed (every target took the new secret), as cert-manager counts a
    /// Certificate's revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// How many reconciles in a row have failed (waiting for a window or an overlap is no failure); the next
    /// try backs off exponentially with it. Cleared by a reconcile that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// When the last failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The spec.rotationToken that last triggered a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotation_token: Option<String>,
    /// Result of publishing the current secret to each target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// How the newest secret is proving that Entra accepts it everywhere: it is published only once enough
    /// rounds of sign-ins in a row have succeeded over the operator's verification window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready summarises; finer conditions say which step is pending or failing and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// How publishing the current secret to one target went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Secret, AKSCluster, Deployment, StatefulSet or DaemonSet.
    pub kind: String,
    /// Name, or ARM id for a cluster.
    pub name: String,
    /// Key id of the secret this target holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Published, Pending or Failed.
    pub state: String,
    /// Why, when Pending or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// For an AKS cluster: the long-running operation resetting its profile, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// For a Key Vault secret: the version holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
