//! Leader election: of several replicas, only the one holding the Lease reconciles; the others wait to take
//! over. kube-lease-manager holds and renews the Lease (with server-side apply, so two replicas can never both
//! hold it) and releases it when this replica stops.

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch::Receiver;
use tracing::info;

use crate::cli::RunArgs;

/// A held Lease.
pub struct Leadership {
    state: Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Leadership {
    /// Gives the Lease up, so that a standby takes over at once instead of waiting for it to expire.
    pub async fn release(self) {
        // Closing the channel makes the manager's task release the Lease and end.
        drop(self.state);
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await {
            Ok(Ok(Ok(_))) => info!("released the leader-election Lease"),
            _ => {
                tracing::warn!("could not release the leader-election Lease; it expires on its own")
            }
        }
    }

    /// Resolves when leadership is lost (the Lease was taken over, e.g. after this replica stalled).
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                return;
            }
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: Client, args: &RunArgs) -> anyhow::Result<Leadership> {
    let identity = match &args.pod_name {
        Some(name) => name.clone(),
        None => format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "entra-operator".into()),
            std::process::id()
        ),
    };
    let duration = args
        .leader_election_lease_duration
        .as_std()
        .as_secs()
        .max(2);
    let manager = LeaseManagerBuilder::new(client, &args.leader_election_lease)
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&identity)
        .with_duration(duration)
        // Renewed this long before it would expire: a third of the duration leaves room for a slow API server.
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot use Lease {}/{} for leader election",
                args.leader_election_namespace, args.leader_election_lease
            )
        })?;
    let (mut state, task) = manager.watch().await;
    info!(identity = %identity, lease = %args.leader_election_lease, namespace = %args.leader_election_namespace, "waiting for leadership");
    while !*state.borrow_and_update() {
        state
            .changed()
            .await
            .context("the leader-election task stopped")?;
    }
    info!(identity = %identity, "leading");
    Ok(Leadership { state, task })
}
