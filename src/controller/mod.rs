//! The operator's main loop: connect to the API server, check that the CRDs are served and readable, then run
//! until SIGTERM or SIGINT. The per-resource controllers plug in here.

pub mod absences;
pub mod claims;
pub mod clock;
pub mod context;
pub mod credential_rotation;
pub mod credential_watch;
pub mod credentials;
pub mod drift;
pub mod events;
pub mod failure;
pub mod issuance;
pub mod key_vault;
pub mod leader;
pub mod naming;
pub mod policy;
pub mod reconcile;
pub mod role_delegation;
pub mod secret_format;
pub mod secrets;
pub mod service_principal;
pub mod verification;
pub mod watches;

pub use context::Context;
pub use events::publish;
pub use watches::{Scope, ServicePrincipalChanges, namespaced};

use anyhow::Context as _;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        events::Reporter,
        reflector::{self, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    api,
    azure::{
        Cloud, arm::ArmClient, credential, graph::GraphClient, keyvault::KeyVaultClient,
        role_cache::RoleCache,
    },
    cli::{AzureArgs, RunArgs},
    telemetry::{
        metrics::Metrics,
        server::{self, Probe},
    },
};

/// Runs the operator until it is told to stop.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Registered before anything else, so that a SIGTERM during start-up is handled, not fatal.
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    let (ctx, policy_writer) = tokio::select! {
        started = start(&args) => started?,
        signal = &mut shutdown => {
            info!(signal, "shutting down before ready");
            return Ok(());
        }
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    server::serve(
        args.metrics_addr,
        Probe {
            metrics: ctx.metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await?;
    // A standby replica is healthy and ready: it is there to take over.
    let mut leadership = if args.leader_election {
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            held = leader::acquire(ctx.client.clone(), &args) => Some(held?),
            signal = &mut shutdown => {
                info!(signal, "shutting down before leading");
                return Ok(());
            }
        }
    } else {
        None
    };
    let config = kube::runtime::controller::Config::default().concurrency(args.concurrency);
    let ctx = Arc::new(ctx);
    // Drift is looked for only by the replica that acts on it, and before its first reconciles.
    let mut feeds = drift::feeds::Feeds::new(ctx.drift.clone(), ctx.graph.clone(), ctx.arm.clone());
    if tokio::time::timeout(std::time::Duration::from_secs(30), feeds.prime())
        .await
        .is_err()
    {
        warn!("drift feed: the first delta round took over 30s; going on without it");
    }
    let feeds = tokio::spawn(feeds.run());
    let policy_changes = watch_policies(ctx.client.clone(), policy_writer);
    ctx.policies
        .wait_until_ready()
        .await
        .context("the DelegationPolicy watch ended before its first list")?;
    // One controller per kind and watched namespace (or one per kind for all), merged into one stream.
    let controllers = watched_scopes(&args).into_iter().flat_map(|ns| {
        let (scope, service_principals) =
            Scope::new(&ctx.client, ns, config.clone(), policy_changes.clone());
        let controllers = [
            service_principal::wiring::controller(ctx.clone(), &scope, service_principals),
            role_delegation::wiring::controller(ctx.clone(), &scope),
            credential_rotation::wiring::controller(ctx.clone(), &scope),
        ];
        // Dropped before the controllers run: its own handle on the shared ServicePrincipal watch would
        // never be read, and the watch waits for every handle.
        drop(scope);
        controllers
    });
    // CredentialWatch is cluster-scoped: one controller, whatever namespaces are watched, if any are served.
    let watches = credential_watch_selector(&args).map(|selector| {
        credential_watch::wiring::controller(ctx.clone(), config.clone(), selector)
    });
    let controllers = controllers.chain(watches);
    let controllers =
        futures::stream::select_all(controllers).for_each(|_| futures::future::ready(()));
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    // On a signal the controllers are dropped where they stand: every reconcile is safe to interrupt (state
    // lives in Azure and the API server, and the next reconcile finds it), so there is nothing to drain.
    let lost = async {
        match &mut leadership {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controllers => warn!("controllers stopped on their own"),
        signal = shutdown => info!(signal, "shutting down"),
        // Another replica leads now: stop at once, so that only one ever reconciles; the pod restarts as a
        // standby.
        _ = lost => anyhow::bail!("lost the leader-election Lease to another replica"),
    }
    feeds.abort();
    if let Some(held) = leadership {
        held.release().await;
    }
    Ok(())
}

/// The namespaces watched, each as Some; or None alone for the whole cluster.
fn watched_scopes(args: &RunArgs) -> Vec<Option<&str>> {
    if args.watch_namespaces.is_empty() {
        vec![None]
    } else {
        args.watch_namespaces
            .iter()
            .map(|n| Some(n.as_str()))
            .collect()
    }
}

/// The label selector of the CredentialWatches served ("" for all), or None when none are: by default all
/// for an operator of the whole cluster, none for one of some namespaces (see `--credential-watch-selector`).
fn credential_watch_selector(args: &RunArgs) -> Option<String> {
    match &args.credential_watch_selector {
        Some(selector) => Some(selector.trim().to_string()),
        None if args.watch_namespaces.is_empty() => Some(String::new()),
        None => None,
    }
}

/// Keeps the DelegationPolicy store current, and counts the changes so that controllers can react to them.
fn watch_policies(
    client: Client,
    writer: Writer<api::DelegationPolicy>,
) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<api::DelegationPolicy>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => tx.send_modify(|n| *n += 1),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "DelegationPolicy watch failed; retrying"),
            }
        }
    });
    rx
}

/// Connects and checks that every kind is served and readable; then the operator is ready.
async fn start(args: &RunArgs) -> anyhow::Result<(Context, Writer<api::DelegationPolicy>)> {
    let client = connect(args).await?;
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    // Each namespaced kind is checked where it is watched: with WATCH_NAMESPACES the operator may hold
    // nothing but Roles in those namespaces (the chart's least-privilege RBAC), and a cluster-wide list
    // would be refused.
    for ns in watched_scopes(args) {
        check_served(namespaced::<api::ServicePrincipal>(&client, ns), ns).await?;
        check_served(namespaced::<api::RoleDelegation>(&client, ns), ns).await?;
        check_served(namespaced::<api::CredentialRotation>(&client, ns), ns).await?;
    }
    check_served(Api::<api::DelegationPolicy>::all(client.clone()), None).await?;
    if credential_watch_selector(args).is_some() {
        check_served(Api::<api::CredentialWatch>::all(client.clone()), None).await?;
    }
    let cluster_id = match &args.cluster_id {
        Some(id) => id.clone(),
        None => Api::<Namespace>::all(client.clone())
            .get("kube-system")
            .await
            .context(
                "cannot read the kube-system namespace for the cluster id (or set --cluster-id)",
            )?
            .uid()
            .context("kube-system has no uid")?,
    };
    let tenant_id = args
        .azure
        .azure_tenant_id
        .clone()
        .context("AZURE_TENANT_ID (--azure-tenant-id) is required")?;
    let cloud = Cloud::from_args(&args.azure)?;
    let http = credential::http_client(&args.azure)?;
    // Bounded: a slow or unreachable Entra must not hold up start-up (and the health endpoints behind it).
    let credential = credential::build(&args.azure, &cloud, &http)?;
    let operator_principal = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        check_azure(&args.azure, &cloud, credential.as_ref()),
    )
    .await
    {
        Ok(principal) => principal,
        Err(_) => {
            warn!("azure credential not ready: no token within 10s");
            None
        }
    };
    let metrics = Arc::new(Metrics::default());
    let graph =
        GraphClient::new(http.clone(), credential.clone(), &cloud).with_metrics(metrics.clone());
    let arm =
        ArmClient::new(http.clone(), credential.clone(), &cloud).with_metrics(metrics.clone());
    let key_vault =
        KeyVaultClient::new(http.clone(), credential, cloud.clone()).with_metrics(metrics.clone());
    let (policies, policy_writer) = reflector::store();
    let recorder = events::Events::new(
        client.clone(),
        Reporter {
            controller: "entra-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    info!(apiserver = %version.git_version, cluster_id = %cluster_id, "operator ready");
    Ok((
        Context {
            client,
            graph,
            arm,
            key_vault,
            http,
            roles: RoleCache::default(),
            policies,
            principal_replication_window: args.principal_replication_window.as_std(),
            verification: verification::Policy {
                required: args.verify_sign_ins,
                window: args.verify_window.as_std(),
            },
            cloud,
            tenant_id,
            cluster_id,
            recorder,
            resync: args.resync_interval.as_std(),
            metrics,
            drift: Arc::new(drift::Drift::new(args.drift_interval.as_std())),
            absences: Default::default(),
            status_writes: Default::default(),
            claims: Default::default(),
            operator_principal,
        },
        policy_writer,
    ))
}

/// Obtains a Graph token once, so that a misconfigured identity shows in the log at start-up rather than on
/// the first object. Not fatal: Entra may be briefly unreachable, and each object reports its own failures.
/// The operator's own credential is used, so the token is cached for the first Graph request. Returns the
/// operator's object id, read from the token.
async fn check_azure(
    args: &AzureArgs,
    cloud: &Cloud,
    credential: &dyn azure_core::credentials::TokenCredential,
) -> Option<String> {
    let result = credential
        .get_token(&[cloud.graph_scope.as_str()], None)
        .await
        .map_err(anyhow::Error::from);
    match result {
        Ok(token) => {
            let principal = crate::azure::credential::object_id(token.token.secret());
            info!(cloud = ?cloud.name, authority = %cloud.authority_host, credential = ?args.azure_credential,
                principal = principal.as_deref().unwrap_or("unknown"), "azure credential ready");
            principal
        }
        Err(e) => {
            warn!(cloud = ?cloud.name, authority = %cloud.authority_host, credential = ?args.azure_credential, error = format!("{e:#}"), "azure credential not ready");
            None
        }
    }
}

async fn connect(args: &RunArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig given and none found in the environment")?,
    };
    Ok(Client::try_from(config)?)
}

/// Lists one object of the kind, which proves both that its CRD is installed and that this identity may read it.
/// `api` is scoped to `ns` (None: cluster-wide), which the errors name.
async fn check_served<K>(api: Api<K>, ns: Option<&str>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let plural = K::plural(&());
    let group = K::group(&());
    let within = ns
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            anyhow::bail!(
                "{plural}.{group} is not served: install the CRDs first (kubectl apply -f crds/)"
            )
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            anyhow::bail!(
                "not allowed to list {plural}.{group}{within}: {}",
                status.message
            )
        }
        Err(err) => Err(err).with_context(|| format!("cannot list {plural}.{group}{within}")),
    }
}

/// Listens for SIGTERM (how Kubernetes stops a pod) and SIGINT (Ctrl-C) from the moment it is called; the
/// returned future names the one that came.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = ["entra-operator", "run"].iter().chain(flags);
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        *args
    }

    // Installs for some namespaces share the cluster with others: none of them serves every cluster-scoped
    // watch unless told to.
    #[test]
    fn which_credential_watches_an_operator_serves() {
        assert_eq!(
            credential_watch_selector(&run_args(&[])),
            Some(String::new())
        );
        assert_eq!(
            credential_watch_selector(&run_args(&["--watch-namespaces", "team-a"])),
            None
        );
        assert_eq!(
            credential_watch_selector(&run_args(&[
                "--watch-namespaces",
                "team-a",
                "--credential-watch-selector",
                "team=a"
            ])),
            Some("team=a".into())
        );
        assert_eq!(
            credential_watch_selector(&run_args(&["--credential-watch-selector", ""])),
            Some(String::new())
        );
    }
}
