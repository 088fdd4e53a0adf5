//! Talking to Azure: which cloud (endpoints and token scopes), and as whom (the operator's own credential).
//! The Graph and ARM clients build on these.

pub mod cloud;
pub mod credential;

pub use cloud::Cloud;
