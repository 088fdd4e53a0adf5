//! The cluster connection as kubectl makes it: --kubeconfig, else KUBECONFIG, else ~/.kube/config (else the
//! in-cluster account), the --context asked for, and the namespace from -n, else the context's.

use anyhow::Context;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::cli::Global;

/// A client, and the namespace to look in (None with -A).
pub struct Cluster {
    pub client: Client,
    pub namespace: Option<String>,
}

pub async fn connect(global: &Global) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = match (&global.kubeconfig, &global.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        // KUBECONFIG (a list of files, merged as kubectl does) or ~/.kube/config.
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    };
    let namespace = match (&global.namespace, global.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(config.default_namespace.clone()),
    };
    Ok(Cluster {
        client: Client::try_from(config)?,
        namespace,
    })
}

impl Cluster {
    /// The API for a namespaced kind in the namespace asked for, or in all of them.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// The one namespace a verb about a single object needs: -A names none.
    pub fn one_namespace(&self) -> anyhow::Result<&str> {
        self.namespace
            .as_deref()
            .context("this verb needs one namespace: give -n NS instead of -A")
    }
}
