//! `ServicePrincipal`: an Entra application, its service principal and one operator-managed client secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{
        DeletionPolicy, Duration, GUID_PATTERN, LocalObjectReference, SecretFormat, SecretTarget,
        VerificationStatus,
    },
    key_vault::{KeyVaultSecretStatus, KeyVaultSecretTarget},
};

/// The desired application, service principal and credentials.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "entra-operator.io",
    version = "v1alpha1",
    kind = "ServicePrincipal",
    namespaced,
    status = "ServicePrincipalStatus",
    shortname = "sp",
    category = "entra",
    derive = "PartialEq",
    doc = "An Entra ID application with its service principal and, optionally, a client secret delivered to a \
           Kubernetes Secret: what `az ad sp create-for-rbac` does, declared and kept converged.",
    printcolumn(
        name = "AppId",
        type_ = "string",
        json_path = ".status.appId",
        description = "Application (client) id"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        description = "Secret holding the credential"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.credential.endDateTime",
        description = "When the current client secret expires"
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
#[x_kube(validation = Rule::new("has(self.adopt) == has(oldSelf.adopt)")
    .message("adopt can only be set when the object is created")
    .field_path(".adopt"))]
#[x_kube(validation = Rule::new("!has(self.keyVaultSecrets) || size(self.keyVaultSecrets) == 0 || !has(self.secret) || self.secret.format != 'template'")
    .message("keyVaultSecrets cannot be written from a template Secret (its client secret cannot be read back): use another secret.format, or no secret (the vaults alone then hold it)")
    .field_path(".keyVaultSecrets"))]
#[x_kube(validation = Rule::new("!has(self.certificate) || has(self.secret)")
    .message("a certificate credential needs spec.secret: its private key is delivered there")
    .field_path(".certificate"))]
#[x_kube(validation = Rule::new("!has(self.certificate) || !has(self.keyVaultSecrets) || size(self.keyVaultSecrets) == 0")
    .message("keyVaultSecrets deliver client secrets only; a certificate credential is delivered to spec.secret")
    .field_path(".keyVaultSecrets"))]
#[x_kube(validation = Rule::new("!has(self.certificate) || !has(self.secret) || self.secret.format != 'sdk-auth'")
    .message("the sdk-auth format carries a client secret only; for a certificate use env, az, azure.json, tls or template")
    .field_path(".secret.format"))]
#[x_kube(validation = Rule::new("has(self.certificate) || !has(self.secret) || self.secret.format != 'tls'")
    .message("the tls format carries a certificate credential: set spec.certificate, or use another format")
    .field_path(".secret.format"))]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipalSpec {
    /// Display name of the application and its service principal in Entra ID. Need not be unique.
    #[schemars(length(min = 1, max = 256))]
    pub display_name: String,

    /// Free text stored in the application's notes field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub notes: Option<String>,

    /// Tags set on the application, in addition to the ones the operator adds to recognise its own objects
    /// (none may begin with "entra-operator/": those are the operator's ownership marks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,

    /// Object ids of additional owners of the application (users or service principals). The operator's own
    /// identity is always an owner: it creates the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = GUID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub owners: Vec<String>,

    /// The Kubernetes Secret that receives the client secret. Without it (and without keyVaultSecrets) no
    /// client secret is created, for a principal that signs in only through federatedCredentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,

    /// Azure Key Vault secrets that receive the client secret, each password as a new version whose expiry
    /// (exp) and activation (nbf) are the password's own: beside the Secret, or instead of it (without
    /// `secret`, the first of them is where the client secret is kept). A CredentialRotation of this object
    /// publishes to them as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["vault".into(), "name".into()]))]
    pub key_vault_secrets: Vec<KeyVaultSecretTarget>,

    /// Sign in with a certificate instead of a client secret (Entra's recommendation): the private key stays
    /// in spec.secret, and Entra holds only the public certificate. Generated by the operator for each
    /// credential, or taken from a kubernetes.io/tls Secret (such as cert-manager writes) whose renewals are
    /// followed. Needs spec.secret; not with keyVaultSecrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateCredential>,

    /// Lifetime of each client secret (or generated certificate) the operator adds, as a Go duration. Default
    /// 8760h (one year, as `az ad sp create-for-rbac` does). A CredentialRotation renews it before it ends. A
    /// certificate from spec.certificate.secretRef keeps its own validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub credential_lifetime: Option<Duration>,

    /// Federated identity credentials: tokens from these issuers with these subjects may sign in as the
    /// application (workload identity), instead of or beside a client secret. At most 20, as Entra allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a.issuer == b.issuer && a.subject == b.subject))")
        .message("each issuer and subject pair may appear only once"))]
    pub federated_credentials: Vec<FederatedCredential>,

    /// What happens in Azure when this object is deleted: Delete removes the application, its service principal
    /// and its credentials (for an adopted application: only the passwords and federated credentials the
    /// operator added, never the application itself); Orphan leaves everything.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// With deletionPolicy Delete: also remove the application and service principal from the directory's
    /// deleted items, so that they no longer count against the tenant's quota (they cannot be restored then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub purge_on_delete: bool,

    /// Manage an existing application instead of creating one. Explicit opt-in, allowed only for an application
    /// this cluster created for this very object (its ownership tags name this namespace and name, e.g. one
    /// left by a deleted object with deletionPolicy Orphan) or one that a DelegationPolicy selecting the
    /// namespace lists in `applications`; otherwise DeniedByPolicy. One another object or cluster holds is a
    /// Conflict. The operator's identity must also own it. The operator then manages its display name, tags,
    /// the federated credentials this object adds (never one of the same name it did not add) and its own
    /// passwords, and never deletes it. Can only be set at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<Adopt>,
}

/// A certificate credential: where its key pair and certificate come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateCredential {
    /// A kubernetes.io/tls Secret in this namespace (tls.crt, tls.key; an RSA key, since Entra accepts only
    /// RS256 and PS256 client assertions) whose certificate is the credential: its public certificate is
    /// uploaded, and each renewal (cert-manager's) is uploaded in turn and delivered to spec.secret. Without
    /// it, the operator generates a fresh RSA 2048 key pair and a self-signed certificate for each credential,
    /// as `az ad sp create-for-rbac --create-cert` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

impl ServicePrincipalSpec {
    /// Whether the credential is a certificate rather than a client secret.
    pub fn uses_certificate(&self) -> bool {
        self.certificate.is_some()
    }

    /// The format spec.secret is written in, if there is one.
    pub fn secret_format(&self) -> Option<SecretFormat> {
        self.secret.as_ref().map(|s| s.format)
    }
}

/// An existing application to manage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Adopt {
    /// Application (client) id of the existing application. Immutable.
    #[schemars(regex(pattern = GUID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("adopt.appId is immutable"))]
    pub app_id: String,
}

/// Trust between the application and an external identity provider, such as a Kubernetes cluster's
/// service-account issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    /// Unique name of the credential within the application. Letters, digits, '-', '_' and '.'; at most 120.
    #[schemars(
        length(min = 1, max = 120),
        regex(pattern = "^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    )]
    pub name: String,

    /// Issuer of the tokens, an https URL, for example a cluster's OIDC issuer URL.
    #[schemars(length(min = 1, max = 600))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() == 'https'").message("must be an https URL"))]
    pub issuer: String,

    /// Subject of the tokens, for example system:serviceaccount:NAMESPACE:NAME.
    #[schemars(length(min = 1, max = 600))]
    pub subject: String,

    /// Audiences of the tokens. Entra accepts exactly one; default api://AzureADTokenExchange.
    #[serde(default = "default_audiences")]
    #[schemars(length(min = 1, max = 1), inner(length(min = 1, max = 600)))]
    pub audiences: Vec<String>,

    /// Free text describing the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 600))]
    pub description: Option<String>,
}

fn default_audiences() -> Vec<String> {
    vec!["api://AzureADTokenExchange".to_string()]
}

/// The observed state of a ServicePrincipal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipalStatus {
    /// Application (client) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Object id of the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// Object id of the service principal: the principal that role assignments name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_principal_id: Option<String>,
    /// Tenant the application lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The client secret currently delivered to the Secret (never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialStatus>,
    /// How the credential this object issued is proving that Entra accepts it everywhere: the object turns
    /// Ready only once enough rounds of sign-ins in a row have succeeded over the operator's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    /// Name of the Secret holding the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// What each Key Vault secret of spec.keyVaultSecrets holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_vault_secrets: Vec<KeyVaultSecretStatus>,
    /// Federated identity credentials this object holds on the application, by name (on an adopted
    /// application: only those it added, recorded before it adds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federated_credentials: Vec<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready summarises; finer conditions say which step is pending or failing and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A password or certificate credential as Entra ID describes it, without its secret text or private key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// Entra's id of the password or key credential.
    pub key_id: String,
    /// The first characters of the secret, as Entra shows them (passwords).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The certificate's SHA-1 thumbprint in hex, as the portal and az show it (certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Display name the operator gave the password (identifies this object and its generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Start of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date_time: Option<Time>,
    /// End of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date_time: Option<Time>,
}
