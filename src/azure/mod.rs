//! Talking to Azure: which cloud (endpoints and token scopes), as whom (the operator's own credential), the
//! typed Graph client, and what each failure means for the caller.

pub mod arm;
pub mod certificate;
pub mod cloud;
pub mod credential;
pub mod error;
pub mod graph;
pub mod http;
pub mod keyvault;
pub mod role_cache;
pub mod scope;
#[cfg(test)]
pub mod testing;
pub mod throttle;

pub use cloud::Cloud;
