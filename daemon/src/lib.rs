//! officesyncd as a library: configuration, certificates, the versioned store and the local API.

pub mod config;
pub mod pki;
pub mod store;
pub mod replica;
pub mod api;
pub mod node;
