//! Leader election: of several replicas, only the one holding the Lease reconciles; the others wait to take
//! over. kube-lease-manager holds and renews the Lease (with server-side apply, so two replicas can never both
//! hold it) and releases it when this replica stops. Since its renewal loop only logs a failure and retries,
//! a watchdog here confirms the Lease from the API server: a leader that cannot confirm it within the renew
//! deadline (the Lease duration less the grace) stops, before a standby may take the Lease over.

use crate::controller::clock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch::Receiver;
use tracing::{info, warn};

use crate::cli::RunArgs;

/// A held Lease.
pub struct Leadership {
    state: Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    grace: Duration,
}

impl Leadership {
    /// Resolves when leadership is lost or cannot be confirmed: the manager says so, the Lease names another
    /// holder or has run out, or the API server could not confirm it within the renew deadline.
    pub async fn lost(&mut self) {
        let mut confirmed = Instant::now();
        loop {
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() || !*self.state.borrow_and_update() {
                        warn!("the Lease manager gave up the Lease");
                        return;
                    }
                }
                _ = tokio::time::sleep(self.grace) => {}
            }
            match self.leases.get(&self.name).await {
                Ok(lease) => {
                    let spec = lease.spec.unwrap_or_default();
                    let holder = spec.holder_identity.unwrap_or_default();
                    let until = spec.renew_time.map(|t| {
                        t.0 + k8s_openapi::jiff::SignedDuration::try_from(self.duration)
                            .unwrap_or_default()
                    });
                    if holder != self.identity {
                        warn!(holder = %holder, "another replica holds the Lease");
                        return;
                    }
                    if until.is_some_and(|u| u < clock::now()) {
                        warn!("the Lease ran out without being renewed");
                        return;
                    }
                    confirmed = Instant::now();
                }
                Err(e) if confirmed.elapsed() + self.grace >= self.duration => {
                    warn!(error = %e, "could not confirm the Lease within the renew deadline");
                    return;
                }
                Err(e) => warn!(error = %e, "could not read the Lease; retrying"),
            }
        }
    }

    /// Gives the Lease up. A standby notices at its next check (within the Lease duration) instead of
    /// waiting for the Lease to run out first.
    pub async fn release(self) {
        // Closing the channel makes the manager's task release the Lease and end.
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(2), self.task).await {
            Ok(Ok(Ok(_))) => info!("released the leader-election Lease"),
            _ => warn!("could not release the leader-election Lease; it runs out on its own"),
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
        .max(3);
    // Renewed this long before it would run out: a third of the duration leaves room for a slow API server.
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.leader_election_lease)
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace(grace)
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
    Ok(Leadership {
        state,
        task,
        leases: Api::namespaced(client, &args.leader_election_namespace),
        name: args.leader_election_lease.clone(),
        identity,
        duration: Duration::from_secs(duration),
        grace: Duration::from_secs(grace),
    })
}
