//! An application's `keyCredentials` as PATCH (or create) sets them, which is how the first certificate gets
//! there; and `addKey` and `removeKey` on applications: an application rolls its own certificates, proving possession
//! of a current one (Learn, *application: addKey*, *application: removeKey*, *Generate proof-of-possession
//! tokens for rolling keys*). The proof is checked by `certs::verify_proof`.
//!
//! Graph's answer to a refused proof is not documented; the emulator answers 400 `Request_BadRequest`
//! ("Invalid proof: {reason}"), its own text.

use axum::{http::StatusCode, response::Response};
use base64::{Engine, engine::general_purpose::STANDARD};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    Req, applications::Key, applications::with_app_as, bad_request, body_object, no_content,
    ok_json, render,
};
use crate::state::ChangeKind;

/// `POST /applications/{id}/addKey` `{keyCredential: {type, usage, key, displayName?}, passwordCredential,
/// proof}`: 200 with the new keyCredential (its `key` null, as on reads).
pub fn add_key(req: &Req, key: &Key) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(proof) = body
        .get("proof")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return bad_request(req, "Invalid value specified for property 'proof'.");
    };
    let cred = match body.get("keyCredential") {
        Some(Value::Object(m)) => m.clone(),
        _ => {
            return bad_request(req, "Invalid value specified for property 'keyCredential'.");
        }
    };
    let new_key = match key_credential(&cred) {
        Ok(k) => k,
        Err(why) => return bad_request(req, why),
    };
    with_app_as(req, key, true, true, |req, world, id| {
        let app = world.directory.applications.get_mut(id).expect("present");
        if let Err(why) =
            crate::certs::verify_proof(&proof, &app.key_credentials, &app.id, Timestamp::now())
        {
            return bad_request(req, &format!("Invalid proof: {why}."));
        }
        if app
            .key_credentials
            .iter()
            .any(|k| k.custom_key_identifier == new_key.custom_key_identifier)
        {
            return bad_request(
                req,
                "The certificate is already registered on the application.",
            );
        }
        let mut body = render::key_credential(&new_key);
        body["@odata.context"] = json!(format!(
            "{}/$metadata#microsoft.graph.keyCredential",
            req.base
        ));
        app.key_credentials.push(new_key);
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        ok_json(StatusCode::OK, &body)
    })
}

/// The keyCredential of an addKey request: an X.509 certificate for `Verify` (`AsymmetricX509Cert`).
fn key_credential(cred: &Map<String, Value>) -> Result<crate::state::KeyCredential, &'static str> {
    let text = |name: &str| cred.get(name).and_then(Value::as_str);
    if text("type").is_some_and(|t| t != "AsymmetricX509Cert")
        || text("usage").is_some_and(|u| u != "Verify")
    {
        return Err(
            "Only keyCredentials of type 'AsymmetricX509Cert' and usage 'Verify' are supported.",
        );
    }
    let der = text("key")
        .and_then(|k| STANDARD.decode(k).ok())
        .ok_or("Invalid value specified for property 'key' of resource 'KeyCredential'.")?;
    let mut key =
        crate::certs::key_credential_from_der(&der, None, text("displayName").map(str::to_string))
            .map_err(
                |_| "Invalid value specified for property 'key' of resource 'KeyCredential'.",
            )?;
    // Given dates win over the certificate's validity (azure-cli sends its own, clamped to the certificate's:
    // `role/custom.py`, `_validate_app_dates`).
    let date = |name: &str| match cred.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => t.parse::<Timestamp>().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    };
    const BAD_DATE: &str = "Invalid value specified for property 'startDateTime' or 'endDateTime' of resource 'KeyCredential'.";
    if let Some(start) = date("startDateTime").map_err(|_| BAD_DATE)? {
        key.start_date_time = start;
    }
    if let Some(end) = date("endDateTime").map_err(|_| BAD_DATE)? {
        key.end_date_time = end;
    }
    if key.end_date_time <= key.start_date_time {
        return Err(BAD_DATE);
    }
    key.replicating_since = Some(Timestamp::now());
    Ok(key)
}

/// `POST /applications/{id}/removeKey` `{keyId, proof}`: 204.
pub fn remove_key(req: &Req, key: &Key) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(proof) = body
        .get("proof")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return bad_request(req, "Invalid value specified for property 'proof'.");
    };
    let Some(key_id) = body
        .get("keyId")
        .and_then(Value::as_str)
        .filter(|k| uuid::Uuid::parse_str(k).is_ok())
        .map(str::to_ascii_lowercase)
    else {
        return bad_request(req, "Invalid value specified for property 'keyId'.");
    };
    with_app_as(req, key, true, true, |req, world, id| {
        let app = world.directory.applications.get_mut(id).expect("present");
        if let Err(why) =
            crate::certs::verify_proof(&proof, &app.key_credentials, &app.id, Timestamp::now())
        {
            return bad_request(req, &format!("Invalid proof: {why}."));
        }
        let before = app.key_credentials.len();
        app.key_credentials
            .retain(|k| k.key_id.to_ascii_lowercase() != key_id);
        if app.key_credentials.len() == before {
            return bad_request(
                req,
                &format!("No key credential found with keyId {key_id}."),
            );
        }
        world.record("application", id, ChangeKind::Updated);
        req.ctx.touch();
        no_content()
    })
}

/// The key credentials after `PATCH {keyCredentials: [...]}`: the list replaces the collection (Learn, *Update
/// application*). An entry with a `key` is a certificate to add (its keyId kept if given); one without (as
/// Graph reads them back, `key` null) keeps the existing credential of that keyId, which is how clients append:
/// azure-cli's `az ad app credential reset --append` reads `keyCredentials`, adds one and PATCHes them all
/// (`role/custom.py`, `_reset_credential`).
pub fn replace_key_credentials(
    existing: &[crate::state::KeyCredential],
    value: &Value,
) -> Result<Vec<crate::state::KeyCredential>, &'static str> {
    const INVALID: &str =
        "Invalid value specified for property 'keyCredentials' of resource 'Application'.";
    let entries = value.as_array().ok_or(INVALID)?;
    let mut result: Vec<crate::state::KeyCredential> = Vec::new();
    for entry in entries {
        let cred = entry.as_object().ok_or(INVALID)?;
        let key_id = cred
            .get("keyId")
            .and_then(Value::as_str)
            .filter(|k| uuid::Uuid::parse_str(k).is_ok())
            .map(str::to_ascii_lowercase);
        let next = match cred.get("key") {
            None | Some(Value::Null) => existing
                .iter()
                .find(|k| Some(k.key_id.to_ascii_lowercase()) == key_id)
                .cloned()
                .ok_or("Key credential without 'key' must name an existing keyId.")?,
            Some(_) => {
                let mut k = key_credential(cred)?;
                if let Some(id) = key_id {
                    k.key_id = id;
                }
                k
            }
        };
        if result.iter().any(|k| {
            k.key_id == next.key_id || k.custom_key_identifier == next.custom_key_identifier
        }) {
            return Err("Duplicate key credentials (same keyId or certificate) are not allowed.");
        }
        result.push(next);
    }
    Ok(result)
}
