//! Key Vault's Azure RBAC permission model: each data-plane operation needs one data action, allowed when a
//! role assignment of the caller at the vault or above grants it (`dataActions` match, `notDataActions` do
//! not). Control-plane roles (Owner, Contributor) grant no data actions, so they read no secrets.
//!
//! Sources: Learn *Azure permissions for Security* (Microsoft.KeyVault data actions: `secrets/getSecret/action`
//! "Gets the value of a secret", `secrets/readMetadata/action` "List or view the properties of a secret, but
//! not its value", `secrets/setSecret/action`, `secrets/update/action`, `secrets/delete`,
//! `secrets/recover/action`, `secrets/purge/action`); Learn *Migrate to Azure role-based access control*
//! (the access-policy to data-action mapping: list, and so get/list deleted, is `readMetadata`).

use crate::{arm, state::World};

pub const GET_SECRET: &str = "Microsoft.KeyVault/vaults/secrets/getSecret/action";
pub const READ_METADATA: &str = "Microsoft.KeyVault/vaults/secrets/readMetadata/action";
pub const SET_SECRET: &str = "Microsoft.KeyVault/vaults/secrets/setSecret/action";
pub const UPDATE: &str = "Microsoft.KeyVault/vaults/secrets/update/action";
pub const DELETE: &str = "Microsoft.KeyVault/vaults/secrets/delete";
pub const RECOVER: &str = "Microsoft.KeyVault/vaults/secrets/recover/action";
pub const PURGE: &str = "Microsoft.KeyVault/vaults/secrets/purge/action";

/// Whether `principal` holds, at `vault_id` or above, a role whose data actions allow `action`.
pub fn allowed(world: &World, principal: &str, vault_id: &str, action: &str) -> bool {
    world
        .arm
        .role_assignments
        .values()
        .filter(|a| {
            a.principal_id.eq_ignore_ascii_case(principal) && arm::at_or_above(&a.scope, vault_id)
        })
        .any(|a| {
            let guid = arm::roles::guid_of(&a.role_definition_id).to_ascii_lowercase();
            arm::roles::builtin_by_guid(&guid)
                .or_else(|| world.arm.custom_roles.get(&guid))
                .is_some_and(|r| arm::roles::allows_data(r, action))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm::roles::{allows_data, builtin_by_name};

    #[test]
    fn builtin_roles_grant_the_documented_data_actions() {
        let role = |n| builtin_by_name(n).unwrap();
        let officer = role("Key Vault Secrets Officer");
        let user = role("Key Vault Secrets User");
        let reader = role("Key Vault Reader");
        for action in [
            GET_SECRET,
            READ_METADATA,
            SET_SECRET,
            UPDATE,
            DELETE,
            RECOVER,
            PURGE,
        ] {
            assert!(allows_data(officer, action), "{action}");
            assert!(allows_data(role("Key Vault Administrator"), action));
            assert!(!allows_data(role("Owner"), action));
            assert!(!allows_data(role("Contributor"), action));
        }
        assert!(allows_data(user, GET_SECRET) && allows_data(user, READ_METADATA));
        assert!(!allows_data(user, SET_SECRET) && !allows_data(user, DELETE));
        assert!(allows_data(reader, READ_METADATA) && !allows_data(reader, GET_SECRET));
    }
}
