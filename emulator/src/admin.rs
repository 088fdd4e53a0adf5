//! The admin API under `/_emulator/` (loopback tooling, no authentication): state dump with secrets
//! redacted, call counts, runtime knobs, adding to the seed, asking whether a secret is the one an AKS
//! cluster holds, and a vault's secrets as metadata.

use axum::{
    body::Bytes,
    http::{Method, StatusCode, request::Parts},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    config::{Knobs, Seed},
    http::json_response,
    server::Ctx,
    state::sha256_hex,
};

pub async fn handle(ctx: &Ctx, parts: &Parts, body: Bytes) -> Response {
    let path = parts.uri.path().trim_end_matches('/');
    let bad = |message: String| json_response(StatusCode::BAD_REQUEST, &json!({"error": message}));
    match (&parts.method, path) {
        (&Method::GET, "/_emulator/health") => {
            json_response(StatusCode::OK, &json!({"status": "ok"}))
        }
        (&Method::GET, "/_emulator/state") => {
            crate::arm::aks::settle_operations(ctx);
            json_response(StatusCode::OK, &redacted_state(ctx))
        }
        (&Method::GET, "/_emulator/calls") => {
            json_response(StatusCode::OK, &json!(*ctx.calls.lock()))
        }
        (&Method::DELETE, "/_emulator/calls") => {
            ctx.calls.lock().clear();
            json_response(StatusCode::OK, &json!({}))
        }
        (&Method::GET, "/_emulator/knobs") => {
            json_response(StatusCode::OK, &json!(*ctx.knobs.read()))
        }
        (&Method::PUT | &Method::PATCH, "/_emulator/knobs") => {
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return bad("the body must be JSON".into());
            };
            let mut current = serde_json::to_value(&*ctx.knobs.read()).expect("serializable");
            if parts.method == Method::PUT {
                current = patch;
            } else {
                merge(&mut current, patch);
            }
            match serde_json::from_value::<Knobs>(current) {
                Ok(knobs) => {
                    *ctx.knobs.write() = knobs.clone();
                    json_response(StatusCode::OK, &json!(knobs))
                }
                Err(e) => bad(format!("invalid knobs: {e}")),
            }
        }
        (&Method::POST, "/_emulator/seed") => {
            let seed: Seed = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return bad(format!("invalid seed: {e}")),
            };
            for issuer in &seed.trusted_issuers {
                ctx.issuers.add(issuer.clone());
            }
            let result = ctx.world.lock().add_seed(&seed, jiff::Timestamp::now());
            match result {
                Ok(()) => {
                    ctx.touch();
                    json_response(StatusCode::OK, &json!({"status": "seeded"}))
                }
                Err(e) => bad(e.to_string()),
            }
        }
        (&Method::POST, "/_emulator/aks/check") => {
            crate::arm::aks::settle_operations(ctx);
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return bad("the body must be JSON".into());
            };
            let (Some(cluster), Some(secret)) = (req["clusterId"].as_str(), req["secret"].as_str())
            else {
                return bad("clusterId and secret are required".into());
            };
            let world = ctx.world.lock();
            match world.arm.aks_clusters.get(&cluster.to_ascii_lowercase()) {
                Some(c) => json_response(
                    StatusCode::OK,
                    &json!({"clientId": c.client_id, "secretMatches": c.secret_sha256.as_deref() == Some(sha256_hex(secret).as_str())}),
                ),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no cluster {cluster}")}),
                ),
            }
        }
        (&Method::GET, p) if p.starts_with("/_emulator/keyvault/") => keyvault_view(ctx, p),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin route {} {path}", parts.method)}),
        ),
    }
}

/// `GET /_emulator/keyvault/{vault}/secrets`: a vault's secrets and their versions, metadata only (no
/// values), for tests and the demo to look at without a token.
fn keyvault_view(ctx: &Ctx, path: &str) -> Response {
    let rest = path.trim_start_matches("/_emulator/keyvault/");
    let view = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [vault, "secrets"] => crate::keyvault::admin_view(&ctx.world.lock(), vault),
        _ => None,
    };
    match view {
        Some(v) => json_response(StatusCode::OK, &v),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no vault view at {path}")}),
        ),
    }
}

/// Merges `patch` into `target`, objects key by key (JSON merge patch without deletion).
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// The whole state, with every secret hash removed (the hints remain) and Key Vault secrets as metadata.
fn redacted_state(ctx: &Ctx) -> Value {
    let world = ctx.world.lock();
    let mut value = serde_json::to_value(&*world).expect("serializable");
    value["vaults"] = world
        .vaults
        .iter()
        .map(|(name, secrets)| (name.clone(), crate::keyvault::secrets::admin_json(secrets)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    drop(world);
    fn scrub(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("secretSha256");
                map.values_mut().for_each(scrub);
            }
            Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut value);
    value
}
