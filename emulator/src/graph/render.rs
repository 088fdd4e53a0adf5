//! Entities as Graph returns them. Every property named here exists on the entity type in Graph's v1.0
//! metadata (the contract suite checks this against the CSDL).

use serde_json::{Value, json};

use crate::{
    http::rfc3339,
    state::{Application, FederatedCredential, KeyCredential, Password, ServicePrincipal},
};

pub fn application(app: &Application) -> Value {
    json!({
        "id": app.id,
        "deletedDateTime": null,
        "appId": app.app_id,
        "displayName": app.display_name,
        "uniqueName": app.unique_name,
        "description": app.description,
        "notes": app.notes,
        "tags": app.tags,
        "signInAudience": app.sign_in_audience,
        "createdDateTime": rfc3339(app.created_date_time),
        "identifierUris": [],
        "keyCredentials": app.key_credentials.iter().map(key_credential).collect::<Vec<_>>(),
        "passwordCredentials": app.password_credentials.iter().map(|p| password(p, None)).collect::<Vec<_>>(),
    })
}

pub fn password(p: &Password, secret_text: Option<&str>) -> Value {
    json!({
        "customKeyIdentifier": null,
        "displayName": p.display_name,
        "endDateTime": rfc3339(p.end_date_time),
        "hint": p.hint,
        "keyId": p.key_id,
        "secretText": secret_text,
        "startDateTime": rfc3339(p.start_date_time),
    })
}

/// A key credential as Graph reads it back: `key` is always null on reads (Learn, *keyCredential resource
/// type*: "the value of the key property is always null" from GET), the thumbprint is kept.
pub fn key_credential(k: &KeyCredential) -> Value {
    json!({
        "customKeyIdentifier": k.custom_key_identifier,
        "displayName": k.display_name,
        "endDateTime": rfc3339(k.end_date_time),
        "key": null,
        "keyId": k.key_id,
        "startDateTime": rfc3339(k.start_date_time),
        "type": k.r#type,
        "usage": k.usage,
    })
}

pub fn service_principal(sp: &ServicePrincipal) -> Value {
    json!({
        "id": sp.id,
        "deletedDateTime": null,
        "accountEnabled": true,
        "appId": sp.app_id,
        "appDisplayName": sp.display_name,
        "displayName": sp.display_name,
        "appOwnerOrganizationId": sp.app_owner_organization_id,
        "servicePrincipalType": "Application",
        "servicePrincipalNames": [sp.app_id],
        "tags": sp.tags,
        "keyCredentials": [],
        "passwordCredentials": [],
    })
}

pub fn federated_credential(f: &FederatedCredential) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "issuer": f.issuer,
        "subject": f.subject,
        "description": f.description,
        "audiences": f.audiences,
    })
}

/// Keeps only the `$select`ed properties (and `id`, which Graph always returns).
pub fn select(mut value: Value, select: Option<&[String]>) -> Value {
    if let (Some(fields), Value::Object(map)) = (select, &mut value) {
        map.retain(|k, _| {
            k == "id" || k.starts_with('@') || fields.iter().any(|f| f.eq_ignore_ascii_case(k))
        });
    }
    value
}
