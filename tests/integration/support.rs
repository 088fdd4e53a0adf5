//! What every integration test needs: a client for the testenv control plane (as admin or as any
//! ServiceAccount), the CRDs installed, and a namespace of its own. They live in `testkit` (shared with the
//! chaos soak and the scale benchmark); this module keeps the tests' paths to them.

pub use testkit::support::*;

/// This package's root, where the tests find the examples, the CRDs and the chart.
pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
