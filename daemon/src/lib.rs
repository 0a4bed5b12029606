//! officesyncd as a library: configuration, certificates, the versioned store and the local API.

pub mod api;
pub mod config;
pub mod node;
pub mod notify;
pub mod pki;
pub mod policy;
pub mod replica;
pub mod store;
pub mod sync;
pub mod time;
pub mod transport;
