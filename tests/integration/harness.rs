//! What the end-to-end tests share: a namespace with the operator's ServiceAccount and exactly its RBAC, an
//! emulator that trusts it, and ways to wait for and inspect what the operator did. They live in `testkit`
//! (the chaos soak starts from the same set-up); this module keeps the tests' paths to them.

pub use testkit::harness::*;
