//! The stage each measurement runs on: the CRDs installed once, then per run a fresh emulator (full buckets)
//! and namespace with a DelegationPolicy, and afterwards everything the run made removed, also when it failed
//! (testenv is shared).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use entra_operator::api::{CredentialRotation, DelegationPolicy, RoleDelegation, ServicePrincipal};

use crate::{Bench, OPERATOR_SECRET, SUB, azure::Caller, operator::Operator};

pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in entra_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("operator-scale").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    Ok(())
}

/// A fresh emulator (full buckets) and namespace, with a DelegationPolicy allowing AcrPull on rg-shared.
pub struct Stage {
    pub emulator: azure_emulator::Running,
    pub ns: String,
    pub caller: Caller,
    _dir: tempfile::TempDir,
}

pub async fn stage(bench: &Bench, name: &str) -> anyhow::Result<Stage> {
    let dir = tempfile::tempdir()?;
    let mut config = azure_emulator::config::Config::default_seed();
    config.seed.applications[0].client_secrets = vec![OPERATOR_SECRET.into()];
    config.knobs.throttling.scale = bench.args.throttle_scale;
    let caller = Caller {
        graph_app: config.seed.applications[0].app_id.clone(),
        arm_principal: config.seed.applications[0].service_principal_id.clone(),
    };
    let emulator = azure_emulator::start(azure_emulator::Options {
        config,
        state_dir: dir.path().join("emulator"),
        persist: false,
        listen: "127.0.0.1:0".parse()?,
        hostnames: vec![],
    })
    .await?;
    let ns = format!("bench-{name}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(bench.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let policies: Api<DelegationPolicy> = Api::all(bench.client.clone());
    policies
        .patch(
            &ns,
            &PatchParams::apply("operator-scale").force(),
            &Patch::Apply(&serde_json::from_value::<DelegationPolicy>(json!({
                "apiVersion": "entra-operator.io/v1alpha1", "kind": "DelegationPolicy",
                "metadata": {"name": ns},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "scopes": [format!("{SUB}/resourceGroups/rg-shared")], "roles": ["AcrPull"]},
            }))?),
        )
        .await?;
    Ok(Stage {
        emulator,
        ns,
        caller,
        _dir: dir,
    })
}

/// Runs a measurement on a fresh stage, then removes everything the stage made, also when the measurement
/// failed (testenv is shared).
pub async fn on_stage<F>(bench: &Bench, name: &str, measure: F) -> anyhow::Result<Value>
where
    F: AsyncFnOnce(&Stage) -> anyhow::Result<(Value, Operator)>,
{
    let stage = stage(bench, name).await?;
    match measure(&stage).await {
        Ok((result, operator)) => {
            teardown(bench, stage, Some(operator)).await?;
            Ok(result)
        }
        Err(e) => {
            eprintln!("   failed; removing what the run made");
            if let Err(cleanup) = teardown(bench, stage, None).await {
                eprintln!("   cleaning up failed too: {cleanup:#}");
            }
            Err(e)
        }
    }
}

/// Removes everything a stage made, so that the next size starts on an empty namespace: the operator (when
/// there is one) deletes its objects (the emulator's throttling off meanwhile: this emulator is thrown away
/// next), then what is left loses its finalizers, and the namespace goes.
pub async fn teardown(
    bench: &Bench,
    stage: Stage,
    operator: Option<Operator>,
) -> anyhow::Result<()> {
    let ns = &stage.ns;
    stage.emulator.ctx.knobs.write().throttling.enabled = false;
    let sps: Api<ServicePrincipal> = Api::namespaced(bench.client.clone(), ns);
    let rds: Api<RoleDelegation> = Api::namespaced(bench.client.clone(), ns);
    let crots: Api<CredentialRotation> = Api::namespaced(bench.client.clone(), ns);
    if let Some(mut operator) = operator {
        let objects = count(&sps).await? + count(&rds).await? + count(&crots).await?;
        eprintln!("   cleaning up {objects} objects");
        rds.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        crots
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        sps.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120 + objects as u64 / 10);
        while Instant::now() < deadline && operator.running() {
            if !(any(&sps).await? || any(&rds).await? || any(&crots).await?) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        operator.stop().await;
    }
    let left = strip_finalizers(&rds).await?
        + strip_finalizers(&crots).await?
        + strip_finalizers(&sps).await?;
    if left > 0 {
        eprintln!("   {left} objects left behind by the operator: their finalizers removed");
    }
    let policies: Api<DelegationPolicy> = Api::all(bench.client.clone());
    let _ = policies.delete(ns, &DeleteParams::default()).await;
    let namespaces: Api<Namespace> = Api::all(bench.client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while namespaces.get_opt(ns).await?.is_some() {
        if Instant::now() > deadline {
            eprintln!("   namespace {ns} still terminating after 300 s; going on");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stage.emulator.shutdown().await
}

pub async fn count<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list_metadata(&ListParams::default()).await?.items.len())
}

pub async fn any<K>(api: &Api<K>) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(!api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty())
}

pub async fn strip_finalizers<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let left = api.list_metadata(&ListParams::default()).await?.items;
    for o in &left {
        let _ = api
            .patch_metadata(
                &o.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    Ok(left.len())
}
