//! A hostile peer for the security suites: a test-side QUIC client that holds a certificate
//! bundle (valid, expired, not yet valid, or an office's listed as admin), completes the TLS
//! handshake and the session handshake like a real node, then sends whatever bytes a test
//! chooses on the control or bulk stream, and reports how the daemon closed on it.
//!
//! It builds its own rustls configuration (the daemon's refuses to load an expired
//! certificate), verifies the daemon's certificate against the bundle's `ca.pem`, and never
//! reads the clock or a global RNG for anything a test asserts on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use officesync_daemon::pki;
use officesync_daemon::signing::NodeSigner;
use officesync_protocol::signing::{nodes_key, NODES_COLLECTION};
use officesync_protocol::wire::{
    decode_message, encode_frame, Compression, ErrorFrame, FrameDecoder, FrameFlags, Hello,
    HelloAck, Message, MessageV2, ALPN, PROTOCOL_VERSION,
};
use officesync_protocol::wire::{Batch, Complete};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The frames of a stream of one version: its `Batch` and the `Complete` through it.
pub fn one_version_stream(v: Version) -> [Message; 2] {
    let (collection, origin, through) = (v.collection.clone(), v.dot.origin.clone(), v.dot.counter);
    [
        Batch {
            collection: collection.clone(),
            origin: origin.clone(),
            versions: vec![v],
        }
        .into(),
        Complete {
            collection,
            origin,
            through,
        }
        .into(),
    ]
}

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
    /// Signs the versions [`Rogue::send_message`] sends with the bundle's key, as an honest
    /// node would: the attacks of the suites get past the signature check to what they test.
    signer: Option<NodeSigner>,
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
        Self::connect_from(
            bundle,
            addr,
            server_name,
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .await
    }

    /// Like [`Rogue::connect`], from the loopback address `from` (`127.0.0.2`, ...): another
    /// host, as far as the daemon's per-address limits go.
    pub async fn connect_from(
        bundle: &Path,
        addr: SocketAddr,
        server_name: &str,
        from: std::net::IpAddr,
    ) -> Result<Rogue> {
        let (config, cluster_id) = client_config(bundle)?;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0))?;
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
                signer: NodeSigner::load(&bundle.join("node.pem"), &bundle.join("node.key")).ok(),
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
        let ack = match self.recv_control().await?.into_v2() {
            MessageV2::HelloAck(ack) => ack,
            MessageV2::HelloAckV2(ack) => ack.ack,
            other => bail!("expected HelloAck, got {}", other.kind()),
        };
        self.publish_certificate(replica, &ack).await?;
        Ok(ack)
    }

    /// Publishes the bundle's certificate in `_nodes` as `replica`, as every node does, so
    /// the nodes past the one it talks to can verify its versions.
    async fn publish_certificate(&mut self, replica: &ReplicaId, ack: &HelloAck) -> Result<()> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let own = pki::identity_from_der(signer.cert_der()).map(|id| id.name);
        if own.ok().as_deref() != Some(replica.node_name()) {
            return Ok(()); // posing as another node: its certificate would be refused
        }
        let held = ack
            .vvs
            .iter()
            .find(|(c, _)| c == NODES_COLLECTION)
            .map_or(0, |(_, vv)| vv.get(replica));
        if held > 0 {
            return Ok(());
        }
        let version = Version {
            collection: NODES_COLLECTION.into(),
            key: nodes_key(replica.node_name(), signer.key_id()),
            dot: Dot::new(replica.clone(), 1),
            hlc: Hlc {
                ms: officesync_daemon::time::unix_ms_now(),
                logical: 0,
            },
            context: VersionVector::new(),
            value: Some(signer.cert_der().to_vec()),
            author: Some(replica.node_name().to_owned()),
            signature: None,
        };
        self.send_message(
            &Batch {
                collection: NODES_COLLECTION.into(),
                origin: replica.clone(),
                versions: vec![version],
            }
            .into(),
        )
        .await?;
        self.send_message(
            &Complete {
                collection: NODES_COLLECTION.into(),
                origin: replica.clone(),
                through: 1,
            }
            .into(),
        )
        .await
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

    /// Sends `msg` as a valid frame on the stream it belongs on; the unsigned versions of a
    /// batch are signed with the bundle's key first.
    pub async fn send_message(&mut self, msg: &Message) -> Result<()> {
        match (msg, &self.signer) {
            (Message::V2(MessageV2::Batch(b)), Some(signer)) => {
                let mut b = b.clone();
                for v in &mut b.versions {
                    if v.signature.is_none() {
                        v.signature = Some(signer.sign(
                            &v.collection,
                            &v.key,
                            &v.header(),
                            v.author.as_deref(),
                        ));
                    }
                }
                self.send_message_as_is(&b.into()).await
            }
            _ => self.send_message_as_is(msg).await,
        }
    }

    /// Sends `msg` exactly as given (no signing) on the stream it belongs on.
    pub async fn send_message_as_is(&mut self, msg: &Message) -> Result<()> {
        let frame = encode_frame(msg, FrameFlags::NONE)?;
        if msg.is_bulk() {
            self.send_bulk(&frame).await
        } else {
            self.send_control(&frame).await
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
                Ok(m) if m.is_error() => match m.into_v2() {
                    MessageV2::Error(e) => return Some(e),
                    _ => continue,
                },
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

/// A quinn client endpoint on `from` (port 0) whose connections never get past their first
/// flight: it trusts and presents the bundle like [`Rogue::connect`], but only datagrams
/// made of Initial packets (the ClientHello, the answer to a Retry, acknowledgements) leave
/// it; the client's second flight (certificate, Finished) and everything after it are dropped.
/// The client then believes the handshake done while the daemon waits for the certificate
/// until it gives up, and sees the daemon's close when it does.
pub fn stalling_endpoint(bundle: &Path, from: std::net::IpAddr) -> Result<quinn::Endpoint> {
    let (config, _) = client_config(bundle)?;
    let socket = std::net::UdpSocket::bind(SocketAddr::new(from, 0))?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = quinn::Runtime::wrap_udp_socket(runtime.as_ref(), socket)?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(FirstFlightOnly(inner)),
        runtime,
    )?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A UDP socket that sends only datagrams made of QUIC Initial packets and silently drops
/// the others (see [`stalling_endpoint`]).
#[derive(Debug)]
struct FirstFlightOnly(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for FirstFlightOnly {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        // One datagram per transmit: `max_transmit_segments` is 1.
        if only_initial_packets(transmit.contents) {
            self.0.try_send(transmit)
        } else {
            Ok(())
        }
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// Whether every QUIC packet coalesced in `datagram` is an Initial packet (RFC 9000 §17.2.2);
/// anything unparsable counts as not. The fixed bit is not looked at: peers may grease it
/// (RFC 9287), as quinn does.
fn only_initial_packets(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while let Some(&first) = rest.first() {
        if rest.iter().all(|&b| b == 0) {
            // Padding after the last packet.
            break;
        }
        let long_header = first & 0x80 != 0;
        let initial = (first >> 4) & 0x03 == 0;
        if !long_header || !initial {
            return false;
        }
        match initial_packet_len(rest) {
            Some(len) if len <= rest.len() => rest = &rest[len..],
            _ => return false,
        }
    }
    !datagram.is_empty()
}

/// The length of the Initial packet at the start of `packet`, from its header.
fn initial_packet_len(packet: &[u8]) -> Option<usize> {
    // Flags and version, then the connection ids with their one-byte lengths.
    let mut at = 5;
    for _ in 0..2 {
        at += 1 + usize::from(*packet.get(at)?);
    }
    let (token_len, n) = varint(packet.get(at..)?)?;
    at += n + usize::try_from(token_len).ok()?;
    let (len, n) = varint(packet.get(at..)?)?;
    at.checked_add(n)?.checked_add(usize::try_from(len).ok()?)
}

/// A QUIC variable-length integer at the start of `bytes` and its length in bytes.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let n = 1usize << (first >> 6);
    let mut value = u64::from(first & 0x3f);
    for b in bytes.get(1..n)? {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, n))
}

/// `count` distinct QUIC Initial datagrams, each the first flight (ClientHello included) of a
/// fresh connection attempt to daemon `server_name` as a client of `bundle` sends it. Made
/// against a local sink, not the daemon. Replayed to the daemon from any socket, each starts
/// a handshake that never continues: the replaying socket may pose as any host, since it
/// never needs to read an answer.
pub async fn capture_initials(
    bundle: &Path,
    server_name: &str,
    count: usize,
) -> Result<Vec<Vec<u8>>> {
    let (config, _) = client_config(bundle)?;
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let to = sink.local_addr()?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let mut attempts = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    let mut initials = Vec::with_capacity(count);
    let mut buf = vec![0u8; 65_536];
    while initials.len() < count {
        attempts.push(endpoint.connect(to, server_name)?);
        // Retransmissions and closes of earlier attempts arrive too: keep one per connection.
        loop {
            let (n, _) = tokio::time::timeout(ROGUE_TIMEOUT, sink.recv_from(&mut buf))
                .await
                .context("no Initial from the client")??;
            let datagram = &buf[..n];
            if let Some(dcid) = initial_dcid(datagram) {
                if seen.insert(dcid.to_vec()) {
                    initials.push(datagram.to_vec());
                    break;
                }
            }
        }
    }
    drop(attempts);
    endpoint.close(0u32.into(), b"captured");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(initials)
}

/// The destination connection id of a QUIC v1 Initial packet (RFC 9000 §17.2.2), if
/// `datagram` starts with one.
fn initial_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    let long_header = first & 0x80 != 0;
    let initial = (first >> 4) & 0x03 == 0;
    if !long_header || !initial || datagram.get(1..5)? != [0, 0, 0, 1] {
        return None;
    }
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len)
}
