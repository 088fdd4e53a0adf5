//! Builders for unit tests, in the manner of kube-rs/controller-rs `src/fixtures.rs`: the custom resources
//! as the API server would hand them to a reconcile (a uid, a generation, the finalizer), what Graph returns
//! for an application and its passwords, a delivered Secret, and a [`Context`] whose Azure is an in-process
//! emulator. Plans are pure and need only the builders; the Context is for the code around them.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::api::ObjectMeta as Meta;
use serde_json::json;

use crate::{
    api::{
        CredentialRotation, DelegationPolicy, RoleDelegation, ServicePrincipal,
        protocol::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION},
    },
    azure::{
        Cloud,
        arm::ArmClient,
        graph::{AppCredential, Application, GraphClient},
        testing::TestAzure,
    },
    controller::{Context, drift, events, naming, reconcile::FINALIZER},
    telemetry::metrics::Metrics,
};

/// The namespace every builder puts its object in.
pub const NAMESPACE: &str = "team-a";
/// The cluster id a test Context runs as.
pub const CLUSTER_ID: &str = "00000000-0000-4000-8000-0000000000c1";
/// A fixed moment for plans, so that no test depends on the clock.
pub fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("a valid instant")
}

/// Object metadata as the API server returns it for a live object this operator already manages.
fn meta(name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespaced.then(|| NAMESPACE.into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        resource_version: Some("1".into()),
        finalizers: Some(vec![FINALIZER.into()]),
        creation_timestamp: Some(Time(t0())),
        ..Meta::default()
    }
}

/// Deserialises `spec` into `K` with the metadata of a live object named `name`.
fn object<K: serde::de::DeserializeOwned + kube::Resource>(
    name: &str,
    namespaced: bool,
    spec: serde_json::Value,
) -> K {
    let mut object: K = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1",
        "kind": "Unused",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("the fixture's spec decodes");
    *object.meta_mut() = meta(name, namespaced);
    object
}

/// A ServicePrincipal delivering its secret to a Secret of its own name, in the `env` format.
pub fn service_principal(name: &str) -> ServicePrincipal {
    service_principal_with(name, json!({}))
}

/// A ServicePrincipal whose spec is the default one with the fields of `overrides` set.
pub fn service_principal_with(name: &str, overrides: serde_json::Value) -> ServicePrincipal {
    let mut spec = json!({
        "displayName": format!("{name}-app"),
        "secret": {"name": name, "format": "env"},
    });
    merge(&mut spec, overrides);
    object(name, true, spec)
}

/// A RoleDelegation of the built-in Reader role to the ServicePrincipal `principal`, at a resource group.
pub fn role_delegation(name: &str, principal: &str) -> RoleDelegation {
    role_delegation_with(name, json!({"principalRef": {"name": principal}}))
}

/// A RoleDelegation whose spec is the default one with the fields of `overrides` set.
pub fn role_delegation_with(name: &str, overrides: serde_json::Value) -> RoleDelegation {
    let mut spec = json!({
        "role": {"name": "Reader"},
        "scope": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-team-a"),
    });
    merge(&mut spec, overrides);
    object(name, true, spec)
}

/// A CredentialRotation of the ServicePrincipal `principal`, every 30 days with an hour of overlap.
pub fn credential_rotation(name: &str, principal: &str) -> CredentialRotation {
    credential_rotation_with(name, json!({"servicePrincipalRef": {"name": principal}}))
}

/// A CredentialRotation whose spec is the default one with the fields of `overrides` set.
pub fn credential_rotation_with(name: &str, overrides: serde_json::Value) -> CredentialRotation {
    let mut spec = json!({"rotateEvery": "720h", "overlap": "1h"});
    merge(&mut spec, overrides);
    object(name, true, spec)
}

/// A DelegationPolicy selecting namespaces labelled `team: a`, with the fields of `spec` set.
pub fn delegation_policy(name: &str, spec: serde_json::Value) -> DelegationPolicy {
    let mut full = json!({"namespaceSelector": {"matchLabels": {"team": "a"}}});
    merge(&mut full, spec);
    object(name, false, full)
}

/// The subscription the builders' scopes are in.
pub const SUBSCRIPTION: &str = "00000000-0000-4000-8000-0000000000a1";

/// An application as Graph returns it, created for `owner` (in [`NAMESPACE`]) by this cluster.
pub fn application(owner: &str, passwords: Vec<AppCredential>) -> Application {
    let mut app: Application = serde_json::from_value(json!({
        "id": format!("object-{owner}"),
        "appId": format!("app-{owner}"),
        "displayName": format!("{owner}-app"),
        "tags": naming::ownership_tags(CLUSTER_ID, NAMESPACE, owner),
    }))
    .expect("the fixture's application decodes");
    app.password_credentials = passwords;
    app
}

/// Password number `serial` that `owner` issued, valid from `start` for `days` days. Its hint is the first
/// three characters of [`secret_text`].
pub fn password(owner: &str, serial: u64, start: Timestamp, days: i64) -> AppCredential {
    serde_json::from_value(json!({
        "keyId": key_id(owner, serial),
        "displayName": naming::password_name(NAMESPACE, owner, serial),
        "hint": &secret_text(owner, serial)[..3],
        "startDateTime": start.to_string(),
        "endDateTime": (start + k8s_openapi::jiff::SignedDuration::from_hours(24 * days)).to_string(),
    }))
    .expect("the fixture's password decodes")
}

/// The key id of password `serial` of `owner`.
pub fn key_id(owner: &str, serial: u64) -> String {
    format!("key-{owner}-{serial}")
}

/// The secret text of password `serial` of `owner`.
pub fn secret_text(owner: &str, serial: u64) -> String {
    format!("s{serial}~{owner}-secret-text")
}

/// The `env` Secret `name` as the operator writes it for password `serial` of `owner`.
pub fn delivered_secret(name: &str, owner: &str, serial: u64) -> Secret {
    let data = BTreeMap::from([
        ("AZURE_CLIENT_ID".to_string(), format!("app-{owner}")),
        (
            "AZURE_CLIENT_SECRET".to_string(),
            secret_text(owner, serial),
        ),
        ("AZURE_TENANT_ID".to_string(), "tenant".to_string()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            annotations: Some(BTreeMap::from([
                (KEY_ID_ANNOTATION.to_string(), key_id(owner, serial)),
                (FORMAT_ANNOTATION.to_string(), "env".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// `secret` owned by `owner`, as the operator writes it (`delivered_secret` carries no owner reference, so a
/// controller would take it for someone else's).
pub fn owned_by<K: kube::Resource<DynamicType = ()>>(mut secret: Secret, owner: &K) -> Secret {
    secret.metadata.owner_references = Some(vec![
        owner
            .controller_owner_ref(&())
            .expect("the fixture has a uid"),
    ]);
    secret
}

/// The public cloud's endpoints, as the operator resolves them by default.
pub fn public_cloud() -> Cloud {
    let args = crate::cli::AzureArgs {
        azure_cloud: crate::cli::CloudName::Public,
        azure_authority_host: None,
        azure_graph_endpoint: None,
        azure_resource_manager_endpoint: None,
        azure_key_vault_dns_suffix: None,
        azure_ca_file: None,
        azure_credential: crate::cli::CredentialKind::ClientSecret,
        azure_client_id: None,
        azure_tenant_id: None,
        azure_federated_token_file: None,
        azure_client_secret: None,
    };
    Cloud::from_args(&args).expect("the public cloud resolves")
}

/// Sets every field of `overrides` on `base`, recursively for objects.
fn merge(base: &mut serde_json::Value, overrides: serde_json::Value) {
    match (base, overrides) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overrides)) => {
            for (k, v) in overrides {
                merge(base.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (base, v) => *base = v,
    }
}

/// A Context whose Azure is an in-process emulator (kept alive by the returned [`TestAzure`]) and whose
/// Kubernetes client points at an address where nothing listens: code under test that should not reach the
/// API server fails if it does.
pub async fn context() -> (Context, TestAzure) {
    let azure = TestAzure::start().await;
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a valid URL"));
    let client = kube::Client::try_from(config).expect("a client");
    let metrics = std::sync::Arc::new(Metrics::default());
    let graph = GraphClient::new(azure.http.clone(), azure.credential.clone(), &azure.cloud)
        .with_metrics(metrics.clone());
    let arm = ArmClient::new(azure.http.clone(), azure.credential.clone(), &azure.cloud)
        .with_metrics(metrics.clone());
    let key_vault = crate::azure::keyvault::KeyVaultClient::new(
        azure.http.clone(),
        azure.credential.clone(),
        azure.cloud.clone(),
    )
    .with_metrics(metrics.clone());
    let (policies, _writer) = kube::runtime::reflector::store();
    let recorder = events::Events::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "entra-operator-test".into(),
            instance: None,
        },
    );
    let ctx = Context {
        client,
        graph,
        arm,
        key_vault,
        http: azure.http.clone(),
        roles: Default::default(),
        policies,
        principal_replication_window: std::time::Duration::from_secs(3600),
        verification: Default::default(),
        cloud: azure.cloud.clone(),
        tenant_id: azure.tenant_id.clone(),
        cluster_id: CLUSTER_ID.into(),
        recorder,
        resync: std::time::Duration::from_secs(300),
        metrics,
        drift: std::sync::Arc::new(drift::Drift::new(std::time::Duration::from_secs(300))),
        absences: Default::default(),
        status_writes: Default::default(),
        claims: Default::default(),
        operator_principal: None,
    };
    (ctx, azure)
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;
    use crate::controller::credentials;

    #[test]
    fn builders_make_live_objects_with_their_overrides() {
        let sp = service_principal_with("web", json!({"secret": {"format": "az"}}));
        assert_eq!(sp.namespace().as_deref(), Some(NAMESPACE));
        assert_eq!(sp.finalizers(), [FINALIZER]);
        let target = sp.spec.secret.as_ref().expect("a secret target");
        assert_eq!(
            (target.name.as_str(), target.format),
            ("web", crate::api::SecretFormat::Az)
        );
        let rd = role_delegation("reader", "web");
        assert_eq!(
            rd.spec.principal_ref.as_ref().map(|r| r.name.as_str()),
            Some("web")
        );
        let crot = credential_rotation("rot", "web");
        assert_eq!(
            crot.spec.overlap.as_std(),
            std::time::Duration::from_secs(3600)
        );
    }

    #[test]
    fn a_delivered_secret_holds_the_password_it_names() {
        let app = application("web", vec![password("web", 1, t0(), 365)]);
        let ours = credentials::ours(&app, credentials::Kind::Password, NAMESPACE, "web");
        let sp = service_principal("web");
        let secret = delivered_secret("web", "web", 1);
        let (found, held) = credentials::delivered(
            &secret,
            &ours,
            sp.spec.secret.as_ref().unwrap(),
            credentials::Kind::Password,
            true,
        )
        .expect("held");
        assert_eq!(found.key_id, key_id("web", 1));
        assert_eq!(held.text, Some(secret_text("web", 1)));
    }
}
