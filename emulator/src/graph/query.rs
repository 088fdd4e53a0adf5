//! OData query options as Graph supports them for directory objects: `$select`, `$top`, a small `$filter`
//! grammar (`eq` on keys and names, `startswith`, `tags/any`, joined by `and` or `or`), and the resource-unit
//! cost of a request for throttling.

use std::collections::HashMap;

use axum::http::Method;

use super::Segment;

pub fn select(query: &HashMap<String, String>) -> Option<Vec<String>> {
    query.get("$select").map(|s| {
        s.split(',')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    })
}

/// `$top`: 1 to 999, default 100.
pub fn top(query: &HashMap<String, String>) -> Result<usize, String> {
    match query.get("$top") {
        None => Ok(100),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => Ok(n),
            _ => Err(format!(
                "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
            )),
        },
    }
}

/// Graph's resource-unit cost: GET applications costs 2, other requests 1; `$select` -1, `$top` under 20
/// -1; at least 1.
pub fn cost(method: &Method, segments: &[Segment], query: &HashMap<String, String>) -> u32 {
    let base: i32 = if method == Method::GET
        && segments
            .first()
            .is_some_and(|s| s.name.eq_ignore_ascii_case("applications"))
    {
        2
    } else {
        1
    };
    let mut cost = base;
    if method == Method::GET {
        if query.contains_key("$select") {
            cost -= 1;
        }
        if query
            .get("$top")
            .and_then(|t| t.parse::<u32>().ok())
            .is_some_and(|t| t < 20)
        {
            cost -= 1;
        }
        if query.contains_key("$expand") {
            cost += 1;
        }
    }
    cost.max(1) as u32
}

#[derive(Debug, PartialEq)]
pub enum Filter {
    Eq(String, String),
    StartsWith(String, String),
    /// `{collection}/any(x:x eq 'v')` on a collection of strings (`tags`, `servicePrincipalNames`).
    Any(String, String),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

pub fn parse_filter(text: &str) -> Result<Filter, String> {
    let text = text.trim();
    // `or` binds looser than `and`; neither appears inside our quoted values often enough to need a lexer,
    // but quotes are respected when splitting.
    if let Some((l, r)) = split_top(text, " or ") {
        return Ok(Filter::Or(
            Box::new(parse_filter(l)?),
            Box::new(parse_filter(r)?),
        ));
    }
    if let Some((l, r)) = split_top(text, " and ") {
        return Ok(Filter::And(
            Box::new(parse_filter(l)?),
            Box::new(parse_filter(r)?),
        ));
    }
    let unsupported = || format!("Unsupported or invalid query filter clause specified: '{text}'.");
    if let Some(inner) = text
        .strip_prefix("startswith(")
        .and_then(|t| t.strip_suffix(')'))
    {
        let (field, value) = inner.split_once(',').ok_or_else(unsupported)?;
        return Ok(Filter::StartsWith(
            field.trim().to_string(),
            quoted(value).ok_or_else(unsupported)?,
        ));
    }
    if let Some((collection, inner)) = text
        .split_once("/any(")
        .and_then(|(c, t)| Some((c, t.strip_suffix(')')?)))
    {
        if !["tags", "servicePrincipalNames", "identifierUris"]
            .iter()
            .any(|c| c.eq_ignore_ascii_case(collection))
        {
            return Err(unsupported());
        }
        let (var, cond) = inner.split_once(':').ok_or_else(unsupported)?;
        let (lhs, value) = cond.split_once(" eq ").ok_or_else(unsupported)?;
        if lhs.trim() != var.trim() {
            return Err(unsupported());
        }
        return Ok(Filter::Any(
            collection.to_string(),
            quoted(value).ok_or_else(unsupported)?,
        ));
    }
    let (field, value) = text.split_once(" eq ").ok_or_else(unsupported)?;
    let field = field.trim();
    if !["id", "appId", "displayName", "uniqueName"]
        .iter()
        .any(|f| f.eq_ignore_ascii_case(field))
    {
        return Err(unsupported());
    }
    Ok(Filter::Eq(
        field.to_string(),
        quoted(value).ok_or_else(unsupported)?,
    ))
}

fn quoted(value: &str) -> Option<String> {
    let v = value.trim();
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map(|v| v.replace("''", "'"))
}

fn split_top<'a>(text: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let mut in_quote = false;
    for (i, c) in text.char_indices() {
        if c == '\'' {
            in_quote = !in_quote;
        } else if !in_quote && text[i..].starts_with(sep) {
            return Some((&text[..i], &text[i + sep.len()..]));
        }
    }
    None
}

/// What a filter can look at on an entity.
pub trait Filterable {
    fn field(&self, name: &str) -> Option<&str>;
    fn tags(&self) -> &[String];
    /// A collection of strings other than `tags`, for `any` (empty when the entity has no such property).
    fn names(&self, _collection: &str) -> Vec<&str> {
        Vec::new()
    }
}

impl Filterable for crate::state::Application {
    fn field(&self, name: &str) -> Option<&str> {
        match name.to_ascii_lowercase().as_str() {
            "id" => Some(&self.id),
            "appid" => Some(&self.app_id),
            "displayname" => Some(&self.display_name),
            "uniquename" => self.unique_name.as_deref(),
            _ => None,
        }
    }
    fn tags(&self) -> &[String] {
        &self.tags
    }
}

impl Filterable for crate::state::ServicePrincipal {
    fn field(&self, name: &str) -> Option<&str> {
        match name.to_ascii_lowercase().as_str() {
            "id" => Some(&self.id),
            "appid" => Some(&self.app_id),
            "displayname" => Some(&self.display_name),
            _ => None,
        }
    }
    fn tags(&self) -> &[String] {
        &self.tags
    }
    /// servicePrincipalNames holds the appId (and the application's identifier URIs, which the emulator
    /// does not model), as `render::service_principal` shows.
    fn names(&self, collection: &str) -> Vec<&str> {
        if collection.eq_ignore_ascii_case("servicePrincipalNames") {
            vec![&self.app_id]
        } else {
            Vec::new()
        }
    }
}

/// Whether an entity matches; evaluated on the stored object, so that only the returned page is rendered.
pub fn matches<T: Filterable>(filter: &Filter, entity: &T) -> bool {
    match filter {
        Filter::Eq(f, v) => entity.field(f).is_some_and(|x| x.eq_ignore_ascii_case(v)),
        Filter::StartsWith(f, v) => entity
            .field(f)
            .is_some_and(|x| x.to_ascii_lowercase().starts_with(&v.to_ascii_lowercase())),
        Filter::Any(c, v) if c.eq_ignore_ascii_case("tags") => entity.tags().iter().any(|t| t == v),
        Filter::Any(c, v) => entity.names(c).iter().any(|n| n.eq_ignore_ascii_case(v)),
        Filter::And(a, b) => matches(a, entity) && matches(b, entity),
        Filter::Or(a, b) => matches(a, entity) || matches(b, entity),
    }
}

/// A filter that names one object by a key the directory indexes (`appId eq`, `id eq`, `uniqueName eq`), so
/// that it is a lookup rather than a scan.
pub fn indexed_key(filter: &Filter) -> Option<(String, &str)> {
    match filter {
        Filter::Eq(f, v)
            if ["id", "appid", "uniquename"].contains(&f.to_ascii_lowercase().as_str()) =>
        {
            Some((f.to_ascii_lowercase(), v.as_str()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let app = crate::state::Application {
            id: "00000000-0000-0000-0000-000000000001".into(),
            app_id: "A1".into(),
            display_name: "Payroll API".into(),
            unique_name: None,
            description: None,
            notes: None,
            tags: vec!["team:x".into()],
            sign_in_audience: "AzureADMyOrg".into(),
            created_date_time: jiff::Timestamp::UNIX_EPOCH,
            password_credentials: vec![],
            federated_identity_credentials: vec![],
            key_credentials: vec![],
            owners: vec![],
        };
        for (f, want) in [
            ("appId eq 'a1'", true),
            ("displayName eq 'Payroll API' and appId eq 'A1'", true),
            ("startswith(displayName,'pay')", true),
            ("tags/any(t:t eq 'team:x')", true),
            ("tags/any(t:t eq 'team:y') or appId eq 'zz'", false),
            ("displayName eq 'it''s'", false),
        ] {
            assert_eq!(matches(&parse_filter(f).unwrap(), &app), want, "{f}");
        }
        assert_eq!(
            indexed_key(&parse_filter("appId eq 'A1'").unwrap()),
            Some(("appid".into(), "A1"))
        );
        assert_eq!(
            indexed_key(&parse_filter("appId eq 'A1' and displayName eq 'x'").unwrap()),
            None
        );
        assert!(parse_filter("notes eq 'x'").is_err());
        assert!(
            parse_filter("é eq 'x'").is_err(),
            "non-ASCII outside quotes is an error, not a panic"
        );
        assert!(matches(
            &parse_filter("displayName eq 'café' or appId eq 'A1'").unwrap(),
            &app
        ));
        assert!(parse_filter("appId gt 'x'").is_err());
        assert!(parse_filter("notes/any(n:n eq 'x')").is_err());
    }

    #[test]
    fn service_principal_names_filter() {
        let sp = crate::state::ServicePrincipal {
            id: "00000000-0000-0000-0000-0000000000b1".into(),
            app_id: "aaaaaaaa-0000-0000-0000-000000000001".into(),
            display_name: "Payroll API".into(),
            app_owner_organization_id: "t".into(),
            tags: vec![],
            created_date_time: jiff::Timestamp::UNIX_EPOCH,
            graph_permissions: vec![],
        };
        for (f, want) in [
            (
                "servicePrincipalNames/any(c:c eq 'AAAAAAAA-0000-0000-0000-000000000001')",
                true,
            ),
            (
                "servicePrincipalNames/any(c:c eq 'aaaaaaaa-0000-0000-0000-000000000002')",
                false,
            ),
            ("servicePrincipalNames/any(c:c eq 'Payroll API')", false),
        ] {
            assert_eq!(matches(&parse_filter(f).unwrap(), &sp), want, "{f}");
        }
    }

    #[test]
    fn cost_follows_the_documented_rules() {
        let apps = vec![Segment {
            name: "applications".into(),
            key: None,
        }];
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(cost(&Method::GET, &apps, &q(&[])), 2);
        assert_eq!(cost(&Method::GET, &apps, &q(&[("$select", "id")])), 1);
        assert_eq!(
            cost(&Method::GET, &apps, &q(&[("$select", "id"), ("$top", "5")])),
            1
        );
        assert_eq!(cost(&Method::POST, &apps, &q(&[])), 1);
    }
}
