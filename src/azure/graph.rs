//! The Microsoft Graph calls the operator makes, typed. There is no maintained Rust Graph SDK, so this is
//! a thin client over reqwest: each method is one documented request, and failures become `AzureError`s
//! that say what to do. Secret text from addPassword is wrapped so that it cannot be logged by accident.

use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{
    Cloud,
    certificate::Material,
    error::AzureError,
    http::{Service, parse},
};

/// The application permissions that let an app-only caller read every application.
pub const READ_ALL_APPLICATIONS: [&str; 4] = [
    "Application.Read.All",
    "Application.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// What an expiry watch reads of an application.
const WATCH_SELECT: &str = "id,appId,displayName,passwordCredentials,keyCredentials";

#[derive(Clone)]
pub struct GraphClient {
    service: Service,
}

/// A page of a delta query: the ids of objects changed or removed, and where to read next.
#[derive(Debug)]
pub struct DeltaPage {
    pub ids: Vec<String>,
    pub next: DeltaNext,
}

#[derive(Debug, PartialEq)]
pub enum DeltaNext {
    /// More of this round.
    Page(String),
    /// The round is done; this link starts the next one (changes after now).
    Round(String),
}

/// An application as the operator reads it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub password_credentials: Vec<AppCredential>,
    /// Certificates. Graph returns them with every read of an application (no `$select` here leaves them
    /// out), always with `key` null.
    #[serde(default)]
    pub key_credentials: Vec<AppCredential>,
}

impl AppCredential {
    /// The entry that keeps this credential in a PATCH of `keyCredentials`: as read, `key` null (azure-cli,
    /// `role/custom.py` `_reset_credential`, appends by sending the credentials it read back this way).
    fn kept(&self) -> Value {
        json!({
            "keyId": self.key_id,
            "type": self.r#type.as_deref().unwrap_or("AsymmetricX509Cert"),
            "usage": self.usage.as_deref().unwrap_or("Verify"),
            "displayName": self.display_name,
            "customKeyIdentifier": self.custom_key_identifier,
            "startDateTime": self.start_date_time.map(|t| t.to_string()),
            "endDateTime": self.end_date_time.map(|t| t.to_string()),
            "key": null,
        })
    }
}

/// Whether a removal failed only because credential `key_id` is not there: Graph answers 400 or 404 with a
/// message naming it (compared case-insensitively: the emulator prints key ids in lowercase).
fn already_gone(error: &AzureError, key_id: &str) -> bool {
    matches!(error, AzureError::Api { status: 400 | 404, message, .. }
        if message.to_ascii_lowercase().contains(&key_id.to_ascii_lowercase()))
}

/// A new certificate as addKey and PATCH take it: the DER in `key`, valid for the certificate's own validity,
/// ending at `end` if that is sooner (Graph refuses dates outside the certificate's; azure-cli clamps the same
/// way, `role/custom.py` `_validate_app_dates`).
fn new_key_credential(material: &Material, display_name: &str, end: Option<Timestamp>) -> Value {
    use base64::Engine as _;
    // Whole seconds, as the certificate's own dates: Graph keeps 100 ns, a caller comparing what it asked for
    // with what it reads back should not have to care.
    let end = end
        .and_then(|e| Timestamp::from_second(e.as_second()).ok())
        .map_or(material.not_after(), |e| e.min(material.not_after()));
    json!({
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
        "key": base64::engine::general_purpose::STANDARD.encode(material.certificate_der()),
        "displayName": display_name,
        "startDateTime": material.not_before().to_string(),
        "endDateTime": end.to_string(),
    })
}

/// A credential on an application as Graph lists it, a password (`passwordCredentials`) or a certificate
/// (`keyCredentials`, Learn, *keyCredential resource type*): never with its secret text or certificate. The
/// two share their identity and dates, so the operator handles both alike; `hint` is a password's,
/// `customKeyIdentifier` (the base64 SHA-1 thumbprint, [`Material::thumbprint`]), `type` and `usage` a
/// certificate's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppCredential {
    pub key_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub start_date_time: Option<Timestamp>,
    #[serde(default)]
    pub end_date_time: Option<Timestamp>,
    #[serde(default)]
    pub custom_key_identifier: Option<String>,
    #[serde(default)]
    pub r#type: Option<String>,
    #[serde(default)]
    pub usage: Option<String>,
}

/// A certificate to add with PATCH keyCredentials: its key id is chosen here, so that the credential is known
/// without reading the application back (which replication may not show yet).
pub struct NewKey<'a> {
    pub material: &'a Material,
    pub display_name: &'a str,
    pub end: Option<Timestamp>,
    pub key_id: &'a str,
}

/// A password just added: the only moment its text exists.
#[derive(Debug)]
pub struct NewPassword {
    pub credential: AppCredential,
    /// `Secret`'s Debug and Display print a placeholder, never the text.
    pub secret_text: Secret,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityCredential {
    #[serde(default, skip_serializing)]
    pub id: String,
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Whether an upsert created the object or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Existed,
}

impl From<StatusCode> for Upserted {
    /// An upsert with `Prefer: create-if-missing` answers 201 when it created, 204 when it updated.
    fn from(status: StatusCode) -> Self {
        if status == StatusCode::CREATED {
            Upserted::Created
        } else {
            Upserted::Existed
        }
    }
}

fn odata_quote(key: &str) -> String {
    // OData string literals double their single quotes; the whole key is then percent-encoded as a path part.
    let quoted = key.replace('\'', "''");
    percent_encode(&quoted)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'\'' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl GraphClient {
    pub fn new(http: reqwest::Client, credential: Arc<dyn TokenCredential>, cloud: &Cloud) -> Self {
        GraphClient {
            service: Service::new(
                http,
                credential,
                &cloud.graph_endpoint,
                &cloud.graph_scope,
                "graph",
                "request-id",
            ),
        }
    }

    /// Counts every request in `entra_operator_azure_requests_total`.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::metrics::Metrics>) -> Self {
        self.service = self.service.with_metrics(metrics);
        self
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        upsert: bool,
    ) -> Result<(StatusCode, Option<Value>), AzureError> {
        let headers: &[(&str, &str)] = if upsert {
            &[("Prefer", "create-if-missing")]
        } else {
            &[]
        };
        self.service
            .send(operation, method, path, body, headers)
            .await
    }

    async fn get_opt<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Option<T>, AzureError> {
        self.service.get_opt(operation, path).await
    }

    fn parse<T: DeserializeOwned>(
        operation: &'static str,
        value: Option<Value>,
    ) -> Result<T, AzureError> {
        parse(operation, value)
    }

    /// PATCH /applications(uniqueName='…') with `Prefer: create-if-missing`: creates the application with
    /// `fields`, or updates the existing one. Idempotent, so a retry after a crash cannot make a second app.
    pub async fn upsert_application(
        &self,
        unique_name: &str,
        fields: &Value,
    ) -> Result<Upserted, AzureError> {
        self.upsert_application_id(unique_name, fields)
            .await
            .map(|(upserted, _)| upserted)
    }

    /// As `upsert_application`, with the new application's object id when it was created (from the 201's
    /// body): something to delete by even while reads do not show it yet.
    pub async fn upsert_application_id(
        &self,
        unique_name: &str,
        fields: &Value,
    ) -> Result<(Upserted, Option<String>), AzureError> {
        let path = format!("/applications(uniqueName='{}')", odata_quote(unique_name));
        let (status, body) = self
            .send(
                "graph upsert application",
                Method::PATCH,
                &path,
                Some(fields),
                true,
            )
            .await?;
        let id = body.and_then(|b| b["id"].as_str().map(str::to_string));
        Ok((Upserted::from(status), id))
    }

    /// PATCH /applications/{id}: updates an application the operator found rather than named (an adopted one).
    pub async fn update_application(
        &self,
        object_id: &str,
        fields: &Value,
    ) -> Result<(), AzureError> {
        self.send(
            "graph update application",
            Method::PATCH,
            &format!("/applications/{object_id}"),
            Some(fields),
            false,
        )
        .await?;
        Ok(())
    }

    /// One page of a delta query over `set` ("applications" or "servicePrincipals"): the first page of a
    /// first round when `link` is None, else the page a nextLink or deltaLink names. Only ids are selected:
    /// the operator needs to know what changed, not how.
    pub async fn delta(&self, set: &str, link: Option<&str>) -> Result<DeltaPage, AzureError> {
        const OP: &str = "graph delta";
        let path = match link {
            Some(link) => self
                .service
                .path_of(link)
                .ok_or_else(|| AzureError::Unexpected {
                    operation: OP,
                    detail: "delta link points to another host".into(),
                })?
                .to_string(),
            None => format!("/{set}/delta?$select=id"),
        };
        let (_, body) = self.send(OP, Method::GET, &path, None, false).await?;
        let body = body.unwrap_or_default();
        let ids = body["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["id"].as_str().map(str::to_ascii_lowercase))
            .collect();
        let link = |key: &str| body[key].as_str().map(str::to_string);
        let next = match (link("@odata.nextLink"), link("@odata.deltaLink")) {
            (Some(next), _) => DeltaNext::Page(next),
            (None, Some(delta)) => DeltaNext::Round(delta),
            (None, None) => {
                return Err(AzureError::Unexpected {
                    operation: OP,
                    detail: "a delta page with neither nextLink nor deltaLink".into(),
                });
            }
        };
        Ok(DeltaPage { ids, next })
    }

    /// The application with this uniqueName, if it exists (and is visible to the operator).
    pub async fn application_by_unique_name(
        &self,
        unique_name: &str,
    ) -> Result<Option<Application>, AzureError> {
        self.get_opt(
            "graph get application",
            &format!("/applications(uniqueName='{}')", odata_quote(unique_name)),
        )
        .await
    }

    pub async fn application_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<Option<Application>, AzureError> {
        self.get_opt(
            "graph get application",
            &format!("/applications(appId='{}')", odata_quote(app_id)),
        )
        .await
    }

    /// POST /applications/{id}/addPassword.
    pub async fn add_password(
        &self,
        object_id: &str,
        display_name: &str,
        end: Timestamp,
    ) -> Result<NewPassword, AzureError> {
        const OP: &str = "graph addPassword";
        let body = json!({"passwordCredential": {"displayName": display_name, "endDateTime": end.to_string()}});
        let (_, value) = self
            .send(
                OP,
                Method::POST,
                &format!("/applications/{object_id}/addPassword"),
                Some(&body),
                false,
            )
            .await?;
        let value = value.ok_or_else(|| AzureError::Unexpected {
            operation: OP,
            detail: "empty body".into(),
        })?;
        let secret = value["secretText"]
            .as_str()
            .ok_or_else(|| AzureError::Unexpected {
                operation: OP,
                detail: "no secretText".into(),
            })?;
        let secret_text = Secret::new(secret.to_string());
        Ok(NewPassword {
            credential: Self::parse(OP, Some(value))?,
            secret_text,
        })
    }

    /// POST /applications/{id}/removePassword. Removing a password that is already gone is success.
    pub async fn remove_password(&self, object_id: &str, key_id: &str) -> Result<(), AzureError> {
        let body = json!({"keyId": key_id});
        match self
            .send(
                "graph removePassword",
                Method::POST,
                &format!("/applications/{object_id}/removePassword"),
                Some(&body),
                false,
            )
            .await
        {
            Err(e) if already_gone(&e, key_id) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// POST /applications/{id}/addKey (Learn, *application: addKey*): adds a certificate, proving possession of
    /// one of the application's current ones with `proof` ([`Material::proof`] of that other certificate). An
    /// application without a current certificate cannot use it: see [`Self::set_key_credentials`].
    pub async fn add_key(
        &self,
        object_id: &str,
        material: &Material,
        display_name: &str,
        end: Option<Timestamp>,
        proof: &str,
    ) -> Result<AppCredential, AzureError> {
        const OP: &str = "graph addKey";
        let body = json!({
            "keyCredential": new_key_credential(material, display_name, end),
            "passwordCredential": null,
            "proof": proof,
        });
        let (_, value) = self
            .send(
                OP,
                Method::POST,
                &format!("/applications/{object_id}/addKey"),
                Some(&body),
                false,
            )
            .await?;
        Self::parse(OP, value)
    }

    /// POST /applications/{id}/removeKey (Learn, *application: removeKey*), with a proof signed by a current
    /// certificate (it may be the one removed). Removing a key that is already gone is success.
    pub async fn remove_key(
        &self,
        object_id: &str,
        key_id: &str,
        proof: &str,
    ) -> Result<(), AzureError> {
        let body = json!({"keyId": key_id, "proof": proof});
        match self
            .send(
                "graph removeKey",
                Method::POST,
                &format!("/applications/{object_id}/removeKey"),
                Some(&body),
                false,
            )
            .await
        {
            // Graph does not document its answer for an unknown keyId; the emulator answers 400 "No key
            // credential found with keyId {id}." (lowercase id).
            Err(e) if already_gone(&e, key_id) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// PATCH /applications/{id} `{keyCredentials: [...]}` (Learn, *Update application*): the collection is
    /// replaced by the credentials in `keep` (sent as read, `key` null, which Graph keeps by keyId) and `add`
    /// (a certificate with its display name and optional end). This is how the first certificate gets on an
    /// application, since addKey needs a proof from a current one (Learn, *application: addKey*:
    /// "Applications that don't have any existing valid certificates ... use the Update application
    /// operation"), and how a certificate goes when no private key of a current one is held. The append
    /// pattern is azure-cli's `az ad app credential reset --append` (`role/custom.py`, `_reset_credential`).
    /// Entries follow Learn, *keyCredential resource type*. Needs Application.ReadWrite.OwnedBy (or All).
    pub async fn set_key_credentials(
        &self,
        object_id: &str,
        keep: &[&AppCredential],
        add: Option<NewKey<'_>>,
    ) -> Result<(), AzureError> {
        let mut entries: Vec<Value> = keep.iter().map(|k| k.kept()).collect();
        if let Some(new) = add {
            let mut entry = new_key_credential(new.material, new.display_name, new.end);
            entry["keyId"] = json!(new.key_id);
            entries.push(entry);
        }
        self.send(
            "graph update application keyCredentials",
            Method::PATCH,
            &format!("/applications/{object_id}"),
            Some(&json!({"keyCredentials": entries})),
            false,
        )
        .await?;
        Ok(())
    }

    /// PATCH /servicePrincipals(appId='…') with `Prefer: create-if-missing`, then the principal itself (a 204
    /// carries no body).
    pub async fn upsert_service_principal(
        &self,
        app_id: &str,
    ) -> Result<(Upserted, ServicePrincipal), AzureError> {
        const OP: &str = "graph upsert servicePrincipal";
        let path = format!("/servicePrincipals(appId='{}')", odata_quote(app_id));
        let (status, body) = self
            .send(OP, Method::PATCH, &path, Some(&json!({})), true)
            .await?;
        if status == StatusCode::CREATED {
            return Ok((Upserted::from(status), Self::parse(OP, body)?));
        }
        let (_, body) = self
            .send(
                "graph get servicePrincipal",
                Method::GET,
                &path,
                None,
                false,
            )
            .await?;
        Ok((Upserted::Existed, Self::parse(OP, body)?))
    }

    /// The service principal of an application, if it exists.
    pub async fn service_principal_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<Option<ServicePrincipal>, AzureError> {
        self.get_opt(
            "graph get servicePrincipal",
            &format!("/servicePrincipals(appId='{}')", odata_quote(app_id)),
        )
        .await
    }

    /// DELETE /applications/{id}: a soft delete into deleted items (the service principal goes with it).
    /// Says whether it was there: a 404 is not an error, since it may be gone already.
    pub async fn delete_application(&self, object_id: &str) -> Result<bool, AzureError> {
        match self
            .send(
                "graph delete application",
                Method::DELETE,
                &format!("/applications/{object_id}"),
                None,
                false,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(AzureError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// DELETE /directory/deletedItems/{id}: gone for good, no longer counting against the tenant's quota.
    pub async fn purge_deleted(&self, object_id: &str) -> Result<(), AzureError> {
        super::error::deleted(
            self.send(
                "graph purge deleted item",
                Method::DELETE,
                &format!("/directory/deletedItems/{object_id}"),
                None,
                false,
            )
            .await,
        )
    }

    pub async fn federated_credentials(
        &self,
        object_id: &str,
    ) -> Result<Vec<FederatedIdentityCredential>, AzureError> {
        const OP: &str = "graph list federatedIdentityCredentials";
        let (_, body) = self
            .send(
                OP,
                Method::GET,
                &format!("/applications/{object_id}/federatedIdentityCredentials"),
                None,
                false,
            )
            .await?;
        let value = body.unwrap_or(Value::Null);
        Self::parse(OP, Some(value["value"].clone()))
    }

    /// PATCH …/federatedIdentityCredentials(name='…') with `Prefer: create-if-missing`.
    pub async fn upsert_federated_credential(
        &self,
        object_id: &str,
        fic: &FederatedIdentityCredential,
    ) -> Result<Upserted, AzureError> {
        let path = format!(
            "/applications/{object_id}/federatedIdentityCredentials(name='{}')",
            odata_quote(&fic.name)
        );
        let body = serde_json::to_value(fic).expect("serializable");
        let (status, _) = self
            .send(
                "graph upsert federatedIdentityCredential",
                Method::PATCH,
                &path,
                Some(&body),
                true,
            )
            .await?;
        Ok(Upserted::from(status))
    }

    /// GET /applications?$filter=…, every page (following @odata.nextLink), with only what an expiry watch
    /// reads selected (Learn, *List applications*: `$filter`, `$select`, `$top` up to 999; paging, *Paging
    /// Microsoft Graph data in your app*). Stops after `max` applications; the bool says whether more matched.
    /// Needs Application.Read.All: under Application.ReadWrite.OwnedBy alone the emulator lists only the owned
    /// applications (a report on Microsoft's tech community says Graph lists them all), so callers check the
    /// grant with [`GraphClient::application_read_granted`] rather than trust the answer's size.
    pub async fn applications_matching(
        &self,
        filter: &str,
        max: usize,
    ) -> Result<(Vec<Application>, bool), AzureError> {
        self.applications_paged(filter, max, 100).await
    }

    /// As [`GraphClient::applications_matching`], `top` to a page.
    async fn applications_paged(
        &self,
        filter: &str,
        max: usize,
        top: usize,
    ) -> Result<(Vec<Application>, bool), AzureError> {
        const OP: &str = "graph list applications";
        let mut path = format!(
            "/applications?$filter={}&$select={WATCH_SELECT}&$top={top}",
            percent_encode(filter)
        );
        let mut found = vec![];
        loop {
            let (_, body) = self.send(OP, Method::GET, &path, None, false).await?;
            let body = body.unwrap_or_default();
            let page: Vec<Application> = Self::parse(OP, Some(body["value"].clone()))?;
            found.extend(page);
            if found.len() > max {
                found.truncate(max);
                return Ok((found, true));
            }
            let Some(next) = body["@odata.nextLink"].as_str() else {
                return Ok((found, false));
            };
            path = self
                .service
                .path_of(next)
                .ok_or_else(|| AzureError::Unexpected {
                    operation: OP,
                    detail: "a nextLink to another host".into(),
                })?
                .to_string();
        }
    }

    /// Whether the operator's Graph token carries an application permission that reads every application
    /// (Application.Read.All, Application.ReadWrite.All, Directory.Read.All or Directory.ReadWrite.All, as
    /// Learn's *List applications* and *Get application* list them). None when the token does not say: it is
    /// not a JWT, or it carries directory roles (`wids`), which may grant reads too.
    pub async fn application_read_granted(&self) -> Result<Option<bool>, AzureError> {
        let Some(claims) = self.service.token_claims().await? else {
            return Ok(None);
        };
        let roles: Vec<&str> = claims["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let granted = roles.iter().any(|r| {
            READ_ALL_APPLICATIONS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(r))
        });
        let directory_roles = claims["wids"].as_array().is_some_and(|w| !w.is_empty());
        Ok(if granted || !directory_roles {
            Some(granted)
        } else {
            None
        })
    }

    pub async fn delete_federated_credential(
        &self,
        object_id: &str,
        name: &str,
    ) -> Result<(), AzureError> {
        let path = format!(
            "/applications/{object_id}/federatedIdentityCredentials(name='{}')",
            odata_quote(name)
        );
        super::error::deleted(
            self.send(
                "graph delete federatedIdentityCredential",
                Method::DELETE,
                &path,
                None,
                false,
            )
            .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::{error::ErrorClass, testing::TestAzure};

    /// The operator's Graph client against an in-process emulator.
    async fn client() -> (GraphClient, TestAzure) {
        let azure = TestAzure::start().await;
        (
            GraphClient::new(azure.http.clone(), azure.credential.clone(), &azure.cloud),
            azure,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_filtered_list_follows_every_page_and_the_token_says_what_may_be_read() {
        let (graph, _azure) = client().await;
        // The emulator's operator holds Application.ReadWrite.OwnedBy only.
        assert_eq!(graph.application_read_granted().await.unwrap(), Some(false));
        for name in ["legacy-a", "legacy-b", "legacy-c", "other"] {
            graph
                .upsert_application(&format!("eo-watch-{name}"), &json!({"displayName": name}))
                .await
                .unwrap();
        }
        let filter = "startswith(displayName,'legacy-')";
        // Pages of two: the third application is on the nextLink's page.
        let (apps, more) = graph.applications_paged(filter, 500, 2).await.unwrap();
        let mut names: Vec<&str> = apps.iter().map(|a| a.display_name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["legacy-a", "legacy-b", "legacy-c"]);
        assert!(!more);
        let (apps, more) = graph.applications_paged(filter, 2, 2).await.unwrap();
        assert!(
            apps.len() == 2 && more,
            "stops at the maximum and says more matched"
        );
        let refused = graph
            .applications_matching("endswith(displayName,'x')", 500)
            .await
            .unwrap_err();
        assert!(
            matches!(refused.class(), crate::azure::error::ErrorClass::Invalid),
            "{refused}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_application_read_all_another_owners_application_is_read() {
        let (graph, azure) = client().await;
        let operator = azure_emulator::config::Config::default_seed()
            .seed
            .applications[0]
            .clone();
        let legacy = json!({"displayName": "legacy-billing", "appId": "7e7e7e7e-0000-4000-8000-000000007e7e",
            "objectId": "7e7e7e7e-0000-4000-8000-00000000a7a7", "servicePrincipalId": "7e7e7e7e-0000-4000-8000-00000000b7b7",
            "clientSecrets": ["not-for-the-operator"]});
        // Seeding the operator's application again adds to its grants.
        let grant = json!({"displayName": operator.display_name, "appId": operator.app_id,
            "objectId": operator.object_id, "servicePrincipalId": operator.service_principal_id,
            "graphPermissions": ["Application.Read.All"]});
        let seeded = azure
            .http
            .post(format!("{}/_emulator/seed", azure.emulator.base_url))
            .json(&json!({ "applications": [legacy, grant] }))
            .send()
            .await
            .unwrap();
        assert!(seeded.status().is_success());
        // Before the first Graph call, so that the credential's first token already carries the grant.
        assert_eq!(graph.application_read_granted().await.unwrap(), Some(true));
        let app = graph
            .application_by_app_id("7e7e7e7e-0000-4000-8000-000000007e7e")
            .await
            .unwrap()
            .expect("readable with Application.Read.All, though not owned");
        assert_eq!(app.password_credentials.len(), 1);
        let (listed, _) = graph
            .applications_matching("startswith(displayName,'legacy-')", 500)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].password_credentials[0].end_date_time.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn application_lifecycle_is_idempotent_and_secrets_stay_hidden() {
        let (graph, _azure) = client().await;
        let name = "eo-cluster-ns-it's-name";
        let fields = json!({"displayName": "app", "tags": ["entra-operator"]});
        assert_eq!(
            graph.upsert_application(name, &fields).await.unwrap(),
            Upserted::Created
        );
        assert_eq!(
            graph.upsert_application(name, &fields).await.unwrap(),
            Upserted::Existed,
            "a retry finds it"
        );
        let app = graph
            .application_by_unique_name(name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(app.unique_name.as_deref(), Some(name));
        assert_eq!(
            graph
                .application_by_app_id(&app.app_id)
                .await
                .unwrap()
                .unwrap()
                .id,
            app.id
        );
        assert!(
            graph
                .application_by_unique_name("missing")
                .await
                .unwrap()
                .is_none()
        );

        let (created, sp) = graph.upsert_service_principal(&app.app_id).await.unwrap();
        assert_eq!(created, Upserted::Created);
        let (again, same) = graph.upsert_service_principal(&app.app_id).await.unwrap();
        assert_eq!((again, same.id), (Upserted::Existed, sp.id));

        let end = Timestamp::now() + jiff::SignedDuration::from_hours(24);
        let pw = graph
            .add_password(&app.id, "entra-operator/ns/name/1", end)
            .await
            .unwrap();
        assert_eq!(
            pw.credential.display_name.as_deref(),
            Some("entra-operator/ns/name/1")
        );
        assert_eq!(
            pw.credential.hint.as_deref(),
            Some(&pw.secret_text.secret()[..3])
        );
        assert!(
            !format!("{pw:?}").contains(pw.secret_text.secret()),
            "Debug never prints the secret"
        );
        let listed = graph
            .application_by_unique_name(name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(listed.password_credentials.len(), 1);
        graph
            .remove_password(&app.id, &pw.credential.key_id)
            .await
            .unwrap();
        graph
            .remove_password(&app.id, &pw.credential.key_id)
            .await
            .unwrap();

        let fic = FederatedIdentityCredential {
            id: String::new(),
            name: "cluster".into(),
            issuer: "https://oidc.example/".into(),
            subject: "system:serviceaccount:ns:app".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
        };
        assert_eq!(
            graph
                .upsert_federated_credential(&app.id, &fic)
                .await
                .unwrap(),
            Upserted::Created
        );
        assert_eq!(
            graph.federated_credentials(&app.id).await.unwrap()[0].subject,
            fic.subject
        );
        graph
            .delete_federated_credential(&app.id, "cluster")
            .await
            .unwrap();
        assert!(
            graph
                .federated_credentials(&app.id)
                .await
                .unwrap()
                .is_empty()
        );

        graph.delete_application(&app.id).await.unwrap();
        assert!(
            graph
                .application_by_unique_name(name)
                .await
                .unwrap()
                .is_none()
        );
        graph.purge_deleted(&app.id).await.unwrap();
        graph.delete_application(&app.id).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificates_get_on_by_patch_then_roll_by_proof() {
        let (graph, _azure) = client().await;
        let name = "eo-cluster-ns-certs";
        let (_, id) = graph
            .upsert_application_id(name, &json!({"displayName": "certs"}))
            .await
            .unwrap();
        let id = id.unwrap();
        let now = Timestamp::now();
        let cert = |cn: &str| {
            Material::generate(
                cn,
                now - jiff::SignedDuration::from_mins(5),
                now + jiff::SignedDuration::from_hours(48),
            )
            .unwrap()
        };
        let read = async || {
            graph
                .application_by_unique_name(name)
                .await
                .unwrap()
                .unwrap()
                .key_credentials
        };
        let first = cert("first");
        // Without a current certificate there is nothing to prove possession with: addKey is refused.
        let refused = graph
            .add_key(&id, &first, "first", None, &first.proof(&id, now).unwrap())
            .await
            .unwrap_err();
        assert_eq!(refused.class(), ErrorClass::Invalid, "{refused}");
        let end = now + jiff::SignedDuration::from_hours(24);
        graph
            .set_key_credentials(
                &id,
                &[],
                Some(NewKey {
                    material: &first,
                    display_name: "entra-operator/1",
                    end: Some(end),
                    key_id: "0b0b0b0b-0000-4000-8000-000000000001",
                }),
            )
            .await
            .unwrap();
        let keys = read().await;
        assert_eq!(keys.len(), 1);
        let one = keys[0].clone();
        assert_eq!(
            one.key_id, "0b0b0b0b-0000-4000-8000-000000000001",
            "the key id chosen"
        );
        assert_eq!(
            one.custom_key_identifier.as_deref(),
            Some(first.thumbprint().as_str())
        );
        assert_eq!(one.display_name.as_deref(), Some("entra-operator/1"));
        assert_eq!(
            one.end_date_time,
            Some(Timestamp::from_second(end.as_second()).unwrap()),
            "clamped to end, in whole seconds"
        );
        assert_eq!(one.start_date_time, Some(first.not_before()));

        let second = cert("second");
        let two = graph
            .add_key(
                &id,
                &second,
                "entra-operator/2",
                None,
                &first.proof(&id, now).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            two.custom_key_identifier.as_deref(),
            Some(second.thumbprint().as_str())
        );
        assert_eq!(
            two.end_date_time,
            Some(second.not_after()),
            "the certificate's own end"
        );
        assert_eq!(read().await.len(), 2);

        let proof = second.proof(&id, now).unwrap();
        graph.remove_key(&id, &one.key_id, &proof).await.unwrap();
        graph
            .remove_key(&id, &one.key_id.to_ascii_uppercase(), &proof)
            .await
            .unwrap();
        let keys = read().await;
        assert_eq!(keys, vec![two.clone()]);
        // A proof signed by a certificate no longer on the application is refused.
        let stale = graph
            .remove_key(&id, &two.key_id, &first.proof(&id, now).unwrap())
            .await
            .unwrap_err();
        assert_eq!(stale.class(), ErrorClass::Invalid, "{stale}");

        // PATCH keeps what it is told to keep (without its key) and adds the new one; what is not kept goes.
        let third = cert("third");
        graph
            .set_key_credentials(
                &id,
                &[&two],
                Some(NewKey {
                    material: &third,
                    display_name: "entra-operator/3",
                    end: None,
                    key_id: "0b0b0b0b-0000-4000-8000-000000000003",
                }),
            )
            .await
            .unwrap();
        let keys = read().await;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], two, "kept as it was");
        assert_eq!(
            keys[1].custom_key_identifier.as_deref(),
            Some(third.thumbprint().as_str())
        );
        graph
            .set_key_credentials(&id, &[&keys[1]], None)
            .await
            .unwrap();
        let left = read().await;
        assert_eq!(left, vec![keys[1].clone()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_carry_graphs_code_and_what_to_do() {
        let (graph, _azure) = client().await;
        // No such application.
        let err = graph
            .add_password(
                "5a5a5a5a-0000-4000-8000-0000000000ff",
                "x",
                Timestamp::now() + jiff::SignedDuration::from_hours(1),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
        let foreign = json!({"displayName": "x"});
        graph.upsert_application("mine", &foreign).await.unwrap();
        let err = graph
            .upsert_application("mine", &json!({"displayName": 7}))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("Request_BadRequest", ErrorClass::Invalid),
            "{err}"
        );
    }
}
