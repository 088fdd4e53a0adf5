//! Microsoft.Resources as the Azure CLI meets it: the cloud's metadata (`/metadata/endpoints`, read by `az
//! cloud register` with endpoint discovery), subscriptions and tenants (listed by `az login`), and resource
//! groups (`az group list|show`). All of it comes from the seed's resource registry: a subscription is a
//! registered `/subscriptions/{id}`, a resource group a registered `/subscriptions/{id}/resourceGroups/{name}`.
//!
//! Visibility follows ARM: a subscription is listed, and can be read, only by a principal holding a role
//! assignment at, above or below it; a resource group is listed for, and readable by, a principal whose
//! roles allow `Microsoft.Resources/subscriptions/resourceGroups/read` on it.

use axum::{
    http::{Method, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

use super::{Req, at_or_above, authorization_failed, authorized};
use crate::{
    http::{arm_error, json_response},
    state::World,
};

const GROUP_READ: &str = "Microsoft.Resources/subscriptions/resourceGroups/read";
/// Where a resource group is when nothing in it says otherwise (the registry keeps ids, not locations).
pub const DEFAULT_LOCATION: &str = "westeurope";
/// ARM's own audiences, in the order ARM's metadata lists them.
const ARM_AUDIENCES: [&str; 2] = [
    "https://management.core.windows.net/",
    "https://management.azure.com/",
];

/// `GET /metadata/endpoints?api-version=2022-09-01`: one cloud whose login endpoint, Resource Manager and
/// Microsoft Graph are all this emulator. Unauthenticated, as ARM serves it. Only what the emulator serves
/// is named (no Azure AD Graph or storage): a client reads an absent endpoint as unset. Key Vault's DNS
/// suffix is the real one (`vault.azure.net`, as AzureCloud's metadata has it): vaults are reached under
/// their real names through the emulator's CONNECT proxy, so `az keyvault ... --vault-name` works.
pub fn metadata_endpoints(base: &str, tenant: &str) -> Response {
    let root = format!("{}/", base.trim_end_matches('/'));
    json_response(
        StatusCode::OK,
        &json!({
            "name": "AzureEmulator",
            "portal": root,
            "authentication": {
                "loginEndpoint": root,
                "audiences": ARM_AUDIENCES,
                "tenant": tenant,
                "identityProvider": "AAD",
            },
            "resourceManager": root,
            "microsoftGraphResourceId": root,
            "suffixes": {"keyVaultDns": "vault.azure.net"},
        }),
    )
}

/// Whether `principal` holds any role assignment at, above or below `subscription` (ARM lists such
/// subscriptions: a role on one resource group is enough to see its subscription).
fn sees_subscription(world: &World, principal: &str, subscription: &str) -> bool {
    world.arm.role_assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && (at_or_above(&a.scope, subscription) || at_or_above(subscription, &a.scope))
    })
}

/// The registered subscriptions' ids (lowercase, as the registry keeps them).
fn subscriptions(world: &World) -> Vec<String> {
    world
        .arm
        .resources
        .iter()
        .filter_map(
            |id| match id.trim_matches('/').split('/').collect::<Vec<_>>()[..] {
                ["subscriptions", s] => Some(s.to_string()),
                _ => None,
            },
        )
        .collect()
}

fn subscription_json(id: &str, tenant: &str) -> Value {
    json!({
        "id": format!("/subscriptions/{id}"),
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": id,
        "tenantId": tenant,
        "displayName": format!("Azure emulator {}", &id[..id.len().min(8)]),
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    })
}

fn subscription_not_found(req: &Req, id: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "SubscriptionNotFound",
        &format!("The subscription '{id}' could not be found."),
        &req.ids,
    )
}

fn only_get(req: &Req) -> Option<Response> {
    (req.method != Method::GET).then(|| {
        arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "The requested resource does not support http method '{}'.",
                req.method
            ),
            &req.ids,
        )
    })
}

/// `GET /subscriptions` and `GET /subscriptions/{id}`.
pub fn subscription(req: &Req, id: Option<&str>) -> Response {
    if let Some(resp) = only_get(req) {
        return resp;
    }
    let world = req.ctx.world.lock();
    let visible: Vec<String> = subscriptions(&world)
        .into_iter()
        .filter(|s| sees_subscription(&world, &req.caller.oid, &format!("/subscriptions/{s}")))
        .collect();
    match id {
        None => {
            let value: Vec<Value> = visible
                .iter()
                .map(|s| subscription_json(s, &world.tenant_id))
                .collect();
            json_response(StatusCode::OK, &json!({ "value": value }))
        }
        Some(id) => match visible.iter().find(|s| s.eq_ignore_ascii_case(id)) {
            Some(s) => json_response(StatusCode::OK, &subscription_json(s, &world.tenant_id)),
            None => subscription_not_found(req, id),
        },
    }
}

/// `GET /tenants`: the tenant the caller's token is for (a service principal belongs to one).
pub fn tenants(req: &Req) -> Response {
    if let Some(resp) = only_get(req) {
        return resp;
    }
    let tenant = req.ctx.world.lock().tenant_id.clone();
    json_response(
        StatusCode::OK,
        &json!({"value": [{
            "id": format!("/tenants/{tenant}"),
            "tenantId": tenant,
            "tenantCategory": "Home",
            "displayName": "Azure emulator",
            "tenantType": "AAD",
        }]}),
    )
}

/// Where a resource group is: that of an AKS cluster in it, else the default.
fn group_location(world: &World, group_id: &str) -> String {
    world
        .arm
        .aks_clusters
        .values()
        .find(|c| at_or_above(group_id, &c.id))
        .map_or_else(|| DEFAULT_LOCATION.to_string(), |c| c.location.clone())
}

fn group_json(world: &World, subscription: &str, name: &str) -> Value {
    let id = format!("/subscriptions/{subscription}/resourceGroups/{name}");
    json!({
        "id": id,
        "name": name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": group_location(world, &id),
        "properties": {"provisioningState": "Succeeded"},
    })
}

/// `GET /subscriptions/{id}/resourcegroups[/{name}]`.
pub fn group(req: &Req, subscription: &str, name: Option<&str>) -> Response {
    if let Some(resp) = only_get(req) {
        return resp;
    }
    let world = req.ctx.world.lock();
    let sub_scope = format!("/subscriptions/{subscription}");
    if !world.scope_exists(&sub_scope) {
        return subscription_not_found(req, subscription);
    }
    match name {
        None => {
            let prefix = format!("{}/resourcegroups/", sub_scope.to_ascii_lowercase());
            let value: Vec<Value> = world
                .arm
                .resources
                .iter()
                .filter_map(|id| id.strip_prefix(&prefix))
                .filter(|rg| !rg.contains('/'))
                .filter(|rg| {
                    let scope = format!("{sub_scope}/resourceGroups/{rg}");
                    authorized(&world, &req.caller.oid, &scope, GROUP_READ)
                })
                .map(|rg| group_json(&world, subscription, rg))
                .collect();
            json_response(StatusCode::OK, &json!({ "value": value }))
        }
        Some(name) => {
            let scope = format!("{sub_scope}/resourceGroups/{name}");
            if !authorized(&world, &req.caller.oid, &scope, GROUP_READ) {
                return authorization_failed(req, GROUP_READ, &scope);
            }
            if !world.scope_exists(&scope) {
                return arm_error(
                    StatusCode::NOT_FOUND,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{name}' could not be found."),
                    &req.ids,
                );
            }
            let stored = scope.to_ascii_lowercase();
            let stored_name = stored.rsplit('/').next().unwrap_or(name);
            json_response(
                StatusCode::OK,
                &group_json(&world, subscription, stored_name),
            )
        }
    }
}

const VAULT_READ: &str = "Microsoft.KeyVault/vaults/read";

/// `GET {vault id}`: a registered Key Vault as the REST reference *Vaults - Get* (Microsoft.KeyVault
/// 2023-07-01) shows one, in the RBAC permission model (`enableRbacAuthorization`, no access policies) with
/// soft delete on, the only model the emulator's data plane has.
pub fn vault(req: &Req, id: &str) -> Response {
    if let Some(resp) = only_get(req) {
        return resp;
    }
    let world = req.ctx.world.lock();
    if !authorized(&world, &req.caller.oid, id, VAULT_READ) {
        return authorization_failed(req, VAULT_READ, id);
    }
    if let Some(resp) = crate::arm::missing_scope(req, &world, id) {
        return resp;
    }
    let segs: Vec<&str> = id.trim_matches('/').split('/').collect();
    let name = segs[7].to_ascii_lowercase();
    let id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{name}",
        segs[1], segs[3]
    );
    json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "name": name,
            "type": "Microsoft.KeyVault/vaults",
            "location": crate::keyvault::VAULT_LOCATION,
            "tags": {},
            "properties": {
                "sku": {"family": "A", "name": "standard"},
                "tenantId": world.tenant_id,
                "accessPolicies": [],
                "enabledForDeployment": false,
                "enabledForDiskEncryption": false,
                "enabledForTemplateDeployment": false,
                "enableSoftDelete": true,
                "softDeleteRetentionInDays": crate::keyvault::secrets::RECOVERABLE_DAYS,
                "enableRbacAuthorization": true,
                "vaultUri": format!("https://{name}.vault.azure.net/"),
                "provisioningState": "Succeeded",
                "publicNetworkAccess": "Enabled",
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_visibility() {
        let mut world = World::default();
        world.arm.role_assignments.insert(
            "a".into(),
            crate::state::RoleAssignment {
                id: "a".into(),
                name: "a".into(),
                scope: "/subscriptions/S/resourceGroups/rg".into(),
                role_definition_id: "r".into(),
                principal_id: "P".into(),
                principal_type: "ServicePrincipal".into(),
                description: None,
                condition: None,
                condition_version: None,
                created_on: jiff::Timestamp::UNIX_EPOCH,
                updated_on: jiff::Timestamp::UNIX_EPOCH,
                created_by: "t".into(),
            },
        );
        let cases = [
            (
                "a role on a group shows its subscription",
                "p",
                "/subscriptions/s",
                true,
            ),
            ("not another subscription", "p", "/subscriptions/t", false),
            ("not to another principal", "q", "/subscriptions/s", false),
        ];
        for (name, principal, sub, want) in cases {
            assert_eq!(sees_subscription(&world, principal, sub), want, "{name}");
        }
    }
}
