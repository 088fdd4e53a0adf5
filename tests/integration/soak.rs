//! The short chaos soak: under a minute of churn, Azure faults and kills, then the leak audit; fails on any
//! finding. The engine (and what it checks) is `testkit::soak`; the long soak is the `chaos-soak` bench binary
//! (`make soak`).

use testkit::soak::{Params, soak, verdict};

// Four workers: the emulator, the churn, the probe and the audit share them; the kill loop has its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_soak_short() {
    let report = soak(Params::short()).await;
    verdict(&report);
}
