//! Role definitions: the built-in catalogue and custom roles (PUT/GET/DELETE, list with `roleName eq` and
//! `type eq`), with `RoleDefinitionWithSameNameExists` for a name taken in the tenant.

use axum::{
    http::{Method, StatusCode},
    response::Response,
};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::{
    Req, at_or_above, authorization_failed, authorized, body_object, missing_scope, roles,
};
use crate::{
    http::{arm_error, json_response, rfc3339},
    state::{Permission, RoleDefinition},
};

const WRITE: &str = "Microsoft.Authorization/roleDefinitions/write";
const DELETE: &str = "Microsoft.Authorization/roleDefinitions/delete";
const READ: &str = "Microsoft.Authorization/roleDefinitions/read";

fn render(d: &RoleDefinition, scope: &str) -> Value {
    let mut props = json!({
        "roleName": d.role_name,
        "type": d.role_type,
        "description": d.description,
        "assignableScopes": d.assignable_scopes,
        "permissions": d.permissions.iter().map(|p| json!({
            "actions": p.actions, "notActions": p.not_actions, "dataActions": p.data_actions, "notDataActions": p.not_data_actions,
        })).collect::<Vec<_>>(),
    });
    if let Some(t) = d.created_on {
        props["createdOn"] = json!(rfc3339(t));
        props["updatedOn"] = json!(rfc3339(t));
    }
    json!({
        "id": roles::definition_id(scope, &d.name),
        "name": d.name,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": props,
    })
}

pub fn handle(req: &Req, scope: &str, guid: Option<&str>) -> Response {
    match (guid, &req.method) {
        (None, &Method::GET) => list(req, scope),
        (Some(g), &Method::GET) => get(req, scope, g),
        (Some(g), &Method::PUT) => put(req, scope, g),
        (Some(g), &Method::DELETE) => delete(req, scope, g),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The method '{}' is not allowed here.", req.method),
            &req.ids,
        ),
    }
}

fn not_found(req: &Req, guid: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "RoleDefinitionDoesNotExist",
        &format!("The specified role definition with ID '{guid}' does not exist."),
        &req.ids,
    )
}

fn get(req: &Req, scope: &str, guid: &str) -> Response {
    let world = req.ctx.world.lock();
    let g = guid.to_ascii_lowercase();
    if let Some(d) = roles::builtin_by_guid(&g) {
        return json_response(StatusCode::OK, &render(d, scope));
    }
    match world.arm.custom_roles.get(&g) {
        Some(d) if authorized(&world, &req.caller.oid, scope, READ) => {
            json_response(StatusCode::OK, &render(d, scope))
        }
        Some(_) => authorization_failed(req, READ, scope),
        None => not_found(req, guid),
    }
}

fn list(req: &Req, scope: &str) -> Response {
    let world = req.ctx.world.lock();
    let filter = req.query.get("$filter").map(|f| f.trim().to_string());
    let field = |name: &str| {
        filter
            .as_deref()
            .and_then(|f| f.strip_prefix(&format!("{name} eq '")))
            .and_then(|f| f.strip_suffix('\''))
            .map(str::to_string)
    };
    let (role_name, role_type) = (field("roleName"), field("type"));
    if filter.is_some() && role_name.is_none() && role_type.is_none() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedQuery",
            "Supported filters are roleName eq '{name}' and type eq 'BuiltInRole|CustomRole'.",
            &req.ids,
        );
    }
    let value: Vec<Value> = roles::builtins()
        .iter()
        .chain(world.arm.custom_roles.values().filter(|d| {
            d.assignable_scopes
                .iter()
                .any(|s| at_or_above(s, scope) || at_or_above(scope, s))
        }))
        .filter(|d| {
            role_name
                .as_ref()
                .is_none_or(|n| d.role_name.eq_ignore_ascii_case(n))
        })
        .filter(|d| {
            role_type
                .as_ref()
                .is_none_or(|t| d.role_type.eq_ignore_ascii_case(t))
        })
        .map(|d| render(d, scope))
        .collect();
    json_response(StatusCode::OK, &json!({"value": value}))
}

fn put(req: &Req, scope: &str, guid: &str) -> Response {
    let bad =
        |code: &str, message: String| arm_error(StatusCode::BAD_REQUEST, code, &message, &req.ids);
    if uuid::Uuid::parse_str(guid).is_err() {
        return bad(
            "InvalidRoleDefinitionId",
            format!(
                "The role definition ID '{guid}' is not valid. The role definition ID must be a GUID."
            ),
        );
    }
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let props = body
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(role_name) = props
        .get("roleName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
    else {
        return bad(
            "InvalidRequestContent",
            "'properties.roleName' is required.".into(),
        );
    };
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        match v {
            None | Some(Value::Null) => Some(vec![]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    };
    let Some(assignable_scopes) = strings(props.get("assignableScopes")).filter(|s| !s.is_empty())
    else {
        return bad(
            "InvalidRequestContent",
            "'properties.assignableScopes' must name at least one scope.".into(),
        );
    };
    let mut permissions = vec![];
    for p in props
        .get("permissions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let (Some(actions), Some(not_actions), Some(data_actions), Some(not_data_actions)) = (
            strings(p.get("actions")),
            strings(p.get("notActions")),
            strings(p.get("dataActions")),
            strings(p.get("notDataActions")),
        ) else {
            return bad(
                "InvalidRequestContent",
                "'properties.permissions' entries hold lists of strings.".into(),
            );
        };
        permissions.push(Permission {
            actions,
            not_actions,
            data_actions,
            not_data_actions,
        });
    }
    if permissions
        .iter()
        .all(|p| p.actions.is_empty() && p.data_actions.is_empty())
    {
        return bad(
            "InvalidRoleDefinition",
            "A role definition needs at least one action or data action.".into(),
        );
    }

    let mut world = req.ctx.world.lock();
    for s in &assignable_scopes {
        if !authorized(&world, &req.caller.oid, s, WRITE) {
            return authorization_failed(req, WRITE, s);
        }
        if let Some(resp) = missing_scope(req, &world, s) {
            return resp;
        }
    }
    let g = guid.to_ascii_lowercase();
    let taken = roles::builtins()
        .iter()
        .chain(world.arm.custom_roles.values())
        .any(|d| d.role_name.eq_ignore_ascii_case(&role_name) && d.name != g);
    if taken {
        return arm_error(
            StatusCode::CONFLICT,
            "RoleDefinitionWithSameNameExists",
            "A role definition cannot be updated with a name that already exists.",
            &req.ids,
        );
    }
    if roles::builtin_by_guid(&g).is_some() {
        return authorization_failed(req, WRITE, scope);
    }
    let created_on = world
        .arm
        .custom_roles
        .get(&g)
        .and_then(|d| d.created_on)
        .unwrap_or_else(Timestamp::now);
    let definition = RoleDefinition {
        name: g.clone(),
        role_name,
        description: props
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        role_type: "CustomRole".into(),
        permissions,
        assignable_scopes,
        scope: scope.to_string(),
        created_on: Some(created_on),
    };
    let body = render(&definition, scope);
    world.arm.custom_roles.insert(g, definition);
    req.ctx.touch();
    json_response(StatusCode::CREATED, &body)
}

fn delete(req: &Req, scope: &str, guid: &str) -> Response {
    let mut world = req.ctx.world.lock();
    let g = guid.to_ascii_lowercase();
    let Some(definition) = world.arm.custom_roles.get(&g).cloned() else {
        let mut resp = axum::response::Response::new(axum::body::Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return resp;
    };
    for s in &definition.assignable_scopes {
        if !authorized(&world, &req.caller.oid, s, DELETE) {
            return authorization_failed(req, DELETE, s);
        }
    }
    if world
        .arm
        .role_assignments
        .values()
        .any(|a| roles::guid_of(&a.role_definition_id).eq_ignore_ascii_case(&g))
    {
        return arm_error(
            StatusCode::CONFLICT,
            "RoleDefinitionHasAssignments",
            "There are existing role assignments referencing role (code: RoleDefinitionHasAssignments).",
            &req.ids,
        );
    }
    world.arm.custom_roles.remove(&g);
    req.ctx.touch();
    json_response(StatusCode::OK, &render(&definition, scope))
}
