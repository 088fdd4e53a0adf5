//! entra-operator: Microsoft Entra ID service principals, Azure role assignments and credential rotation as
//! Kubernetes resources.

pub mod api;
pub mod azure;
pub mod cli;
pub mod controller;
#[cfg(test)]
pub mod fixtures;
pub mod out;
pub mod telemetry;
