//! azure-emulator: a local stand-in for the parts of Azure that entra-operator talks to (Entra token
//! endpoint, Microsoft Graph, ARM authorization, AKS, Key Vault secrets), faithful to their documented contract, with
//! replication delay, throttling and fault injection. Usable in-process (tests) or as a binary.

// Handlers return the error response itself as `Err`: boxing every early return would only add noise.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod arm;
pub mod auth;
pub mod certs;
pub mod config;
pub mod graph;
pub mod http;
pub mod jwt;
pub mod keyvault;
pub mod limits;
pub mod pki;
pub mod replication;
pub mod server;
pub mod state;
pub mod token;

pub use server::{Options, Running, start};
