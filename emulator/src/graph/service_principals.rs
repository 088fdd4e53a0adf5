//! /servicePrincipals: create, upsert on appId, get, list, delete (soft), delta.

use axum::{
    http::{Method, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    Access, Req, access, applications::page, bad_request, body_object, forbidden,
    method_not_allowed, no_content, not_found, not_found_segment, not_yet_replicated, ok_json,
    query, render,
};
use crate::state::{ChangeKind, Deleted, DeletedObject, ServicePrincipal};

pub fn handle(req: Req) -> Response {
    let segs = req.segments.clone();
    let key: Option<(bool, String)> = match (&segs[0].key, segs.get(1)) {
        (Some((k, v)), None) if k.eq_ignore_ascii_case("appId") => Some((true, v.clone())),
        (Some((k, v)), None) if k == "id" => Some((false, v.clone())),
        (Some(_), _) => return not_found_segment(&req),
        (None, Some(s)) if s.name.eq_ignore_ascii_case("delta") && segs.len() == 2 => {
            return super::delta::handle(req, "servicePrincipal");
        }
        (None, Some(s)) if segs.len() == 2 => Some((false, s.name.clone())),
        (None, Some(_)) => return not_found_segment(&req),
        (None, None) => None,
    };
    match (key, req.method.as_str()) {
        (None, "GET") => list(&req),
        (None, "POST") => create(&req, None),
        (None, _) => method_not_allowed(&req),
        (Some((by_app_id, k)), "GET" | "DELETE" | "PATCH") => one(&req, by_app_id, &k),
        (Some(_), _) => method_not_allowed(&req),
    }
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
    let skip = req
        .query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let world = req.ctx.world.lock();
    let visible = |s: &&ServicePrincipal| {
        acc == Access::All || super::applications::owns_app(&world, &req.caller.oid, &s.app_id)
    };
    let all: Vec<&ServicePrincipal> = match filter.as_ref().and_then(query::indexed_key) {
        Some((key, value)) if key == "appid" => world
            .sp_by_app_id(value)
            .into_iter()
            .filter(visible)
            .collect(),
        Some((key, value)) if key == "id" => world
            .directory
            .service_principals
            .get(value)
            .into_iter()
            .filter(visible)
            .collect(),
        _ => world
            .directory
            .service_principals
            .values()
            .filter(visible)
            .filter(|s| filter.as_ref().is_none_or(|f| query::matches(f, *s)))
            .collect(),
    };
    page(
        req,
        "servicePrincipals",
        &all,
        render::service_principal,
        skip,
        top,
        query::select(&req.query).as_deref(),
    )
}

/// POST /servicePrincipals, or the create half of an upsert (`app_id` from the key).
fn create(req: &Req, app_id: Option<&str>) -> Response {
    let acc = access(req.caller, true);
    if acc == Access::Denied {
        return forbidden(req);
    }
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let app_id = match app_id.map(str::to_string).or_else(|| {
        body.get("appId")
            .and_then(Value::as_str)
            .map(str::to_string)
    }) {
        Some(a) => a,
        None => return bad_request(req, "Property 'appId' is required."),
    };
    for k in body.keys() {
        if ![
            "appId",
            "displayName",
            "tags",
            "accountEnabled",
            "notes",
            "description",
        ]
        .contains(&k.as_str())
            && !k.starts_with('@')
        {
            return bad_request(req, &format!("Invalid property '{k}'."));
        }
    }
    let mut world = req.ctx.world.lock();
    let Some(app) = world.app_by_app_id(&app_id).cloned() else {
        return bad_request(
            req,
            &format!(
                "The appId '{app_id}' of the service principal does not reference a valid application object."
            ),
        );
    };
    if not_yet_replicated(req.ctx, app.created_date_time) {
        return bad_request(
            req,
            &format!(
                "The appId '{app_id}' of the service principal does not reference a valid application object."
            ),
        );
    }
    if acc == Access::Owned && !app.owners.contains(&req.caller.oid) {
        return forbidden(req);
    }
    if world.sp_by_app_id(&app_id).is_some() {
        return crate::http::graph_error(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            &format!(
                "The service principal cannot be created, updated, or restored because the service principal name {app_id} is already in use."
            ),
            req.ids,
        );
    }
    let mut sp = super::applications::sp_new(&world, &app);
    if let Some(tags) = body.get("tags").and_then(Value::as_array) {
        sp.tags = tags
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
    }
    let mut out = render::service_principal(&sp);
    out["@odata.context"] = json!(format!("{}/$metadata#servicePrincipals/$entity", req.base));
    world.record("servicePrincipal", &sp.id, ChangeKind::Updated);
    world.directory.insert_sp(sp);
    req.ctx.touch();
    ok_json(StatusCode::CREATED, &out)
}

fn one(req: &Req, by_app_id: bool, key: &str) -> Response {
    if !by_app_id && uuid::Uuid::parse_str(key).is_err() {
        return bad_request(req, &format!("Invalid object identifier '{key}'."));
    }
    let write = req.method != Method::GET;
    let acc = access(req.caller, write);
    if acc == Access::Denied {
        return forbidden(req);
    }
    let found = {
        let world = req.ctx.world.lock();
        let sp = if by_app_id {
            world.sp_by_app_id(key)
        } else {
            world.directory.service_principals.get(key)
        };
        sp.cloned().map(|sp| {
            let owned = super::applications::owns_app(&world, &req.caller.oid, &sp.app_id);
            (sp, owned)
        })
    };
    let Some((sp, owned)) = found else {
        let upsert = req.method == Method::PATCH
            && by_app_id
            && req
                .headers
                .get_all("prefer")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains("create-if-missing"));
        return if upsert {
            create(req, Some(key))
        } else {
            not_found(req, key)
        };
    };
    if not_yet_replicated(req.ctx, sp.created_date_time) {
        return not_found(req, key);
    }
    if acc == Access::Owned && !owned {
        return forbidden(req);
    }
    match req.method {
        Method::GET => {
            let mut v = render::select(
                render::service_principal(&sp),
                query::select(&req.query).as_deref(),
            );
            v["@odata.context"] =
                json!(format!("{}/$metadata#servicePrincipals/$entity", req.base));
            ok_json(StatusCode::OK, &v)
        }
        Method::PATCH => {
            let body = match body_object(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let mut world = req.ctx.world.lock();
            let Some(stored) = world.directory.service_principals.get_mut(&sp.id) else {
                return not_found(req, key);
            };
            for (k, v) in &body {
                match (k.as_str(), v) {
                    ("tags", Value::Array(tags)) => {
                        stored.tags = tags
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    }
                    ("displayName", Value::String(s)) => stored.display_name = s.clone(),
                    ("appId", Value::String(a)) if a.eq_ignore_ascii_case(&sp.app_id) => {}
                    ("accountEnabled" | "notes" | "description", _) => {}
                    (k, _) if k.starts_with('@') => {}
                    _ => return bad_request(req, &format!("Invalid property '{k}'.")),
                }
            }
            world.record("servicePrincipal", &sp.id, ChangeKind::Updated);
            req.ctx.touch();
            no_content()
        }
        _ => {
            let mut world = req.ctx.world.lock();
            if let Some(sp) = world.directory.remove_sp(&sp.id) {
                world.record("servicePrincipal", &sp.id, ChangeKind::SoftDeleted);
                world.directory.deleted.insert(
                    sp.id.clone(),
                    Deleted {
                        object: DeletedObject::ServicePrincipal(sp),
                        deleted_date_time: jiff::Timestamp::now(),
                    },
                );
                req.ctx.touch();
            }
            no_content()
        }
    }
}
