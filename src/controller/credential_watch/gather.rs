//! The Graph reads of a CredentialWatch: the grant first (from the operator's own token), then each
//! application named by appId, then those the filter matches. Reads only: nothing here writes to Azure.

use super::{Error, plan::Read};
use crate::{
    api::credential_watch::CredentialWatchSpec,
    azure::{
        error::{AzureError, ErrorClass},
        graph::GraphClient,
    },
};

/// The most applications one filter watches: five pages of 100, about 10 of Graph's resource units each.
pub const MAX_FILTERED: usize = 500;

/// Reads what `spec` selects.
pub async fn gather(graph: &GraphClient, spec: &CredentialWatchSpec) -> Result<Read, Error> {
    // The token says whether the operator may read applications it does not own. Asked first because,
    // without the grant, a list under Application.ReadWrite.OwnedBy can answer with the owned applications
    // alone (the emulator does) instead of refusing: a short list that looks complete.
    if graph.application_read_granted().await? == Some(false) {
        return Err(Error::NotGranted);
    }
    let mut read = Read::default();
    for app_id in &spec.applications {
        let app = graph.application_by_app_id(app_id).await.map_err(refused)?;
        read.by_app_id.push((app_id.clone(), app));
    }
    if let Some(filter) = &spec.filter {
        let (apps, truncated) = graph
            .applications_matching(filter, MAX_FILTERED)
            .await
            .map_err(|e| match e.class() {
                ErrorClass::Invalid => Error::InvalidFilter(e),
                _ => refused(e),
            })?;
        read.filtered = apps;
        read.truncated = truncated;
    }
    Ok(read)
}

/// Graph's 403 on a read is the missing grant (with OwnedBy alone, someone else's application is refused).
fn refused(e: AzureError) -> Error {
    match e.class() {
        ErrorClass::Forbidden => Error::NotGranted,
        _ => Error::Azure(e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::azure::testing::TestAzure;

    const LEGACY: &str = "7e7e7e7e-0000-4000-8000-000000007e7e";
    const UNKNOWN: &str = "00000000-0000-4000-8000-0000000000ff";

    fn spec(applications: &[&str], filter: Option<&str>) -> CredentialWatchSpec {
        serde_json::from_value(json!({"applications": applications, "filter": filter})).unwrap()
    }

    /// An emulator holding an application the operator does not own, and a client of it whose first token
    /// carries `permissions` beside the default seed's OwnedBy.
    async fn azure_with(permissions: &[&str]) -> (GraphClient, TestAzure) {
        let azure = TestAzure::start().await;
        let operator = azure_emulator::config::Config::default_seed()
            .seed
            .applications[0]
            .clone();
        let seeded = azure
            .http
            .post(format!("{}/_emulator/seed", azure.emulator.base_url))
            .json(&json!({"applications": [
                {"displayName": "legacy-billing", "appId": LEGACY, "objectId": "7e7e7e7e-0000-4000-8000-00000000a7a7",
                 "servicePrincipalId": "7e7e7e7e-0000-4000-8000-00000000b7b7", "clientSecrets": ["s"]},
                {"displayName": operator.display_name, "appId": operator.app_id, "objectId": operator.object_id,
                 "servicePrincipalId": operator.service_principal_id, "graphPermissions": permissions},
            ]}))
            .send()
            .await
            .unwrap();
        assert!(seeded.status().is_success());
        let graph = GraphClient::new(azure.http.clone(), azure.credential.clone(), &azure.cloud);
        (graph, azure)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_read_grant_nothing_is_read_and_the_watch_says_so() {
        let (graph, _azure) = azure_with(&[]).await;
        // Even an application the operator owns: the watch's answer must not depend on who owns what.
        let owned = "5a5a5a5a-0000-4000-8000-000000005a5a";
        let err = gather(
            &graph,
            &spec(&[owned], Some("startswith(displayName,'legacy-')")),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NotGranted), "{err}");
        assert!(err.to_string().contains("Application.Read.All"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_application_read_all_named_and_filtered_applications_are_read() {
        let (graph, _azure) = azure_with(&["Application.Read.All"]).await;
        let read = gather(
            &graph,
            &spec(
                &[LEGACY, UNKNOWN],
                Some("startswith(displayName,'legacy-')"),
            ),
        )
        .await
        .unwrap();
        assert_eq!(read.by_app_id.len(), 2);
        let legacy = read.by_app_id[0].1.as_ref().expect("not owned, still read");
        assert_eq!(legacy.password_credentials.len(), 1);
        assert!(
            read.by_app_id[1].1.is_none(),
            "an unknown appId is no error"
        );
        assert_eq!(read.filtered.len(), 1);
        assert!(!read.truncated);

        let err = gather(&graph, &spec(&[], Some("endswith(displayName,'x')")))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidFilter(_)), "{err}");
    }
}
