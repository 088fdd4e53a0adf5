//! Names the operator derives instead of storing: an object's application is found again by its uniqueName,
//! and its passwords by their displayName, so nothing depends on status surviving a crash. Pure.

use uuid::Uuid;

/// Namespace of the UUIDv5 names below (a fixed random UUID: changing it would orphan every application).
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a9e_3b7d_4c58_9e0a_1d2b_3c4d_5e6f);

/// Prefix of every password displayName the operator writes.
pub const PASSWORD_PREFIX: &str = "entra-operator";

/// The application's uniqueName: deterministic from the cluster and the object (uid included, so a deleted and
/// recreated object of the same name gets a new application rather than inheriting the old one's secrets).
pub fn unique_name(cluster_id: &str, namespace: &str, name: &str, uid: &str) -> String {
    let id = Uuid::new_v5(
        &NAMESPACE,
        format!("{cluster_id}/{namespace}/{name}/{uid}").as_bytes(),
    );
    format!("entra-operator-{id}")
}

/// Tags that let anyone (and the operator) see which cluster and object an application belongs to.
pub fn ownership_tags(cluster_id: &str, namespace: &str, name: &str) -> Vec<String> {
    vec![
        "entra-operator".to_string(),
        format!("entra-operator/cluster={cluster_id}"),
        format!("entra-operator/object={namespace}/{name}"),
    ]
}

/// The displayName of a password the operator adds for an object: `entra-operator:{ns}/{name}:{n}`, where n
/// counts the passwords issued for it (so two passwords of one object never share a name).
pub fn password_name(namespace: &str, name: &str, serial: u64) -> String {
    format!("{PASSWORD_PREFIX}:{namespace}/{name}:{serial}")
}

/// The serial of a password this object issued, or None if the displayName is not one of its passwords.
pub fn password_serial(display_name: &str, namespace: &str, name: &str) -> Option<u64> {
    let rest = display_name.strip_prefix(&format!("{PASSWORD_PREFIX}:{namespace}/{name}:"))?;
    rest.parse().ok()
}

/// The GUID of a custom role a namespace defines: deterministic from the cluster, the namespace and the role's
/// name (case-insensitive, as Azure compares role names), so that delegations of one namespace share it, a
/// retry after a crash finds it, and two namespaces never write each other's definition.
pub fn custom_role_guid(cluster_id: &str, namespace: &str, role_name: &str) -> String {
    Uuid::new_v5(
        &NAMESPACE,
        format!("role:{cluster_id}/{namespace}/{}", role_name.to_lowercase()).as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_stable_and_distinct() {
        let a = unique_name("cluster-1", "ns", "app", "uid-1");
        assert_eq!(
            a,
            unique_name("cluster-1", "ns", "app", "uid-1"),
            "the same object always finds its app"
        );
        assert!(a.starts_with("entra-operator-") && a.len() <= 120);
        assert_ne!(
            a,
            unique_name("cluster-2", "ns", "app", "uid-1"),
            "another cluster"
        );
        assert_ne!(
            a,
            unique_name("cluster-1", "ns", "app", "uid-2"),
            "a recreated object"
        );
    }

    #[test]
    fn password_names_round_trip_and_do_not_match_other_objects() {
        let n = password_name("team-a", "payroll", 3);
        assert_eq!(n, "entra-operator:team-a/payroll:3");
        assert_eq!(password_serial(&n, "team-a", "payroll"), Some(3));
        assert_eq!(
            password_serial(&n, "team-a", "pay"),
            None,
            "a name that is a prefix of another"
        );
        assert_eq!(
            password_serial("entra-operator:team-a/payroll-2:1", "team-a", "payroll"),
            None
        );
        assert_eq!(
            password_serial("rotated by hand", "team-a", "payroll"),
            None
        );
    }

    #[test]
    fn custom_role_guids_are_per_namespace_and_blind_to_case() {
        let a = custom_role_guid("c", "ns", "AKS disk access");
        assert_eq!(a, custom_role_guid("c", "ns", "aks DISK access"));
        assert_ne!(a, custom_role_guid("c", "other", "AKS disk access"));
        assert_ne!(a, custom_role_guid("c2", "ns", "AKS disk access"));
        assert!(Uuid::parse_str(&a).is_ok());
    }
}
