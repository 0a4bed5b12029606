//! The handshake: the dialer's `Hello`, the acceptor's checks (protocol, cluster id, the node
//! name against the certificate's) and `HelloAck`, and what establishing the session starts.

use crate::wire::{Compression, Hello, HelloAck, PROTOCOL_VERSION};

use super::api::Event;
use super::error::{clip, SyncError};
use super::session::{Phase, Session};

impl Session {
    /// The acceptor checks the dialer's `Hello` and answers `HelloAck`.
    pub(super) fn on_hello(&mut self, h: Hello) -> Result<(), SyncError> {
        // `protocol` is the highest version the dialer speaks: anything from ours up is fine.
        if h.protocol < PROTOCOL_VERSION {
            return Err(SyncError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: h.protocol,
            });
        }
        if h.cluster_id != self.cfg.cluster_id {
            return Err(SyncError::WrongCluster {
                ours: self.cfg.cluster_id.clone(),
                theirs: clip(&h.cluster_id),
            });
        }
        if h.node != self.peer.node {
            return Err(SyncError::NodeMismatch {
                certificate: self.peer.node.clone(),
                hello: clip(&h.node),
            });
        }
        self.compression = h
            .compression
            .iter()
            .copied()
            .find(|c| self.cfg.compression.contains(c))
            .unwrap_or(Compression::None);
        self.peer_replica = Some(h.replica);
        self.peer_vvs = h.vvs.into_iter().collect();
        let ack = HelloAck {
            protocol: PROTOCOL_VERSION,
            accepted_compression: self.compression,
            vvs: self.advertise(),
        };
        self.control_q.push_back(ack.into());
        self.establish();
        Ok(())
    }

    /// The dialer checks the acceptor's `HelloAck`.
    pub(super) fn on_hello_ack(&mut self, a: HelloAck) -> Result<(), SyncError> {
        if a.protocol != PROTOCOL_VERSION {
            return Err(SyncError::UnsupportedVersion {
                ours: PROTOCOL_VERSION,
                theirs: a.protocol,
            });
        }
        if a.accepted_compression != Compression::None
            && !self.cfg.compression.contains(&a.accepted_compression)
        {
            return Err(SyncError::CompressionNotOffered(
                match a.accepted_compression {
                    Compression::None => "none",
                    Compression::Zstd => "zstd",
                },
            ));
        }
        self.compression = a.accepted_compression;
        self.peer_vvs = a.vvs.into_iter().collect();
        self.establish();
        // Tells the acceptor its HelloAck arrived, so its bulk frames may follow.
        self.send_probe();
        Ok(())
    }

    /// The handshake completed: start heartbeats, the sending loop and the repair timer.
    fn establish(&mut self) {
        self.phase = Phase::Established;
        self.hb.next_at = self.now.saturating_add(self.cfg.heartbeat_interval_ms);
        self.repair.next_due = self.now.saturating_add(self.cfg.repair_interval_ms);
        let collections: Vec<String> = self.local.keys().cloned().collect();
        for c in &collections {
            self.ready_all(c);
        }
        self.events.push_back(Event::Established {
            peer_replica: self.peer_replica.clone(),
            compression: self.compression,
        });
    }
}
