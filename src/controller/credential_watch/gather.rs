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
