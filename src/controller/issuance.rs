//! Adds and removes the operator's credentials on an application: one home for the Graph calls each kind
//! takes, so that both controllers (and their clean-ups) add and remove a password or a certificate alike.
//!
//! Passwords: addPassword and removePassword. Certificates: addKey and removeKey, each with a
//! proof-of-possession token signed by a current certificate of the application (Learn, *application:
//! addKey*, *application: removeKey*, *Generate proof-of-possession tokens for rolling keys*), which the
//! operator has whenever a Secret of its own holds one. addKey refuses an application without a valid
//! certificate, so the first one (and any change made while no certificate the operator holds is valid on
//! the application, e.g. after its Secret was lost) goes through `PATCH keyCredentials` instead, which the
//! owner may do under Application.ReadWrite.OwnedBy (Learn, *Update application*). That PATCH replaces the
//! whole collection, so the application is read again right before it: the reconcile's snapshot could miss
//! a certificate added since.

use azure_core::credentials::Secret as SecretText;
use jiff::Timestamp;

use super::{clock, credentials::Kind};
use crate::azure::{
    certificate::Material,
    error::AzureError,
    graph::{AppCredential, Application, GraphClient, NewKey, NewPassword},
};

/// What to add.
pub enum Fresh {
    /// A password: Entra makes its text.
    Password,
    /// This certificate (generated, or taken from a TLS Secret): its public half goes to Entra.
    Certificate(Material),
}

impl Fresh {
    /// What the next credential of `kind` is: a password; the certificate `source` (a TLS Secret) holds; or
    /// a certificate generated now for `common_name`, valid until `end`.
    pub fn next(
        kind: Kind,
        source: Option<&Material>,
        common_name: &str,
        end: Timestamp,
    ) -> Result<Fresh, String> {
        Ok(match (kind, source) {
            (Kind::Password, _) => Fresh::Password,
            (Kind::Certificate, Some(source)) => Fresh::Certificate(source.clone()),
            (Kind::Certificate, None) => Fresh::Certificate(
                Material::generate(common_name, clock::now(), end)
                    .map_err(|e| format!("generating a certificate: {e}"))?,
            ),
        })
    }
}

/// Adds a credential named `display_name`, valid until `end` (a certificate: until its own end, if sooner),
/// to `app`. `held`: a certificate of the application whose private key the operator holds, to sign the
/// proof with. The new credential, with its text (a certificate's: its PEM).
pub async fn add(
    graph: &GraphClient,
    app: &Application,
    fresh: Fresh,
    display_name: &str,
    end: Timestamp,
    held: Option<&Material>,
) -> Result<NewPassword, AzureError> {
    let material = match fresh {
        Fresh::Password => return graph.add_password(&app.id, display_name, end).await,
        Fresh::Certificate(material) => material,
    };
    let end = end.min(material.not_after());
    let credential = match signer(app, held) {
        Some(signer) => {
            let proof = proof(signer, app)?;
            graph
                .add_key(&app.id, &material, display_name, Some(end), &proof)
                .await?
        }
        None => {
            let current = fresh_read(graph, app).await?;
            let keep: Vec<&AppCredential> = current.key_credentials.iter().collect();
            let key_id = uuid::Uuid::new_v4().to_string();
            let added = NewKey {
                material: &material,
                display_name,
                end: Some(end),
                key_id: &key_id,
            };
            graph
                .set_key_credentials(&app.id, &keep, Some(added))
                .await?;
            // As Graph lists it (whole seconds, as `NewKey` sends the end).
            AppCredential {
                key_id,
                display_name: Some(display_name.to_string()),
                custom_key_identifier: Some(material.thumbprint()),
                start_date_time: Some(material.not_before()),
                end_date_time: Timestamp::from_second(end.as_second()).ok(),
                r#type: Some("AsymmetricX509Cert".into()),
                usage: Some("Verify".into()),
                ..Default::default()
            }
        }
    };
    Ok(NewPassword {
        credential,
        secret_text: SecretText::new(material.bundle()),
    })
}

/// Removes credential `key_id` of `kind` from `app` (one already gone counts as removed). `held` as for
/// [`add`]; it may be the very certificate removed.
pub async fn remove(
    graph: &GraphClient,
    app: &Application,
    kind: Kind,
    key_id: &str,
    held: Option<&Material>,
) -> Result<(), AzureError> {
    if kind == Kind::Password {
        return graph.remove_password(&app.id, key_id).await;
    }
    if let Some(signer) = signer(app, held) {
        let proof = proof(signer, app)?;
        return graph.remove_key(&app.id, key_id, &proof).await;
    }
    let current = fresh_read(graph, app).await?;
    if !current.key_credentials.iter().any(|k| k.key_id == key_id) {
        return Ok(());
    }
    let keep: Vec<&AppCredential> = current
        .key_credentials
        .iter()
        .filter(|k| k.key_id != key_id)
        .collect();
    graph.set_key_credentials(&app.id, &keep, None).await
}

/// `held`, if it can sign a proof for `app`: one of its certificates, valid now (what Graph checks).
fn signer<'a>(app: &Application, held: Option<&'a Material>) -> Option<&'a Material> {
    let held = held?;
    let now = clock::now();
    let print = held.thumbprint();
    app.key_credentials
        .iter()
        .any(|k| {
            k.custom_key_identifier.as_deref() == Some(print.as_str())
                && k.start_date_time.is_none_or(|s| s <= now)
                && k.end_date_time.is_none_or(|e| e > now)
        })
        .then_some(held)
}

/// The application as Graph shows it now.
async fn fresh_read(graph: &GraphClient, app: &Application) -> Result<Application, AzureError> {
    graph
        .application_by_app_id(&app.app_id)
        .await?
        .ok_or_else(|| AzureError::Unexpected {
            operation: "getApplication",
            detail: format!("application {} is not visible", app.app_id),
        })
}

/// A proof of possession for `app`, signed by `signer`.
fn proof(signer: &Material, app: &Application) -> Result<String, AzureError> {
    signer
        .proof(&app.id, clock::now())
        .map_err(|detail| AzureError::Unexpected {
            operation: "proofOfPossession",
            detail,
        })
}
