//! `CredentialWatch`: observe-only expiry monitoring of the client secrets and certificates on Entra
//! applications that nothing here manages. Cluster-scoped, since what it reads is the whole tenant's and
//! needs a tenant-wide read permission; it never writes to Azure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, GUID_PATTERN};

/// The condition type that is True while a watched credential expires within warnBefore.
pub const EXPIRING: &str = "Expiring";
/// The condition type that is True while a watched credential has expired.
pub const EXPIRED: &str = "Expired";

/// Which applications to watch, and how early to warn.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "entra-operator.io",
    version = "v1alpha1",
    kind = "CredentialWatch",
    status = "CredentialWatchStatus",
    shortname = "cwatch",
    category = "entra",
    derive = "PartialEq",
    doc = "Reports when the client secrets and certificates of Entra applications expire, as status, conditions \
           (Expiring, Expired) and a metric to alert on. Read-only: it never changes anything in Azure, and \
           needs the optional Graph permission Application.Read.All.",
    printcolumn(
        name = "Apps",
        type_ = "integer",
        json_path = ".status.applicationCount"
    ),
    printcolumn(
        name = "Earliest",
        type_ = "string",
        json_path = ".status.earliestExpiry"
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
#[x_kube(validation = Rule::new("(has(self.applications) && size(self.applications) > 0) || has(self.filter)")
    .message("name the applications to watch: applications, filter, or both")
    .field_path(".applications"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialWatchSpec {
    /// Application (client) ids of the applications to watch. An id that no application has is reported in
    /// status (found: false), without failing the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = GUID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub applications: Vec<String>,

    /// A Microsoft Graph $filter over applications, e.g. "startswith(displayName,'legacy-')" or
    /// "tags/any(t:t eq 'team:payments')": every application it matches is watched as well, at most 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub filter: Option<String>,

    /// Report a credential as Expiring this long before it expires, as a Go duration. Default 720h (30 days).
    #[serde(default = "default_warn_before")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub warn_before: Duration,

    /// How often to read the applications again. Default 1h; at least 1m, since every read is a Graph request
    /// against the tenant's limits.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("must be at least 1m"))]
    pub interval: Duration,
}

fn default_warn_before() -> Duration {
    "720h".parse().expect("a valid duration")
}

fn default_interval() -> Duration {
    "1h".parse().expect("a valid duration")
}

/// The observed state of a CredentialWatch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialWatchStatus {
    /// Every watched application with its credentials, ordered by appId.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["appId".into()]))]
    pub applications: Vec<WatchedApplication>,
    /// How many applications were found (for the Apps column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_count: Option<i64>,
    /// When the first of the watched credentials expires (or expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_expiry: Option<Time>,
    /// When the applications were last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready says whether the applications could be read; Expiring and Expired name the application and key
    /// ids of the credentials that expire within warnBefore, or have expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One watched application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchedApplication {
    /// Application (client) id.
    pub app_id: String,
    /// Its display name, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// False when no application has this appId (or it is not visible to the operator).
    pub found: bool,
    /// Its client secrets and certificates, ordered by expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<WatchedCredential>,
}

/// One client secret or certificate of a watched application: its identity and dates, never its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchedCredential {
    /// Entra key id.
    pub key_id: String,
    /// Password (a client secret) or Certificate.
    pub kind: CredentialKind,
    /// Its display name in Entra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// When it expires; absent if Entra gives no date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date_time: Option<Time>,
    /// Valid, Expiring (within warnBefore) or Expired.
    pub state: CredentialState,
}

/// Which collection of the application a credential is in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum CredentialKind {
    /// passwordCredentials: a client secret.
    Password,
    /// keyCredentials: a certificate.
    Certificate,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "Password",
            CredentialKind::Certificate => "Certificate",
        }
    }
}

/// Where a credential stands against now and warnBefore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CredentialState {
    /// Expires after warnBefore from now (or never).
    Valid,
    /// Expires within warnBefore.
    Expiring,
    /// Has expired.
    Expired,
}
