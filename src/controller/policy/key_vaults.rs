//! Key Vaults: whether a namespace's objects may write a secret into a vault (a ServicePrincipal's or a
//! CredentialRotation's Key Vault targets). The operator's identity holds Key Vault Secrets Officer on every vault
//! any namespace delivers to, for the whole cluster, so naming a vault in a spec would otherwise let any tenant
//! overwrite any other tenant's secrets there; the DelegationPolicy's keyVaults is the boundary. Pure: no I/O.

use std::{borrow::Borrow, collections::BTreeMap, fmt};

use kube::ResourceExt;

use super::selecting;
use crate::{
    api::delegation_policy::DelegationPolicy,
    azure::scope::{Level, Scope},
};

/// The ARM id of a Key Vault, parsed: `/subscriptions/{id}/resourceGroups/{rg}/providers/Microsoft.KeyVault/
/// vaults/{name}`. Equal when ARM would take them for one vault (case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vault {
    scope: Scope,
    name: String,
}

impl Vault {
    /// The vault `text` names; Err says why it is no vault id. The name must be one Azure accepts for a vault
    /// (https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftkeyvault:
    /// 3-24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, no "--"), since
    /// it becomes the host name `{name}.vault.azure.net`.
    pub fn parse(text: &str) -> Result<Vault, String> {
        let scope = Scope::parse(text).map_err(|e| e.to_string())?;
        let not_a_vault = || {
            format!(
                "'{text}' is not the ARM id of a Key Vault: \
                 /subscriptions/{{id}}/resourceGroups/{{name}}/providers/Microsoft.KeyVault/vaults/{{name}}"
            )
        };
        if scope.level() != Level::Resource {
            return Err(not_a_vault());
        }
        // The canonical text has exactly these segments for a vault: "", subscriptions, {id}, resourceGroups,
        // {rg}, providers, {namespace}, {type}, {name}. A child resource (a secret) has more.
        let canonical = scope.as_str().to_string();
        let parts: Vec<&str> = canonical.split('/').collect();
        let [_, _, _, rg, _, _, namespace, kind, name] = parts.as_slice() else {
            return Err(not_a_vault());
        };
        if !rg.eq_ignore_ascii_case("resourceGroups")
            || !namespace.eq_ignore_ascii_case("Microsoft.KeyVault")
            || !kind.eq_ignore_ascii_case("vaults")
        {
            return Err(not_a_vault());
        }
        if !is_vault_name(name) {
            return Err(format!(
                "'{text}': '{name}' is not a Key Vault name (3-24 letters, digits and hyphens, starting with a \
                 letter, ending with a letter or digit, no two hyphens in a row)"
            ));
        }
        let name = name.to_string();
        Ok(Vault { scope, name })
    }

    /// The vault's name, as given: the first label of its URI.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vault as an ARM scope (for containment, and for its subscription).
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The normalised id: one text for every spelling of the vault's id.
    pub fn key(&self) -> String {
        self.scope.as_str().to_ascii_lowercase()
    }
}

impl fmt::Display for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.scope, f)
    }
}

fn is_vault_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=24).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && !name.contains("--")
}

/// A write that a policy allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The name of the policy that allows it (the first by name of those that do), for the condition message.
    pub policy: String,
    /// The vault, parsed.
    pub vault: Vault,
}

/// Why a write is refused. Each message starts with the spec field and names the policy field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The vault id is no Key Vault id: nothing can allow it.
    InvalidVault(String),
    /// No selecting policy lists the vault or a scope containing it.
    DeniedByPolicy(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::InvalidVault(m) | Refusal::DeniedByPolicy(m) => m,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Whether objects in `namespace` (labelled `labels`) may write secrets into the vault `vault_id`, which the
/// object names in its spec at `field` (e.g. "spec.targets.keyVaults[0].vault"): Ok names the policy that
/// allows it.
pub fn may_write(
    policies: &[impl Borrow<DelegationPolicy>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    field: &str,
    vault_id: &str,
) -> Result<Allowed, Refusal> {
    let vault = Vault::parse(vault_id).map_err(|e| {
        Refusal::InvalidVault(format!(
            "{field}: {e}; no DelegationPolicy keyVaults entry can allow it"
        ))
    })?;
    let allowing = selecting(policies, labels).into_iter().find(|p| {
        p.spec
            .key_vaults
            .iter()
            // An entry that does not parse allows nothing: an administrator's typo must not open access.
            .filter_map(|s| Scope::parse(s).ok())
            .any(|s| s.contains(vault.scope()))
    });
    match allowing {
        Some(p) => Ok(Allowed {
            policy: p.name_any(),
            vault,
        }),
        None => Err(Refusal::DeniedByPolicy(format!(
            "{field}: no DelegationPolicy that selects namespace {namespace} lists vault {vault} (or a resource \
             group or subscription containing it) in its keyVaults"
        ))),
    }
}

/// The normalised, lower-case id of a vault, for telling whether two objects name the same one (ARM ids are
/// case-insensitive); None for text that is no Key Vault id.
pub fn vault_key(id: &str) -> Option<String> {
    Vault::parse(id).ok().map(|v| v.key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::common::KEY_VAULT_SCOPE_PATTERN,
        controller::policy::test_support::{labels, policy},
    };

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";

    fn vault(rg: &str, name: &str) -> String {
        format!("{SUB}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}")
    }

    fn listing(name: &str, team: &str, vaults: &[&str]) -> DelegationPolicy {
        let mut p = policy(name, team, &[], &[]);
        p.spec.key_vaults = vaults.iter().map(|s| s.to_string()).collect();
        p
    }

    #[derive(Debug)]
    enum Want {
        Allowed(&'static str),
        Denied,
        Invalid,
    }

    #[test]
    fn writes_are_allowed_only_where_a_selecting_policy_lists_the_vault_or_a_scope_containing_it() {
        let kv = vault("rg-shared", "contoso-kv");
        let rg = format!("{SUB}/resourceGroups/rg-shared");
        let upper = kv.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions");
        // (what, policies, the namespace's team, the vault the object names, wanted)
        let cases: Vec<(&str, Vec<DelegationPolicy>, &str, String, Want)> = vec![
            ("no policy at all", vec![], "a", kv.clone(), Want::Denied),
            (
                "a policy selecting another namespace",
                vec![listing("p", "b", &[&kv])],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "the vault listed in another casing",
                vec![listing("p", "a", &[&upper])],
                "a",
                kv.clone(),
                Want::Allowed("p"),
            ),
            (
                "the object names it in another casing",
                vec![listing("p", "a", &[&kv])],
                "a",
                upper.clone(),
                Want::Allowed("p"),
            ),
            (
                "its resource group is listed",
                vec![listing("p", "a", &[&rg])],
                "a",
                kv.clone(),
                Want::Allowed("p"),
            ),
            (
                "its subscription is listed",
                vec![listing("p", "a", &[SUB])],
                "a",
                kv.clone(),
                Want::Allowed("p"),
            ),
            (
                "a sibling resource group with a common prefix is no container",
                vec![listing(
                    "p",
                    "a",
                    &[&format!("{SUB}/resourceGroups/rg-share")],
                )],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "a vault whose name extends the listed one's",
                vec![listing("p", "a", &[&vault("rg-shared", "contoso")])],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "another vault in the same resource group",
                vec![listing("p", "a", &[&vault("rg-shared", "other-kv")])],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "role scopes and AKS clusters are not keyVaults",
                vec![{
                    let mut p = policy("p", "a", &[&rg, SUB], &["*"]);
                    p.spec.aks_clusters = vec![rg.clone()];
                    p
                }],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "an unparsable entry allows nothing",
                vec![listing("p", "a", &["/subscriptions/*", "*"])],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "a management group allows nothing below it",
                vec![listing(
                    "p",
                    "a",
                    &["/providers/Microsoft.Management/managementGroups/root"],
                )],
                "a",
                kv.clone(),
                Want::Denied,
            ),
            (
                "two policies: the one that allows is named",
                vec![
                    listing("a-first", "a", &[&vault("rg-shared", "other-kv")]),
                    listing("b-second", "a", &[&rg]),
                ],
                "a",
                kv.clone(),
                Want::Allowed("b-second"),
            ),
            (
                "two policies that allow: the first by name, whatever the store's order",
                vec![listing("q", "a", &[SUB]), listing("p", "a", &[&kv])],
                "a",
                kv.clone(),
                Want::Allowed("p"),
            ),
            (
                "a malformed id, even under a listed subscription",
                vec![listing("p", "a", &[SUB])],
                "a",
                format!("{SUB}/resourceGroups/rg-shared/providers/Microsoft.KeyVault"),
                Want::Invalid,
            ),
            (
                "not an id at all",
                vec![listing("p", "a", &[SUB])],
                "a",
                "contoso-kv".into(),
                Want::Invalid,
            ),
            (
                "another resource type in a listed resource group",
                vec![listing("p", "a", &[&rg])],
                "a",
                format!(
                    "{SUB}/resourceGroups/rg-shared/providers/Microsoft.Storage/storageAccounts/st"
                ),
                Want::Invalid,
            ),
            (
                "a secret, not a vault",
                vec![listing("p", "a", &[&rg])],
                "a",
                format!("{kv}/secrets/s"),
                Want::Invalid,
            ),
            (
                "dot segments that would leave the listed group",
                vec![listing("p", "a", &[&rg])],
                "a",
                format!(
                    "{rg}/providers/Microsoft.KeyVault/vaults/../../../../rg-other/providers/Microsoft.KeyVault/vaults/kv"
                ),
                Want::Invalid,
            ),
            (
                "a vault name Azure would refuse (it becomes a host name)",
                vec![listing("p", "a", &[&rg])],
                "a",
                vault("rg-shared", "kv.evil.example"),
                Want::Invalid,
            ),
        ];
        for (what, policies, team, id, want) in cases {
            let field = "spec.targets.keyVaults[2].vault";
            let got = may_write(&policies, "ns", &labels(team), field, &id);
            match (&want, &got) {
                (Want::Allowed(name), Ok(allowed)) => {
                    assert_eq!(allowed.policy, *name, "{what}");
                    assert_eq!(allowed.vault.name().to_ascii_lowercase(), "contoso-kv");
                }
                (Want::Denied, Err(Refusal::DeniedByPolicy(m))) => assert!(
                    m.starts_with(field)
                        && m.contains("keyVaults")
                        && m.contains("namespace ns")
                        && m.to_ascii_lowercase().contains(&kv.to_ascii_lowercase()),
                    "{what}: {m}"
                ),
                (Want::Invalid, Err(Refusal::InvalidVault(m))) => assert!(
                    m.starts_with(field) && m.contains(&id) && m.contains("keyVaults"),
                    "{what}: {m}"
                ),
                _ => panic!("{what}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn one_vault_in_two_spellings_has_one_key() {
        let a = vault("rg-shared", "contoso-kv");
        let b = a
            .replace("resourceGroups", "resourcegroups")
            .replace("Microsoft.KeyVault", "microsoft.keyvault")
            .replace("contoso-kv", "CONTOSO-KV");
        assert_eq!(vault_key(&a), vault_key(&b));
        assert_eq!(vault_key(&a), Some(a.to_ascii_lowercase()));
        assert_eq!(vault_key(&format!("{a}/")), vault_key(&a));
        assert_ne!(vault_key(&a), vault_key(&vault("rg-shared", "other-kv")));
        assert_ne!(vault_key(&a), vault_key(&vault("rg-other", "contoso-kv")));
        for not_a_vault in ["not an id", SUB, &format!("{a}/secrets/s")] {
            assert_eq!(vault_key(not_a_vault), None, "{not_a_vault}");
        }
    }

    #[test]
    fn vault_names_follow_azures_rules() {
        for ok in [
            "kv1",
            "contoso-kv",
            "a-b-c",
            &format!("k{}", "v".repeat(23)),
        ] {
            assert!(Vault::parse(&vault("rg", ok)).is_ok(), "{ok}");
        }
        for bad in [
            "kv",
            "1kv",
            "kv-",
            "k--v",
            "k_v",
            &format!("k{}", "v".repeat(24)),
        ] {
            assert!(Vault::parse(&vault("rg", bad)).is_err(), "{bad}");
        }
    }

    /// Admission admits in keyVaults exactly the levels that can hold a vault; what it admits, the decision reads.
    #[test]
    fn admission_admits_what_the_decision_can_use() {
        let admits = |s: &str| {
            regex::Regex::new(KEY_VAULT_SCOPE_PATTERN)
                .unwrap()
                .is_match(s)
        };
        let kv = vault("rg-shared", "contoso-kv");
        for entry in [
            SUB.to_string(),
            format!("{SUB}/resourcegroups/RG.(x)_y-z"),
            kv.clone(),
            kv.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions"),
        ] {
            assert!(admits(&entry), "{entry}");
            let scope = Scope::parse(&entry).unwrap();
            assert!(
                scope.level() != Level::Resource || Vault::parse(&entry).is_ok(),
                "{entry}"
            );
        }
        for entry in [
            "garbage".to_string(),
            "/providers/Microsoft.Management/managementGroups/root".into(),
            format!("{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st"),
            format!("{kv}/secrets/s"),
            format!("{SUB}/providers/Microsoft.KeyVault/vaults/kv1"),
            vault("rg", "kv"),
            vault("rg", "kv-"),
            format!("{kv}/"),
        ] {
            assert!(!admits(&entry), "{entry}");
        }
    }
}
