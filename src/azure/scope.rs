//! ARM scopes (resource ids) parsed into their parts and written in one canonical form, so that two spellings
//! of the same scope (ARM matches case-insensitively) give the same assignment name and the same policy
//! decision. Pure: no I/O.
//!
//! Written by hand: the Azure SDK for Rust (azure_core 1) has no resource-id parser, and the grammar is small.

use std::fmt;

/// A parsed ARM scope.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The canonical text: keywords in ARM's casing, the subscription GUID in lower case, names as given.
    canonical: String,
    /// Lower-case segments, for containment checks.
    segments: Vec<String>,
    level: Level,
}

/// What a scope addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    ManagementGroup,
    Subscription,
    ResourceGroup,
    Resource,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ParseError> {
        let err = |why: &str| ParseError(format!("'{text}' is not an ARM scope: {why}"));
        let trimmed = text.trim().trim_end_matches('/');
        let Some(rest) = trimmed.strip_prefix('/') else {
            return Err(err("it must start with '/'"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("it has an empty segment"));
        }
        // The HTTP client resolves dot segments and percent escapes: `rg-ok/providers/X/../../../rg-other` would
        // pass the policy as inside rg-ok and be sent to rg-other. Such a scope never names a real resource.
        if let Some(p) = parts.iter().find(|p| {
            matches!(**p, "." | "..")
                || p.contains(|c: char| matches!(c, '%' | '\\' | '?' | '#') || c.is_whitespace())
        }) {
            return Err(err(&format!("the segment '{p}' is not allowed")));
        }
        let is = |i: usize, word: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(word));
        let mut out: Vec<String> = Vec::with_capacity(parts.len());
        let (level, provider_at) = if is(0, "providers")
            && is(1, "Microsoft.Management")
            && is(2, "managementGroups")
        {
            let Some(name) = parts.get(3) else {
                return Err(err("a management group needs a name"));
            };
            if parts.len() > 4 {
                return Err(err("nothing may follow a management group"));
            }
            out.extend([
                "providers".into(),
                "Microsoft.Management".into(),
                "managementGroups".into(),
                name.to_string(),
            ]);
            (Level::ManagementGroup, None)
        } else if is(0, "subscriptions") {
            let Some(sub) = parts.get(1) else {
                return Err(err("a subscription needs an id"));
            };
            let Ok(sub) = uuid::Uuid::parse_str(sub) else {
                return Err(err("the subscription id must be a GUID"));
            };
            out.extend(["subscriptions".into(), sub.hyphenated().to_string()]);
            if is(2, "resourceGroups") {
                let Some(rg) = parts.get(3) else {
                    return Err(err("a resource group needs a name"));
                };
                out.extend(["resourceGroups".into(), rg.to_string()]);
                (Level::ResourceGroup, Some(4))
            } else {
                (Level::Subscription, Some(2))
            }
        } else {
            return Err(err(
                "it must start with /subscriptions/{id} or /providers/Microsoft.Management/managementGroups/{name}",
            ));
        };
        let level = match provider_at {
            Some(at) if parts.len() > at => {
                if !is(at, "providers") {
                    return Err(err(&format!(
                        "expected 'providers' after the {}",
                        if level == Level::ResourceGroup {
                            "resource group"
                        } else {
                            "subscription"
                        }
                    )));
                }
                let Some(namespace) = parts.get(at + 1) else {
                    return Err(err("a provider namespace must follow 'providers'"));
                };
                if !namespace.contains('.') {
                    return Err(err(&format!(
                        "'{namespace}' is not a resource provider namespace (e.g. Microsoft.KeyVault)"
                    )));
                }
                let types_and_names = &parts[at + 2..];
                if types_and_names.is_empty() || !types_and_names.len().is_multiple_of(2) {
                    return Err(err(
                        "a resource is {Namespace}/{type}/{name}, and each child resource adds {type}/{name}",
                    ));
                }
                out.push("providers".into());
                out.push(namespace.to_string());
                out.extend(types_and_names.iter().map(|s| s.to_string()));
                Level::Resource
            }
            _ => level,
        };
        let canonical = format!("/{}", out.join("/"));
        Ok(Scope {
            segments: out.iter().map(|s| s.to_ascii_lowercase()).collect(),
            canonical,
            level,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Whether `other` is this scope or below it (a resource group is within its subscription, a subnet within
    /// its virtual network). Management groups contain subscriptions only in Azure's hierarchy, which is not
    /// visible here, so a management group contains only itself.
    pub fn contains(&self, other: &Scope) -> bool {
        other.segments.len() >= self.segments.len()
            && self.segments == other.segments[..self.segments.len()]
    }

    /// The subscription id, if the scope is in one.
    pub fn subscription(&self) -> Option<&str> {
        (self.segments.first().map(String::as_str) == Some("subscriptions"))
            .then(|| self.segments[1].as_str())
    }
}

/// ARM compares ids case-insensitively: two spellings of one scope are equal.
impl PartialEq for Scope {
    fn eq(&self, other: &Self) -> bool {
        self.segments == other.segments
    }
}

impl Eq for Scope {}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";

    #[test]
    fn every_level_parses_to_one_canonical_spelling() {
        let cases = [
            (SUB.to_string(), Level::Subscription, SUB.to_string()),
            (
                "/SUBSCRIPTIONS/11111111-2222-3333-4444-555555555555/".into(),
                Level::Subscription,
                SUB.into(),
            ),
            (
                format!("{SUB}/resourcegroups/rg-Net"),
                Level::ResourceGroup,
                format!("{SUB}/resourceGroups/rg-Net"),
            ),
            (
                format!(
                    "{SUB}/resourceGroups/rg/PROVIDERS/Microsoft.Network/virtualNetworks/v/subnets/s"
                ),
                Level::Resource,
                format!(
                    "{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
                ),
            ),
            (
                format!("{SUB}/providers/Microsoft.Insights/actionGroups/a"),
                Level::Resource,
                format!("{SUB}/providers/Microsoft.Insights/actionGroups/a"),
            ),
            (
                "/providers/microsoft.management/MANAGEMENTGROUPS/platform".into(),
                Level::ManagementGroup,
                "/providers/Microsoft.Management/managementGroups/platform".into(),
            ),
        ];
        for (text, level, canonical) in cases {
            let scope = Scope::parse(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((scope.level(), scope.as_str()), (level, canonical.as_str()));
        }
        assert_eq!(
            Scope::parse(&SUB.to_uppercase()).unwrap().subscription(),
            Some("11111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn malformed_scopes_say_what_is_wrong() {
        for (text, why) in [
            ("subscriptions/x", "start with '/'"),
            ("/subscriptions/not-a-guid", "GUID"),
            ("/tenants/x", "must start with"),
            (&format!("{SUB}/resourceGroups"), "needs a name"),
            (&format!("{SUB}//resourceGroups/rg"), "empty segment"),
            (&format!("{SUB}/resourceGroups/rg/vaults/kv"), "'providers'"),
            (
                &format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults"),
                "{type}/{name}",
            ),
            (
                &format!("{SUB}/resourceGroups/rg/providers/keyvault/vaults/kv"),
                "provider namespace",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/a/b",
                "nothing may follow",
            ),
            (
                &format!("{SUB}/resourceGroups/rg-ok/providers/Microsoft.Foo/../../../rg-other"),
                "'..' is not allowed",
            ),
            (
                &format!("{SUB}/resourceGroups/%2e%2e"),
                "'%2e%2e' is not allowed",
            ),
            (&format!("{SUB}/resourceGroups/./x"), "'.' is not allowed"),
        ] {
            let e = Scope::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn containment_follows_segments_not_characters() {
        let p = |s: &str| Scope::parse(s).unwrap();
        let rg = p(&format!("{SUB}/resourceGroups/rg-shared"));
        assert!(p(SUB).contains(&rg));
        assert!(rg.contains(&rg));
        assert!(rg.contains(&p(&format!(
            "{SUB}/resourcegroups/RG-SHARED/providers/Microsoft.KeyVault/vaults/kv"
        ))));
        assert!(!rg.contains(&p(&format!("{SUB}/resourceGroups/rg-shared2"))));
        assert!(!rg.contains(&p(SUB)));
        assert_eq!(
            rg,
            p(&format!("{SUB}/resourcegroups/RG-SHARED")),
            "equality ignores case"
        );
        let vnet = p(&format!(
            "{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v"
        ));
        assert!(vnet.contains(&p(&format!("{}/subnets/s", vnet.as_str()))));
    }
}
