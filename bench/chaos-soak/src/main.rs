//! The long chaos soak (`make soak`, `SOAK_SECONDS` of churn, default 300): the engine of the short soak in
//! `make test` (`testkit::soak`) with more objects and longer, on testenv. Writes
//! bench/results/chaos-soak.{json,md} and then fails, like the short soak, if the chaos did not happen or the
//! audit found anything. Runs the debug operator built next to it (`make soak` builds both).

use testkit::soak::{Params, soak, verdict, write};

// Four workers, as the short soak's test has: the emulator, the churn, the probe and the audit share them;
// the kill loop has its own thread.
#[tokio::main(worker_threads = 4)]
async fn main() {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let report = soak(Params::long(seconds)).await;
    // Written before the verdict: a failing run's report is the one worth reading.
    write(&report, &testkit::repo_root().join("bench/results"))
        .expect("write bench/results/chaos-soak.{json,md}");
    verdict(&report);
}
