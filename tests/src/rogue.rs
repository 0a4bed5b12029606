//! A hostile peer for the security suites: a test-side QUIC client that holds a certificate
//! bundle (valid, expired, not yet valid, or an office's listed as admin), completes the TLS
//! handshake and the session handshake like a real node, then sends whatever bytes a test
//! chooses on the control or bulk stream, and reports how the daemon closed on it.
//!
//! It builds its own rustls configuration (the daemon's refuses to load an expired
//! certificate), verifies the daemon's certificate against the bundle's `ca.pem`, and never
//! reads the clock or a global RNG for anything a test asserts on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use officesync_daemon::pki;
use officesync_protocol::wire::{
    decode_message, encode_frame, Compression, ErrorFrame, FrameDecoder, FrameFlags, Hello,
    HelloAck, Message, MessageV1, ALPN, PROTOCOL_VERSION,
};
use officesync_protocol::{ReplicaId, VersionVector};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long the rogue waits for any one answer from the daemon.
pub const ROGUE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the daemon ended the rogue's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The application close code (an officesync `ErrorCode` number), if the daemon closed it
    /// at the application level.
    pub code: Option<u64>,
    /// The close reason, or the transport error text.
    pub reason: String,
}

/// A connected hostile peer.
pub struct Rogue {
    endpoint: quinn::Endpoint,
    /// The QUIC connection to the daemon.
    pub connection: quinn::Connection,
    control: Option<(quinn::SendStream, quinn::RecvStream)>,
    bulk: Option<quinn::SendStream>,
    decoder: FrameDecoder,
    /// The cluster id (CA fingerprint) from the bundle's `ca.pem`.
    pub cluster_id: String,
}

/// Builds the client configuration from the bundle in `bundle` (`node.pem`, `node.key`,
/// `ca.pem`), whatever the certificate's validity.
fn client_config(bundle: &Path) -> Result<(quinn::ClientConfig, String)> {
    let ca = pki::load_cert_ders(&bundle.join("ca.pem")).context("ca.pem")?;
    let chain = pki::load_cert_ders(&bundle.join("node.pem")).context("node.pem")?;
    let key = pki::load_key_der(&bundle.join("node.key")).context("node.key")?;
    let cluster_id = pki::fingerprint_der(ca.first().ok_or_else(|| anyhow!("empty ca.pem"))?);
    let mut roots = rustls::RootCertStore::empty();
    for der in ca {
        roots.add(CertificateDer::from(der))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(Into::into).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok((config, cluster_id))
}

impl Rogue {
    /// Completes the QUIC and TLS handshake with the daemon `server_name` at `addr`, presenting
    /// the bundle in `bundle`. Fails (with the TLS or close reason) when the daemon refuses
    /// the certificate or the connection.
    pub async fn connect(bundle: &Path, addr: SocketAddr, server_name: &str) -> Result<Rogue> {
        let (config, cluster_id) = client_config(bundle)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint.connect(addr, server_name)?;
        let connection = tokio::time::timeout(ROGUE_TIMEOUT, connecting)
            .await
            .context("handshake timed out")?
            .map_err(|e| anyhow!("handshake refused: {e}"))?;
        // With TLS 1.3 the server checks our certificate after the client considers the
        // handshake done: give a refusal the time to arrive before reporting success.
        match tokio::time::timeout(Duration::from_millis(300), connection.closed()).await {
            Ok(reason) => bail!("handshake refused: {reason}"),
            Err(_) => Ok(Rogue {
                endpoint,
                connection,
                control: None,
                bulk: None,
                decoder: FrameDecoder::new(),
                cluster_id,
            }),
        }
    }

    /// Opens the control stream and sends a valid `Hello` as node `node` (replica
    /// `replica`) with the vectors `vvs`, then waits for the daemon's `HelloAck`.
    pub async fn hello(
        &mut self,
        node: &str,
        replica: &ReplicaId,
        vvs: Vec<(String, VersionVector)>,
    ) -> Result<HelloAck> {
        let hello: Message = Hello {
            protocol: PROTOCOL_VERSION,
            cluster_id: self.cluster_id.clone(),
            node: node.to_owned(),
            replica: replica.clone(),
            compression: vec![Compression::None],
            vvs,
        }
        .into();
        self.send_control(&encode_frame(&hello, FrameFlags::NONE)?)
            .await?;
        match self.recv_control().await? {
            Message::V1(MessageV1::HelloAck(ack)) => Ok(ack),
            other => bail!("expected HelloAck, got {}", other.kind()),
        }
    }

    /// Writes raw bytes on the control stream (opened on first use).
    pub async fn send_control(&mut self, bytes: &[u8]) -> Result<()> {
        if self.control.is_none() {
            self.control = Some(self.connection.open_bi().await?);
        }
        let (send, _) = self.control.as_mut().ok_or_else(|| anyhow!("no control"))?;
        send.write_all(bytes).await?;
        Ok(())
    }

    /// Writes raw bytes on the bulk stream (opened on first use).
    pub async fn send_bulk(&mut self, bytes: &[u8]) -> Result<()> {
        if self.bulk.is_none() {
            self.bulk = Some(self.connection.open_uni().await?);
        }
        let send = self.bulk.as_mut().ok_or_else(|| anyhow!("no bulk"))?;
        send.write_all(bytes).await?;
        Ok(())
    }

    /// Sends `msg` as a valid frame on the stream it belongs on.
    pub async fn send_message(&mut self, msg: &Message) -> Result<()> {
        let frame = encode_frame(msg, FrameFlags::NONE)?;
        match msg {
            Message::V1(MessageV1::Batch(_) | MessageV1::Complete(_)) => {
                self.send_bulk(&frame).await
            }
            Message::V1(_) => self.send_control(&frame).await,
        }
    }

    /// The next message the daemon sends on the control stream.
    pub async fn recv_control(&mut self) -> Result<Message> {
        let (_, recv) = self.control.as_mut().ok_or_else(|| anyhow!("no control"))?;
        loop {
            if let Some(frame) = self.decoder.poll_frame()? {
                return Ok(decode_message(&frame.payload)?);
            }
            let chunk = tokio::time::timeout(ROGUE_TIMEOUT, recv.read_chunk(64 << 10, true))
                .await
                .context("no answer on the control stream")??
                .ok_or_else(|| anyhow!("control stream finished"))?;
            self.decoder.push(&chunk.bytes);
        }
    }

    /// Reads control messages until the daemon's `Error` frame (skipping heartbeats, acks
    /// and the like); `None` if the stream ends first.
    pub async fn error_frame(&mut self) -> Option<ErrorFrame> {
        loop {
            match self.recv_control().await {
                Ok(Message::V1(MessageV1::Error(e))) => return Some(e),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits for the daemon to close the connection and says how.
    pub async fn closed(&self) -> Closed {
        match tokio::time::timeout(ROGUE_TIMEOUT, self.connection.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(close)) => Closed {
                code: Some(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            Ok(other) => Closed {
                code: None,
                reason: other.to_string(),
            },
            Err(_) => Closed {
                code: None,
                reason: "still open".to_owned(),
            },
        }
    }

    /// Closes the connection and the endpoint.
    pub async fn shutdown(self) {
        self.connection.close(0u32.into(), b"rogue done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
