//! /applications: create, upsert on uniqueName, get, list, update, (soft) delete; addPassword and
//! removePassword; federated identity credentials; owners. Also /directory/deletedItems.

use axum::{
    http::{Method, StatusCode},
    response::Response,
};
use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    Access, Req, Segment, access, bad_request, body_object, forbidden, method_not_allowed,
    no_content, not_found, not_found_segment, not_yet_replicated, ok_json, query, render,
};
use crate::state::{
    Application, ChangeKind, Deleted, DeletedObject, FederatedCredential, Password,
    ServicePrincipal, World, new_id, sha256_hex,
};

/// Properties of `application` in Graph's v1.0 metadata. Those the emulator does not model are accepted and
/// ignored; anything else is an invalid property, as Graph says.
const APPLICATION_PROPERTIES: &[&str] = &[
    "addIns",
    "api",
    "appId",
    "applicationTemplateId",
    "appRoles",
    "authenticationBehaviors",
    "certification",
    "createdByAppId",
    "createdDateTime",
    "defaultRedirectUri",
    "description",
    "disabledByMicrosoftStatus",
    "displayName",
    "groupMembershipClaims",
    "identifierUris",
    "info",
    "isDeviceOnlyAuthSupported",
    "isDisabled",
    "isFallbackPublicClient",
    "keyCredentials",
    "logo",
    "managerApplications",
    "nativeAuthenticationApisEnabled",
    "notes",
    "oauth2RequirePostResponse",
    "optionalClaims",
    "parentalControlSettings",
    "passwordCredentials",
    "publicClient",
    "publisherDomain",
    "requestSignatureVerification",
    "requiredResourceAccess",
    "samlMetadataUrl",
    "serviceManagementReference",
    "servicePrincipalLockConfiguration",
    "signInAudience",
    "spa",
    "tags",
    "tokenEncryptionKeyId",
    "uniqueName",
    "verifiedPublisher",
    "web",
    "id",
    "deletedDateTime",
];

const SIGN_IN_AUDIENCES: &[&str] = &[
    "AzureADMyOrg",
    "AzureADMultipleOrgs",
    "AzureADandPersonalMicrosoftAccount",
    "PersonalMicrosoftAccount",
];

/// How a request names an application.
pub(super) enum Key {
    Id(String),
    AppId(String),
    UniqueName(String),
}

pub fn handle(req: Req) -> Response {
    let segs = req.segments.clone();
    let (key, rest): (Option<Key>, &[Segment]) = match (&segs[0].key, segs.get(1)) {
        (Some((k, v)), _) => match k.to_ascii_lowercase().as_str() {
            "id" => (Some(Key::Id(v.clone())), &segs[1..]),
            "appid" => (Some(Key::AppId(v.clone())), &segs[1..]),
            "uniquename" => (Some(Key::UniqueName(v.clone())), &segs[1..]),
            _ => {
                return bad_request(
                    &req,
                    &format!("Invalid key property '{k}' for applications."),
                );
            }
        },
        (None, Some(s)) if s.name.eq_ignore_ascii_case("delta") && segs.len() == 2 => {
            return super::delta::handle(req, "application");
        }
        (None, Some(s)) => (Some(Key::Id(s.name.clone())), &segs[2..]),
        (None, None) => (None, &segs[1..]),
    };
    let Some(key) = key else {
        return match req.method {
            Method::GET => list(&req),
            Method::POST => create(&req),
            _ => method_not_allowed(&req),
        };
    };
    if let Key::Id(id) = &key
        && uuid::Uuid::parse_str(id).is_err()
    {
        return bad_request(&req, &format!("Invalid object identifier '{id}'."));
    }
    let names: Vec<String> = rest.iter().map(|s| s.name.to_ascii_lowercase()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match (names.as_slice(), req.method.as_str()) {
        ([], "PATCH") => patch(&req, &key),
        ([], "GET" | "DELETE") => with_app(
            &req,
            &key,
            req.method == Method::DELETE,
            |req, world, id| {
                if req.method == Method::GET {
                    let mut body = render::select(
                        render::application(&world.directory.applications[id]),
                        query::select(&req.query).as_deref(),
                    );
                    body["@odata.context"] =
                        json!(format!("{}/$metadata#applications/$entity", req.base));
                    ok_json(StatusCode::OK, &body)
                } else {
                    delete_app(req.ctx, world, id);
                    no_content()
                }
            },
        ),
        (["addpassword"], "POST") => add_password(&req, &key),
        (["removepassword"], "POST") => remove_password(&req, &key),
        (["addkey"], "POST") => super::keys::add_key(&req, &key),
        (["removekey"], "POST") => super::keys::remove_key(&req, &key),
        // A keyed segment (`federatedIdentityCredentials(name='x')`) or an id after it names one credential.
        (["federatedidentitycredentials", ..], _) if rest.len() == 2 || rest[0].key.is_some() => {
            let fic_key = match (&rest[0].key, rest.get(1)) {
                (Some((k, v)), None) if k.eq_ignore_ascii_case("name") => (true, v.clone()),
                (Some((k, v)), None) if k == "id" => (false, v.clone()),
                (None, Some(s)) => (false, s.name.clone()),
                _ => return not_found_segment(&req),
            };
            fics(&req, &key, Some(fic_key))
        }
        (["federatedidentitycredentials"], "GET" | "POST") => fics(&req, &key, None),
        (["federatedidentitycredentials"], _) => method_not_allowed(&req),
        (["owners"], "GET") => owners(&req, &key, None),
        (["owners", "$ref"], "POST") => owners(&req, &key, Some(None)),
        (["owners", _, "$ref"], "DELETE") => owners(&req, &key, Some(Some(rest[1].name.clone()))),
        ([], _)
        | (["addpassword"] | ["removepassword"] | ["addkey"] | ["removekey"] | ["owners", ..], _) => {
            method_not_allowed(&req)
        }
        _ => not_found_segment(&req),
    }
}

/// Finds the addressed application, checks visibility and permission, and runs `f` with the world locked.
fn with_app(
    req: &Req,
    key: &Key,
    write: bool,
    f: impl FnOnce(&Req, &mut World, &str) -> Response,
) -> Response {
    with_app_as(req, key, write, false, f)
}

/// As `with_app`; with `allow_self` the application itself may act on its own object without any permission
/// (addKey/removeKey: "Applications don't need any specific permission to roll their own keys", Learn).
pub(super) fn with_app_as(
    req: &Req,
    key: &Key,
    write: bool,
    allow_self: bool,
    f: impl FnOnce(&Req, &mut World, &str) -> Response,
) -> Response {
    let mut world = req.ctx.world.lock();
    let found = match key {
        Key::Id(id) => world.directory.applications.get(id),
        Key::AppId(a) => world.app_by_app_id(a),
        Key::UniqueName(u) => world.app_by_unique_name(u),
    };
    let label = match key {
        Key::Id(v) | Key::AppId(v) | Key::UniqueName(v) => v.clone(),
    };
    let Some(app) = found else {
        return not_found(req, &label);
    };
    if not_yet_replicated(req.ctx, app.created_date_time) {
        return not_found(req, &label);
    }
    match access(req.caller, write) {
        _ if allow_self && app.app_id.eq_ignore_ascii_case(&req.caller.app_id) => {}
        Access::All => {}
        Access::Owned if app.owners.contains(&req.caller.oid) => {}
        // Without any application permission Graph refuses outright; with OwnedBy, someone else's app is
        // refused as well.
        _ => return forbidden(req),
    }
    let id = app.id.clone();
    f(req, &mut world, &id)
}

fn list(req: &Req) -> Response {
    let acc = access(req.caller, false);
    if acc == Access::Denied {
        return forbidden(req);
    }
    let filter = match req.query.get("$filter").map(|f| query::parse_filter(f)) {
        Some(Err(e)) => return bad_request(req, &e),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let top = match query::top(&req.query) {
        Ok(t) => t,
        Err(e) => return bad_request(req, &e),
    };
    let skip: usize = req
        .query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let select = query::select(&req.query);
    let world = req.ctx.world.lock();
    let visible = |a: &&Application| acc == Access::All || a.owners.contains(&req.caller.oid);
    let matching: Vec<&Application> = match filter.as_ref().and_then(query::indexed_key) {
        Some((key, value)) => match key.as_str() {
            "appid" => world.app_by_app_id(value),
            "uniquename" => world.app_by_unique_name(value),
            _ => world.directory.applications.get(value),
        }
        .into_iter()
        .filter(visible)
        .collect(),
        None => world
            .directory
            .applications
            .values()
            .filter(visible)
            .filter(|a| filter.as_ref().is_none_or(|f| query::matches(f, *a)))
            .collect(),
    };
    page(
        req,
        "applications",
        &matching,
        render::application,
        skip,
        top,
        select.as_deref(),
    )
}

/// One page of a collection: renders only the returned items, and links the next page by offset.
pub fn page<T>(
    req: &Req,
    set: &str,
    all: &[&T],
    render: fn(&T) -> Value,
    skip: usize,
    top: usize,
    select: Option<&[String]>,
) -> Response {
    let total = all.len();
    let value: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|v| render::select(render(v), select))
        .collect();
    let mut body =
        json!({"@odata.context": format!("{}/$metadata#{set}", req.base), "value": value});
    if skip + top < total {
        let mut q: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.push(("$skiptoken".into(), (skip + top).to_string()));
        q.sort();
        body["@odata.nextLink"] = json!(format!(
            "{}/{set}?{}",
            req.base,
            serde_urlencoded::to_string(&q).unwrap_or_default()
        ));
    }
    ok_json(StatusCode::OK, &body)
}

/// Validates and applies the writable properties of an application body.
fn apply_fields(
    req: &Req,
    app: &mut Application,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), Response> {
    for (k, v) in body {
        if k.starts_with('@') {
            continue;
        }
        if !APPLICATION_PROPERTIES.contains(&k.as_str()) {
            return Err(bad_request(req, &format!("Invalid property '{k}'.")));
        }
        let invalid = || {
            bad_request(
                req,
                &format!("Invalid value specified for property '{k}' of resource 'Application'."),
            )
        };
        match k.as_str() {
            "displayName" => {
                app.display_name = v
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(invalid)?
                    .to_string()
            }
            "description" => app.description = opt_string(v).ok_or_else(invalid)?,
            "notes" => app.notes = opt_string(v).ok_or_else(invalid)?,
            "tags" => {
                app.tags = v
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|t| t.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(invalid)?
            }
            "signInAudience" => {
                let aud = v
                    .as_str()
                    .filter(|a| SIGN_IN_AUDIENCES.contains(a))
                    .ok_or_else(invalid)?;
                app.sign_in_audience = aud.to_string();
            }
            "uniqueName" if creating => {
                app.unique_name = Some(
                    v.as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(invalid)?
                        .to_string(),
                )
            }
            "uniqueName" if v.as_str() != app.unique_name.as_deref() => {
                return Err(bad_request(
                    req,
                    "Property 'uniqueName' is read-only and cannot be changed.",
                ));
            }
            "keyCredentials" => {
                app.key_credentials = super::keys::replace_key_credentials(&app.key_credentials, v)
                    .map_err(|why| bad_request(req, why))?
            }
            "passwordCredentials" => {
                return Err(bad_request(
                    req,
                    "Property 'passwordCredentials' cannot be set through PATCH or POST; use addPassword.",
                ));
            }
            "id" | "appId" | "createdDateTime" | "deletedDateTime" if !creating => {
                return Err(bad_request(
                    req,
                    &format!("Property '{k}' is read-only and cannot be set."),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn opt_string(v: &Value) -> Option<Option<String>> {
    match v {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        _ => None,
    }
}

fn new_application(
    req: &Req,
    body: &Map<String, Value>,
    unique_name: Option<String>,
) -> Result<Application, Response> {
    if body
        .get("displayName")
        .and_then(Value::as_str)
        .is_none_or(|s| s.is_empty())
    {
        return Err(bad_request(req, "Property 'displayName' is required."));
    }
    let mut app = Application {
        id: new_id(),
        app_id: new_id(),
        display_name: String::new(),
        unique_name,
        description: None,
        notes: None,
        tags: vec![],
        sign_in_audience: "AzureADMyOrg".into(),
        created_date_time: Timestamp::now(),
        password_credentials: vec![],
        federated_identity_credentials: vec![],
        key_credentials: vec![],
        // What an app-only caller creates, it owns (that is how OwnedBy keeps working on it).
        owners: vec![req.caller.oid.clone()],
    };
    apply_fields(req, &mut app, body, true)?;
    Ok(app)
}

fn create(req: &Req) -> Response {
    if access(req.caller, true) == Access::Denied {
        return forbidden(req);
    }
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let app = match new_application(req, &body, None) {
        Ok(a) => a,
        Err(r) => return r,
    };
    insert_new(req, app)
}

fn insert_new(req: &Req, app: Application) -> Response {
    let mut world = req.ctx.world.lock();
    if let Some(u) = &app.unique_name
        && world.app_by_unique_name(u).is_some()
    {
        return super::super::http::graph_error(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            &format!(
                "Another object with the same value for property uniqueName already exists: '{u}'."
            ),
            req.ids,
        );
    }
    let mut body = render::application(&app);
    body["@odata.context"] = json!(format!("{}/$metadata#applications/$entity", req.base));
    world.record("application", &app.id, ChangeKind::Updated);
    world.directory.insert_app(app);
    req.ctx.touch();
    let mut resp = ok_json(StatusCode::CREATED, &body);
    if let Ok(v) = format!(
        "{}/applications/{}",
        req.base,
        body["id"].as_str().unwrap_or_default()
    )
    .parse()
    {
        resp.headers_mut().insert("location", v);
    }
    resp
}

fn patch(req: &Req, key: &Key) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let create_if_missing = req
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("create-if-missing"))
        });
    if let Key::UniqueName(u) = key {
        let exists = req.ctx.world.lock().app_by_unique_name(u).is_some();
        if !exists {
            if !create_if_missing {
                return not_found(req, u);
            }
            if access(req.caller, true) == Access::Denied {
                return forbidden(req);
            }
            return match new_application(req, &body, Some(u.clone())) {
                Ok(app) => insert_new(req, app),
                Err(r) => r,
            };
        }
    }
    with_app(req, key, true, |req, world, id| {
        let mut app = world.directory.applications[id].clone();
        if let Err(r) = apply_fields(req, &mut app, &body, false) {
            return r;
        }
        world.directory.insert_app(app);
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        no_content()
    })
}

/// Soft-deletes an application and its service principal into deleted items.
fn delete_app(ctx: &crate::server::Ctx, world: &mut World, id: &str) {
    let now = Timestamp::now();
    if let Some(app) = world.directory.remove_app(id) {
        if let Some(sp_id) = world.sp_by_app_id(&app.app_id).map(|s| s.id.clone())
            && let Some(sp) = world.directory.remove_sp(&sp_id)
        {
            world.record("servicePrincipal", &sp.id, ChangeKind::SoftDeleted);
            world.directory.deleted.insert(
                sp.id.clone(),
                Deleted {
                    object: DeletedObject::ServicePrincipal(sp),
                    deleted_date_time: now,
                },
            );
        }
        world.record("application", id, ChangeKind::SoftDeleted);
        world.directory.deleted.insert(
            id.to_string(),
            Deleted {
                object: DeletedObject::Application(app),
                deleted_date_time: now,
            },
        );
        ctx.touch();
    }
}

/// Entra's client secrets: 40 characters of letters, digits and `~._-`.
fn generate_secret() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    let mut rng = rand::rng();
    (0..40)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn parse_time(v: Option<&Value>) -> Result<Option<Timestamp>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse::<Timestamp>().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

fn add_password(req: &Req, key: &Key) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cred = match body.get("passwordCredential") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return bad_request(
                req,
                "Invalid value specified for property 'passwordCredential'.",
            );
        }
    };
    let display_name = match cred.get("displayName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return bad_request(
                req,
                "Invalid value specified for property 'displayName' of resource 'PasswordCredential'.",
            );
        }
    };
    let (start, end) = match (
        parse_time(cred.get("startDateTime")),
        parse_time(cred.get("endDateTime")),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        _ => {
            return bad_request(
                req,
                "Invalid value specified for property 'startDateTime' or 'endDateTime' of resource 'PasswordCredential'.",
            );
        }
    };
    let start = start.unwrap_or_else(Timestamp::now);
    let end = end.unwrap_or_else(|| start + SignedDuration::from_hours(2 * 365 * 24));
    if end <= start {
        return bad_request(
            req,
            "Invalid value specified for property 'endDateTime' of resource 'PasswordCredential': it must be later than startDateTime.",
        );
    }
    with_app(req, key, true, |req, world, id| {
        let app = world.directory.applications.get_mut(id).expect("present");
        if app.sign_in_audience.contains("Personal") && app.password_credentials.len() >= 2 {
            return bad_request(
                req,
                "You can only add a maximum of 2 encrypted credentials.",
            );
        }
        let secret = generate_secret();
        let password = Password {
            key_id: new_id(),
            display_name,
            hint: secret[..3].to_string(),
            start_date_time: start,
            end_date_time: end,
            secret_sha256: sha256_hex(&secret),
            replicating_since: Some(Timestamp::now()),
        };
        let mut body = render::password(&password, Some(&secret));
        body["@odata.context"] = json!(format!(
            "{}/$metadata#microsoft.graph.passwordCredential",
            req.base
        ));
        app.password_credentials.push(password);
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        ok_json(StatusCode::OK, &body)
    })
}

fn remove_password(req: &Req, key: &Key) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(key_id) = body
        .get("keyId")
        .and_then(Value::as_str)
        .filter(|k| uuid::Uuid::parse_str(k).is_ok())
    else {
        return bad_request(req, "Invalid value specified for property 'keyId'.");
    };
    let key_id = key_id.to_ascii_lowercase();
    with_app(req, key, true, |req, world, id| {
        let app = world.directory.applications.get_mut(id).expect("present");
        let before = app.password_credentials.len();
        app.password_credentials
            .retain(|p| p.key_id.to_ascii_lowercase() != key_id);
        if app.password_credentials.len() == before {
            return bad_request(
                req,
                &format!("No password credential found with keyId {key_id}."),
            );
        }
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        no_content()
    })
}

/// Federated identity credentials: list/create (`which` None), or one by id or name (`which` Some((by_name, key))).
fn fics(req: &Req, key: &Key, which: Option<(bool, String)>) -> Response {
    let write = req.method != Method::GET;
    let body = if matches!(req.method, Method::POST | Method::PATCH) {
        match body_object(req) {
            Ok(b) => Some(b),
            Err(r) => return r,
        }
    } else {
        None
    };
    let upsert = req
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("create-if-missing"));
    with_app(req, key, write, |req, world, id| {
        let app = world.directory.applications.get_mut(id).expect("present");
        let context = format!(
            "{}/$metadata#applications('{}')/federatedIdentityCredentials",
            req.base, app.id
        );
        let position = |app: &Application| {
            which.as_ref().and_then(|(by_name, k)| {
                app.federated_identity_credentials.iter().position(|f| {
                    if *by_name {
                        f.name.eq_ignore_ascii_case(k)
                    } else {
                        f.id.eq_ignore_ascii_case(k)
                    }
                })
            })
        };
        let response = match (req.method.as_str(), &which) {
            ("GET", None) => {
                let value: Vec<Value> = app
                    .federated_identity_credentials
                    .iter()
                    .map(render::federated_credential)
                    .collect();
                return ok_json(
                    StatusCode::OK,
                    &json!({"@odata.context": context, "value": value}),
                );
            }
            ("GET", Some((_, k))) => {
                return match position(app) {
                    Some(i) => {
                        let mut v =
                            render::federated_credential(&app.federated_identity_credentials[i]);
                        v["@odata.context"] = json!(format!("{context}/$entity"));
                        ok_json(StatusCode::OK, &v)
                    }
                    None => not_found(req, k),
                };
            }
            ("DELETE", Some((_, k))) => match position(app) {
                Some(i) => {
                    app.federated_identity_credentials.remove(i);
                    no_content()
                }
                None => return not_found(req, k),
            },
            ("POST", None) => {
                let body = body.as_ref().expect("parsed");
                let fic = match validate_fic(req, body, None) {
                    Ok(f) => f,
                    Err(r) => return r,
                };
                if let Err(r) = check_fic_unique(req, app, &fic, None) {
                    return r;
                }
                let mut v = render::federated_credential(&fic);
                v["@odata.context"] = json!(format!("{context}/$entity"));
                app.federated_identity_credentials.push(fic);
                ok_json(StatusCode::CREATED, &v)
            }
            ("PATCH", Some((by_name, k))) => {
                let body = body.as_ref().expect("parsed");
                match position(app) {
                    Some(i) => {
                        let existing = app.federated_identity_credentials[i].clone();
                        let mut merged: Map<String, Value> =
                            render::federated_credential(&existing)
                                .as_object()
                                .cloned()
                                .unwrap_or_default();
                        for (k, v) in body {
                            if k == "name" && v.as_str() != Some(existing.name.as_str()) {
                                return bad_request(
                                    req,
                                    "Property 'name' is read-only and cannot be changed.",
                                );
                            }
                            merged.insert(k.clone(), v.clone());
                        }
                        let fic = match validate_fic(req, &merged, Some(existing.id.clone())) {
                            Ok(f) => f,
                            Err(r) => return r,
                        };
                        if let Err(r) = check_fic_unique(req, app, &fic, Some(i)) {
                            return r;
                        }
                        app.federated_identity_credentials[i] = fic;
                        no_content()
                    }
                    None if *by_name && upsert => {
                        let mut body = body.clone();
                        body.insert("name".into(), json!(k));
                        let fic = match validate_fic(req, &body, None) {
                            Ok(f) => f,
                            Err(r) => return r,
                        };
                        if let Err(r) = check_fic_unique(req, app, &fic, None) {
                            return r;
                        }
                        let mut v = render::federated_credential(&fic);
                        v["@odata.context"] = json!(format!("{context}/$entity"));
                        app.federated_identity_credentials.push(fic);
                        ok_json(StatusCode::CREATED, &v)
                    }
                    None => return not_found(req, k),
                }
            }
            _ => return method_not_allowed(req),
        };
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        response
    })
}

fn validate_fic(
    req: &Req,
    body: &Map<String, Value>,
    id: Option<String>,
) -> Result<FederatedCredential, Response> {
    let text = |name: &str, max: usize, required: bool| -> Result<Option<String>, Response> {
        match body.get(name) {
            None | Some(Value::Null) if !required => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => {
                Ok(Some(s.clone()))
            }
            _ => Err(bad_request(
                req,
                &format!(
                    "Invalid value specified for property '{name}' of resource 'FederatedIdentityCredential'."
                ),
            )),
        }
    };
    let name = text("name", 120, true)?.expect("required");
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(bad_request(
            req,
            "Invalid value specified for property 'name' of resource 'FederatedIdentityCredential'.",
        ));
    }
    let issuer = text("issuer", 600, true)?.expect("required");
    let subject = text("subject", 600, true)?.expect("required");
    let description = text("description", 600, false)?;
    let audiences: Vec<String> = body
        .get("audiences")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default();
    if audiences.len() != 1 || audiences[0].is_empty() || audiences[0].len() > 600 {
        return Err(bad_request(
            req,
            "Invalid value specified for property 'audiences' of resource 'FederatedIdentityCredential': exactly one audience is required.",
        ));
    }
    Ok(FederatedCredential {
        id: id.unwrap_or_else(new_id),
        name,
        issuer,
        subject,
        audiences,
        description,
    })
}

fn check_fic_unique(
    req: &Req,
    app: &Application,
    fic: &FederatedCredential,
    except: Option<usize>,
) -> Result<(), Response> {
    let others = app
        .federated_identity_credentials
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != except)
        .map(|(_, f)| f);
    for other in others {
        if other.name.eq_ignore_ascii_case(&fic.name) {
            return Err(crate::http::graph_error(
                StatusCode::CONFLICT,
                "Request_MultipleObjectsWithSameKeyValue",
                &format!(
                    "FederatedIdentityCredential with name {} already exists.",
                    fic.name
                ),
                req.ids,
            ));
        }
        if other.issuer == fic.issuer && other.subject == fic.subject {
            return Err(crate::http::graph_error(
                StatusCode::BAD_REQUEST,
                "InvalidFederatedIdentityCredentialValue",
                "The combination of issuer and subject must be unique for the application. A federated identity credential with the same issuer and subject already exists.",
                req.ids,
            ));
        }
    }
    let count = app.federated_identity_credentials.len() - usize::from(except.is_some());
    if count >= 20 {
        return Err(bad_request(
            req,
            "The application already has the maximum of 20 federated identity credentials.",
        ));
    }
    Ok(())
}

/// owners: list (`change` None), add (`Some(None)`, body `{"@odata.id": ".../directoryObjects/{id}"}`), or
/// remove (`Some(Some(id))`).
fn owners(req: &Req, key: &Key, change: Option<Option<String>>) -> Response {
    let added = match &change {
        Some(None) => match body_object(req) {
            Ok(b) => match b
                .get("@odata.id")
                .and_then(Value::as_str)
                .and_then(|s| s.rsplit('/').next())
                .map(str::to_string)
            {
                Some(id) if uuid::Uuid::parse_str(&id).is_ok() => Some(id),
                _ => return bad_request(req, "Invalid value specified for property '@odata.id'."),
            },
            Err(r) => return r,
        },
        _ => None,
    };
    with_app(req, key, change.is_some(), |req, world, id| {
        match change {
            None => {
                let app = &world.directory.applications[id];
                let value: Vec<Value> = app
                    .owners
                    .iter()
                    .map(|o| match world.directory.service_principals.get(o) {
                        Some(sp) => json!({"@odata.type": "#microsoft.graph.servicePrincipal", "id": sp.id, "appId": sp.app_id, "displayName": sp.display_name}),
                        None => json!({"@odata.type": "#microsoft.graph.user", "id": o}),
                    })
                    .collect();
                return ok_json(
                    StatusCode::OK,
                    &json!({"@odata.context": format!("{}/$metadata#directoryObjects", req.base), "value": value}),
                );
            }
            Some(None) => {
                let owner = added.expect("parsed");
                let app = world.directory.applications.get_mut(id).expect("present");
                if app.owners.contains(&owner) {
                    return bad_request(
                        req,
                        "One or more added object references already exist for the following modified properties: 'owners'.",
                    );
                }
                app.owners.push(owner);
            }
            Some(Some(owner)) => {
                let app = world.directory.applications.get_mut(id).expect("present");
                let before = app.owners.len();
                app.owners.retain(|o| !o.eq_ignore_ascii_case(&owner));
                if app.owners.len() == before {
                    return not_found(req, &owner);
                }
            }
        }
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        no_content()
    })
}

/// /directory/deletedItems/{id} (GET, DELETE to purge), /{id}/restore (POST), and the typed lists
/// /directory/deletedItems/microsoft.graph.application|servicePrincipal.
pub fn deleted_items(req: Req) -> Response {
    let rest: Vec<String> = req.segments[2..].iter().map(|s| s.name.clone()).collect();
    let acc = access(req.caller, req.method != Method::GET);
    if acc == Access::Denied {
        return forbidden(&req);
    }
    let owned = |world: &World, d: &Deleted| {
        match &d.object {
        DeletedObject::Application(a) => a.owners.contains(&req.caller.oid),
        DeletedObject::ServicePrincipal(s) => world
            .directory
            .deleted
            .values()
            .any(|x| matches!(&x.object, DeletedObject::Application(a) if a.app_id == s.app_id && a.owners.contains(&req.caller.oid))),
    }
    };
    let render_deleted = |d: &Deleted| {
        let mut v = match &d.object {
            DeletedObject::Application(a) => render::application(a),
            DeletedObject::ServicePrincipal(s) => render::service_principal(s),
        };
        v["deletedDateTime"] = json!(crate::http::rfc3339(d.deleted_date_time));
        v["@odata.type"] = json!(match d.object {
            DeletedObject::Application(_) => "#microsoft.graph.application",
            DeletedObject::ServicePrincipal(_) => "#microsoft.graph.servicePrincipal",
        });
        v
    };
    let mut world = req.ctx.world.lock();
    match (rest.as_slice(), req.method.as_str()) {
        ([kind], "GET") if type_cast(kind).is_some() => {
            let want_app = type_cast(kind) == Some("application");
            let value: Vec<Value> = world
                .directory
                .deleted
                .values()
                .filter(|d| matches!(d.object, DeletedObject::Application(_)) == want_app)
                .filter(|d| acc == Access::All || owned(&world, d))
                .map(render_deleted)
                .collect();
            drop(world);
            let skip = req
                .query
                .get("$skiptoken")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let top = query::top(&req.query).unwrap_or(100);
            let refs: Vec<&Value> = value.iter().collect();
            page(
                &req,
                &format!("directory/deletedItems/{kind}"),
                &refs,
                Value::clone,
                skip,
                top,
                None,
            )
        }
        ([id], "GET" | "DELETE") | ([id, _], "POST") | ([id, _], "GET") => {
            let Some(item) = world.directory.deleted.get(id).cloned() else {
                return not_found(&req, id);
            };
            if acc != Access::All && !owned(&world, &item) {
                return forbidden(&req);
            }
            match req.method {
                Method::GET if rest.len() == 2 => {
                    let is_app = matches!(item.object, DeletedObject::Application(_));
                    match type_cast(&rest[1]) {
                        Some("application") if is_app => {
                            ok_json(StatusCode::OK, &render_deleted(&item))
                        }
                        Some("servicePrincipal") if !is_app => {
                            ok_json(StatusCode::OK, &render_deleted(&item))
                        }
                        Some(_) => not_found(&req, id),
                        None => not_found_segment(&req),
                    }
                }
                Method::GET => ok_json(StatusCode::OK, &render_deleted(&item)),
                Method::DELETE => {
                    world.directory.deleted.remove(id);
                    let entity = if matches!(item.object, DeletedObject::Application(_)) {
                        "application"
                    } else {
                        "servicePrincipal"
                    };
                    world.record(entity, id, ChangeKind::Purged);
                    req.ctx.touch();
                    no_content()
                }
                _ if rest[1].eq_ignore_ascii_case("restore") => {
                    world.directory.deleted.remove(id);
                    // The action returns a directoryObject; the type annotation says which.
                    let (entity, mut body) = match item.object {
                        DeletedObject::Application(a) => {
                            let body = render::application(&a);
                            world.directory.insert_app(a);
                            ("application", body)
                        }
                        DeletedObject::ServicePrincipal(s) => {
                            let body = render::service_principal(&s);
                            world.directory.insert_sp(s);
                            ("servicePrincipal", body)
                        }
                    };
                    body["@odata.context"] =
                        json!(format!("{}/$metadata#directoryObjects/$entity", req.base));
                    body["@odata.type"] = json!(format!("#microsoft.graph.{entity}"));
                    world.record(entity, id, ChangeKind::Updated);
                    req.ctx.touch();
                    ok_json(StatusCode::OK, &body)
                }
                _ => not_found_segment(&req),
            }
        }
        _ => not_found_segment(&req),
    }
}

/// The entity type a type-cast segment names: `microsoft.graph.application` or its CSDL alias `graph.application`.
fn type_cast(segment: &str) -> Option<&'static str> {
    let name = segment
        .strip_prefix("microsoft.graph.")
        .or_else(|| segment.strip_prefix("graph."))?;
    ["application", "servicePrincipal"]
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(name))
}

/// GET /directoryObjects/{id}: what an owner reference points to.
pub fn directory_object(req: Req) -> Response {
    let Some(id) = req.segments.get(1).map(|s| s.name.clone()) else {
        return not_found_segment(&req);
    };
    let world = req.ctx.world.lock();
    if let Some(sp) = world.directory.service_principals.get(&id) {
        let mut v: Value = render::service_principal(sp);
        v["@odata.type"] = json!("#microsoft.graph.servicePrincipal");
        return ok_json(StatusCode::OK, &v);
    }
    if let Some(app) = world.directory.applications.get(&id) {
        let mut v = render::application(app);
        v["@odata.type"] = json!("#microsoft.graph.application");
        return ok_json(StatusCode::OK, &v);
    }
    not_found(&req, &id)
}

/// For service principals: whether the caller may touch the SP of `app_id` under its access.
pub fn owns_app(world: &World, caller_oid: &str, app_id: &str) -> bool {
    world
        .app_by_app_id(app_id)
        .is_some_and(|a| a.owners.iter().any(|o| o == caller_oid))
}

pub fn sp_new(world: &World, app: &Application) -> ServicePrincipal {
    ServicePrincipal {
        id: new_id(),
        app_id: app.app_id.clone(),
        display_name: app.display_name.clone(),
        app_owner_organization_id: world.tenant_id.clone(),
        tags: vec![],
        created_date_time: Timestamp::now(),
        graph_permissions: vec![],
    }
}
