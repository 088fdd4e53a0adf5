//! The Azure Resource Manager client: one authenticated [`ArmClient`] whose calls are grouped by the resource
//! provider they address, each in its own file:
//!
//! - `authorization`: Microsoft.Authorization 2022-04-01, the RoleDelegation controller's role definitions (by
//!   name or id, custom roles) and role assignments (PUT on a deterministic name);
//! - `aks`: Microsoft.ContainerService managed clusters, the CredentialRotation controller's
//!   resetServicePrincipalProfile and its long-running operation.
//!
//! ARM ids go in typed ([`crate::azure::scope`]), so that no path here is built from unchecked text.

mod aks;
mod authorization;

use std::sync::Arc;

use azure_core::credentials::TokenCredential;

use super::{Cloud, http::Service};

pub use aks::{ManagedCluster, ManagedClusterProperties, Operation, ServicePrincipalProfile};
pub use authorization::{
    CustomRoleDefinition, Grant, Permission, RoleAssignment, RoleAssignmentProperties,
    RoleDefinition, RoleDefinitionProperties,
};

#[derive(Clone)]
pub struct ArmClient {
    service: Service,
}

impl ArmClient {
    pub fn new(http: reqwest::Client, credential: Arc<dyn TokenCredential>, cloud: &Cloud) -> Self {
        ArmClient {
            service: Service::new(
                http,
                credential,
                &cloud.resource_manager_endpoint,
                &cloud.resource_manager_scope,
                "arm",
                "x-ms-request-id",
            ),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::metrics::Metrics>) -> Self {
        self.service = self.service.with_metrics(metrics);
        self
    }
}
