//! Integration tests against the real control plane that `make testenv-up` starts. One test binary, so that
//! the large dependency graph is linked once.

mod admission;
mod alerts;
mod chart;
mod crdgen;
mod credential_rotation;
mod explain;
mod harness;
mod high_availability;
mod operator_run;
mod role_delegation;
mod service_principal;
mod soak;
mod support;
mod workload_identity;
