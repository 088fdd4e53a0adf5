//! AKS managedClusters: GET (the secret is never returned) and resetServicePrincipalProfile as a
//! long-running operation answered 202 with both Location and Azure-AsyncOperation, since clients of the
//! real service meet either.

use axum::{
    http::{HeaderValue, Method, StatusCode},
    response::Response,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{Req, authorization_failed, authorized, body_object, missing_scope};
use crate::{
    http::{arm_error, json_response, rfc3339},
    server::Shared,
    state::{Operation, new_id, sha256_hex},
};

const READ: &str = "Microsoft.ContainerService/managedClusters/read";
const RESET: &str =
    "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action";
/// The limit AKS documents for a service principal's secret.
pub const MAX_SECRET_BYTES: usize = 190;

/// Applies every finished, successful reset to its cluster. Called before anything reads clusters, so the
/// outcome does not depend on whether a client polls.
pub fn settle_operations(ctx: &Shared) {
    let now = Timestamp::now();
    let mut world = ctx.world.lock();
    let due: Vec<Operation> = world
        .arm
        .operations
        .values()
        .filter(|o| !o.applied && o.end_time <= now)
        .cloned()
        .collect();
    for op in due {
        if !op.fails
            && let Some(cluster) = world
                .arm
                .aks_clusters
                .get_mut(&op.cluster_id.to_ascii_lowercase())
        {
            cluster.client_id = op.client_id.clone();
            cluster.secret_sha256 = Some(op.secret_sha256.clone());
            cluster.provisioning_state = "Succeeded".into();
        } else if let Some(cluster) = world
            .arm
            .aks_clusters
            .get_mut(&op.cluster_id.to_ascii_lowercase())
        {
            cluster.provisioning_state = "Failed".into();
        }
        if let Some(o) = world.arm.operations.get_mut(&op.id) {
            o.applied = true;
        }
        ctx.touch();
    }
}

pub fn cluster(req: &Req, id: &str, reset: bool) -> Response {
    settle_operations(req.ctx);
    match (reset, &req.method) {
        (false, &Method::GET) => get(req, id),
        (true, &Method::POST) => start_reset(req, id),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The method '{}' is not allowed here.", req.method),
            &req.ids,
        ),
    }
}

fn cluster_missing(req: &Req, id: &str) -> Response {
    let name = id.rsplit('/').next().unwrap_or(id);
    let rg = id.split('/').nth(4).unwrap_or_default();
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ContainerService/managedClusters/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
        &req.ids,
    )
}

fn get(req: &Req, id: &str) -> Response {
    let world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, id, READ) {
        return authorization_failed(req, READ, id);
    }
    let Some(c) = world.arm.aks_clusters.get(&id.to_ascii_lowercase()) else {
        return cluster_missing(req, id);
    };
    json_response(StatusCode::OK, &render(c))
}

/// `GET {subscription or resource group}/providers/Microsoft.ContainerService/managedClusters`: the
/// clusters in scope that the caller may read (ARM filters a list by the caller's rights).
pub fn list(req: &Req, scope: &str) -> Response {
    if req.method != Method::GET {
        return arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The method '{}' is not allowed here.", req.method),
            &req.ids,
        );
    }
    settle_operations(req.ctx);
    let world = req.ctx.world.lock();
    if let Some(resp) = missing_scope(req, &world, scope) {
        return resp;
    }
    let value: Vec<Value> = world
        .arm
        .aks_clusters
        .values()
        .filter(|c| super::at_or_above(scope, &c.id))
        .filter(|c| authorized(&world, &req.caller.oid, &c.id, READ))
        .map(render)
        .collect();
    json_response(StatusCode::OK, &json!({ "value": value }))
}

fn render(c: &crate::state::AksCluster) -> Value {
    json!({
            "id": c.id,
            "location": c.location,
            "name": c.name,
            "type": "Microsoft.ContainerService/ManagedClusters",
            "properties": {
                "provisioningState": c.provisioning_state,
                "kubernetesVersion": "1.33.0",
                "dnsPrefix": c.name,
                "fqdn": format!("{}.hcp.{}.azmk8s.io", c.name, c.location),
                "servicePrincipalProfile": {"clientId": c.client_id},
            },
    })
}

fn start_reset(req: &Req, id: &str) -> Response {
    let bad =
        |code: &str, message: &str| arm_error(StatusCode::BAD_REQUEST, code, message, &req.ids);
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(client_id) = body
        .get("clientId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
    else {
        return bad(
            "InvalidParameter",
            "The value of parameter servicePrincipalProfile.clientId is invalid: it is required.",
        );
    };
    let secret = match body.get("secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return bad(
                "InvalidParameter",
                "The value of parameter servicePrincipalProfile.secret is invalid.",
            );
        }
    };
    if secret.as_ref().is_some_and(|s| s.len() > MAX_SECRET_BYTES) {
        return bad(
            "InvalidParameter",
            "The value of parameter servicePrincipalProfile.secret is invalid: it must be at most 190 bytes.",
        );
    }
    let (fails, duration) = {
        let knobs = req.ctx.knobs.read();
        (
            req.ctx.faults.lock().chance(knobs.aks.reset_failure_rate),
            knobs.aks.reset_duration_ms,
        )
    };
    let mut world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, id, RESET) {
        return authorization_failed(req, RESET, id);
    }
    if let Some(resp) = missing_scope(req, &world, id) {
        return resp;
    }
    let Some(cluster) = world.arm.aks_clusters.get_mut(&id.to_ascii_lowercase()) else {
        return cluster_missing(req, id);
    };
    if cluster.client_id == "msi" {
        return bad(
            "OperationNotAllowed",
            "Reset service principal profile is not allowed on a cluster that uses managed identity.",
        );
    }
    if world
        .arm
        .operations
        .values()
        .any(|o| !o.applied && o.cluster_id.eq_ignore_ascii_case(id))
    {
        return arm_error(
            StatusCode::CONFLICT,
            "OperationNotAllowed",
            "Operation is not allowed because there's an in progress reset service principal profile operation.",
            &req.ids,
        );
    }
    let cluster = world
        .arm
        .aks_clusters
        .get_mut(&id.to_ascii_lowercase())
        .expect("checked");
    cluster.provisioning_state = "Updating".into();
    let location = cluster.location.clone();
    let subscription = id.split('/').nth(2).unwrap_or_default().to_string();
    let now = Timestamp::now();
    let op = Operation {
        id: new_id(),
        cluster_id: id.to_string(),
        location: location.clone(),
        start_time: now,
        end_time: now + SignedDuration::from_millis(duration as i64),
        fails,
        client_id,
        secret_sha256: sha256_hex(secret.as_deref().unwrap_or_default()),
        applied: false,
    };
    let prefix = format!(
        "{}/subscriptions/{subscription}/providers/Microsoft.ContainerService/locations/{location}",
        req.base
    );
    let async_url = format!("{prefix}/operations/{}?api-version=2017-08-31", op.id);
    let location_url = format!("{prefix}/operationresults/{}?api-version=2017-08-31", op.id);
    world.arm.operations.insert(op.id.clone(), op);
    req.ctx.touch();
    drop(world);
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    for (name, url) in [
        ("location", &location_url),
        ("azure-asyncoperation", &async_url),
    ] {
        if let Ok(v) = HeaderValue::from_str(url) {
            h.insert(name, v);
        }
    }
    h.insert("retry-after", HeaderValue::from_static("1"));
    resp
}

pub fn operation(
    req: &Req,
    subscription: &str,
    location: &str,
    id: &str,
    result: bool,
) -> Response {
    settle_operations(req.ctx);
    if req.method != Method::GET {
        return arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Only GET is allowed here.",
            &req.ids,
        );
    }
    let world = req.ctx.world.lock();
    // An operation is found only under the subscription and location of the cluster it belongs to.
    let Some(op) = world
        .arm
        .operations
        .get(id)
        .filter(|o| o.location.eq_ignore_ascii_case(location))
        .filter(|o| {
            crate::arm::roles::subscription_of(&o.cluster_id)
                .is_some_and(|s| s.eq_ignore_ascii_case(subscription))
        })
        .cloned()
    else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Operation {id} was not found."),
            &req.ids,
        );
    };
    if !authorized(&world, &req.caller.oid, &op.cluster_id, READ) {
        return authorization_failed(req, READ, &op.cluster_id);
    }
    drop(world);
    let status = if !op.applied {
        "InProgress"
    } else if op.fails {
        "Failed"
    } else {
        "Succeeded"
    };
    let error = json!({"code": "ResetServicePrincipalProfileFailed", "message": "Resetting the service principal profile failed on the cluster's nodes."});
    if result {
        let prefix = format!(
            "{}/subscriptions/{subscription}/providers/Microsoft.ContainerService/locations/{location}",
            req.base
        );
        return match status {
            "InProgress" => {
                let mut resp = Response::new(axum::body::Body::empty());
                *resp.status_mut() = StatusCode::ACCEPTED;
                let url = format!("{prefix}/operationresults/{id}?api-version=2017-08-31");
                if let Ok(v) = HeaderValue::from_str(&url) {
                    resp.headers_mut().insert("location", v);
                }
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                resp
            }
            "Failed" => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": error})),
            _ => {
                let mut resp = Response::new(axum::body::Body::empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
        };
    }
    let mut body = json!({
        "id": format!("/subscriptions/{subscription}/providers/Microsoft.ContainerService/locations/{location}/operations/{id}"),
        "name": id,
        "status": status,
        "startTime": rfc3339(op.start_time),
    });
    if status != "InProgress" {
        body["endTime"] = json!(rfc3339(op.end_time));
        body["percentComplete"] = json!(100);
    }
    if status == "Failed" {
        body["error"] = error;
    }
    json_response(StatusCode::OK, &body)
}
