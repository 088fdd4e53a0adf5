//! Types shared by the three resources, and the patterns their CEL rules use.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every resource this operator serves.
pub const GROUP: &str = "entra-operator.io";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";

// CEL regexes are RE2. They avoid backslashes (`[.]` instead of `\.`) so that they read the same in Rust, in
// the CEL string literal and in the generated YAML.
macro_rules! guid_re {
    () => {
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    };
}
macro_rules! rg_name_re {
    () => {
        "[-a-zA-Z0-9_.()]{1,90}"
    };
}
macro_rules! provider_ns_re {
    () => {
        "[a-zA-Z][a-zA-Z0-9]*([.][a-zA-Z][a-zA-Z0-9]*)+"
    };
}

/// An Entra object id, application (client) id or tenant id.
pub const GUID_PATTERN: &str = concat!("^", guid_re!(), "$");

/// An ARM scope: a management group, a subscription, a resource group, or a resource (possibly a child
/// resource such as a subnet) in either. Path segments are case-insensitive, as ARM matches them.
pub const ARM_SCOPE_PATTERN: &str = concat!(
    "(?i)^(/providers/microsoft[.]management/managementgroups/",
    rg_name_re!(),
    "|/subscriptions/",
    guid_re!(),
    "(/resourcegroups/",
    rg_name_re!(),
    ")?(/providers/",
    provider_ns_re!(),
    "(/[^/?#[:space:]]+/[^/?#[:space:]]+)+)?)$"
);

/// What admission says when a scope does not parse.
pub const ARM_SCOPE_MESSAGE: &str = "must be an ARM scope: /subscriptions/{id}, optionally followed by \
    /resourceGroups/{name}, optionally followed by /providers/{Namespace}/{type}/{name}[/{childType}/{name}...]; \
    or /providers/Microsoft.Management/managementGroups/{name}";

/// The ARM id of an AKS managed cluster.
pub const AKS_CLUSTER_PATTERN: &str = concat!(
    "(?i)^/subscriptions/",
    guid_re!(),
    "/resourcegroups/",
    rg_name_re!(),
    "/providers/microsoft[.]containerservice/managedclusters/[a-zA-Z0-9][-_a-zA-Z0-9]{0,62}$"
);

/// A role definition id: a bare GUID, or the ARM id of the definition at tenant or subscription level.
pub const ROLE_DEFINITION_ID_PATTERN: &str = concat!(
    "(?i)^((/subscriptions/",
    guid_re!(),
    ")?/providers/microsoft[.]authorization/roledefinitions/)?",
    guid_re!(),
    "$"
);

/// A Go duration as `time.ParseDuration` (and `metav1.Duration`) accepts it, without sign: "8760h", "90m",
/// "1h30m", "45s".
pub const DURATION_PATTERN: &str = "^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A Kubernetes object name (DNS subdomain, RFC 1123).
pub const OBJECT_NAME_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A key of a Secret's data map.
pub const SECRET_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";

/// A duration such as "8760h" or "30m", in the syntax of Go's `time.ParseDuration` (units h, m, s, ms, us, ns).
///
/// kube's `Duration` does the parsing. This wrapper keeps the text as written, so that a value (and a schema
/// default) reads back as the user wrote it ("1h", not "3600s"), and adds the pattern to the schema so that
/// admission rejects a malformed value with the field's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

impl Duration {
    /// The duration as a `std::time::Duration` (the pattern admits no negative values).
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // kube's parser is more lenient than Go's ("" is zero, signs are allowed); hold it to the schema's
        // pattern: unsigned, every number with its unit, no spaces.
        let shaped = text.starts_with(|c: char| c.is_ascii_digit())
            && text.ends_with(|c: char| c.is_alphabetic())
            && !text.contains(char::is_whitespace);
        if !shaped {
            return Err(format!(
                "invalid duration {text:?}: expected a Go duration such as 8760h, 90m or 1h30m"
            ));
        }
        let parsed: kube::core::Duration = text
            .parse()
            .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
        Ok(Duration {
            text: text.to_string(),
            value: parsed.into(),
        })
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// A reference to another object of this API in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// What happens in Azure when the Kubernetes object is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove what the operator created in Azure.
    #[default]
    Delete,
    /// Leave it in Azure, untouched; only the Kubernetes side is cleaned up.
    Orphan,
}

/// The layout of the credentials in the Kubernetes Secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SecretFormat {
    /// Keys AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID, as the Azure SDKs' EnvironmentCredential
    /// reads them.
    #[default]
    #[serde(rename = "env")]
    Env,
    /// Key azure.json: the cloud-provider configuration file that AKS nodes keep at /etc/kubernetes/azure.json.
    #[serde(rename = "azure.json")]
    AzureJson,
    /// Key sdk-auth.json: the JSON that `az ad sp create-for-rbac --sdk-auth` prints (clientId, clientSecret,
    /// tenantId and the endpoints).
    #[serde(rename = "sdk-auth")]
    SdkAuth,
    /// Keys appId, displayName, password and tenant, as `az ad sp create-for-rbac` prints them.
    #[serde(rename = "az")]
    Az,
    /// One key per entry of `templates`.
    #[serde(rename = "template")]
    Template,
}

/// Where and how the client secret is delivered in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format == 'template' ? has(self.templates) && size(self.templates) > 0 : !has(self.templates)")
    .message("templates must be set (and non-empty) when format is template, and only then")
    .field_path(".templates"))]
pub struct SecretTarget {
    /// Name of the Secret to write, in the object's namespace. The operator creates it and owns it; an existing
    /// Secret that this object does not own is never overwritten (condition SecretConflict).
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,

    /// Layout of the Secret's data: env, azure.json, sdk-auth, az, or template.
    #[serde(default)]
    pub format: SecretFormat,

    /// With format template: Secret key to template. Placeholders {{ clientId }}, {{ clientSecret }},
    /// {{ tenantId }}, {{ authorityHost }}, {{ graphEndpoint }} and {{ resourceManagerEndpoint }} are replaced
    /// by their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && k.size() <= 253)")
        .message("every key must be a valid Secret key: letters, digits, '-', '_' or '.', at most 253 characters"))]
    #[schemars(extend("maxProperties" = 32))]
    pub templates: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // RE2 and the regex crate agree on these patterns' syntax, so the unit tests can check the grammar
    // that admission enforces. POSIX classes such as `[:space:]` mean the same in both.
    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(s)
    }

    const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000001";

    #[test]
    fn scope_grammar_accepts_every_arm_level() {
        for scope in [
            SUB.to_string(),
            format!("{SUB}/resourceGroups/rg-app"),
            format!("{SUB}/resourcegroups/RG.(x)_y-z"),
            format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"),
            format!(
                "{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aks"
            ),
            format!("{SUB}/providers/Microsoft.Insights/actionGroups/x"),
            "/providers/Microsoft.Management/managementGroups/platform".to_string(),
        ] {
            assert!(matches(ARM_SCOPE_PATTERN, &scope), "{scope}");
        }
    }

    #[test]
    fn scope_grammar_rejects_malformed_scopes() {
        for scope in [
            "/",
            "subscriptions/00000000-0000-0000-0000-000000000001",
            "/subscriptions/not-a-guid",
            &format!("{SUB}/"),
            &format!("{SUB}/resourceGroups/"),
            &format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults"),
            &format!("{SUB}/resourceGroups/rg/providers/vaults/kv"),
            &format!("{SUB}/resourceGroups/a b"),
            &format!("{SUB}/resourceGroups/{}", "r".repeat(91)),
        ] {
            assert!(!matches(ARM_SCOPE_PATTERN, scope), "{scope}");
        }
    }

    #[test]
    fn aks_and_role_ids() {
        let aks = format!(
            "{SUB}/resourcegroups/rg/providers/Microsoft.ContainerService/managedClusters/prod-1"
        );
        assert!(matches(AKS_CLUSTER_PATTERN, &aks));
        assert!(!matches(
            AKS_CLUSTER_PATTERN,
            &format!("{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/d")
        ));

        let guid = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
        assert!(matches(ROLE_DEFINITION_ID_PATTERN, guid));
        assert!(matches(
            ROLE_DEFINITION_ID_PATTERN,
            &format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        ));
        assert!(matches(
            ROLE_DEFINITION_ID_PATTERN,
            &format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        ));
        assert!(!matches(ROLE_DEFINITION_ID_PATTERN, "AcrPull"));
    }

    #[test]
    fn duration_pattern_matches_what_kube_parses() {
        for ok in ["8760h", "90m", "1h30m", "45s", "1.5h", "500ms"] {
            assert!(matches(DURATION_PATTERN, ok), "{ok}");
            assert!(ok.parse::<Duration>().is_ok(), "{ok}");
        }
        for bad in ["", "1y", "30d", "-1h", "h", "1 h"] {
            assert!(!matches(DURATION_PATTERN, bad), "{bad}");
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.as_std().as_secs(), 5400);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            "1h30m",
            "the text survives a round trip"
        );
    }
}
