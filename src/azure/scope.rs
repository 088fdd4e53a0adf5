//! ARM scopes (resource ids) parsed into their parts and written in one canonical form, so that two spellings
//! of the same scope (ARM matches case-insensitively) give the same assignment name and the same policy
//! decision. Pure: no I/O.
//!
//! Role assignment and role definition ids are typed here too ([`RoleAssignmentId`], [`RoleDefinitionId`]): the
//! one place that takes an ARM id apart, so that no caller searches an id's text for `/providers/`.
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
        let parts = segments(text).map_err(|why| err(&why))?;
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

    /// The scope of a subscription, from its id.
    pub fn subscription_scope(subscription: &str) -> Result<Scope, ParseError> {
        Scope::parse(&format!("/subscriptions/{subscription}"))
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

/// The segments of an ARM id (no leading '/', no trailing '/'), refusing what is never part of a real one.
fn segments(text: &str) -> Result<Vec<&str>, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Err("it must start with '/'".into());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("it has an empty segment".into());
    }
    // The HTTP client resolves dot segments and percent escapes: `rg-ok/providers/X/../../../rg-other` would
    // pass the policy as inside rg-ok and be sent to rg-other. Such a scope never names a real resource.
    if let Some(p) = parts.iter().find(|p| {
        matches!(**p, "." | "..")
            || p.contains(|c: char| matches!(c, '%' | '\\' | '?' | '#') || c.is_whitespace())
    }) {
        return Err(format!("the segment '{p}' is not allowed"));
    }
    Ok(parts)
}

/// Splits `{scope}/providers/Microsoft.Authorization/{kind}/{name}` (keywords in any case) into the scope's text
/// (empty for the tenant root) and the name.
fn authorization_child<'a>(text: &'a str, kind: &str) -> Result<(String, &'a str), String> {
    let parts = segments(text)?;
    let n = parts.len();
    let is = |i: usize, word: &str| parts[i].eq_ignore_ascii_case(word);
    if n < 4 || !(is(n - 4, "providers") && is(n - 3, "Microsoft.Authorization") && is(n - 2, kind))
    {
        return Err(format!(
            "it must end in /providers/Microsoft.Authorization/{kind}/{{name}}"
        ));
    }
    let scope = parts[..n - 4].iter().map(|p| format!("/{p}")).collect();
    Ok((scope, parts[n - 1]))
}

/// A role assignment's ARM id: `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`. Equal when ARM
/// would take them for one assignment (case-insensitively).
#[derive(Clone, Debug)]
pub struct RoleAssignmentId {
    scope: Scope,
    name: String,
}

impl RoleAssignmentId {
    /// The assignment `name` at `scope`.
    pub fn new(scope: Scope, name: &str) -> RoleAssignmentId {
        RoleAssignmentId {
            scope,
            name: name.to_string(),
        }
    }

    pub fn parse(text: &str) -> Result<RoleAssignmentId, ParseError> {
        let err = |why: &str| ParseError(format!("'{text}' is not a role assignment id: {why}"));
        let (scope, name) =
            authorization_child(text, "roleAssignments").map_err(|why| err(&why))?;
        let scope = Scope::parse(&scope).map_err(|e| err(&e.0))?;
        Ok(RoleAssignmentId::new(scope, name))
    }

    /// Where the assignment is.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Its name (a GUID when the operator or the portal made it), as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `text` is this id, as ARM compares ids (text that is no assignment id is not).
    pub fn is(&self, text: &str) -> bool {
        RoleAssignmentId::parse(text).is_ok_and(|other| other == *self)
    }
}

impl PartialEq for RoleAssignmentId {
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl Eq for RoleAssignmentId {}

impl fmt::Display for RoleAssignmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            self.scope, self.name
        )
    }
}

/// A role definition's id: `[{scope}]/providers/Microsoft.Authorization/roleDefinitions/{guid}`, or the bare GUID
/// (as spec.role.id may give it). What identifies the role is the GUID; the scope only says where it was read.
#[derive(Clone, Debug)]
pub struct RoleDefinitionId {
    scope: Option<Scope>,
    /// Lower case. Not checked to be a GUID: the name is Azure's to choose, and is compared, never built on.
    guid: String,
}

impl RoleDefinitionId {
    pub fn parse(text: &str) -> Result<RoleDefinitionId, ParseError> {
        let err = |why: &str| ParseError(format!("'{text}' is not a role definition id: {why}"));
        let bare = text.trim();
        if !bare.starts_with('/') {
            // A bare GUID is a one-segment id.
            let rooted = format!("/{bare}");
            let [guid] = segments(&rooted).map_err(|why| err(&why))?[..] else {
                return Err(err("a bare role definition id is one GUID"));
            };
            return Ok(RoleDefinitionId {
                scope: None,
                guid: guid.to_ascii_lowercase(),
            });
        }
        let (scope, name) =
            authorization_child(text, "roleDefinitions").map_err(|why| err(&why))?;
        let scope = match scope.as_str() {
            "" => None,
            s => Some(Scope::parse(s).map_err(|e| err(&e.0))?),
        };
        Ok(RoleDefinitionId {
            scope,
            guid: name.to_ascii_lowercase(),
        })
    }

    /// Where the id says the definition lives (None for a tenant-level id or a bare GUID).
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// The definition's GUID, lower case.
    pub fn guid(&self) -> &str {
        &self.guid
    }

    /// The GUID (lower case) of a role definition id as Azure or a status gives it; the text itself, lower case,
    /// if it is not one, so that it still compares (and hashes) apart from every real GUID.
    pub fn guid_of(text: &str) -> String {
        RoleDefinitionId::parse(text)
            .map(|d| d.guid)
            .unwrap_or_else(|_| text.to_ascii_lowercase())
    }
}

/// Two ids of one definition (read at different scopes, or spelled differently) are equal.
impl PartialEq for RoleDefinitionId {
    fn eq(&self, other: &Self) -> bool {
        self.guid == other.guid
    }
}

impl Eq for RoleDefinitionId {}

impl fmt::Display for RoleDefinitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = self.scope.as_ref().map(Scope::as_str).unwrap_or_default();
        write!(
            f,
            "{scope}/providers/Microsoft.Authorization/roleDefinitions/{}",
            self.guid
        )
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
    #[test]
    fn role_assignment_ids_parse_at_every_level_and_compare_as_arm_does() {
        const A: &str = "/providers/Microsoft.Authorization/roleAssignments/0f0e0d0c-0000-4000-8000-000000000001";
        let kv = format!("{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv");
        let subnet = format!(
            "{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
        );
        let mg = "/providers/Microsoft.Management/managementGroups/platform";
        // (name, text, scope, level)
        let cases = [
            (
                "subscription",
                format!("{SUB}{A}"),
                SUB.to_string(),
                Level::Subscription,
            ),
            (
                "resource group, any case",
                format!(
                    "{}/RESOURCEGROUPS/rg/PROVIDERS/microsoft.authorization/ROLEASSIGNMENTS/0f0e0d0c-0000-4000-8000-000000000001",
                    SUB.to_uppercase()
                ),
                format!("{SUB}/resourceGroups/rg"),
                Level::ResourceGroup,
            ),
            ("resource", format!("{kv}{A}"), kv.clone(), Level::Resource),
            (
                "child resource",
                format!("{subnet}{A}/"),
                subnet.clone(),
                Level::Resource,
            ),
            (
                "management group",
                format!("{mg}{A}"),
                mg.to_string(),
                Level::ManagementGroup,
            ),
        ];
        for (case, text, scope, level) in cases {
            let id = RoleAssignmentId::parse(&text).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                (id.scope().as_str(), id.scope().level(), id.name()),
                (
                    scope.as_str(),
                    level,
                    "0f0e0d0c-0000-4000-8000-000000000001"
                ),
                "{case}"
            );
            assert_eq!(
                id.to_string(),
                format!("{scope}{A}"),
                "{case}: one canonical spelling"
            );
            assert_eq!(
                RoleAssignmentId::parse(&id.to_string()).unwrap(),
                id,
                "{case}: round trip"
            );
            assert!(
                id.is(&text.to_ascii_lowercase()),
                "{case}: ids compare case-insensitively"
            );
        }
        let rg = Scope::parse(&format!("{SUB}/resourceGroups/rg")).unwrap();
        assert_ne!(
            RoleAssignmentId::new(rg.clone(), "a"),
            RoleAssignmentId::new(Scope::parse(SUB).unwrap(), "a"),
            "the same name at another scope is another assignment"
        );
        assert!(!RoleAssignmentId::new(rg, "a").is("not an id"));
    }

    #[test]
    fn role_assignment_ids_that_are_not_refuse_to_parse() {
        for (case, text, why) in [
            ("a scope alone", SUB.to_string(), "must end in"),
            (
                "no name",
                format!("{SUB}/providers/Microsoft.Authorization/roleAssignments"),
                "must end in",
            ),
            (
                "a definition",
                format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/x"),
                "must end in",
            ),
            (
                "a name with a path in it",
                format!("{SUB}/providers/Microsoft.Authorization/roleAssignments/../x"),
                "'..' is not allowed",
            ),
            (
                "a query in the name",
                format!("{SUB}/providers/Microsoft.Authorization/roleAssignments/x?y"),
                "is not allowed",
            ),
            (
                "a scope that is not one",
                "/tenants/t/providers/Microsoft.Authorization/roleAssignments/x".into(),
                "is not an ARM scope",
            ),
            (
                "the tenant root",
                "/providers/Microsoft.Authorization/roleAssignments/x".into(),
                "is not an ARM scope",
            ),
            (
                "relative",
                "subscriptions/x/providers/Microsoft.Authorization/roleAssignments/x".into(),
                "start with '/'",
            ),
        ] {
            let e = RoleAssignmentId::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{case}: {e}");
        }
    }

    #[test]
    fn role_definition_ids_are_known_by_their_guid() {
        const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
        const D: &str = "/providers/Microsoft.Authorization/roleDefinitions/";
        // (name, text, scope)
        let cases: [(&str, String, Option<&str>); 5] = [
            ("bare GUID", ACR_PULL.to_uppercase(), None),
            ("tenant level", format!("{D}{ACR_PULL}"), None),
            (
                "subscription, any case",
                format!(
                    "{}{}",
                    SUB.to_uppercase(),
                    format!("{D}{ACR_PULL}").to_lowercase()
                ),
                Some(SUB),
            ),
            (
                "management group",
                format!("/providers/Microsoft.Management/managementGroups/mg{D}{ACR_PULL}"),
                Some("/providers/Microsoft.Management/managementGroups/mg"),
            ),
            (
                "resource group",
                format!("{SUB}/resourceGroups/rg{D}{}", ACR_PULL.to_uppercase()),
                Some("/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg"),
            ),
        ];
        for (case, text, scope) in cases {
            let id = RoleDefinitionId::parse(&text).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                (id.guid(), id.scope().map(Scope::as_str)),
                (ACR_PULL, scope),
                "{case}"
            );
            assert_eq!(
                id,
                RoleDefinitionId::parse(ACR_PULL).unwrap(),
                "{case}: one role wherever read"
            );
            assert_eq!(
                RoleDefinitionId::parse(&id.to_string()).unwrap().scope(),
                id.scope(),
                "{case}"
            );
        }
        for (case, text, why) in [
            ("a bare id with a path", format!("x/{ACR_PULL}"), "one GUID"),
            (
                "no GUID",
                D.trim_end_matches('/').to_string(),
                "must end in",
            ),
            (
                "a query in the GUID",
                format!("{D}{ACR_PULL}?x"),
                "is not allowed",
            ),
            (
                "an assignment",
                format!("{SUB}/providers/Microsoft.Authorization/roleAssignments/{ACR_PULL}"),
                "must end in",
            ),
            (
                "a bad scope",
                format!("/nope{D}{ACR_PULL}"),
                "not an ARM scope",
            ),
        ] {
            let e = RoleDefinitionId::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{case}: {e}");
        }
    }
}
