//! The protocol between the controllers, and between the operator and what it writes in Kubernetes: the
//! labels and annotations it sets and reads, and the condition reasons one controller reads on another's
//! objects. Named once here, so that the writer and the reader cannot drift apart.

/// Label on a Secret a ServicePrincipal writes (its value names the ServicePrincipal).
pub const SERVICE_PRINCIPAL_OWNER_LABEL: &str = "entra-operator.io/service-principal";
/// Label on a Secret a CredentialRotation writes itself (with applicationId).
pub const CREDENTIAL_ROTATION_OWNER_LABEL: &str = "entra-operator.io/credential-rotation";

/// On a ServicePrincipal whose password a CredentialRotation manages (the value names it): the
/// ServicePrincipal controller then removes none of the object's passwords, since the previous one stays
/// valid for the rotation's overlap and a new one may be on its way into the Secret.
pub const ROTATED_BY_ANNOTATION: &str = "entra-operator.io/rotated-by";

/// Annotations on a delivered Secret: which password it holds (the Entra key id), in which format, from
/// which templates. They are how a later reconcile finds out which password a Secret delivers.
pub const KEY_ID_ANNOTATION: &str = "entra-operator.io/key-id";
pub const FORMAT_ANNOTATION: &str = "entra-operator.io/format";
pub const TEMPLATES_ANNOTATION: &str = "entra-operator.io/templates-digest";

/// On a restarted workload's pod template: the key id it was restarted for.
pub const RESTART_ANNOTATION: &str = "entra-operator.io/restarted-for-key";

/// The Ready reason of a ServicePrincipal whose lost or edited Secret only its CredentialRotation may
/// re-issue; the rotation reads it to know the ServicePrincipal is waiting for it, not failing.
pub const WAITING_FOR_ROTATION: &str = "WaitingForRotation";
/// The Ready reason of an object waiting for Azure to show what was just created.
pub const WAITING_FOR_REPLICATION: &str = "WaitingForReplication";
