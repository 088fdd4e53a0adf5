//! Names the operator derives instead of storing: an object's application is found again by its uniqueName,
//! its passwords by their displayName, a custom role by its GUID and a role assignment by its name, so nothing
//! depends on status surviving a crash. Pure.

use uuid::Uuid;

use crate::azure::scope::{RoleAssignmentId, Scope};

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

/// Prefix of the ownership marks below. spec.tags may not use it: a tenant could otherwise make an application
/// look as if this cluster created it for some other object.
pub const MARK_PREFIX: &str = "entra-operator/";
const CLUSTER_MARK: &str = "entra-operator/cluster=";
const OBJECT_MARK: &str = "entra-operator/object=";
/// Beside the ownership marks on an application the operator adopted because a DelegationPolicy listed it (it
/// did not create it for the object its marks name): so that the marks it wrote do not, on their own, authorize
/// the next adoption of it once the policy no longer lists it.
pub const ADOPTED_MARK: &str = "entra-operator/adopted";

/// What an application's tags say about who holds it (the tags `ownership_tags` writes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// Every `entra-operator/cluster=` value.
    pub clusters: Vec<String>,
    /// Every `entra-operator/object=` value (`namespace/name`).
    pub objects: Vec<String>,
    /// Whether the application carries `ADOPTED_MARK`.
    pub adopted: bool,
}

impl Marks {
    /// The one object of `cluster_id` the marks name, if they name exactly one cluster (this one) and one object.
    pub fn object_of(&self, cluster_id: &str) -> Option<&str> {
        match (self.clusters.as_slice(), self.objects.as_slice()) {
            ([cluster], [object]) if cluster == cluster_id => Some(object),
            _ => None,
        }
    }

    /// Whether this cluster created the application for `namespace/name` (never merely adopted it).
    pub fn created_for(&self, cluster_id: &str, namespace: &str, name: &str) -> bool {
        !self.adopted && self.object_of(cluster_id) == Some(&format!("{namespace}/{name}"))
    }

    /// A cluster other than `cluster_id` that the marks name.
    pub fn other_cluster(&self, cluster_id: &str) -> Option<&str> {
        self.clusters
            .iter()
            .find(|c| *c != cluster_id)
            .map(String::as_str)
    }
}

/// Reads the ownership marks from an application's tags.
pub fn ownership_marks(tags: &[String]) -> Marks {
    let mut marks = Marks::default();
    for tag in tags {
        if let Some(cluster) = tag.strip_prefix(CLUSTER_MARK) {
            marks.clusters.push(cluster.to_string());
        } else if let Some(object) = tag.strip_prefix(OBJECT_MARK) {
            marks.objects.push(object.to_string());
        } else if tag == ADOPTED_MARK {
            marks.adopted = true;
        }
    }
    marks
}

/// The displayName of a password the operator adds for an object: `entra-operator:{ns}/{name}:{n}`, where n
/// counts the passwords issued for it (so two passwords of one object never share a name).
/// The Secret a rotation keeps a new credential's text in while it is verified, before the Secret `secret`
/// gets it: consumers never read it. Within the 253 characters of a Secret's name.
pub fn pending_secret_name(secret: &str) -> String {
    const SUFFIX: &str = ".entra-operator-pending";
    let room = 253 - SUFFIX.len();
    let head: String = secret.chars().take(room).collect();
    format!("{}{SUFFIX}", head.trim_end_matches(['.', '-']))
}

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

/// The name of the role assignment a RoleDelegation makes: a UUIDv5 of the owner (cluster, namespace, object
/// name) and the grant (scope, role GUID, principal; case-insensitive, as ARM compares them). The owner is in
/// it so that two delegations never share one assignment (the same grant from another object gets ARM's 409
/// instead of the other's assignment), and the grant so that a crash between PUT and status finds it again.
/// No uid: a delegation deleted with Orphan and created again takes its assignment back.
pub fn assignment_name(
    cluster_id: &str,
    namespace: &str,
    name: &str,
    scope: &Scope,
    role_definition_guid: &str,
    principal_id: &str,
) -> String {
    let key = format!(
        "assignment:{cluster_id}/{namespace}/{name}|{}|{}|{}",
        scope.as_str().to_ascii_lowercase(),
        role_definition_guid.to_ascii_lowercase(),
        principal_id.to_ascii_lowercase()
    );
    Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string()
}

/// The id of the role assignment a RoleDelegation makes (see [`assignment_name`]).
pub fn assignment_id(
    cluster_id: &str,
    namespace: &str,
    name: &str,
    scope: &Scope,
    role_definition_guid: &str,
    principal_id: &str,
) -> RoleAssignmentId {
    let own = assignment_name(
        cluster_id,
        namespace,
        name,
        scope,
        role_definition_guid,
        principal_id,
    );
    RoleAssignmentId::new(scope.clone(), &own)
}

/// The legacy name of the assignment for (scope, role, principal): a UUIDv5 of the grant alone, which is what
/// operators before the tenancy boundary PUT, so that every delegation of one grant shared it. New assignments
/// are named by [`assignment_name`] (owner included); this one is only recognised, so that an assignment made
/// under it keeps working after an upgrade (and is never deleted while another delegation records it).
pub fn legacy_assignment_name(
    scope: &Scope,
    role_definition_guid: &str,
    principal_id: &str,
) -> String {
    const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x2d6c_0b1e_8f3a_4e57_a1c9_7b4d_e6f0_1a23);
    let key = format!(
        "{}|{}|{}",
        scope.as_str().to_ascii_lowercase(),
        role_definition_guid.to_ascii_lowercase(),
        principal_id.to_ascii_lowercase()
    );
    Uuid::new_v5(&LEGACY_NAMESPACE, key.as_bytes()).to_string()
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
    fn ownership_marks_round_trip_and_say_who_holds_an_application() {
        let tags = ownership_tags("c1", "team-a", "payroll");
        let marks = ownership_marks(&tags);
        assert_eq!(marks.object_of("c1"), Some("team-a/payroll"));
        assert!(marks.created_for("c1", "team-a", "payroll"));
        assert_eq!(marks.other_cluster("c1"), None);
        // Another object, another cluster, an adoption: none of them is "created for team-a/payroll here".
        assert!(!marks.created_for("c1", "team-a", "pay"));
        assert!(!marks.created_for("c1", "team-b", "payroll"));
        assert!(!marks.created_for("c2", "team-a", "payroll"));
        assert_eq!(marks.other_cluster("c2"), Some("c1"));
        let mut adopted = tags.clone();
        adopted.push(ADOPTED_MARK.into());
        let marks = ownership_marks(&adopted);
        assert!(marks.adopted && !marks.created_for("c1", "team-a", "payroll"));
        assert_eq!(
            marks.object_of("c1"),
            Some("team-a/payroll"),
            "still its holder"
        );
        // Two sets of marks are ambiguous: they name no one object, and the foreign cluster shows.
        let mut two = tags.clone();
        two.extend(ownership_tags("c2", "team-b", "x"));
        let marks = ownership_marks(&two);
        assert_eq!(marks.object_of("c1"), None);
        assert!(!marks.created_for("c1", "team-a", "payroll"));
        assert_eq!(marks.other_cluster("c1"), Some("c2"));
        assert_eq!(ownership_marks(&["env=prod".into()]), Marks::default());
    }

    #[test]
    fn custom_role_guids_are_per_namespace_and_blind_to_case() {
        let a = custom_role_guid("c", "ns", "AKS disk access");
        assert_eq!(a, custom_role_guid("c", "ns", "aks DISK access"));
        assert_ne!(a, custom_role_guid("c", "other", "AKS disk access"));
        assert_ne!(a, custom_role_guid("c2", "ns", "AKS disk access"));
        assert!(Uuid::parse_str(&a).is_ok());
    }

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";

    // Moved from azure::arm with the legacy name: split_assignment_id and definition_guid are now the typed ids'.
    #[test]
    fn assignment_names_are_stable_and_case_blind() {
        use crate::azure::scope::RoleDefinitionId;
        let p = |s: &str| Scope::parse(s).unwrap();
        let a = legacy_assignment_name(&p(&format!("{SUB}/resourceGroups/RG")), ACR_PULL, "P1");
        assert_eq!(
            a,
            legacy_assignment_name(
                &p(&format!("{SUB}/resourcegroups/rg/")),
                &ACR_PULL.to_uppercase(),
                "p1"
            )
        );
        assert_ne!(
            a,
            legacy_assignment_name(&p(&format!("{SUB}/resourceGroups/rg2")), ACR_PULL, "p1")
        );
        assert!(
            uuid::Uuid::parse_str(&a).is_ok(),
            "ARM requires a GUID name"
        );
        let id = RoleAssignmentId::new(p(&format!("{SUB}/resourceGroups/rg")), &a);
        let parsed = RoleAssignmentId::parse(&id.to_string()).unwrap();
        assert_eq!(
            (parsed.scope().as_str(), parsed.name()),
            (format!("{SUB}/resourceGroups/rg").as_str(), a.as_str())
        );
        assert!(RoleAssignmentId::parse(SUB).is_err());
        assert_eq!(
            RoleDefinitionId::parse(&format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"
            ))
            .unwrap()
            .guid(),
            ACR_PULL
        );
    }
}
