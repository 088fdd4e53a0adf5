//! The Azure Resource Manager calls the RoleDelegation controller makes (Microsoft.Authorization 2022-04-01):
//! role definitions by name or id, custom roles, and role assignments PUT on a deterministic name.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{
    Cloud,
    error::AzureError,
    http::{Service, parse},
};

const API_VERSION: &str = "2022-04-01";
const AKS_API_VERSION: &str = "2025-01-01";

/// Where a long-running operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    InProgress,
    Succeeded,
    Failed(String),
}

#[derive(Clone)]
pub struct ArmClient {
    service: Service,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RoleDefinition {
    /// The definition's ARM id.
    pub id: String,
    /// Its GUID.
    pub name: String,
    pub properties: RoleDefinitionProperties,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionProperties {
    pub role_name: String,
    #[serde(rename = "type", default)]
    pub role_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

/// One permission block of a role definition.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

/// A custom role to define.
pub struct CustomRoleDefinition<'a> {
    pub role_name: &'a str,
    pub description: &'a str,
    pub permission: Permission,
    pub assignable_scopes: &'a [String],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RoleAssignment {
    pub id: String,
    pub name: String,
    pub properties: RoleAssignmentProperties,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentProperties {
    pub role_definition_id: String,
    pub principal_id: String,
    pub scope: String,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What a role assignment grants.
pub struct Grant<'a> {
    pub role_definition_id: &'a str,
    pub principal_id: &'a str,
    pub condition: Option<&'a str>,
    pub condition_version: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// The scope part of a path: ARM ids start with '/', the tenant root is "/" and adds nothing.
fn under(scope: &str) -> &str {
    scope.trim_end_matches('/')
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

    /// The role named `role_name` as the scope sees it (built-in or a custom role assignable there).
    pub async fn role_definition_by_name(
        &self,
        scope: &str,
        role_name: &str,
    ) -> Result<Option<RoleDefinition>, AzureError> {
        const OP: &str = "arm list roleDefinitions";
        let filter = format!("roleName eq '{}'", role_name.replace('\'', "''"));
        let query = serde_urlencoded::to_string([
            ("$filter", filter.as_str()),
            ("api-version", API_VERSION),
        ])
        .expect("encodable");
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions?{query}",
            under(scope)
        );
        let (_, body) = self.service.send(OP, Method::GET, &path, None, &[]).await?;
        let list: Vec<RoleDefinition> = parse(OP, body.map(|b| b["value"].clone()))?;
        Ok(list
            .into_iter()
            .find(|d| d.properties.role_name.eq_ignore_ascii_case(role_name)))
    }

    /// PUT a role assignment under `name` (a GUID the caller derives, so that a retry finds the same one).
    /// `principalType: ServicePrincipal` is always sent: it is what lets Azure accept a principal that has not
    /// replicated everywhere yet.
    pub async fn put_role_assignment(
        &self,
        scope: &str,
        name: &str,
        grant: &Grant<'_>,
    ) -> Result<RoleAssignment, AzureError> {
        const OP: &str = "arm put roleAssignment";
        let mut properties = json!({
            "roleDefinitionId": grant.role_definition_id,
            "principalId": grant.principal_id,
            "principalType": "ServicePrincipal",
        });
        if let Some(c) = grant.condition {
            properties["condition"] = json!(c);
            properties["conditionVersion"] = json!(grant.condition_version.unwrap_or("2.0"));
        }
        if let Some(d) = grant.description {
            properties["description"] = json!(d);
        }
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version={API_VERSION}",
            under(scope)
        );
        let (_, body) = self
            .service
            .send(
                OP,
                Method::PUT,
                &path,
                Some(&json!({"properties": properties})),
                &[],
            )
            .await?;
        parse(OP, body)
    }

    /// The role definition with this GUID as `scope` sees it; None if there is none.
    pub async fn role_definition(
        &self,
        scope: &str,
        guid: &str,
    ) -> Result<Option<RoleDefinition>, AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={API_VERSION}",
            under(scope)
        );
        const OP: &str = "arm get roleDefinition";
        match self.service.send(OP, Method::GET, &path, None, &[]).await {
            Ok((_, body)) => parse(OP, body).map(Some),
            // Only a missing definition is None: a missing scope (ResourceGroupNotFound ...) is an error.
            Err(AzureError::Api { code, .. }) if code == "RoleDefinitionDoesNotExist" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PUT a custom role under `guid` at `scope` (one of its assignable scopes); creates or updates it.
    pub async fn put_role_definition(
        &self,
        scope: &str,
        guid: &str,
        role: &CustomRoleDefinition<'_>,
    ) -> Result<RoleDefinition, AzureError> {
        const OP: &str = "arm put roleDefinition";
        let p = &role.permission;
        let body = json!({"properties": {
            "roleName": role.role_name,
            "description": role.description,
            "type": "CustomRole",
            "permissions": [{
                "actions": p.actions,
                "notActions": p.not_actions,
                "dataActions": p.data_actions,
                "notDataActions": p.not_data_actions,
            }],
            "assignableScopes": role.assignable_scopes,
        }});
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={API_VERSION}",
            under(scope)
        );
        let (_, body) = self
            .service
            .send(OP, Method::PUT, &path, Some(&body), &[])
            .await?;
        parse(OP, body)
    }

    /// DELETE a custom role; one already gone is success. ARM refuses (409 RoleDefinitionHasAssignments) while
    /// any assignment uses it.
    pub async fn delete_role_definition(&self, scope: &str, guid: &str) -> Result<(), AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={API_VERSION}",
            under(scope)
        );
        match self
            .service
            .send(
                "arm delete roleDefinition",
                Method::DELETE,
                &path,
                None,
                &[],
            )
            .await
        {
            Ok(_) | Err(AzureError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The assignments of `principal_id` at, above or below `scope`.
    pub async fn role_assignments_of(
        &self,
        scope: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, AzureError> {
        const OP: &str = "arm list roleAssignments";
        let filter = format!("principalId eq '{principal_id}'");
        let query = serde_urlencoded::to_string([
            ("$filter", filter.as_str()),
            ("api-version", API_VERSION),
        ])
        .expect("encodable");
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?{query}",
            under(scope)
        );
        let (_, body) = self.service.send(OP, Method::GET, &path, None, &[]).await?;
        parse(OP, body.map(|b| b["value"].clone()))
    }

    /// Every role assignment at, above or below `scope` (a subscription, for drift detection), following
    /// nextLink through all pages.
    pub async fn role_assignments_in(
        &self,
        scope: &str,
    ) -> Result<Vec<RoleAssignment>, AzureError> {
        const OP: &str = "arm list roleAssignments";
        let mut path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?api-version={API_VERSION}",
            under(scope)
        );
        let mut all = vec![];
        loop {
            let (_, body) = self.service.send(OP, Method::GET, &path, None, &[]).await?;
            let body = body.unwrap_or_default();
            let page: Vec<RoleAssignment> = parse(OP, Some(body["value"].clone()))?;
            all.extend(page);
            match body["nextLink"].as_str() {
                Some(next) => {
                    path = self
                        .service
                        .path_of(next)
                        .ok_or_else(|| AzureError::Unexpected {
                            operation: OP,
                            detail: "nextLink points to another host".into(),
                        })?
                        .to_string()
                }
                None => return Ok(all),
            }
        }
    }

    pub async fn role_assignment(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<RoleAssignment>, AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version={API_VERSION}",
            under(scope)
        );
        self.service.get_opt("arm get roleAssignment", &path).await
    }

    /// DELETE; an assignment already gone is success.
    pub async fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<(), AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version={API_VERSION}",
            under(scope)
        );
        match self
            .service
            .send(
                "arm delete roleAssignment",
                Method::DELETE,
                &path,
                None,
                &[],
            )
            .await
        {
            Ok(_) | Err(AzureError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The legacy name of the assignment for (scope, role, principal): a UUIDv5 of the grant alone, which is what
/// operators before the tenancy boundary PUT, so that every delegation of one grant shared it. New assignments
/// are named by `naming::assignment_name` (owner included); this one is only recognised, so that an assignment
/// made under it keeps working after an upgrade (and is never deleted while another delegation records it).
pub fn assignment_name(scope: &str, role_definition_guid: &str, principal_id: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2d6c_0b1e_8f3a_4e57_a1c9_7b4d_e6f0_1a23);
    let key = format!(
        "{}|{}|{}",
        scope.trim_end_matches('/').to_ascii_lowercase(),
        role_definition_guid.to_ascii_lowercase(),
        principal_id.to_ascii_lowercase()
    );
    uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string()
}

/// What a managed cluster's GET says about the identity it runs as.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCluster {
    #[serde(default)]
    pub properties: ManagedClusterProperties,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterProperties {
    /// Absent on a cluster that runs with a managed identity (ARM then reports clientId "msi").
    #[serde(default)]
    pub service_principal_profile: Option<ServicePrincipalProfile>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipalProfile {
    #[serde(default)]
    pub client_id: String,
}

impl ArmClient {
    /// The cluster, as GET managedClusters returns it (never with a secret); None if it does not exist.
    pub async fn managed_cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<ManagedCluster>, AzureError> {
        let path = format!(
            "{}?api-version={AKS_API_VERSION}",
            cluster_id.trim_end_matches('/')
        );
        self.service.get_opt("arm get managedCluster", &path).await
    }

    /// Starts `resetServicePrincipalProfile` on an AKS cluster (`az aks update-credentials
    /// --reset-service-principal`). Returns the URL to poll, or None when ARM finished it at once (200).
    pub async fn reset_service_principal_profile(
        &self,
        cluster_id: &str,
        client_id: &str,
        secret: &str,
    ) -> Result<Option<String>, AzureError> {
        const OP: &str = "arm post resetServicePrincipalProfile";
        let path = format!(
            "{}/resetServicePrincipalProfile?api-version={AKS_API_VERSION}",
            cluster_id.trim_end_matches('/')
        );
        let body = json!({"clientId": client_id, "secret": secret});
        let (status, headers, _) = self
            .service
            .send_full(OP, Method::POST, &path, Some(&body), &[])
            .await?;
        if status == reqwest::StatusCode::OK {
            return Ok(None);
        }
        // The spec declares Location; other AKS operations send Azure-AsyncOperation too: either will do.
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        header("azure-asyncoperation")
            .or_else(|| header("location"))
            .map(Some)
            .ok_or(AzureError::Unexpected {
                operation: OP,
                detail: "202 without Location or Azure-AsyncOperation".into(),
            })
    }

    /// Polls a long-running operation by the URL ARM gave.
    pub async fn operation(&self, url: &str) -> Result<Operation, AzureError> {
        const OP: &str = "arm get operation";
        let path = self.service.path_of(url).ok_or(AzureError::Unexpected {
            operation: OP,
            detail: format!("operation URL {url} is not on the Resource Manager endpoint"),
        })?;
        match self.service.send(OP, Method::GET, path, None, &[]).await {
            // An Azure-AsyncOperation answer carries the status in its body.
            Ok((_, Some(body))) if body.get("status").is_some() => {
                Ok(match body["status"].as_str().unwrap_or_default() {
                    "Succeeded" => Operation::Succeeded,
                    "Failed" | "Canceled" => Operation::Failed(
                        body["error"]["message"]
                            .as_str()
                            .unwrap_or("the operation failed")
                            .to_string(),
                    ),
                    _ => Operation::InProgress,
                })
            }
            // A Location answer: 202 while running, 200 or 204 when done.
            Ok((reqwest::StatusCode::ACCEPTED, _)) => Ok(Operation::InProgress),
            Ok(_) => Ok(Operation::Succeeded),
            Err(AzureError::Api {
                status, message, ..
            }) if status >= 500 && !message.is_empty() => Ok(Operation::Failed(message)),
            Err(e) => Err(e),
        }
    }
}

/// The scope and name of a role assignment's ARM id ({scope}/providers/Microsoft.Authorization/roleAssignments/
/// {name}).
pub fn split_assignment_id(id: &str) -> Option<(&str, &str)> {
    const MARK: &str = "/providers/microsoft.authorization/roleassignments/";
    let at = id.to_ascii_lowercase().rfind(MARK)?;
    let name = &id[at + MARK.len()..];
    (!name.is_empty() && !name.contains('/')).then(|| (&id[..at], name))
}

/// The ARM id of the assignment `name` at `scope`.
pub fn assignment_id(scope: &str, name: &str) -> String {
    format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
        under(scope)
    )
}

/// The GUID at the end of a role definition id (or the id itself when it is a bare GUID).
pub fn definition_guid(definition_id: &str) -> &str {
    definition_id.rsplit('/').next().unwrap_or(definition_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::{error::ErrorClass, graph::GraphClient, testing::TestAzure};

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";

    #[test]
    fn assignment_names_are_stable_and_case_blind() {
        let a = assignment_name(&format!("{SUB}/resourceGroups/RG"), ACR_PULL, "P1");
        assert_eq!(
            a,
            assignment_name(
                &format!("{SUB}/resourcegroups/rg/"),
                &ACR_PULL.to_uppercase(),
                "p1"
            )
        );
        assert_ne!(
            a,
            assignment_name(&format!("{SUB}/resourceGroups/rg2"), ACR_PULL, "p1")
        );
        assert!(
            uuid::Uuid::parse_str(&a).is_ok(),
            "ARM requires a GUID name"
        );
        assert_eq!(
            split_assignment_id(&assignment_id(&format!("{SUB}/resourceGroups/rg"), &a)),
            Some((format!("{SUB}/resourceGroups/rg").as_str(), a.as_str()))
        );
        assert_eq!(split_assignment_id(SUB), None);
        assert_eq!(
            definition_guid(&format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"
            )),
            ACR_PULL
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn role_assignments_are_idempotent_and_errors_carry_arms_codes() {
        let azure = TestAzure::start().await;
        let (http, cred, cloud) = (azure.http.clone(), azure.credential.clone(), &azure.cloud);
        let graph = GraphClient::new(http.clone(), cred.clone(), cloud);
        let arm = ArmClient::new(http, cred, cloud);

        graph
            .upsert_application("grantee", &json!({"displayName": "grantee"}))
            .await
            .unwrap();
        let app = graph
            .application_by_unique_name("grantee")
            .await
            .unwrap()
            .unwrap();
        let (_, principal) = graph.upsert_service_principal(&app.app_id).await.unwrap();

        let scope = format!(
            "{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr"
        );
        let role = arm
            .role_definition_by_name(&scope, "AcrPull")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(definition_guid(&role.id), ACR_PULL);
        assert!(
            arm.role_definition_by_name(&scope, "No Such Role")
                .await
                .unwrap()
                .is_none()
        );

        let name = assignment_name(&scope, definition_guid(&role.id), &principal.id);
        let grant = Grant {
            role_definition_id: &role.id,
            principal_id: &principal.id,
            condition: None,
            condition_version: None,
            description: Some("test"),
        };
        let created = arm
            .put_role_assignment(&scope, &name, &grant)
            .await
            .unwrap();
        assert_eq!(created.name, name);
        assert_eq!(
            definition_guid(&created.properties.role_definition_id),
            ACR_PULL
        );
        let again = arm
            .put_role_assignment(&scope, &name, &grant)
            .await
            .unwrap();
        assert_eq!(
            again.id, created.id,
            "the same PUT finds the same assignment"
        );
        assert_eq!(
            arm.role_assignment(&scope, &name)
                .await
                .unwrap()
                .unwrap()
                .properties
                .principal_id,
            principal.id
        );

        let other = uuid::Uuid::new_v4().to_string();
        let err = arm
            .put_role_assignment(&scope, &other, &grant)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("RoleAssignmentExists", ErrorClass::Conflict),
            "{err}"
        );
        let missing = format!("{SUB}/resourceGroups/nope");
        let err = arm
            .put_role_assignment(&missing, &other, &grant)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("ResourceGroupNotFound", ErrorClass::NotFound),
            "{err}"
        );

        arm.delete_role_assignment(&scope, &name).await.unwrap();
        arm.delete_role_assignment(&scope, &name).await.unwrap();
        assert!(arm.role_assignment(&scope, &name).await.unwrap().is_none());
        azure.emulator.shutdown().await.unwrap();
    }
}
