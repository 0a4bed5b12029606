//! Why the transport failed, in words a sysadmin can act on, and the translation of QUIC and
//! TLS failures into those words.

use std::net::SocketAddr;

use officesync_protocol::wire::{ErrorCode, WireError};
use quinn::{ConnectionError, TransportErrorCode};
use thiserror::Error;

use crate::pki::PkiError;

/// Why a transport operation failed. Every message is one line.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The node's own certificate, key or CA could not be loaded or do not fit together.
    #[error("cannot load the TLS {what}: {source}")]
    Credentials {
        /// Which part of the bundle (`CA certificate`, `node certificate`, `node key`).
        what: &'static str,
        /// What is wrong with it.
        source: PkiError,
    },
    /// The TLS or QUIC configuration could not be built from the bundle.
    #[error("cannot build the TLS configuration: {detail}")]
    TlsConfig {
        /// What rustls or quinn refused.
        detail: String,
    },
    /// The UDP socket for `sync.listen` could not be bound.
    #[error("cannot listen on sync.listen {addr} (UDP): {source} (fix: free the port or change sync.listen)")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A peer's `host:port` could not be resolved to an address this node can reach.
    #[error("cannot resolve peer {peer} at {addr}: {detail}")]
    Resolve {
        /// The configured peer name.
        peer: String,
        /// The configured `host:port`.
        addr: String,
        /// Why resolution failed.
        detail: String,
    },
    /// quinn refused to start a connection (bad server name, endpoint stopping...).
    #[error("cannot dial peer {peer} at {remote}: {detail}")]
    Connect {
        /// The configured peer name.
        peer: String,
        /// The address dialed.
        remote: SocketAddr,
        /// What quinn refused.
        detail: String,
    },
    /// The peer's certificate does not chain to this deployment's CA.
    #[error("peer at {remote} presented a certificate not issued by this deployment's CA ({detail}); fix: give that office a bundle issued by this deployment's `officesync ca issue`")]
    UntrustedPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// What the TLS verifier said.
        detail: String,
    },
    /// The peer's certificate chains to the CA but is not acceptable (expired, not yet valid,
    /// wrong key usage, malformed).
    #[error("peer at {remote} presented an unacceptable certificate: {detail}")]
    BadPeerCertificate {
        /// The peer's address.
        remote: SocketAddr,
        /// What the TLS verifier said.
        detail: String,
    },
    /// The peer refused our certificate during the TLS handshake.
    #[error("peer at {remote} refused this node's certificate ({detail}); fix: check that both offices hold bundles of the same deployment CA and that they are not expired")]
    RejectedByPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// The TLS alert or reason the peer sent.
        detail: String,
    },
    /// A dialed peer's certificate names another node than the one configured for that address.
    #[error("peer at {remote} is not {expected:?} as configured in sync.peers: {detail}; fix: correct the peer's name or addr")]
    WrongPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// The configured peer name.
        expected: String,
        /// What the certificate said instead.
        detail: String,
    },
    /// The peer's certificate is valid but carries no usable node identity.
    #[error("peer at {remote} presented no usable node identity: {detail}")]
    Identity {
        /// The peer's address.
        remote: SocketAddr,
        /// Why the identity could not be read.
        detail: String,
    },
    /// The QUIC/TLS handshake failed for another reason (timeout, protocol error, peer gone).
    #[error("handshake with {remote} failed: {detail}")]
    Handshake {
        /// The peer's address.
        remote: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// Reading a stream failed (peer reset it, connection lost).
    #[error("reading from the peer failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing a stream failed (peer stopped it, connection lost).
    #[error("writing to the peer failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent a frame or message this build refuses; the stream was stopped with
    /// [`WireError::code`].
    #[error("peer sent an invalid frame: {0}")]
    Decode(#[from] WireError),
    /// A compressed payload from the peer does not decompress.
    #[error("peer sent a zstd payload that does not decompress: {detail}")]
    Decompress {
        /// What zstd said.
        detail: String,
    },
    /// A message could not be framed for sending (it is larger than the frame limit).
    #[error("cannot send message: {0}")]
    Encode(WireError),
    /// Compressing an outgoing payload failed.
    #[error("cannot compress message: {detail}")]
    Compress {
        /// What zstd said.
        detail: String,
    },
    /// The stream or transport is closed: a framed stream after an earlier error, or an endpoint
    /// that is shutting down.
    #[error("the connection or stream is closed")]
    Closed,
}

impl TransportError {
    /// The code to stop a stream or close a connection with for this error, when it is the
    /// peer's (or our sender's) fault; `None` for I/O and connection failures.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Decode(e) => Some(e.code()),
            Self::Decompress { .. } => Some(ErrorCode::Malformed),
            Self::Encode(_) | Self::Compress { .. } => Some(ErrorCode::Internal),
            Self::UntrustedPeer { .. }
            | Self::BadPeerCertificate { .. }
            | Self::WrongPeer { .. }
            | Self::Identity { .. } => Some(ErrorCode::NotAuthorized),
            _ => None,
        }
    }

    /// Translates a failed handshake (of a connection to or from `remote`) into words.
    pub(crate) fn from_handshake(remote: SocketAddr, err: &ConnectionError) -> Self {
        match err {
            // Our verifier refused the peer's certificate: the TLS alert we sent says why.
            ConnectionError::TransportError(te) => match tls_alert(te.code) {
                Some(UNKNOWN_CA | DECRYPT_ERROR) => Self::UntrustedPeer {
                    remote,
                    detail: te.reason.clone(),
                },
                Some(alert) if is_certificate_alert(alert) => Self::BadPeerCertificate {
                    remote,
                    detail: te.reason.clone(),
                },
                _ => Self::Handshake {
                    remote,
                    detail: err.to_string(),
                },
            },
            // The peer's verifier refused ours.
            ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
                Some(alert) => Self::RejectedByPeer {
                    remote,
                    detail: format!("TLS alert {}", alert_name(alert)),
                },
                None => Self::Handshake {
                    remote,
                    detail: err.to_string(),
                },
            },
            ConnectionError::TimedOut => Self::Handshake {
                remote,
                detail: "timed out (is the peer running and is UDP reachable?)".to_owned(),
            },
            ConnectionError::LocallyClosed => Self::Closed,
            other => Self::Handshake {
                remote,
                detail: other.to_string(),
            },
        }
    }
}

/// The TLS alert carried by a QUIC CRYPTO_ERROR code (0x100..=0x1ff), if it is one.
fn tls_alert(code: TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff)
        .contains(&code)
        .then(|| u8::try_from(code - 0x100).unwrap_or(u8::MAX))
}

/// The TLS alert rustls sends for a certificate whose issuer is not a trusted root.
const UNKNOWN_CA: u8 = 48;

/// The TLS alert rustls sends for a certificate whose signature does not verify. Every
/// deployment's CA has the same name, so a certificate of another deployment's CA finds our CA
/// as its issuer by name and fails here rather than as an unknown CA.
const DECRYPT_ERROR: u8 = 51;

/// TLS alerts rustls sends when the peer's certificate is not acceptable for another reason.
fn is_certificate_alert(alert: u8) -> bool {
    matches!(alert, 42..=46 | 49)
}

/// The name of a TLS alert, for messages.
fn alert_name(alert: u8) -> String {
    let name = match alert {
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        49 => "access_denied",
        51 => "decrypt_error",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("{alert}"),
    };
    name.to_owned()
}
