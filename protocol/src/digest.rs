//! Collection digests: an order-independent hash over `(key, dot, value hash)` of every current
//! version, kept incrementally by toggling versions in and out.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::dot::Dot;
use crate::version::ValueMeta;

/// XOR of the SHA-256 of every current version's `(key, dot, value)`; equal on two replicas
/// exactly when they hold the same versions (up to hash collisions).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Adds or removes (the same operation) one version.
    pub fn toggle(&mut self, key: &str, dot: &Dot, value: &ValueMeta) {
        self.xor(&Self::element(key, dot, value));
    }

    /// The digest of one version alone: toggling it in is XOR-ing this in.
    pub fn element(key: &str, dot: &Dot, value: &ValueMeta) -> Digest {
        Digest(element_hash(key, dot, value))
    }

    /// XORs `other` in: the digest of both sets of versions (or of their difference).
    pub fn xor(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a ^= b;
        }
    }

    /// True for the digest of no version.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn element_hash(key: &str, dot: &Dot, value: &ValueMeta) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(key.len() as u64).to_le_bytes());
    ctx.update(key.as_bytes());
    let origin = dot.origin.as_str();
    ctx.update(&(origin.len() as u64).to_le_bytes());
    ctx.update(origin.as_bytes());
    ctx.update(&dot.counter.to_le_bytes());
    match value {
        ValueMeta::Tombstone => ctx.update(&[0]),
        ValueMeta::Present { len, hash } => {
            ctx.update(&[1]);
            ctx.update(&len.to_le_bytes());
            ctx.update(hash);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::ReplicaId;

    #[test]
    fn order_independent_and_reversible() {
        let r = ReplicaId::new("a", 1).expect("valid");
        let (d1, d2) = (Dot::new(r.clone(), 1), Dot::new(r, 2));
        let val = ValueMeta::of(Some(b"v"));
        let mut x = Digest::default();
        x.toggle("k", &d1, &val);
        x.toggle("j", &d2, &ValueMeta::Tombstone);
        let mut y = Digest::default();
        y.toggle("j", &d2, &ValueMeta::Tombstone);
        y.toggle("k", &d1, &val);
        assert_eq!(x, y);
        assert_ne!(x, Digest::default());
        y.toggle("k", &d1, &ValueMeta::of(Some(b"w")));
        assert_ne!(x, y);
        x.toggle("k", &d1, &val);
        x.toggle("j", &d2, &ValueMeta::Tombstone);
        assert_eq!(x, Digest::default());
        assert_eq!(x.to_hex().len(), 64);
    }
}
