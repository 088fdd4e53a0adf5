//! Types shared by the three resources, and the patterns their CEL rules use.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// A duration of [`DURATION_PATTERN`] whose every number is short enough for its unit that no sum of them
/// within the 32 characters a duration may have overflows Go's duration (about 2562047h). A value that
/// matches the duration pattern but not this one has a number of at least 100000h (or 10^7 m, 10^9 s, ...),
/// so it is above [`MAX_DURATION_TEXT`] anyway.
pub const DURATION_CEL_SAFE_PATTERN: &str = concat!(
    "^(0*[0-9]{1,5}([.][0-9]+)?h|0*[0-9]{1,7}([.][0-9]+)?m|0*[0-9]{1,9}([.][0-9]+)?s",
    "|0*[0-9]{1,12}([.][0-9]+)?ms|0*[0-9]{1,15}([.][0-9]+)?(us|µs)|0*[0-9]{1,18}([.][0-9]+)?ns)+$"
);

/// A Kubernetes object name (DNS subdomain, RFC 1123).
pub const OBJECT_NAME_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A key of a Secret's data map.
pub const SECRET_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";

/// The longest duration any field accepts, as the schema's CEL rule and the error messages spell it.
///
/// Ten years: the longest credential lifetime anyone asks for in practice (`az ad sp create-for-rbac --years`
/// is used with up to ten), and far above every interval and overlap. It keeps every `now + duration` the
/// operator computes far inside what timestamps can hold (year 9999), and it is well below what Go's
/// `time.ParseDuration` (and so CEL's `duration()`) can represent, about 2562047h, so that admission can
/// compare against it.
pub const MAX_DURATION_TEXT: &str = "87600h";
/// [`MAX_DURATION_TEXT`] as a `std::time::Duration`.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(87_600 * 3600);

/// A duration such as "8760h" or "30m", in the syntax of Go's `time.ParseDuration` (units h, m, s, ms, us, ns),
/// at most [`MAX_DURATION_TEXT`].
///
/// This type keeps the text as written, so that a value (and a schema default) reads back as the user wrote it
/// ("1h", not "3600s"), and adds the pattern and the bound to the schema so that admission rejects a malformed
/// or too long value with the field's name.
///
/// Decoding never fails on a string: an object that an older schema admitted (the bound is new) must not
/// break the watch of every object of its kind, since a watcher decodes whole list pages. A value that does
/// not parse keeps its text and reports why through [`Duration::problem`]; the reconcile refuses such an
/// object as InvalidSpec before anything reads the value. Parsing ([`str::parse`]) is strict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: Result<std::time::Duration, String>,
}

impl Duration {
    /// The duration as a `std::time::Duration`, never above [`MAX_DURATION`]. A value that does not parse
    /// (see [`Duration::problem`]) reads as [`MAX_DURATION`], so that arithmetic on it stays in range even
    /// where nothing has checked it.
    pub fn as_std(&self) -> std::time::Duration {
        match &self.value {
            Ok(d) => *d,
            Err(_) => MAX_DURATION,
        }
    }

    /// Why the value cannot be used (it names the value), or None when it can.
    pub fn problem(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }

    /// Keeps `text` whatever it holds; [`Duration::problem`] says whether it parsed.
    pub fn lenient(text: &str) -> Self {
        Duration {
            text: text.to_string(),
            value: parse(text),
        }
    }
}

/// Parses the grammar of [`DURATION_PATTERN`] (what `time.ParseDuration` accepts, unsigned, every number with
/// its unit) with integer arithmetic in nanoseconds, as Go does. A sum above [`MAX_DURATION`] is an error, not
/// an overflow: kube's parser multiplies floats and panics on values that do not fit.
fn parse(text: &str) -> Result<std::time::Duration, String> {
    const UNITS: [(&str, u128); 7] = [
        // "ms" before "m", so that it is not read as minutes followed by a stray "s".
        ("ns", 1),
        ("us", 1_000),
        ("\u{00b5}s", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    // Fraction digits past this many change the result by less than a nanosecond (an hour is 3.6e12 ns), and
    // 10^20 times an hour in nanoseconds still fits in a u128.
    const FRACTION_DIGITS: u32 = 20;
    let shown: String = text.chars().take(40).collect();
    let shown = if shown.len() < text.len() {
        format!("{shown:?}...")
    } else {
        format!("{shown:?}")
    };
    let malformed =
        || format!("invalid duration {shown}: expected a Go duration such as 8760h, 90m or 1h30m");
    let max_ns = MAX_DURATION.as_nanos();
    let mut rest = text;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return Err(malformed());
    }
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err(malformed());
        }
        // Saturating: any number this large is over the maximum anyway, and the text is still checked to the end.
        let int = rest[..int_len].bytes().fold(0u128, |n, b| {
            n.saturating_mul(10).saturating_add(u128::from(b - b'0'))
        });
        rest = &rest[int_len..];
        let (mut fraction, mut scale) = (0u128, 1u128);
        if let Some(after) = rest.strip_prefix('.') {
            let len = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if len == 0 {
                return Err(malformed());
            }
            for b in after[..len].bytes().take(FRACTION_DIGITS as usize) {
                fraction = fraction * 10 + u128::from(b - b'0');
                scale *= 10;
            }
            rest = &after[len..];
        }
        let Some((unit, ns)) = UNITS.iter().find(|(u, _)| rest.starts_with(u)) else {
            return Err(malformed());
        };
        rest = &rest[unit.len()..];
        total = total
            .saturating_add(int.saturating_mul(*ns))
            .saturating_add(fraction * ns / scale);
    }
    if total > max_ns {
        return Err(format!(
            "invalid duration {shown}: longer than the maximum of {MAX_DURATION_TEXT} (10 years)"
        ));
    }
    // At most MAX_DURATION, so both parts fit.
    Ok(std::time::Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let value = parse(text)?;
        Ok(Duration {
            text: text.to_string(),
            value: Ok(value),
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
        Ok(Duration::lenient(&String::deserialize(deserializer)?))
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
        // `duration()` fails, rather than return false, on a value too large for Go's duration. The API server
        // rejects a new object on that error too, but it also refuses every later write to an object stored
        // before this rule existed (its status, the removal of its finalizer), where a rule that is merely
        // false is ratcheted for an unchanged value. So the rule checks that the numbers are short enough
        // first, and `&&` keeps `duration()` from seeing a value it cannot hold.
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [{
                "rule": format!(
                    "self.matches('{DURATION_CEL_SAFE_PATTERN}') && duration(self) <= duration('{MAX_DURATION_TEXT}')"
                ),
                "message": format!("must be at most {MAX_DURATION_TEXT} (10 years)"),
            }],
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
    /// reads them; for a certificate, AZURE_CLIENT_CERTIFICATE_PATH (the PEM file under mountPath) instead of
    /// AZURE_CLIENT_SECRET, and the key certificate.pem.
    #[default]
    #[serde(rename = "env")]
    Env,
    /// Key azure.json: the cloud-provider configuration file that AKS nodes keep at /etc/kubernetes/azure.json;
    /// for a certificate, aadClientCertPath (the PEM file under mountPath) and the key certificate.pem.
    #[serde(rename = "azure.json")]
    AzureJson,
    /// Key sdk-auth.json: the JSON that `az ad sp create-for-rbac --sdk-auth` prints (clientId, clientSecret,
    /// tenantId and the endpoints).
    #[serde(rename = "sdk-auth")]
    SdkAuth,
    /// Keys appId, displayName, password and tenant, as `az ad sp create-for-rbac` prints them; for a
    /// certificate, fileWithCertAndPrivateKey (the PEM file under mountPath) instead of password, as
    /// `--create-cert` prints it, and the key certificate.pem.
    #[serde(rename = "az")]
    Az,
    /// One key per entry of `templates`.
    #[serde(rename = "template")]
    Template,
    /// Keys tls.crt and tls.key: a certificate credential's certificate and private key, as a
    /// kubernetes.io/tls Secret holds them (certificate credentials only).
    #[serde(rename = "tls")]
    Tls,
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

    /// Layout of the Secret's data: env, azure.json, sdk-auth, az, tls (certificates), or template.
    #[serde(default)]
    pub format: SecretFormat,

    /// With format template: Secret key to template. Placeholders {{ clientId }}, {{ clientSecret }},
    /// {{ tenantId }}, {{ authorityHost }}, {{ graphEndpoint }} and {{ resourceManagerEndpoint }} are replaced
    /// by their values; for a certificate credential {{ certificate }}, {{ privateKey }} and
    /// {{ certificatePath }} instead of {{ clientSecret }}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && k.size() <= 253)")
        .message("every key must be a valid Secret key: letters, digits, '-', '_' or '.', at most 253 characters"))]
    #[schemars(extend("maxProperties" = 32))]
    pub templates: Option<BTreeMap<String, String>>,

    /// For a certificate credential: the directory consumers mount this Secret at, so that the env, az and
    /// azure.json formats can name the PEM file in it (certificate.pem). Default /var/run/secrets/azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/[^,]*$"))]
    pub mount_path: Option<String>,
}

/// How far a new credential is in proving that Entra accepts it everywhere: consecutive rounds of sign-ins
/// (for Microsoft Graph and for Azure Resource Manager, each with a fresh token) spaced over a window, since a
/// new credential replicates across Entra's regions for a while and one success proves little.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// The credential being (or last) verified.
    pub key_id: String,
    /// Rounds that must succeed in a row, the first and last at least `window` apart.
    pub required: u32,
    /// The window, as a Go duration.
    pub window: String,
    /// Rounds that succeeded in a row so far (a failure starts again from zero).
    pub successes: u32,
    /// Rounds tried for this credential.
    pub attempts: u32,
    /// When the current run of successes began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_success_time: Option<Time>,
    /// When the last round was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// When the credential passed; unset while it is being verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_time: Option<Time>,
    /// Why the last failed round failed (Entra's error code, never the credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// Where consumers mount a certificate credential's Secret when spec.secret.mountPath says nothing.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/azure";

/// The key of a certificate credential's Secret that holds its private key and certificate together.
pub const CERTIFICATE_FILE: &str = "certificate.pem";

impl SecretTarget {
    /// The path of the PEM file (private key and certificate) as consumers who mount the Secret see it.
    pub fn certificate_path(&self) -> String {
        let dir = self.mount_path.as_deref().unwrap_or(DEFAULT_MOUNT_PATH);
        format!("{}/{CERTIFICATE_FILE}", dir.trim_end_matches('/'))
    }
}

/// What a DelegationPolicy's keyVaults admits: a subscription, a resource group, or a Key Vault (vault names are
/// 3 to 24 letters, digits and hyphens, starting with a letter and not ending with a hyphen:
/// https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftkeyvault;
/// the rule against consecutive hyphens needs a look-ahead RE2 lacks, and Azure enforces it). Narrower than [`ARM_SCOPE_PATTERN`]: a
/// management group or any other resource could never contain a vault (a management group's subscriptions are
/// not visible to the operator), so admission refuses an entry that would silently allow nothing.
pub const KEY_VAULT_SCOPE_PATTERN: &str = concat!(
    "(?i)^/subscriptions/",
    guid_re!(),
    "(/resourcegroups/",
    rg_name_re!(),
    "(/providers/microsoft[.]keyvault/vaults/[a-zA-Z][-a-zA-Z0-9]{1,22}[a-zA-Z0-9])?)?$"
);

/// What admission says when a keyVaults entry does not match [`KEY_VAULT_SCOPE_PATTERN`].
pub const KEY_VAULT_SCOPE_MESSAGE: &str = "every keyVaults entry must be the ARM id of a Key Vault \
    (/subscriptions/{id}/resourceGroups/{name}/providers/Microsoft.KeyVault/vaults/{name}), or of the resource \
    group (/subscriptions/{id}/resourceGroups/{name}) or subscription (/subscriptions/{id}) containing it";

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
        assert_eq!(d.problem(), None);
        assert_eq!(d.as_std().as_secs(), 5400);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            "1h30m",
            "the text survives a round trip"
        );
    }

    // Compiled once: the properties below run thousands of cases.
    fn cached(pattern: &'static str) -> &'static regex::Regex {
        static CACHE: std::sync::LazyLock<
            std::sync::Mutex<BTreeMap<&'static str, &'static regex::Regex>>,
        > = std::sync::LazyLock::new(Default::default);
        CACHE
            .lock()
            .unwrap()
            .entry(pattern)
            .or_insert_with(|| Box::leak(Box::new(regex::Regex::new(pattern).unwrap())))
    }

    fn parse_ns(text: &str) -> Result<u128, String> {
        text.parse::<Duration>().map(|d| d.as_std().as_nanos())
    }

    #[test]
    fn durations_parse_exactly_as_go_does() {
        let h = 3_600_000_000_000u128;
        assert_eq!(parse_ns("1.5h"), Ok(h * 3 / 2));
        assert_eq!(
            parse_ns("1h30m45s"),
            Ok(h + 30 * 60_000_000_000 + 45_000_000_000)
        );
        assert_eq!(parse_ns("100.00100s"), Ok(100_001_000_000));
        assert_eq!(parse_ns("1.004s"), Ok(1_004_000_000));
        assert_eq!(parse_ns("10ns"), Ok(10));
        assert_eq!(parse_ns("11us"), Ok(11_000));
        assert_eq!(parse_ns("12\u{00b5}s"), Ok(12_000));
        assert_eq!(parse_ns("13ms"), Ok(13_000_000));
        assert_eq!(parse_ns("0s"), Ok(0));
        assert_eq!(parse_ns("87600h"), Ok(MAX_DURATION.as_nanos()));
        // Go truncates fractions below a nanosecond; so does this parser, however many digits follow.
        assert_eq!(parse_ns("1.99999999999999999999h"), Ok(2 * h - 1));
        assert_eq!(parse_ns("0.9999999999999999999999999999999ns"), Ok(0));
    }

    #[test]
    fn overflowing_durations_are_errors_not_panics() {
        for text in [
            "9999999999999999h",
            "87600h1ns",
            "87601h",
            "99999999999999999999999999ns",
            "340282366920938463463374607431768211456h",
            "5000000000000000h5000000000000000h",
            "50000h50000h",
            "18446744073709551616s",
        ] {
            let parsed = std::panic::catch_unwind(|| text.parse::<Duration>())
                .unwrap_or_else(|_| panic!("{text} panicked"));
            let err = parsed.expect_err(text);
            assert!(
                err.contains(&text[..text.len().min(40)]) && err.contains("maximum of 87600h"),
                "{text}: {err}"
            );
        }
        let err = "1y".parse::<Duration>().unwrap_err();
        assert!(
            err.contains("\"1y\"") && err.contains("Go duration"),
            "{err}"
        );
    }

    #[test]
    fn decoding_keeps_what_does_not_parse_and_says_why() {
        for text in ["9999999999999999h", "1y", ""] {
            let d: Duration = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert!(
                d.problem().is_some_and(|p| p.contains("invalid duration")),
                "{text}"
            );
            assert_eq!(
                d.as_std(),
                MAX_DURATION,
                "unusable values read as the maximum"
            );
            assert_eq!(serde_json::to_value(&d).unwrap(), text, "the text survives");
        }
        let d: Duration = serde_json::from_value(serde_json::json!("2h")).unwrap();
        assert_eq!((d.problem(), d.as_std().as_secs()), (None, 7200));
        assert!(serde_json::from_value::<Duration>(serde_json::json!(5)).is_err());
    }

    #[test]
    fn the_schema_bounds_every_duration() {
        let schema = serde_json::to_value(schemars::schema_for!(Duration)).unwrap();
        let rule = schema["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap();
        assert!(
            rule.ends_with("&& duration(self) <= duration('87600h')"),
            "{rule}"
        );
        // The guard admits exactly the well-formed values whose numbers cannot overflow, and refuses only
        // values above the maximum.
        let safe = cached(DURATION_CEL_SAFE_PATTERN);
        for ok in [
            "87600h",
            "99999h",
            "0000099999h",
            "1h30m",
            "999999999s",
            "1.5h",
            "500ms",
            "1µs",
        ] {
            assert!(safe.is_match(ok), "{ok}");
        }
        for over in [
            "100000h",
            "9999999999999999h",
            "1000000000s",
            "10000000m",
            "1000000000000000000ns",
        ] {
            assert!(!safe.is_match(over), "{over}");
            assert!(
                over.parse::<Duration>().unwrap_err().contains("maximum"),
                "{over}"
            );
        }
        assert_eq!(
            parse_ns(MAX_DURATION_TEXT),
            Ok(MAX_DURATION.as_nanos()),
            "the rule and the parser agree on the maximum"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        // Whatever the text, parsing returns; it succeeds exactly when the schema's pattern matches and the
        // value is within the maximum, and then agrees with a reference sum in f64 to within rounding.
        #[test]
        fn parsing_never_panics(text in "([0-9]{0,25}([.][0-9]{0,25})?(ns|us|\u{00b5}s|ms|s|m|h|d|y)?){0,4}") {
            let pattern = cached(DURATION_PATTERN);
            let parsed = text.parse::<Duration>();
            match &parsed {
                Ok(_) => proptest::prop_assert!(pattern.is_match(&text)),
                Err(e) if pattern.is_match(&text) => proptest::prop_assert!(e.contains("maximum"), "{}", e),
                Err(_) => {}
            }
            if let Ok(d) = &parsed {
                proptest::prop_assert!(d.as_std() <= MAX_DURATION);
            }
            // The schema's guard: what it lets through to `duration()` fits in Go's duration (with room to
            // spare: at most 32 characters are admitted, this checks any length generated), and what it stops is
            // above the maximum.
            let safe = cached(DURATION_CEL_SAFE_PATTERN);
            if pattern.is_match(&text) && !safe.is_match(&text) {
                proptest::prop_assert!(parsed.is_err());
            }
            let decoded: Duration = serde_json::from_value(serde_json::json!(text)).unwrap();
            proptest::prop_assert_eq!(decoded.problem().is_none(), parsed.is_ok());
            proptest::prop_assert!(decoded.as_std() <= MAX_DURATION);
        }

        // What the guard lets through to CEL's `duration()` (at most 32 bytes: maxLength runs first) always
        // fits in Go's duration, an i64 of nanoseconds, so the rule is false, never an error.
        #[test]
        fn the_guard_keeps_cel_within_gos_range(parts in proptest::collection::vec("0{0,3}[0-9]{1,5}h|[0-9]{1,7}m|[0-9]{1,9}s|[0-9]{1,12}ms|[0-9]{1,15}(us|\u{00b5}s)|[0-9]{1,18}ns|[0-9]{1,5}[.][0-9]{1,20}h", 1..12)) {
            // As many of the parts as fit in 32 bytes.
            let mut text = String::new();
            for part in parts.iter().take_while(|p| p.len() <= 32) {
                if text.len() + part.len() > 32 {
                    break;
                }
                text.push_str(part);
            }
            let safe = cached(DURATION_CEL_SAFE_PATTERN);
            proptest::prop_assume!(!text.is_empty());
            proptest::prop_assert!(safe.is_match(&text), "{}", text);
            let component = cached("([0-9]+)([.][0-9]+)?(ns|us|\u{00b5}s|ms|s|m|h)");
            let total: u128 = component
                .captures_iter(&text)
                .map(|c| {
                    let unit: u128 = match &c[3] {
                        "ns" => 1,
                        "ms" => 1_000_000,
                        "s" => 1_000_000_000,
                        "m" => 60_000_000_000,
                        "h" => 3_600_000_000_000,
                        _ => 1_000,
                    };
                    // A fraction adds less than one more unit.
                    (c[1].parse::<u128>().unwrap() + 1) * unit
                })
                .sum();
            proptest::prop_assert!(total < i64::MAX as u128, "{} is {} ns", text, total);
        }

        #[test]
        fn well_formed_values_parse_unless_too_long(hours in 0u64..200_000, minutes in 0u64..60, nanos in 0u64..1_000_000_000) {
            let text = format!("{hours}h{minutes}m{nanos}ns");
            let want = u128::from(hours) * 3_600_000_000_000 + u128::from(minutes) * 60_000_000_000 + u128::from(nanos);
            match parse_ns(&text) {
                Ok(ns) => proptest::prop_assert_eq!(ns, want),
                Err(e) => {
                    proptest::prop_assert!(want > MAX_DURATION.as_nanos());
                    proptest::prop_assert!(e.contains("maximum"));
                }
            }
        }
    }
}
