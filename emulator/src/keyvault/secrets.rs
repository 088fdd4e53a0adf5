//! Key Vault secrets: set (a new version each time), get (latest or a version), update attributes, list
//! secrets and versions with `maxresults`/`nextLink` paging, soft delete, get and list deleted, recover and
//! purge. Shapes follow azure-rest-api-specs `specification/keyvault/data-plane/Microsoft.KeyVault/stable/7.5/
//! secrets.json` (SecretBundle, SecretItem, DeletedSecretBundle, SecretListResult); times are Unix seconds.
//! Key Vault does not refuse reading a secret outside its `nbf`/`exp` window (Learn *About Azure Key Vault
//! secrets*, "Date-time controlled operations"), and neither does the emulator.

use std::collections::{BTreeMap, HashMap};

use axum::{body::Bytes, http::Method, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{KvError, VaultHost, rbac};
use crate::{auth::Caller, server::Ctx};

/// Soft-delete retention: the default (and the emulator's only) setting (Learn *Soft-delete overview*).
pub const RECOVERABLE_DAYS: i64 = 90;
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
/// Largest secret value, 25 KiB (Learn *Azure Key Vault service limits*).
const MAX_VALUE_BYTES: usize = 25 * 1024;
/// At most 15 tags per object (Learn *Azure Key Vault service limits*).
const MAX_TAGS: usize = 15;
const MAX_PAGE: usize = 25;

/// One vault's secrets, live and soft-deleted, by lowercase name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecrets {
    pub secrets: BTreeMap<String, Secret>,
    pub deleted: BTreeMap<String, DeletedSecret>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// As first set (Key Vault names are case-insensitive and keep their first spelling).
    pub name: String,
    /// Oldest first: the last is the latest.
    pub versions: Vec<SecretVersion>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersion {
    pub version: String,
    /// The value itself: a vault must give it back (kept in state.json, never in the admin views).
    pub value: String,
    #[serde(default)]
    pub content_type: Option<String>,
    pub enabled: bool,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedSecret {
    pub secret: Secret,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

/// A secrets route: the path under the vault and the method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    List,
    Set(String),
    Get(String, Option<String>),
    Update(String, Option<String>),
    Versions(String),
    Delete(String),
    ListDeleted,
    GetDeleted(String),
    Purge(String),
    Recover(String),
}

impl Route {
    pub fn parse(method: &Method, path: &str) -> Option<Route> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let s = |i: usize| segs[i].to_string();
        Some(match (method, l.as_slice()) {
            (&Method::GET, ["secrets"]) => Route::List,
            (&Method::PUT, ["secrets", _]) => Route::Set(s(1)),
            (&Method::GET, ["secrets", _]) => Route::Get(s(1), None),
            // The SDKs send an update of the latest version with an empty version: `/secrets/{name}/`.
            (&Method::PATCH, ["secrets", _]) => Route::Update(s(1), None),
            (&Method::DELETE, ["secrets", _]) => Route::Delete(s(1)),
            (&Method::GET, ["secrets", _, "versions"]) => Route::Versions(s(1)),
            (&Method::GET, ["secrets", _, _]) => Route::Get(s(1), Some(s(2))),
            (&Method::PATCH, ["secrets", _, _]) => Route::Update(s(1), Some(s(2))),
            (&Method::GET, ["deletedsecrets"]) => Route::ListDeleted,
            (&Method::GET, ["deletedsecrets", _]) => Route::GetDeleted(s(1)),
            (&Method::DELETE, ["deletedsecrets", _]) => Route::Purge(s(1)),
            (&Method::POST, ["deletedsecrets", _, "recover"]) => Route::Recover(s(1)),
            _ => return None,
        })
    }

    pub fn template(&self) -> &'static str {
        match self {
            Route::List => "/secrets",
            Route::Set(_) | Route::Delete(_) | Route::Get(_, None) | Route::Update(_, None) => {
                "/secrets/{name}"
            }
            Route::Get(_, Some(_)) | Route::Update(_, Some(_)) => "/secrets/{name}/{version}",
            Route::Versions(_) => "/secrets/{name}/versions",
            Route::ListDeleted => "/deletedsecrets",
            Route::GetDeleted(_) | Route::Purge(_) => "/deletedsecrets/{name}",
            Route::Recover(_) => "/deletedsecrets/{name}/recover",
        }
    }

    /// The data action the operation needs (see rbac.rs for the sources).
    fn data_action(&self) -> &'static str {
        match self {
            Route::Get(..) => rbac::GET_SECRET,
            Route::Set(_) => rbac::SET_SECRET,
            Route::Update(..) => rbac::UPDATE,
            Route::Delete(_) => rbac::DELETE,
            Route::Recover(_) => rbac::RECOVER,
            Route::Purge(_) => rbac::PURGE,
            Route::List | Route::Versions(_) | Route::ListDeleted | Route::GetDeleted(_) => {
                rbac::READ_METADATA
            }
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Route::List | Route::ListDeleted => None,
            Route::Set(n)
            | Route::Get(n, _)
            | Route::Update(n, _)
            | Route::Versions(n)
            | Route::Delete(n)
            | Route::GetDeleted(n)
            | Route::Purge(n)
            | Route::Recover(n) => Some(n),
        }
    }
}

/// One authenticated request on a vault.
pub struct Op<'a> {
    pub ctx: &'a Ctx,
    pub vault: &'a VaultHost,
    /// The vault's ARM id, lowercase (as the registry keeps it).
    pub vault_id: &'a str,
    pub caller: &'a Caller,
    pub query: &'a HashMap<String, String>,
    pub body: &'a Bytes,
}

type Outcome = Result<(StatusCode, Value), KvError>;

impl Op<'_> {
    pub fn run(&self, route: &Route) -> Outcome {
        if let Some(name) = route.name() {
            check_name(name)?;
        }
        self.authorize(route)?;
        let now = jiff::Timestamp::now().as_second();
        let base = format!("https://{}", self.vault.host);
        let mut world = self.ctx.world.lock();
        let store = world.vaults.entry(self.vault.name.clone()).or_default();
        let ok = |v: Value| Ok((StatusCode::OK, v));
        let result = match route {
            Route::Set(name) => ok(set(store, name, &self.body_object()?, now, &base)?),
            Route::Get(name, version) => ok(get(store, name, version.as_deref(), &base)?),
            Route::Update(name, version) => ok(update(
                store,
                name,
                version.as_deref(),
                &self.body_object()?,
                now,
                &base,
            )?),
            Route::Versions(name) => ok(self.versions(store, name, &base)?),
            Route::List => ok(self.list(store, &base)?),
            Route::Delete(name) => ok(delete(store, name, now, &base)?),
            Route::GetDeleted(name) => ok(deleted_json(deleted(store, name)?, &base)),
            Route::ListDeleted => ok(self.list_deleted(store, &base)?),
            Route::Recover(name) => ok(recover(store, name, &base)?),
            Route::Purge(name) => {
                store
                    .deleted
                    .remove(&name.to_ascii_lowercase())
                    .ok_or_else(|| deleted_not_found(name))?;
                Ok((StatusCode::NO_CONTENT, Value::Null))
            }
        };
        if result.is_ok()
            && !matches!(
                route,
                Route::Get(..)
                    | Route::Versions(_)
                    | Route::List
                    | Route::ListDeleted
                    | Route::GetDeleted(_)
            )
        {
            self.ctx.touch();
        }
        result
    }

    /// 403 as Key Vault's RBAC answers it, naming the caller, the data action and the resource.
    fn authorize(&self, route: &Route) -> Result<(), KvError> {
        let action = route.data_action();
        if rbac::allowed(
            &self.ctx.world.lock(),
            &self.caller.oid,
            self.vault_id,
            action,
        ) {
            return Ok(());
        }
        let resource = match route.name() {
            Some(name) => format!("{}/secrets/{}", self.vault_id, name.to_ascii_lowercase()),
            None => format!("{}/secrets", self.vault_id),
        };
        Err(KvError {
            inner: Some("ForbiddenByRbac"),
            ..KvError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={}\r\nAction: '{action}'\r\nResource: '{resource}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: {};location={}\r\n",
                    self.caller.app_id,
                    self.caller.oid,
                    self.vault.name,
                    super::VAULT_LOCATION
                ),
            )
        })
    }

    fn body_object(&self) -> Result<Map<String, Value>, KvError> {
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(KvError::bad("The request body is not valid JSON.")),
        }
    }

    /// `maxresults` (1 to 25) and the `$skiptoken` offset of a list request.
    fn page(&self) -> Result<(usize, usize), KvError> {
        let max = match self.query.get("maxresults") {
            None => MAX_PAGE,
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|m| (1..=MAX_PAGE).contains(m))
                .ok_or_else(|| {
                    KvError::bad(format!(
                        "Invalid maxresults '{m}': the value must be between 1 and {MAX_PAGE}."
                    ))
                })?,
        };
        let skip = self
            .query
            .get("$skiptoken")
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        Ok((max, skip))
    }

    /// A page of `items` with the nextLink the SDKs follow (with api-version, as Key Vault's carries it).
    fn paged(&self, items: Vec<Value>, path: &str) -> Outcome {
        let (max, skip) = self.page()?;
        let next = (skip + max < items.len()).then(|| {
            let version = self.query.get("api-version").map_or("", String::as_str);
            format!(
                "https://{}{path}?api-version={version}&$skiptoken={}&maxresults={max}",
                self.vault.host,
                skip + max
            )
        });
        let page: Vec<Value> = items.into_iter().skip(skip).take(max).collect();
        Ok((StatusCode::OK, json!({"value": page, "nextLink": next})))
    }

    fn versions(&self, store: &VaultSecrets, name: &str, base: &str) -> Result<Value, KvError> {
        let secret = live(store, name)?;
        let items = secret
            .versions
            .iter()
            .map(|v| item_json(v, &format!("{base}/secrets/{}/{}", secret.name, v.version)))
            .collect();
        Ok(self
            .paged(items, &format!("/secrets/{}/versions", secret.name))?
            .1)
    }

    fn list(&self, store: &VaultSecrets, base: &str) -> Result<Value, KvError> {
        let items = store
            .secrets
            .values()
            .filter_map(|s| {
                let latest = s.versions.last()?;
                Some(item_json(latest, &format!("{base}/secrets/{}", s.name)))
            })
            .collect();
        Ok(self.paged(items, "/secrets")?.1)
    }

    fn list_deleted(&self, store: &VaultSecrets, base: &str) -> Result<Value, KvError> {
        let items = store
            .deleted
            .values()
            .map(|d| {
                let mut item = deleted_json(d, base);
                item.as_object_mut().map(|o| o.remove("value"));
                item
            })
            .collect();
        Ok(self.paged(items, "/deletedsecrets")?.1)
    }
}

/// Secret names: 1 to 127 letters, digits and dashes (Learn *About keys, secrets, and certificates*,
/// "Object identifiers").
fn check_name(name: &str) -> Result<(), KvError> {
    let ok = (1..=127).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(KvError::bad(format!(
            "The request URI contains an invalid name: {name}"
        )))
    }
}

fn not_found(name: &str, version: Option<&str>) -> KvError {
    let what = match version {
        Some(v) => format!("{name}/{v}"),
        None => name.to_string(),
    };
    KvError::new(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        format!(
            "A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
    )
}

fn deleted_not_found(_name: &str) -> KvError {
    KvError::new(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        "Deleted Secret not found",
    )
}

fn live<'a>(store: &'a VaultSecrets, name: &str) -> Result<&'a Secret, KvError> {
    store
        .secrets
        .get(&name.to_ascii_lowercase())
        .filter(|s| !s.versions.is_empty())
        .ok_or_else(|| not_found(name, None))
}

fn deleted<'a>(store: &'a VaultSecrets, name: &str) -> Result<&'a DeletedSecret, KvError> {
    store
        .deleted
        .get(&name.to_ascii_lowercase())
        .ok_or_else(|| deleted_not_found(name))
}

/// The attributes object of requests: `enabled`, `nbf`, `exp` (Unix seconds; null clears a time).
struct Attributes {
    enabled: Option<bool>,
    nbf: Option<Option<i64>>,
    exp: Option<Option<i64>>,
}

fn attributes(body: &Map<String, Value>) -> Result<Attributes, KvError> {
    let attrs = match body.get("attributes") {
        None | Some(Value::Null) => {
            return Ok(Attributes {
                enabled: None,
                nbf: None,
                exp: None,
            });
        }
        Some(Value::Object(a)) => a,
        Some(_) => return Err(KvError::bad("Property 'attributes' has an invalid value.")),
    };
    let time = |key: &str| -> Result<Option<Option<i64>>, KvError> {
        match attrs.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v
                .as_i64()
                .map(|t| Some(Some(t)))
                .ok_or_else(|| KvError::bad(format!("Property '{key}' has an invalid value."))),
        }
    };
    let enabled = match attrs.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(KvError::bad("Property 'enabled' has an invalid value.")),
    };
    Ok(Attributes {
        enabled,
        nbf: time("nbf")?,
        exp: time("exp")?,
    })
}

/// `contentType` and `tags` of a request: None when absent, Some(None) when null.
fn content_type(body: &Map<String, Value>) -> Result<Option<Option<String>>, KvError> {
    match body.get("contentType") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(KvError::bad("Property 'contentType' has an invalid value.")),
    }
}

fn tags(body: &Map<String, Value>) -> Result<Option<Option<BTreeMap<String, String>>>, KvError> {
    match body.get("tags") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => {
            let tags: BTreeMap<String, String> = serde_json::from_value(v.clone())
                .map_err(|_| KvError::bad("Property 'tags' has an invalid value."))?;
            if tags.len() > MAX_TAGS {
                return Err(KvError::bad(format!(
                    "Too many tags: at most {MAX_TAGS} are allowed."
                )));
            }
            Ok(Some(Some(tags)))
        }
    }
}

fn set(
    store: &mut VaultSecrets,
    name: &str,
    body: &Map<String, Value>,
    now: i64,
    base: &str,
) -> Result<Value, KvError> {
    let key = name.to_ascii_lowercase();
    if store.deleted.contains_key(&key) {
        return Err(KvError {
            inner: Some("ObjectIsDeletedButRecoverable"),
            ..KvError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
                ),
            )
        });
    }
    let value = match body.get("value") {
        Some(Value::String(v)) => v.clone(),
        _ => {
            return Err(KvError::bad(
                "Property 'value' is required and must be a string.",
            ));
        }
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::bad(format!(
            "The secret value exceeds the maximum size of {MAX_VALUE_BYTES} bytes."
        )));
    }
    let attrs = attributes(body)?;
    let version = SecretVersion {
        version: uuid::Uuid::new_v4().simple().to_string(),
        value,
        content_type: content_type(body)?.flatten(),
        enabled: attrs.enabled.unwrap_or(true),
        nbf: attrs.nbf.flatten(),
        exp: attrs.exp.flatten(),
        created: now,
        updated: now,
        tags: tags(body)?.flatten(),
    };
    let secret = store.secrets.entry(key).or_insert_with(|| Secret {
        name: name.to_string(),
        versions: vec![],
    });
    secret.versions.push(version);
    let latest = secret.versions.last().expect("just pushed");
    Ok(bundle_json(latest, &secret.name, base, true))
}

fn get(
    store: &VaultSecrets,
    name: &str,
    version: Option<&str>,
    base: &str,
) -> Result<Value, KvError> {
    let secret = live(store, name).map_err(|_| not_found(name, version))?;
    let found = match version {
        None => secret.versions.last(),
        Some(v) => secret
            .versions
            .iter()
            .find(|x| x.version.eq_ignore_ascii_case(v)),
    };
    let found = found.ok_or_else(|| not_found(name, version))?;
    if !found.enabled {
        return Err(KvError {
            inner: Some("SecretDisabled"),
            ..KvError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
            )
        });
    }
    Ok(bundle_json(found, &secret.name, base, true))
}

fn update(
    store: &mut VaultSecrets,
    name: &str,
    version: Option<&str>,
    body: &Map<String, Value>,
    now: i64,
    base: &str,
) -> Result<Value, KvError> {
    let attrs = attributes(body)?;
    let (content_type, tags) = (content_type(body)?, tags(body)?);
    let secret = store
        .secrets
        .get_mut(&name.to_ascii_lowercase())
        .filter(|s| !s.versions.is_empty())
        .ok_or_else(|| not_found(name, version))?;
    let target = match version.filter(|v| !v.is_empty()) {
        None => secret.versions.last_mut(),
        Some(v) => secret
            .versions
            .iter_mut()
            .find(|x| x.version.eq_ignore_ascii_case(v)),
    }
    .ok_or_else(|| not_found(name, version))?;
    if let Some(e) = attrs.enabled {
        target.enabled = e;
    }
    if let Some(n) = attrs.nbf {
        target.nbf = n;
    }
    if let Some(x) = attrs.exp {
        target.exp = x;
    }
    if let Some(c) = content_type {
        target.content_type = c;
    }
    if let Some(t) = tags {
        target.tags = t;
    }
    target.updated = now;
    let target = target.clone();
    Ok(bundle_json(&target, &secret.name, base, false))
}

fn delete(store: &mut VaultSecrets, name: &str, now: i64, base: &str) -> Result<Value, KvError> {
    let key = name.to_ascii_lowercase();
    let secret = store
        .secrets
        .remove(&key)
        .filter(|s| !s.versions.is_empty())
        .ok_or_else(|| not_found(name, None))?;
    let entry = DeletedSecret {
        secret,
        deleted_date: now,
        scheduled_purge_date: now + RECOVERABLE_DAYS * 24 * 3600,
    };
    let json = deleted_json(&entry, base);
    store.deleted.insert(key, entry);
    Ok(json)
}

fn recover(store: &mut VaultSecrets, name: &str, base: &str) -> Result<Value, KvError> {
    let key = name.to_ascii_lowercase();
    let entry = store
        .deleted
        .remove(&key)
        .ok_or_else(|| deleted_not_found(name))?;
    let secret = entry.secret;
    let latest = secret
        .versions
        .last()
        .expect("a deleted secret has versions");
    let json = bundle_json(latest, &secret.name, base, false);
    store.secrets.insert(key, secret);
    Ok(json)
}

fn attributes_json(v: &SecretVersion) -> Value {
    let mut a = json!({
        "enabled": v.enabled, "created": v.created, "updated": v.updated,
        "recoveryLevel": RECOVERY_LEVEL, "recoverableDays": RECOVERABLE_DAYS,
    });
    if let Some(n) = v.nbf {
        a["nbf"] = json!(n);
    }
    if let Some(e) = v.exp {
        a["exp"] = json!(e);
    }
    a
}

/// SecretBundle; the value only where Key Vault returns it (set and get).
fn bundle_json(v: &SecretVersion, name: &str, base: &str, with_value: bool) -> Value {
    let mut b = item_json(v, &format!("{base}/secrets/{name}/{}", v.version));
    if with_value {
        b["value"] = json!(v.value);
    }
    b
}

/// SecretItem: id, attributes, and contentType/tags when set.
fn item_json(v: &SecretVersion, id: &str) -> Value {
    let mut item = json!({"id": id, "attributes": attributes_json(v)});
    if let Some(c) = &v.content_type {
        item["contentType"] = json!(c);
    }
    if let Some(t) = &v.tags {
        item["tags"] = json!(t);
    }
    item
}

/// DeletedSecretBundle of the latest version, without its value.
fn deleted_json(d: &DeletedSecret, base: &str) -> Value {
    let latest = d
        .secret
        .versions
        .last()
        .expect("a deleted secret has versions");
    let mut b = bundle_json(latest, &d.secret.name, base, false);
    b["recoveryId"] = json!(format!("{base}/deletedsecrets/{}", d.secret.name));
    b["deletedDate"] = json!(d.deleted_date);
    b["scheduledPurgeDate"] = json!(d.scheduled_purge_date);
    b
}

/// The admin view: every secret's versions and the deleted ones, metadata only.
pub fn admin_json(store: &VaultSecrets) -> Value {
    let meta = |s: &Secret| {
        json!({"name": s.name, "versions": s.versions.iter().map(|v| {
            let mut m = item_json(v, &v.version);
            m.as_object_mut().map(|o| o.remove("id"));
            m["version"] = json!(v.version);
            m
        }).collect::<Vec<_>>()})
    };
    json!({
        "secrets": store.secrets.values().map(meta).collect::<Vec<_>>(),
        "deleted": store.deleted.values().map(|d| {
            let mut m = meta(&d.secret);
            m["deletedDate"] = json!(d.deleted_date);
            m["scheduledPurgeDate"] = json!(d.scheduled_purge_date);
            m
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse(&Method::GET, "/secrets"), Some(Route::List));
        assert_eq!(
            Route::parse(&Method::PATCH, "/secrets/a/"),
            Some(Route::Update("a".into(), None))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/secrets/a/versions"),
            Some(Route::Versions("a".into()))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/secrets/a/v1"),
            Some(Route::Get("a".into(), Some("v1".into())))
        );
        assert_eq!(
            Route::parse(&Method::POST, "/deletedsecrets/a/recover"),
            Some(Route::Recover("a".into()))
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/deletedsecrets/a"),
            Some(Route::Purge("a".into()))
        );
        assert_eq!(Route::parse(&Method::POST, "/secrets/a/backup"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("db-password-1").is_ok());
        assert!(check_name("bad_name").is_err());
        assert!(check_name(&"a".repeat(128)).is_err());
    }
}
