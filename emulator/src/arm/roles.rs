//! The built-in role catalogue (names, GUIDs and permissions as Azure publishes them in "Azure built-in
//! roles"), id normalisation, and the permission check that ARM authorization applies.

use std::sync::LazyLock;

use crate::state::{Permission, RoleDefinition};

struct Builtin {
    name: &'static str,
    guid: &'static str,
    description: &'static str,
    actions: &'static [&'static str],
    not_actions: &'static [&'static str],
    data_actions: &'static [&'static str],
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "Owner",
        guid: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
        description: "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Contributor",
        guid: "b24988ac-6180-42a0-ab88-20f7382dd24c",
        description: "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
            "Microsoft.Purview/consents/write",
            "Microsoft.Purview/consents/delete",
        ],
        data_actions: &[],
    },
    Builtin {
        name: "Reader",
        guid: "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        description: "View all resources, but does not allow you to make any changes.",
        actions: &["*/read"],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "User Access Administrator",
        guid: "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        description: "Lets you manage user access to Azure resources.",
        actions: &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Role Based Access Control Administrator",
        guid: "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
        description: "Manage access to Azure resources by assigning roles using Azure RBAC. This role does not allow you \
                      to manage access using other ways, such as Azure Policy.",
        actions: &[
            "Microsoft.Authorization/roleAssignments/write",
            "Microsoft.Authorization/roleAssignments/delete",
            "*/read",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Network Contributor",
        guid: "4d97b98b-1d4f-4787-a291-c67834d212e7",
        description: "Lets you manage networks, but not access to them.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Network/*",
            "Microsoft.ResourceHealth/availabilityStatuses/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Virtual Machine Contributor",
        guid: "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
        description: "Create and manage virtual machines, manage disks, install and run software, reset password of \
                      the root user of the virtual machine using VM extensions, and manage local user accounts using \
                      VM extensions. This role does not grant you management access to the virtual network or storage \
                      account the virtual machines are connected to.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Compute/availabilitySets/*",
            "Microsoft.Compute/locations/*",
            "Microsoft.Compute/virtualMachines/*",
            "Microsoft.Compute/virtualMachineScaleSets/*",
            "Microsoft.Compute/cloudServices/*",
            "Microsoft.Compute/disks/write",
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/*",
            "Microsoft.Network/virtualNetworks/read",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Storage/storageAccounts/listKeys/action",
            "Microsoft.Storage/storageAccounts/read",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Key Vault Secrets User",
        guid: "4633458b-17de-408a-b874-0445c86b69e6",
        description: "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' \
                      permission model.",
        actions: &[],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
    },
    // The Key Vault data-plane roles, as Learn's "Azure built-in roles for Security" lists them: they grant
    // dataActions only Key Vault's RBAC permission model reads; Owner and Contributor grant none.
    Builtin {
        name: "Key Vault Administrator",
        guid: "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        description: "Perform all data plane operations on a key vault and all objects in it, including certificates, \
                      keys, and secrets. Cannot manage key vault resources or manage role assignments. Only works for \
                      key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/*"],
    },
    Builtin {
        name: "Key Vault Secrets Officer",
        guid: "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        description: "Perform any action on the secrets of a key vault, except manage permissions. Only works for key \
                      vaults that use the 'Azure role-based access control' permission model.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/secrets/*"],
    },
    Builtin {
        name: "Key Vault Reader",
        guid: "21090545-7ca7-4776-b22c-e363652d74d2",
        description: "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive values \
                      such as secret contents or key material. Only works for key vaults that use the 'Azure \
                      role-based access control' permission model.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
    },
    Builtin {
        name: "AcrPull",
        guid: "7f951dda-4ed3-4680-a7ca-43fe172d538d",
        description: "acr pull",
        actions: &["Microsoft.ContainerRegistry/registries/pull/read"],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "AcrPush",
        guid: "8311e382-0749-4cb8-b61a-304f252e45ec",
        description: "acr push",
        actions: &[
            "Microsoft.ContainerRegistry/registries/pull/read",
            "Microsoft.ContainerRegistry/registries/push/write",
        ],
        not_actions: &[],
        data_actions: &[],
    },
    Builtin {
        name: "Storage Blob Data Reader",
        guid: "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        description: "Read and list Azure Storage containers and blobs.",
        actions: &[
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ],
        not_actions: &[],
        data_actions: &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
    },
];

static CATALOGUE: LazyLock<Vec<RoleDefinition>> = LazyLock::new(|| {
    BUILTINS
        .iter()
        .map(|b| RoleDefinition {
            name: b.guid.into(),
            role_name: b.name.into(),
            description: b.description.into(),
            role_type: "BuiltInRole".into(),
            permissions: vec![Permission {
                actions: b.actions.iter().map(|s| s.to_string()).collect(),
                not_actions: b.not_actions.iter().map(|s| s.to_string()).collect(),
                data_actions: b.data_actions.iter().map(|s| s.to_string()).collect(),
                not_data_actions: vec![],
            }],
            assignable_scopes: vec!["/".into()],
            scope: String::new(),
            created_on: None,
        })
        .collect()
});

pub fn builtins() -> &'static [RoleDefinition] {
    &CATALOGUE
}

pub fn builtin_by_name(name: &str) -> Option<&'static RoleDefinition> {
    CATALOGUE
        .iter()
        .find(|r| r.role_name.eq_ignore_ascii_case(name))
}

pub fn builtin_by_guid(guid: &str) -> Option<&'static RoleDefinition> {
    CATALOGUE.iter().find(|r| r.name.eq_ignore_ascii_case(guid))
}

/// The id under which a definition is echoed for an assignment at `scope`: below a subscription,
/// `/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}` (as the 2022-04-01
/// examples show), else the tenant-level form.
pub fn definition_id(scope: &str, guid: &str) -> String {
    match subscription_of(scope) {
        Some(sub) => {
            format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        }
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
    }
}

/// The id under which role assignments echo their definition: the tenant-level form, as the 2022-04-01
/// examples show (RoleAssignments_CreateForResourceGroup sends the subscription form and gets this back).
pub fn assignment_definition_id(guid: &str) -> String {
    format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}

/// The subscription id in a scope, if the scope is at or below one.
pub fn subscription_of(scope: &str) -> Option<&str> {
    let mut parts = scope.split('/').filter(|s| !s.is_empty());
    match (parts.next(), parts.next()) {
        (Some(first), Some(sub)) if first.eq_ignore_ascii_case("subscriptions") => Some(sub),
        _ => None,
    }
}

/// The GUID at the end of a role definition id (or the id itself when it is a bare GUID).
pub fn guid_of(definition_id: &str) -> &str {
    definition_id.rsplit('/').next().unwrap_or(definition_id)
}

/// Whether `pattern` (an action with `*` wildcards, as in role definitions) matches `action`. Matching is
/// case-insensitive, as ARM's is.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a
                .split_first()
                .is_some_and(|(d, arest)| c.eq_ignore_ascii_case(d) && go(rest, arest)),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// Whether a role's permissions allow a data action (Key Vault's RBAC model): some `dataActions` entry
/// matches and no `notDataActions` entry of the same permission block does.
pub fn allows_data(role: &RoleDefinition, action: &str) -> bool {
    role.permissions.iter().any(|p| {
        p.data_actions.iter().any(|a| action_matches(a, action))
            && !p.not_data_actions.iter().any(|n| action_matches(n, action))
    })
}

/// Whether a role's permissions allow a control-plane action: some `actions` entry matches and no
/// `notActions` entry of the same permission block does.
pub fn allows(role: &RoleDefinition, action: &str) -> bool {
    role.permissions.iter().any(|p| {
        p.actions.iter().any(|a| action_matches(a, action))
            && !p.not_actions.iter().any(|n| action_matches(n, action))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_arm() {
        assert!(action_matches(
            "*",
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(action_matches("*/read", "Microsoft.Compute/disks/read"));
        assert!(!action_matches("*/read", "Microsoft.Compute/disks/write"));
        assert!(action_matches(
            "Microsoft.Authorization/*/Write",
            "microsoft.authorization/roleassignments/write"
        ));
    }

    #[test]
    fn builtins_grant_what_their_names_say() {
        let write = "Microsoft.Authorization/roleAssignments/write";
        assert!(allows(builtin_by_name("Owner").unwrap(), write));
        assert!(
            !allows(builtin_by_name("Contributor").unwrap(), write),
            "Contributor cannot assign roles"
        );
        assert!(allows(
            builtin_by_name("Contributor").unwrap(),
            "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action"
        ));
        assert!(allows(
            builtin_by_name("Role Based Access Control Administrator").unwrap(),
            write
        ));
        assert!(!allows(
            builtin_by_name("Role Based Access Control Administrator").unwrap(),
            "Microsoft.Authorization/roleDefinitions/write"
        ));
        assert!(allows(
            builtin_by_name("User Access Administrator").unwrap(),
            "Microsoft.Authorization/roleDefinitions/write"
        ));
        assert!(!allows(builtin_by_name("Reader").unwrap(), write));
        assert_eq!(
            builtin_by_name("acrpull").unwrap().name,
            "7f951dda-4ed3-4680-a7ca-43fe172d538d"
        );
    }

    #[test]
    fn definition_ids_follow_the_scope() {
        let guid = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
        assert_eq!(
            definition_id("/subscriptions/s1/resourceGroups/rg", guid),
            format!("/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        );
        assert_eq!(
            definition_id("/providers/Microsoft.Management/managementGroups/mg", guid),
            format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        );
        assert_eq!(guid_of(&definition_id("/subscriptions/s1", guid)), guid);
    }
}
