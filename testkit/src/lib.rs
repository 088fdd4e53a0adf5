//! What the integration tests (`tests/integration`), the chaos soak (`bench/chaos-soak`) and the scale benchmark
//! (`bench/operator-scale`) share, so that each starts the control plane's clients, the emulator and the
//! operator binary the same way: testenv access ([`support`]), a namespace with the operator's RBAC and an
//! emulator that trusts it ([`harness`]), one operator launcher ([`operator`]), and the soak engine ([`soak`]).

pub mod harness;
pub mod operator;
pub mod soak;
pub mod support;

use std::path::Path;

/// The repository's root: this crate lives one level below it, and testenv's state, the committed CRDs, the
/// rendered chart and bench/results are found from there whoever links it.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
}
