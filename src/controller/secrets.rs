//! The Kubernetes Secrets the operator writes credentials into: owned by the object that wrote them (so they go
//! with it), labelled with it, and annotated with the Entra key id they hold, which is how the operator finds
//! out later which password a Secret delivers.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::{api::SecretTarget, azure::certificate::Material};

pub use crate::api::protocol::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION, TEMPLATES_ANNOTATION};

/// The object a Secret belongs to, and the label that names it on the Secret.
pub struct Owner<'a, K> {
    pub object: &'a K,
    pub label: &'static str,
}

/// Whether `secret` is owned by `owner` (by uid: a recreated object of the same name is another owner).
pub fn owned_by<K: Resource<DynamicType = ()>>(secret: &Secret, owner: &K) -> bool {
    let uid = owner.uid().unwrap_or_default();
    let kind = K::kind(&());
    secret
        .owner_references()
        .iter()
        .any(|r| r.uid == uid && r.kind == kind)
}

/// A stable digest of the spec's templates (a UUIDv5 of their JSON: no secret is in them).
pub fn templates_digest(target: &SecretTarget) -> String {
    let text = serde_json::to_string(&target.templates).unwrap_or_default();
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).to_string()
}

/// Writes the Secret whole: `data`, the key id it holds, the owner reference and label.
pub async fn write<K: Resource<DynamicType = ()>>(
    client: &Client,
    owner: &Owner<'_, K>,
    target: &SecretTarget,
    key_id: &str,
    data: BTreeMap<String, String>,
) -> kube::Result<()> {
    let ns = owner.object.namespace().unwrap_or_default();
    let format = serde_json::to_value(target.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([(
                owner.label.to_string(),
                owner.object.name_any(),
            )])),
            annotations: Some(BTreeMap::from([
                (KEY_ID_ANNOTATION.to_string(), key_id.to_string()),
                (FORMAT_ANNOTATION.to_string(), format),
                (TEMPLATES_ANNOTATION.to_string(), templates_digest(target)),
            ])),
            owner_references: Some(vec![OwnerReference {
                controller: Some(true),
                ..owner
                    .object
                    .controller_owner_ref(&())
                    .expect("a stored object has a uid")
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    // Server-side apply with force: the operator is the only writer of a Secret it owns.
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            &target.name,
            &PatchParams::apply("entra-operator").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// The certificate credential a kubernetes.io/tls Secret (cert-manager's, say) holds in tls.crt and tls.key,
/// or why it holds none; the reason never quotes the key.
pub fn tls_material(secret: &Secret) -> Result<Material, String> {
    let data = secret.data.as_ref();
    let text = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| format!("it has no {key} (not issued yet?)"))
    };
    Material::from_tls(&text("tls.crt")?, &text("tls.key")?)
}
