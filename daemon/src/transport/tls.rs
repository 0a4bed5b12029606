//! Mutual TLS for QUIC: rustls configurations that trust only the deployment CA, and the
//! peer identity read from the verified certificate.
//!
//! Both directions verify the peer's certificate against `ca.pem` alone (never the system
//! roots), with the *ring* provider passed explicitly (never the process-wide default), TLS 1.3
//! only (QUIC requires it), our ALPN only, and no 0-RTT or session resumption: every connection
//! is a full handshake, so a certificate is checked every time a link comes up. A connection
//! does not outlive the peer's certificate: it is closed when the certificate expires.
//!
//! Both verifiers are rustls' WebPKI verifiers wrapped to explain a refusal: a peer certificate
//! of another CA is described (subject, issuer, the issuer's key id) next to this node's CA
//! fingerprint, since from one side alone it cannot be told whose CA is the wrong one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use officesync_protocol::wire::{ErrorCode, ALPN};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{RootCertStore, SignatureScheme};
use x509_parser::extensions::ParsedExtension;

use super::error::TransportError;
use super::Counters;
use crate::config::TlsConfig;
use crate::pki::{self, CertIdentity};

/// Who the peer of a connection is, read from its verified certificate (never from anything
/// the peer says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Node name (the certificate's common name, equal to its DNS subject alternative name).
    pub name: String,
    /// Certificate serial number, lowercase hex (for logs and revocation lists).
    pub serial_hex: String,
    /// Whether the certificate is marked as an admin node's (OU `officesync-admin`). Whether
    /// the node may act as an admin is decided by `[cluster] admins` and `_policy`.
    pub admin_cert: bool,
    /// Last second of the certificate's validity (X.509 `notAfter`), unix seconds. A
    /// connection with the peer is closed when it passes ([`close_at_expiry`]).
    pub not_after: i64,
    /// The certificate itself (DER): it verifies the peer's version signatures.
    pub der: Vec<u8>,
}

impl PeerCertificate {
    /// The identity `id` read from the certificate `der`.
    pub fn new(id: CertIdentity, der: Vec<u8>) -> Self {
        PeerCertificate {
            name: id.name,
            serial_hex: id.serial_hex,
            admin_cert: id.admin,
            not_after: id.not_after,
            der,
        }
    }
}

/// The TLS material of this node, ready for quinn.
pub(crate) struct TlsSetup {
    /// The QUIC server crypto (requires and verifies client certificates).
    pub server: Arc<QuicServerConfig>,
    /// The QUIC client crypto (presents our certificate, verifies the server's).
    pub client: Arc<QuicClientConfig>,
    /// This node's identity from its own certificate.
    pub identity: PeerCertificate,
    /// SHA-256 of the CA certificate, lowercase hex: the cluster id.
    pub cluster_id: String,
}

/// Loads the bundle named by `[tls]` and builds both TLS configurations.
///
/// Checks on the way that the node certificate is issued by the CA and valid now, so a wrong
/// bundle is reported at startup rather than as refused handshakes.
pub(crate) fn load(tls: &TlsConfig) -> Result<TlsSetup, TransportError> {
    let cred = |what| move |source| TransportError::Credentials { what, source };
    let ca_ders = pki::load_cert_ders(&tls.ca).map_err(cred("CA certificate"))?;
    let chain_ders = pki::load_cert_ders(&tls.cert).map_err(cred("node certificate"))?;
    let key_der = pki::load_key_der(&tls.key).map_err(cred("node key"))?;

    // `load_cert_ders` returns at least one certificate.
    let (Some(ca_der), Some(leaf_der)) = (ca_ders.first(), chain_ders.first()) else {
        return Err(TransportError::TlsConfig {
            detail: "empty certificate file".to_owned(),
        });
    };
    pki::verify_chain_der(leaf_der, ca_der, pki::unix_now()).map_err(cred("node certificate"))?;
    let identity = pki::identity_from_der(leaf_der).map_err(cred("node certificate"))?;
    let identity = PeerCertificate::new(identity, leaf_der.clone());
    let cluster_id = pki::fingerprint_der(ca_der);

    let mut roots = RootCertStore::empty();
    for der in &ca_ders {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TransportError::TlsConfig {
                detail: format!("{}: {e}", tls.ca.display()),
            })?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = chain_ders.into_iter().map(Into::into).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));

    let own_ca = OwnCa::new(ca_der, &cluster_id, &tls.ca);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = server_config(&provider, &roots, &own_ca, chain.clone(), key.clone_key())?;
    let client = client_config(&provider, &roots, &own_ca, chain, key)?;
    Ok(TlsSetup {
        server,
        client,
        identity,
        cluster_id,
    })
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::TlsConfig {
        detail: e.to_string(),
    }
}

/// The server side: requires a client certificate chaining to the CA.
fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    own_ca: &OwnCa,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(tls_err)?;
    let verifier = Arc::new(ExplainingClientVerifier {
        inner,
        own_ca: own_ca.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: replayable early data has no place in a replication protocol.
    config.max_early_data_size = 0;
    // No resumption: every connection re-verifies the client certificate.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    let config = QuicServerConfig::try_from(config).map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// The client side: presents our certificate and verifies the server's against the CA with the
/// server name set to the peer's configured node name.
fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    own_ca: &OwnCa,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(tls_err)?;
    let verifier = Arc::new(ExplainingServerVerifier {
        inner,
        own_ca: own_ca.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    let config = QuicClientConfig::try_from(config).map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// This node's CA, as messages about a refused peer certificate name it.
#[derive(Debug, Clone)]
struct OwnCa {
    /// `tls.ca`, the file it is read from.
    path: String,
    /// SHA-256 of the CA certificate, lowercase hex: the cluster id.
    fingerprint: String,
    /// The CA's subject key identifier, lowercase hex, when it has one.
    key_id: Option<String>,
}

impl OwnCa {
    /// The CA whose certificate is `ca_der` (read from `path`) and whose fingerprint is
    /// `fingerprint`.
    fn new(ca_der: &[u8], fingerprint: &str, path: &std::path::Path) -> OwnCa {
        let key_id = x509_parser::parse_x509_certificate(ca_der)
            .ok()
            .and_then(|(_, ca)| {
                ca.extensions()
                    .iter()
                    .find_map(|ext| match ext.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(id) => Some(hex(id.0)),
                        _ => None,
                    })
            });
        OwnCa {
            path: path.display().to_string(),
            fingerprint: fingerprint.to_owned(),
            key_id,
        }
    }

    /// Why `end_entity` is refused, when `error` says it is not issued by this CA (its issuer
    /// is unknown, or its signature does not verify with the key of the CA it names: every
    /// deployment's CA has the same name): this CA's fingerprint, and what the certificate
    /// says of its subject and issuer.
    fn foreign(&self, error: &rustls::Error, end_entity: &CertificateDer<'_>) -> Option<String> {
        let rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) = error
        else {
            return None;
        };
        let ours = match &self.key_id {
            Some(id) => format!("; this node's CA has key id {}", short(id)),
            None => String::new(),
        };
        Some(format!(
            "{FOREIGN_CA}{}, fingerprint {}) is not the CA of the peer's certificate ({}{ours})",
            self.path,
            self.fingerprint,
            describe_certificate(end_entity)
        ))
    }
}

/// How a refusal of a peer certificate of another CA starts (see [`OwnCa::foreign`]).
pub(super) const FOREIGN_CA: &str = "this node's ca.pem (";

/// A certificate in a message: `CN=hefei, serial 4c01..., issuer CN=officesync CA with key
/// id 1a2b3c4d...`, from whatever of it parses.
fn describe_certificate(der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return "a certificate that does not parse".to_owned();
    };
    let issuer_key = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|id| format!(" with key id {}", short(&hex(id.0))))
        .unwrap_or_default();
    format!(
        "{}, serial {}, issuer {}{issuer_key}",
        printable(&cert.subject().to_string(), 200),
        short(&hex(cert.raw_serial())),
        printable(&cert.issuer().to_string(), 200),
    )
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 16 hex digits of a key id or serial, then `...` (enough to tell CAs apart).
fn short(hex: &str) -> String {
    match hex.get(..16) {
        Some(start) if hex.len() > 16 => format!("{start}..."),
        _ => hex.to_owned(),
    }
}

/// Text from a peer (its certificate, its reason for closing) as it may go into a log line:
/// printable ASCII, anything else as `?`, at most `max` characters.
pub(super) fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The error a refused peer certificate of another CA is reported with: its text is
/// [`OwnCa::foreign`]'s, which quinn passes on as the handshake failure's reason (to this
/// node, and to the peer in the connection close).
#[derive(Clone)]
pub(super) struct ForeignCa(pub(super) String);

impl std::fmt::Display for ForeignCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// rustls writes `CertificateError::Other` with `{:?}`: the text alone, not a struct.
impl std::fmt::Debug for ForeignCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ForeignCa {}

/// rustls' server certificate verifier (dialing side), whose refusal of a server certificate
/// of another CA says so with [`OwnCa::foreign`] (sent as the TLS alert certificate_unknown).
#[derive(Debug)]
struct ExplainingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    own_ca: OwnCa,
}

impl ServerCertVerifier for ExplainingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| match self.own_ca.foreign(&error, end_entity) {
                Some(text) => rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(ForeignCa(text))),
                )),
                None => error,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls' client certificate verifier (accepting side), which logs the certificate it refuses
/// (subject, issuer, and for another CA's, this node's CA fingerprint) before refusing it as
/// rustls does (same error, same TLS alert).
#[derive(Debug)]
struct ExplainingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    own_ca: OwnCa,
}

impl ClientCertVerifier for ExplainingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| match self.own_ca.foreign(error, end_entity) {
                // The accept span (with the peer's address) is current: quinn drives the
                // handshake in a task spawned within it.
                Some(text) => tracing::warn!(
                    "refused a peer certificate not issued by this deployment's CA: {text}"
                ),
                None => tracing::warn!(
                    certificate = %describe_certificate(end_entity),
                    %error,
                    "refused a peer certificate"
                ),
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The identity in the certificate a connection's peer presented (and TLS verified).
pub(crate) fn peer_identity(
    connection: &quinn::Connection,
    remote: SocketAddr,
) -> Result<PeerCertificate, TransportError> {
    let missing = || TransportError::Identity {
        remote,
        detail: "no certificate after the handshake".to_owned(),
    };
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(missing)?;
    let leaf = certs.first().ok_or_else(missing)?;
    pki::identity_from_der(leaf)
        .map(|id| PeerCertificate::new(id, leaf.to_vec()))
        .map_err(|e| TransportError::Identity {
            remote,
            detail: e.to_string(),
        })
}

/// Longest single sleep while waiting for a certificate to expire: the wall clock is read
/// again after it, so a clock step (NTP, suspend) moves the close with it.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);

/// The close reason sent when the peer's certificate expires.
pub(crate) const EXPIRED_REASON: &[u8] = b"peer certificate expired";

/// Closes `connection` with [`ErrorCode::NotAuthorized`] as soon as the certificate `peer`
/// authenticated with has expired (at once if it already has), and counts it; the watch ends
/// when the connection closes for another reason. A new connection then needs a valid
/// certificate, which TLS checks at its handshake.
pub(crate) fn close_at_expiry(
    connection: &quinn::Connection,
    peer: &PeerCertificate,
    counters: &Arc<Counters>,
) {
    let (connection, counters) = (connection.clone(), counters.clone());
    let (name, not_after) = (peer.name.clone(), peer.not_after);
    tokio::spawn(async move {
        loop {
            let left = until_expiry(not_after, SystemTime::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = connection.closed() => return,
                () = tokio::time::sleep(left.min(EXPIRY_RECHECK)) => {}
            }
        }
        if connection.close_reason().is_some() {
            return;
        }
        counters.certificate_expired();
        connection.close(ErrorCode::NotAuthorized.as_u32().into(), EXPIRED_REASON);
        tracing::warn!(
            peer = %name,
            conn = connection.stable_id(),
            not_after,
            "peer certificate expired; closed the connection"
        );
    });
}

/// How long after `now` a certificate whose `notAfter` is `not_after` (unix seconds; the
/// certificate is valid through that whole second, as TLS verifies it) stops being valid:
/// zero once it has. A `notAfter` beyond what the clock can represent never expires.
pub(crate) fn until_expiry(not_after: i64, now: SystemTime) -> Duration {
    let Ok(first_invalid) = u64::try_from(not_after.saturating_add(1)) else {
        // Before 1970: long expired.
        return Duration::ZERO;
    };
    match UNIX_EPOCH.checked_add(Duration::from_secs(first_invalid)) {
        Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        None => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn expiry_is_the_first_instant_after_not_after() {
        let not_after = 1_800_000_000;
        let n = not_after as u64;
        assert_eq!(
            until_expiry(not_after, at(n - 10, 0)),
            Duration::from_secs(11)
        );
        // Still valid during its last second.
        assert_eq!(
            until_expiry(not_after, at(n, 250)),
            Duration::from_millis(750)
        );
        assert_eq!(until_expiry(not_after, at(n + 1, 0)), Duration::ZERO);
        assert_eq!(until_expiry(not_after, at(n + 3600, 0)), Duration::ZERO);
    }

    #[test]
    fn expiry_of_extreme_dates_does_not_panic() {
        let now = at(1_800_000_000, 0);
        assert_eq!(until_expiry(-5, now), Duration::ZERO);
        assert_eq!(until_expiry(i64::MIN, now), Duration::ZERO);
        assert!(until_expiry(i64::MAX, now) > Duration::from_secs(1 << 40));
        // Year 9999, the latest an X.509 GeneralizedTime can say.
        assert!(until_expiry(253_402_300_799, now) > Duration::from_secs(100 * 365 * 86_400));
    }
}
