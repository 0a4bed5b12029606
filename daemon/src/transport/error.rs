//! Why the transport failed, in words a sysadmin can act on, and the translation of QUIC and
//! TLS failures into those words.

use std::net::SocketAddr;

use officesync_protocol::wire::{ErrorCode, WireError};
use quinn::{ConnectionError, TransportErrorCode};
use thiserror::Error;

use super::tls;
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
    /// The peer's certificate does not chain to this node's CA: one of the two holds a bundle
    /// of another CA than the deployment's, and from this side alone it cannot be told which.
    #[error("peer at {remote}: {detail}; fix: check that tls.ca is the deployment's CA (its fingerprint is the cluster id that `officesync status` shows on the general office) and that this node's bundle came from it; if so, the peer presented a certificate not issued by this deployment's CA: give that node a bundle from this deployment's `officesync ca issue`")]
    UntrustedPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// This node's CA and the peer's certificate, as far as they are known.
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
    /// The peer refused our certificate during the TLS handshake (before presenting its own, if
    /// it is the dialing side).
    #[error("peer at {remote} refused this node's certificate ({detail}); fix: check that both nodes hold bundles of the same deployment CA and that they are not expired")]
    RejectedByPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// The TLS alert the peer sent, and the reason it gave.
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
    /// The peer closed the connection with one of the protocol's refusals: this node is revoked
    /// there, in backoff after bad input, of another cluster or too old for it.
    #[error("peer at {remote} refused this node: {code}{detail}")]
    RefusedByPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// The refusal's code.
        code: ErrorCode,
        /// The reason the peer gave, quoted.
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
            ConnectionError::TransportError(te) => Self::refused_here(remote, te.code, &te.reason)
                .unwrap_or_else(|| Self::Handshake {
                    remote,
                    detail: err.to_string(),
                }),
            // The peer's verifier refused ours.
            ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
                Some(alert) => Self::RejectedByPeer {
                    remote,
                    detail: format!(
                        "TLS alert {}{}",
                        alert_name(alert),
                        peer_reason(&close.reason)
                    ),
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
            other => Self::refused_by_peer(remote, other).unwrap_or_else(|| Self::Handshake {
                remote,
                detail: other.to_string(),
            }),
        }
    }

    /// The refusal in a connection the peer closed (before or after the handshake), if it
    /// closed it with one: a dialer records it as why the peer is down, whenever it came.
    pub(crate) fn refused_by_peer(remote: SocketAddr, err: &ConnectionError) -> Option<Self> {
        let ConnectionError::ApplicationClosed(close) = err else {
            return None;
        };
        let code = u32::try_from(close.error_code.into_inner())
            .ok()
            .and_then(ErrorCode::from_u32)?;
        matches!(
            code,
            ErrorCode::Revoked
                | ErrorCode::Backoff
                | ErrorCode::WrongCluster
                | ErrorCode::UnsupportedVersion
        )
        .then(|| Self::RefusedByPeer {
            remote,
            code,
            detail: peer_reason(&close.reason),
        })
    }

    /// This node's verifier refused the peer's certificate with the TLS alert in `code` and
    /// rustls' `reason`; `None` for a local failure of another kind.
    fn refused_here(remote: SocketAddr, code: TransportErrorCode, reason: &str) -> Option<Self> {
        Some(match tls_alert(code)? {
            // Refused as a server certificate of another CA (see `tls::OwnCa::foreign`).
            CERTIFICATE_UNKNOWN if foreign_ca(reason).is_some() => Self::UntrustedPeer {
                remote,
                detail: foreign_ca(reason).unwrap_or_default().to_owned(),
            },
            // Refused as a client certificate (the accept side logged what it was).
            UNKNOWN_CA | DECRYPT_ERROR => Self::UntrustedPeer {
                remote,
                detail: format!(
                    "the certificate it presented is not issued by this node's CA ({reason})"
                ),
            },
            alert if is_certificate_alert(alert) => Self::BadPeerCertificate {
                remote,
                detail: reason.to_owned(),
            },
            _ => return None,
        })
    }
}

/// The explanation in a handshake failure's reason that a certificate of another CA was
/// refused (`tls::OwnCa::foreign`), without what rustls wraps it in.
fn foreign_ca(reason: &str) -> Option<&str> {
    let start = reason.find(tls::FOREIGN_CA)?;
    let text = &reason[start..];
    // rustls writes `invalid peer certificate: Other(OtherError(TEXT))`.
    Some(text.strip_suffix("))").unwrap_or(text))
}

/// `; it says "..."` with the reason a peer gave for closing the handshake (escaped: it is
/// the peer's text), or nothing if it gave none.
fn peer_reason(reason: &[u8]) -> String {
    let text = String::from_utf8_lossy(reason);
    let text = foreign_ca(&text).unwrap_or(&text);
    if text.trim().is_empty() {
        return String::new();
    }
    format!("; it says {:?}", tls::printable(text, 600))
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

/// The TLS alert this node sends for a server certificate of another CA (with its
/// explanation), and rustls for a certificate unacceptable for an unspecified reason.
const CERTIFICATE_UNKNOWN: u8 = 46;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quinn::ConnectionClose;
    use rustls::{CertificateError, OtherError};

    use super::*;

    /// A refusal text as `tls::OwnCa::foreign` writes it.
    const FOREIGN: &str = "this node's ca.pem (/etc/officesync/ca.pem, fingerprint 3f2a) is not \
                           the CA of the peer's certificate (CN=general-office, serial 4c01, \
                           issuer CN=officesync CA with key id 1a2b)";

    fn remote() -> SocketAddr {
        "192.0.2.7:7400".parse().expect("address")
    }

    #[test]
    fn a_server_certificate_of_another_ca_names_this_nodes_ca_not_the_peer() {
        // The reason quinn gives: what rustls writes of the verifier's error.
        let reason = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(tls::ForeignCa(FOREIGN.to_owned())),
        )))
        .to_string();
        assert_eq!(foreign_ca(&reason), Some(FOREIGN), "{reason}");
        let code = TransportErrorCode::crypto(CERTIFICATE_UNKNOWN);
        let err = TransportError::refused_here(remote(), code, &reason).expect("a refusal");
        assert!(matches!(err, TransportError::UntrustedPeer { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "peer at 192.0.2.7:7400: {FOREIGN}; fix: check that tls.ca"
            )),
            "{text}"
        );
        assert!(!text.contains("OtherError"), "{text}");
    }

    #[test]
    fn a_peer_that_refused_our_certificate_is_quoted_escaped() {
        let closed = |reason: &str| {
            ConnectionError::ConnectionClosed(ConnectionClose {
                error_code: TransportErrorCode::crypto(CERTIFICATE_UNKNOWN),
                frame_type: None,
                reason: reason.as_bytes().to_vec().into(),
            })
        };
        let wrapped = format!("invalid peer certificate: Other(OtherError({FOREIGN}))");
        let err = TransportError::from_handshake(remote(), &closed(&wrapped));
        assert!(
            matches!(err, TransportError::RejectedByPeer { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!(
                "(TLS alert certificate_unknown; it says {FOREIGN:?}); fix:"
            )),
            "{err}"
        );
        let err = TransportError::from_handshake(remote(), &closed("evil\u{1b}[2J\nline"));
        assert!(
            err.to_string().contains("it says \"evil?[2J?line\""),
            "{err}"
        );
        let err = TransportError::from_handshake(remote(), &closed(""));
        assert!(
            err.to_string()
                .contains("(TLS alert certificate_unknown); fix:"),
            "{err}"
        );
    }

    #[test]
    fn a_peer_that_closes_with_a_refusal_says_why_before_or_after_the_handshake() {
        let closed = |code: u32, reason: &str| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: reason.as_bytes().to_vec().into(),
            })
        };
        let revoked = closed(ErrorCode::Revoked.as_u32(), "revoked by _policy");
        let err = TransportError::refused_by_peer(remote(), &revoked).expect("a refusal");
        assert_eq!(
            err.to_string(),
            "peer at 192.0.2.7:7400 refused this node: revoked; it says \"revoked by _policy\""
        );
        // The same words when the refusal ends the handshake itself.
        assert_eq!(
            TransportError::from_handshake(remote(), &revoked).to_string(),
            err.to_string()
        );
        // A normal close, a fault of ours or a code this build does not know is no refusal.
        for code in [
            0,
            ErrorCode::Internal.as_u32(),
            ErrorCode::Malformed.as_u32(),
            4_000,
        ] {
            assert!(
                TransportError::refused_by_peer(remote(), &closed(code, "bye")).is_none(),
                "code {code}"
            );
        }
    }
}
