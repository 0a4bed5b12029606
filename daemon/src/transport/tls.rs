//! Mutual TLS for QUIC: rustls configurations that trust only the deployment CA, and the
//! peer identity read from the verified certificate.
//!
//! Both directions verify the peer's certificate against `ca.pem` alone (never the system
//! roots), with the *ring* provider passed explicitly (never the process-wide default), TLS 1.3
//! only (QUIC requires it), our ALPN only, and no 0-RTT or session resumption: every connection
//! is a full handshake, so a certificate is checked every time a link comes up.

use std::net::SocketAddr;
use std::sync::Arc;

use officesync_protocol::wire::ALPN;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;

use super::error::TransportError;
use crate::config::TlsConfig;
use crate::pki::{self, CertIdentity};

/// Who the peer of a connection is, read from its verified certificate (never from anything
/// the peer says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Node name (the certificate's common name, equal to its DNS subject alternative name).
    pub name: String,
    /// Certificate serial number, lowercase hex (for logs and revocation lists).
    pub serial_hex: String,
    /// Whether the certificate is marked as an admin node's (OU `officesync-admin`). Whether
    /// the node may act as an admin is decided by `[cluster] admins` and `_policy`.
    pub admin_cert: bool,
}

impl From<CertIdentity> for PeerIdentity {
    fn from(id: CertIdentity) -> Self {
        PeerIdentity {
            name: id.name,
            serial_hex: id.serial_hex,
            admin_cert: id.admin,
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
    pub identity: PeerIdentity,
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

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = server_config(&provider, &roots, chain.clone(), key.clone_key())?;
    let client = client_config(&provider, &roots, chain, key)?;
    Ok(TlsSetup {
        server,
        client,
        identity: identity.into(),
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
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(tls_err)?;
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
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(tls_err)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    let config = QuicClientConfig::try_from(config).map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// The identity in the certificate a connection's peer presented (and TLS verified).
pub(crate) fn peer_identity(
    connection: &quinn::Connection,
    remote: SocketAddr,
) -> Result<PeerIdentity, TransportError> {
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
        .map(PeerIdentity::from)
        .map_err(|e| TransportError::Identity {
            remote,
            detail: e.to_string(),
        })
}
