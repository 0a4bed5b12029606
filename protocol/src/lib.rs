//! Sans-IO core of officesync: names, dots, version vectors, hybrid logical clocks,
//! versions with their causal context, the merge rules, shadow versions, collection
//! digests and the hash tree repair descends.
//! No sockets, no clock, no storage: callers pass `now` in and persist what comes out.

pub mod codec;
pub mod digest;
pub mod dot;
pub mod frontier;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hlc;
pub mod index_order;
pub mod merge;
pub mod names;
pub mod policy;
pub mod query;
pub mod shadow;
pub mod signing;
pub mod status;
pub mod subtree;
pub mod sync;
pub mod tree;
pub mod version;
pub mod wire;

pub use digest::Digest;
pub use dot::{Dot, ReplicaId, VersionVector};
pub use hlc::{Hlc, HlcClock};
pub use version::{Causal, ValueMeta, Version, VersionHeader};
