//! Microsoft.Authorization (2022-04-01), for the RoleDelegation controller: role definitions by name or id,
//! custom roles, and role assignments PUT on a deterministic name. Scopes and assignment ids come in typed, so
//! every path is built from a parsed id.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::ArmClient;
use crate::azure::{
    error::AzureError,
    http::parse,
    scope::{RoleAssignmentId, Scope},
};

const API_VERSION: &str = "2022-04-01";

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

impl ArmClient {
    /// DELETE `path`; what is already gone counts as deleted (ARM answers 404 for it, or 204).
    async fn delete(&self, operation: &'static str, path: &str) -> Result<(), AzureError> {
        crate::azure::error::deleted(
            self.service
                .send(operation, Method::DELETE, path, None, &[])
                .await,
        )
    }

    /// The role named `role_name` as the scope sees it (built-in or a custom role assignable there). `scope` is
    /// a parsed [`Scope`]'s text (the role cache keys on it).
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
            scope.trim_end_matches('/')
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
        id: &RoleAssignmentId,
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
        let path = format!("{id}?api-version={API_VERSION}");
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
        scope: &Scope,
        guid: &str,
    ) -> Result<Option<RoleDefinition>, AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={API_VERSION}",
            scope
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
        scope: &Scope,
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
            scope
        );
        let (_, body) = self
            .service
            .send(OP, Method::PUT, &path, Some(&body), &[])
            .await?;
        parse(OP, body)
    }

    /// DELETE a custom role; one already gone is success. ARM refuses (409 RoleDefinitionHasAssignments) while
    /// any assignment uses it.
    pub async fn delete_role_definition(
        &self,
        scope: &Scope,
        guid: &str,
    ) -> Result<(), AzureError> {
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={API_VERSION}",
            scope
        );
        self.delete("arm delete roleDefinition", &path).await
    }

    /// The assignments of `principal_id` at, above or below `scope`.
    pub async fn role_assignments_of(
        &self,
        scope: &Scope,
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
            scope
        );
        let (_, body) = self.service.send(OP, Method::GET, &path, None, &[]).await?;
        parse(OP, body.map(|b| b["value"].clone()))
    }

    /// Every role assignment at, above or below `scope` (a subscription, for drift detection), following
    /// nextLink through all pages.
    pub async fn role_assignments_in(
        &self,
        scope: &Scope,
    ) -> Result<Vec<RoleAssignment>, AzureError> {
        const OP: &str = "arm list roleAssignments";
        let mut path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?api-version={API_VERSION}",
            scope
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
        id: &RoleAssignmentId,
    ) -> Result<Option<RoleAssignment>, AzureError> {
        let path = format!("{id}?api-version={API_VERSION}");
        self.service.get_opt("arm get roleAssignment", &path).await
    }

    /// DELETE; an assignment already gone is success.
    pub async fn delete_role_assignment(&self, id: &RoleAssignmentId) -> Result<(), AzureError> {
        let path = format!("{id}?api-version={API_VERSION}");
        self.delete("arm delete roleAssignment", &path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        azure::{
            error::ErrorClass, graph::GraphClient, scope::RoleDefinitionId, testing::TestAzure,
        },
        controller::naming,
    };

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";

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

        let scope = Scope::parse(&format!(
            "{SUB}/resourceGroups/rg-shared/providers/Microsoft.ContainerRegistry/registries/contosoacr"
        ))
        .unwrap();
        let role = arm
            .role_definition_by_name(scope.as_str(), "AcrPull")
            .await
            .unwrap()
            .unwrap();
        let guid = |id: &str| RoleDefinitionId::parse(id).unwrap().guid().to_string();
        assert_eq!(guid(&role.id), ACR_PULL);
        assert!(
            arm.role_definition_by_name(scope.as_str(), "No Such Role")
                .await
                .unwrap()
                .is_none()
        );

        let name = naming::legacy_assignment_name(&scope, &guid(&role.id), &principal.id);
        let id = RoleAssignmentId::new(scope.clone(), &name);
        let grant = Grant {
            role_definition_id: &role.id,
            principal_id: &principal.id,
            condition: None,
            condition_version: None,
            description: Some("test"),
        };
        let created = arm.put_role_assignment(&id, &grant).await.unwrap();
        assert_eq!(created.name, name);
        assert_eq!(guid(&created.properties.role_definition_id), ACR_PULL);
        let again = arm.put_role_assignment(&id, &grant).await.unwrap();
        assert_eq!(
            again.id, created.id,
            "the same PUT finds the same assignment"
        );
        assert_eq!(
            arm.role_assignment(&id)
                .await
                .unwrap()
                .unwrap()
                .properties
                .principal_id,
            principal.id
        );

        let other = RoleAssignmentId::new(scope.clone(), &uuid::Uuid::new_v4().to_string());
        let err = arm.put_role_assignment(&other, &grant).await.unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("RoleAssignmentExists", ErrorClass::Conflict),
            "{err}"
        );
        let missing = Scope::parse(&format!("{SUB}/resourceGroups/nope")).unwrap();
        let err = arm
            .put_role_assignment(&RoleAssignmentId::new(missing, other.name()), &grant)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("ResourceGroupNotFound", ErrorClass::NotFound),
            "{err}"
        );

        arm.delete_role_assignment(&id).await.unwrap();
        arm.delete_role_assignment(&id).await.unwrap();
        assert!(arm.role_assignment(&id).await.unwrap().is_none());
        azure.emulator.shutdown().await.unwrap();
    }
}
