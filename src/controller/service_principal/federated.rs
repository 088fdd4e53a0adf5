//! The application's federated credentials made the spec's, decided purely. On an application created for
//! this object every other credential goes; on an adopted one only those this object added before (its
//! status lists them), so that credentials someone else put there survive, and one of the same name as a
//! spec entry that this object did not add is a Conflict, never overwritten.

use super::Error;
use crate::{api::ServicePrincipal, azure::graph::FederatedIdentityCredential};

/// The writes that make the application's federated credentials the spec's, in order.
#[derive(Debug, Default, PartialEq)]
pub struct FederatedPlan {
    /// On an adopted application, the names this object will hold there, written to status before any new
    /// one is created: a crash right after the create must not leave one it would no longer recognise as its own.
    pub record: Option<Vec<String>>,
    /// Created or updated: the spec's entries the application does not have as they are.
    pub upsert: Vec<FederatedIdentityCredential>,
    /// Removed (by name): this object's credentials the spec no longer lists.
    pub delete: Vec<String>,
    /// The names this object holds there afterwards: every one of the spec's (a foreign one of the same name
    /// stops the plan).
    pub names: Vec<String>,
}

/// The plan for the application `app_id`, whose credentials are `current`; `all_ours`: created for this
/// object (every credential on it is its own).
pub fn plan(
    sp: &ServicePrincipal,
    app_id: &str,
    current: &[FederatedIdentityCredential],
    all_ours: bool,
) -> Result<FederatedPlan, Error> {
    let added = added_credentials(sp);
    let ours = |name: &str| all_ours || added.iter().any(|n| n.eq_ignore_ascii_case(name));
    let mut record = None;
    if !all_ours {
        // Checked by the adoption before any write; checked again since this is where it would happen.
        if let Some(message) = foreign_credential(sp, app_id, current) {
            return Err(Error::Conflict(message));
        }
        let new: Vec<&String> = sp
            .spec
            .federated_credentials
            .iter()
            .map(|f| &f.name)
            .filter(|n| !ours(n))
            .collect();
        if !new.is_empty() {
            let mut names = added.to_vec();
            names.extend(new.into_iter().cloned());
            record = Some(names);
        }
    }
    let upsert = sp
        .spec
        .federated_credentials
        .iter()
        .map(|want| FederatedIdentityCredential {
            id: String::new(),
            name: want.name.clone(),
            issuer: want.issuer.clone(),
            subject: want.subject.clone(),
            audiences: want.audiences.clone(),
            description: want.description.clone(),
        })
        .filter(|desired| {
            !current.iter().any(|c| {
                c.name == desired.name
                    && c.issuer == desired.issuer
                    && c.subject == desired.subject
                    && c.audiences == desired.audiences
            })
        })
        .collect();
    let delete = current
        .iter()
        .filter(|c| {
            !sp.spec
                .federated_credentials
                .iter()
                .any(|w| w.name.eq_ignore_ascii_case(&c.name))
                && ours(&c.name)
        })
        .map(|c| c.name.clone())
        .collect();
    Ok(FederatedPlan {
        record,
        upsert,
        delete,
        names: sp
            .spec
            .federated_credentials
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    })
}

/// On an adopted application: the first of spec.federatedCredentials whose name the application already has
/// for a credential this object did not add (status lists what it added). Entra compares names without case.
pub fn foreign_credential(
    sp: &ServicePrincipal,
    app_id: &str,
    current: &[FederatedIdentityCredential],
) -> Option<String> {
    let added = added_credentials(sp);
    sp.spec
        .federated_credentials
        .iter()
        .enumerate()
        .find(|(_, want)| {
            current.iter().any(|c| c.name.eq_ignore_ascii_case(&want.name))
                && !added.iter().any(|n| n.eq_ignore_ascii_case(&want.name))
        })
        .map(|(i, want)| {
            format!(
                "spec.federatedCredentials[{i}].name: application {app_id} already has a federated credential \
                 named {} that this ServicePrincipal did not add; it is left untouched",
                want.name
            )
        })
}

/// The federated credentials this object added (to an adopted application), as its status records them.
fn added_credentials(sp: &ServicePrincipal) -> &[String] {
    sp.status
        .as_ref()
        .map(|s| s.federated_credentials.as_slice())
        .unwrap_or_default()
}
