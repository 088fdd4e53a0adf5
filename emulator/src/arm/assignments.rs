//! Role assignments: PUT on a GUID name, GET, DELETE, and list with `atScope()` or `principalId eq`.

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
    state::RoleAssignment,
};

const READ: &str = "Microsoft.Authorization/roleAssignments/read";
const WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
const DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";
const PRINCIPAL_TYPES: &[&str] = &[
    "User",
    "Group",
    "ServicePrincipal",
    "ForeignGroup",
    "Device",
];

/// A role assignment as a read (GET, list) returns it: within a subscription, its definition in the
/// subscription form `/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`, the id
/// under which the same subscription's definitions list names it. Microsoft documents `az role assignment
/// list` printing that form, and az fills `roleDefinitionName` by matching it against that list. The
/// writes' echo keeps the tenant form of the spec's examples (see `render`).
fn render_read(a: &RoleAssignment) -> Value {
    let mut value = render(a);
    value["properties"]["roleDefinitionId"] = json!(roles::definition_id(
        &a.scope,
        roles::guid_of(&a.role_definition_id)
    ));
    value
}

pub fn render(a: &RoleAssignment) -> Value {
    let mut props = json!({
        "roleDefinitionId": a.role_definition_id,
        "principalId": a.principal_id,
        "principalType": a.principal_type,
        "scope": a.scope,
        "createdOn": rfc3339(a.created_on),
        "updatedOn": rfc3339(a.updated_on),
        "createdBy": a.created_by,
        "updatedBy": a.created_by,
    });
    if let Some(d) = &a.description {
        props["description"] = json!(d);
    }
    if let Some(c) = &a.condition {
        props["condition"] = json!(c);
        props["conditionVersion"] =
            json!(a.condition_version.clone().unwrap_or_else(|| "2.0".into()));
    }
    json!({"properties": props, "id": a.id, "type": "Microsoft.Authorization/roleAssignments", "name": a.name})
}

pub fn handle(req: &Req, scope: &str, name: Option<&str>) -> Response {
    match (name, &req.method) {
        (None, &Method::GET) => list(req, scope),
        (Some(name), &Method::GET) => get(req, scope, name),
        (Some(name), &Method::PUT) => put(req, scope, name),
        (Some(name), &Method::DELETE) => delete(req, scope, name),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The method '{}' is not allowed here.", req.method),
            &req.ids,
        ),
    }
}

fn id_of(scope: &str, name: &str) -> String {
    let scope = if scope == "/" { "" } else { scope };
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
}

fn not_found(req: &Req) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        "The role assignment does not exist.",
        &req.ids,
    )
}

fn get(req: &Req, scope: &str, name: &str) -> Response {
    let world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, scope, READ) {
        return authorization_failed(req, READ, scope);
    }
    match world
        .arm
        .role_assignments
        .get(&id_of(scope, name).to_ascii_lowercase())
    {
        Some(a) => json_response(StatusCode::OK, &render_read(a)),
        None => not_found(req),
    }
}

fn delete(req: &Req, scope: &str, name: &str) -> Response {
    if uuid::Uuid::parse_str(name).is_err() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRoleAssignmentId",
            &format!(
                "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
            ),
            &req.ids,
        );
    }
    let mut world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, scope, DELETE) {
        return authorization_failed(req, DELETE, scope);
    }
    match world
        .arm
        .role_assignments
        .remove(&id_of(scope, name).to_ascii_lowercase())
    {
        Some(a) => {
            req.ctx.touch();
            json_response(StatusCode::OK, &render(&a))
        }
        None => {
            let mut resp = axum::response::Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
    }
}

fn put(req: &Req, scope: &str, name: &str) -> Response {
    let bad =
        |code: &str, message: String| arm_error(StatusCode::BAD_REQUEST, code, &message, &req.ids);
    if uuid::Uuid::parse_str(name).is_err() {
        return bad(
            "InvalidRoleAssignmentId",
            format!(
                "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
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
    let text = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_string);
    let Some(role_definition_id) = text("roleDefinitionId") else {
        return bad("InvalidRequestContent", "The request content was invalid and could not be deserialized: 'properties.roleDefinitionId' is required.".into());
    };
    let Some(principal_id) = text("principalId") else {
        return bad("InvalidRequestContent", "The request content was invalid and could not be deserialized: 'properties.principalId' is required.".into());
    };
    if uuid::Uuid::parse_str(&principal_id).is_err() {
        return bad(
            "InvalidPrincipalId",
            format!("The Principal ID '{principal_id}' is not valid. Principal ID must be a GUID."),
        );
    }
    let principal_type = text("principalType");
    if let Some(t) = &principal_type
        && !PRINCIPAL_TYPES.contains(&t.as_str())
    {
        return bad(
            "InvalidRequestContent",
            format!(
                "The request content was invalid and could not be deserialized: '{t}' is not a valid principalType."
            ),
        );
    }
    let condition = text("condition");
    let condition_version = text("conditionVersion");
    if condition.is_some() && condition_version.as_deref().is_some_and(|v| v != "2.0") {
        return bad(
            "InvalidConditionVersion",
            "The only supported conditionVersion is '2.0'.".into(),
        );
    }
    if condition.is_none() && condition_version.is_some() {
        return bad(
            "InvalidRequestContent",
            "conditionVersion requires condition.".into(),
        );
    }

    let mut world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, scope, WRITE) {
        return authorization_failed(req, WRITE, scope);
    }
    if let Some(resp) = missing_scope(req, &world, scope) {
        return resp;
    }
    let guid = roles::guid_of(&role_definition_id).to_ascii_lowercase();
    let definition = roles::builtin_by_guid(&guid)
        .cloned()
        .or_else(|| world.arm.custom_roles.get(&guid).cloned());
    let assignable = definition
        .as_ref()
        .is_some_and(|d| d.assignable_scopes.iter().any(|s| at_or_above(s, scope)));
    if !assignable {
        return bad(
            "RoleDefinitionDoesNotExist",
            format!("The specified role definition with ID '{guid}' does not exist."),
        );
    }
    let tenant = world.tenant_id.clone();
    let principal = world
        .directory
        .service_principals
        .get(&principal_id)
        .cloned();
    let Some(principal) = principal else {
        return bad(
            "PrincipalNotFound",
            principal_not_found_message(&principal_id, &tenant),
        );
    };
    let knobs = req.ctx.knobs.read().replication.clone();
    let window = if principal_type.is_some() {
        knobs.principal_not_found_with_type_ms
    } else {
        knobs.principal_not_found_ms
    };
    if window > 0
        && Timestamp::now()
            .duration_since(principal.created_date_time)
            .as_millis()
            < window as i128
    {
        return bad(
            "PrincipalNotFound",
            principal_not_found_message(&principal_id, &tenant),
        );
    }
    if let Some(t) = &principal_type
        && t != "ServicePrincipal"
    {
        return bad(
            "UnmatchedPrincipalType",
            format!(
                "The PrincipalId '{}' has type 'ServicePrincipal' , which is different from specified PrinciaplType '{t}'.",
                principal_id.replace('-', "")
            ),
        );
    }

    let id = id_of(scope, name);
    let key = id.to_ascii_lowercase();
    let role_definition_id = roles::assignment_definition_id(&guid);
    if let Some(existing) = world.arm.role_assignments.get(&key) {
        let same = existing.principal_id.eq_ignore_ascii_case(&principal_id)
            && roles::guid_of(&existing.role_definition_id).eq_ignore_ascii_case(&guid)
            && existing.scope.eq_ignore_ascii_case(scope);
        if !same {
            return bad(
                "RoleAssignmentUpdateNotPermitted",
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated."
                    .into(),
            );
        }
        let mut updated = existing.clone();
        updated.description = text("description").or(updated.description);
        updated.condition = condition;
        updated.condition_version = condition_version;
        updated.updated_on = Timestamp::now();
        let body = render(&updated);
        world.arm.role_assignments.insert(key, updated);
        req.ctx.touch();
        return json_response(StatusCode::OK, &body);
    }
    // Azure keeps one assignment per (scope, role, principal): another name for the same triple is refused
    // whatever its condition or description, so a second PUT can never rewrite, or share, the first one's
    // grant (contract §2, "409 RoleAssignmentExists"). Only the name that holds it can change it (above).
    if let Some(other) = world.arm.role_assignments.values().find(|a| {
        a.scope.eq_ignore_ascii_case(scope)
            && a.principal_id.eq_ignore_ascii_case(&principal_id)
            && roles::guid_of(&a.role_definition_id).eq_ignore_ascii_case(&guid)
    }) {
        return arm_error(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            &format!(
                "The role assignment already exists. The ID of the existing role assignment is {}.",
                other.name.replace('-', "")
            ),
            &req.ids,
        );
    }
    let now = Timestamp::now();
    let assignment = RoleAssignment {
        id,
        name: name.to_string(),
        scope: scope.to_string(),
        role_definition_id,
        principal_id,
        principal_type: "ServicePrincipal".into(),
        description: text("description"),
        condition,
        condition_version,
        created_on: now,
        updated_on: now,
        created_by: req.caller.oid.clone(),
    };
    let body = render(&assignment);
    world.arm.role_assignments.insert(key, assignment);
    req.ctx.touch();
    json_response(StatusCode::CREATED, &body)
}

fn principal_not_found_message(principal: &str, tenant: &str) -> String {
    format!(
        "Principal {} does not exist in the directory {tenant}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
        principal.replace('-', "")
    )
}

fn list(req: &Req, scope: &str) -> Response {
    let world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, scope, READ) {
        return authorization_failed(req, READ, scope);
    }
    let filter = req.query.get("$filter").map(|f| f.trim().to_string());
    let principal = filter
        .as_deref()
        .and_then(|f| f.strip_prefix("principalId eq '"))
        .and_then(|f| f.strip_suffix('\''));
    let at_scope = filter.as_deref() == Some("atScope()");
    if filter.is_some() && principal.is_none() && !at_scope {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedQuery",
            &format!(
                "The filter '{}' is not supported. Supported filters are 'atScope()' and 'principalId eq {{id}}'.",
                filter.unwrap_or_default()
            ),
            &req.ids,
        );
    }
    let value: Vec<Value> = world
        .arm
        .role_assignments
        .values()
        .filter(|a| {
            let above = at_or_above(&a.scope, scope);
            let below = at_or_above(scope, &a.scope);
            match (at_scope, principal) {
                (true, _) => above,
                (_, Some(p)) => (above || below) && a.principal_id.eq_ignore_ascii_case(p),
                _ => above || below,
            }
        })
        .map(render_read)
        .collect();
    json_response(StatusCode::OK, &json!({"value": value}))
}
