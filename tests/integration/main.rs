//! Integration tests against the real control plane that `make testenv-up` starts. One test binary, so that
//! the large dependency graph is linked once.

mod admission;
mod admission_fuzz;
mod alerts;
mod certificates;
mod chart;
mod chart_namespaced;
mod crdgen;
mod credential_rotation;
mod credential_watch;
mod explain;
mod harness;
mod high_availability;
mod key_vault;
mod operator_run;
mod plugin;
mod role_delegation;
mod service_principal;
mod soak;
mod support;
mod tenancy_credential_rotation;
mod tenancy_role_delegation;
mod tenancy_service_principal;
mod verification;
mod workload_identity;
