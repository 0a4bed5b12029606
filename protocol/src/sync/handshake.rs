//! The handshake: the dialer's `Hello`, the acceptor's checks (protocol, cluster id, the node
//! name against the certificate's) and `HelloAck`. The session applies what they agree.

use crate::dot::VersionVector;
use crate::wire::{Compression, Hello, HelloAck, MIN_PROTOCOL_VERSION};

use super::config::{PeerIdentity, SessionConfig};
use super::error::{clip, SyncError};

/// The dialer's `Hello`, advertising `vvs`.
pub(super) fn hello(cfg: &SessionConfig, vvs: Vec<(String, VersionVector)>) -> Hello {
    Hello {
        protocol: cfg.max_protocol,
        cluster_id: cfg.cluster_id.clone(),
        node: cfg.node.clone(),
        replica: cfg.replica.clone(),
        compression: cfg.compression.clone(),
        vvs,
    }
}

/// The acceptor checks the dialer's `Hello` from `peer`; returns the protocol version the
/// session speaks (the highest both do) and the compression agreed.
pub(super) fn check_hello(
    cfg: &SessionConfig,
    peer: &PeerIdentity,
    h: &Hello,
) -> Result<(u16, Compression), SyncError> {
    // `protocol` is the highest version the dialer speaks.
    if h.protocol < MIN_PROTOCOL_VERSION {
        return Err(SyncError::UnsupportedVersion {
            ours: cfg.max_protocol,
            theirs: h.protocol,
        });
    }
    if h.cluster_id != cfg.cluster_id {
        return Err(SyncError::WrongCluster {
            ours: cfg.cluster_id.clone(),
            theirs: clip(&h.cluster_id),
        });
    }
    if h.node != peer.node {
        return Err(SyncError::NodeMismatch {
            certificate: peer.node.clone(),
            hello: clip(&h.node),
        });
    }
    let compression = h
        .compression
        .iter()
        .copied()
        .find(|c| cfg.compression.contains(c))
        .unwrap_or(Compression::None);
    Ok((h.protocol.min(cfg.max_protocol), compression))
}

/// The dialer checks the acceptor's `HelloAck`: a protocol version it offered (from
/// [`MIN_PROTOCOL_VERSION`] to its own highest), a compression it offered.
pub(super) fn check_hello_ack(cfg: &SessionConfig, a: &HelloAck) -> Result<(), SyncError> {
    if a.protocol < MIN_PROTOCOL_VERSION || a.protocol > cfg.max_protocol {
        return Err(SyncError::UnsupportedVersion {
            ours: cfg.max_protocol,
            theirs: a.protocol,
        });
    }
    if a.accepted_compression != Compression::None
        && !cfg.compression.contains(&a.accepted_compression)
    {
        return Err(SyncError::CompressionNotOffered(
            match a.accepted_compression {
                Compression::None => "none",
                Compression::Zstd => "zstd",
            },
        ));
    }
    Ok(())
}
