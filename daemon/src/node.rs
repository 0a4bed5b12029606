//! A running node: the store, replica and local API assembled from a [`Config`], and their
//! orderly shutdown (stop accepting, finish in-flight requests, flush the store).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState, PeerTable};
use crate::backup::BackupSource;
use crate::config::{Config, Durability};
use crate::policy::PolicyHandle;
use crate::replica::{CommitMode, Replica, ReplicaError, ReplicaOptions};
use crate::signing::{self, publish_certificate, NodeSigner, SigningError};
use crate::store::sealed::{self, RekeyReport};
use crate::store::{Keyring, SealError, SealedStore, SledStore, Snapshots, Store, StoreError};
use crate::sync::SyncService;
use crate::transport::{Transport, TransportError};

/// How long shutdown waits for in-flight API requests before closing their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The store could not be opened (locked, corrupt, unreadable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encryption at rest: a wrong, missing or unreadable key, or a store encrypted
    /// differently from what `[storage]` says.
    #[error(transparent)]
    Encryption(#[from] SealError),
    /// The replica could not be opened on the store.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The replication endpoint could not be set up (certificates, UDP port).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The users file is damaged, or the first admin token could not be written.
    #[error("staff access: {0} (fix: restore users.json from a backup, or remove it to start over with a new admin token)")]
    Users(#[from] crate::auth::AuthError),
    /// The audit log is damaged (named by file and entry) or cannot be opened.
    #[error("{0} (fix: keep the damaged log aside for inspection, e.g. mv DATA_DIR/audit DATA_DIR/audit.damaged, and start again: a new chain begins)")]
    Audit(#[from] crate::audit::AuditError),
    /// The audit appender thread could not be started.
    #[error("cannot start the audit appender: {0}")]
    AuditThread(std::io::Error),
    /// The node key cannot sign versions, or the CA certificate cannot be read.
    #[error("version signing: {0}")]
    Signing(#[from] SigningError),
    /// The API address could not be bound.
    #[error(
        "cannot listen on api.listen {addr}: {source} (fix: free the port or change api.listen)"
    )]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The API's gate for `api.auth`: the node's users (making the first admin and its token at
/// first start), or none, with a warning.
fn open_gate(config: &Config) -> Result<api::Gate, StartError> {
    match config.api.auth {
        crate::config::AuthMode::None => {
            tracing::warn!(
                api = %config.api.listen,
                "api.auth = \"none\": anyone who reaches the API is an admin; use it for a demo or a loopback test only"
            );
            Ok(api::Gate::Open)
        }
        crate::config::AuthMode::Token => {
            let (users, first) =
                crate::auth::Users::open(&config.node.data_dir, crate::time::unix_ms_now())?;
            if let crate::auth::FirstStart::AdminTokenWritten(path) = first {
                tracing::info!(
                    file = %path.display(),
                    "no admin user: made user admin; its token is in this file (mode 0600)"
                );
            }
            Ok(api::Gate::tokens(users))
        }
    }
}

/// Opens (checking its whole chain) the audit log in `DATA_DIR/audit` and starts its
/// appender. A damaged log stops the start, naming the file and entry.
fn open_journal(config: &Config) -> Result<api::Journal, StartError> {
    let dir = config.node.data_dir.join("audit");
    let log = crate::audit::AuditLog::open(&dir, crate::audit::AuditOptions::default())?;
    let opened = log.opened()?;
    tracing::info!(dir = %dir.display(), entries = opened.entries, segments = opened.segments, "audit log chain intact");
    api::Journal::start(log).map_err(StartError::AuditThread)
}

/// Opens the store in `node.data_dir`: sled, sealed with the storage key when
/// `storage.encryption_key_file` is set. Refuses a store encrypted with another key, an
/// encrypted store without a key, and a plaintext store with one.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Ok(open_store_for_backups(config)?.0)
}

/// [`open_store`], with the engine under a [`Snapshots`] layer (below the encryption, so a
/// backup copies values as stored) and the [`BackupSource`] that takes backups through it.
pub fn open_store_for_backups(
    config: &Config,
) -> Result<(Arc<dyn Store>, BackupSource), StartError> {
    let dir = &config.node.data_dir;
    let snapshots = Snapshots::new(Arc::new(SledStore::open(dir)?));
    let sealed = config.storage.encryption_key_file.is_some();
    let backups = BackupSource::new(snapshots.clone(), dir.clone(), sealed);
    match &config.storage.encryption_key_file {
        None => {
            sealed::refuse_if_sealed(&snapshots, dir)?;
            Ok((Arc::new(snapshots), backups))
        }
        Some(file) => {
            let keys = Keyring::load(file, &config.storage.previous_encryption_key_files)?;
            let key_id = keys.current_id();
            let store = SealedStore::open(snapshots, keys, dir)?;
            tracing::info!(key_file = %file.display(), key_id = %key_id, "store values encrypted at rest");
            Ok((Arc::new(store), backups))
        }
    }
}

/// `officesyncd --rekey`, with the daemon stopped: seals every value of the store in
/// `node.data_dir` with `storage.encryption_key_file` (encrypting a plaintext store, or
/// re-sealing values of `storage.previous_encryption_key_files`).
pub fn rekey_store(config: &Config) -> Result<RekeyReport, StartError> {
    let Some(file) = &config.storage.encryption_key_file else {
        return Err(SealError::NoKey {
            config: config.origin.clone(),
        }
        .into());
    };
    let keys = Keyring::load(file, &config.storage.previous_encryption_key_files)?;
    let dir = &config.node.data_dir;
    Ok(sealed::rekey(SledStore::open(dir)?, keys, dir)?)
}

/// The replica options a config asks for.
pub fn replica_options(config: &Config) -> ReplicaOptions {
    let mut opts = ReplicaOptions::new(&config.node.name);
    opts.commit = match config.storage.durability {
        Durability::Sync => CommitMode::Sync,
        Durability::Periodic => {
            CommitMode::Periodic(Duration::from_millis(config.storage.flush_interval_ms))
        }
    };
    opts.max_value_bytes = config.storage.max_value_bytes;
    opts.max_clock_skew_ms = config.sync.max_clock_skew_ms;
    opts.indexes = config.indexes.clone();
    opts.history = config.storage.history;
    opts
}

/// A started node.
pub struct Node {
    replica: Replica,
    api_addr: SocketAddr,
    sync: Arc<SyncService>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    /// The status reporter (`province`), stopped with the rest before the store closes.
    reporter: JoinHandle<()>,
    /// The tombstone collector (`frontier`), stopped with the rest before the store closes.
    collector: JoinHandle<()>,
    /// The search indexers (`[search]`), which make their last commit before the store closes.
    search: Option<Arc<crate::search::Search>>,
}

impl Node {
    /// Opens the store in `node.data_dir`, the replica on it, and serves the API on
    /// `api.listen`. The config must already be validated.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let opening = config.clone();
        let (store, backups) =
            tokio::task::spawn_blocking(move || open_store_for_backups(&opening))
                .await
                .map_err(|e| StoreError::Io(e.to_string()))??;
        let signer = Arc::new(NodeSigner::load(&config.tls.cert, &config.tls.key)?);
        let mut opts = replica_options(config);
        opts.signer = Some(signer.clone());
        let replica = Replica::open(store, opts)?;
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.api.listen,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.api.listen,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let transport = Transport::bind(config)?;
        let peers = PeerTable::new();
        let transport_stats = transport.stats_handle();
        let policy = PolicyHandle::start(
            replica.clone(),
            config.cluster.admins.clone(),
            stopped.clone(),
        )
        .await?;
        let ca_der = crate::pki::load_cert_ders(&config.tls.ca)
            .map_err(SigningError::from)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let keyring = Arc::new(
            signing::Keyring::new(ca_der, policy.clone())
                .accepting_unsigned(config.sync.accept_unsigned),
        );
        keyring
            .learn(signer.cert_der())
            .map_err(|e| SigningError::Key(e.to_string()))?;
        let known = keyring.load_from(&replica).await?;
        publish_certificate(&replica, &signer).await?;
        tracing::debug!(certificates = known, "keyring loaded from _nodes");
        let is_admin =
            config.cluster.admins.contains(&config.node.name) && transport.identity().admin_cert;
        let sync = Arc::new(SyncService::start(
            config,
            transport,
            replica.clone(),
            peers.clone(),
            policy.clone(),
            keyring.clone(),
            stopped.clone(),
        ));
        let bundles = Arc::new(crate::bundle::Bundles::new(
            signer,
            keyring,
            config.cluster.admins.clone(),
        ));
        let province =
            Arc::new(crate::province::Province::new(config).relaying(is_admin, policy.clone()));
        let reporter = province.spawn(replica.clone(), peers.clone(), stopped.clone());
        let (frontiers, collector) = crate::frontier::spawn(
            config,
            is_admin,
            replica.clone(),
            peers.clone(),
            policy.clone(),
            province.clone(),
            stopped.clone(),
        );
        let search = config
            .search
            .is_enabled()
            .then(|| crate::search::Search::start(config, replica.clone(), stopped.clone()));
        let gate = open_gate(config)?;
        let mut state = ApiState::new(replica.clone()).with_gate(gate.clone());
        if let api::Gate::Tokens { .. } = gate {
            state = state.with_journal(open_journal(config)?);
        }
        let mut state = state
            .with_access(api::Access::new(&config.node.name, is_admin, policy))
            .with_peers(Arc::new(peers))
            .with_transport(transport_stats)
            .with_certificate_of(config)
            .with_verifier(Arc::new(VerifyVia(sync.clone())))
            .with_bundles(bundles)
            .with_province(province)
            .with_frontiers(frontiers)
            .with_backups(backups)
            .with_feeds(api::Feeds::new(
                api::FeedLimits::new(
                    config.api.max_feeds,
                    Duration::from_millis(config.api.feed_cutoff_ms),
                ),
                stopped.clone(),
            ));
        if let Some(search) = &search {
            state = state.with_search(search.clone());
        }
        let app = api::router(state);
        let mut limits = api::ServeLimits::for_values(replica.max_value_bytes());
        // Every open change feed holds a connection: room for all of them beside the rest.
        limits.max_connections = limits.max_connections.saturating_add(config.api.max_feeds);
        let server = tokio::spawn(async move { api::serve(listener, app, limits, stopped).await });
        tracing::info!(
            node = %config.node.name,
            replica = %replica.id(),
            api = %api_addr,
            sync = %sync.local_addr(),
            durability = %config.storage.durability,
            "node started"
        );
        Ok(Self {
            replica,
            api_addr,
            sync,
            stop,
            server,
            reporter,
            collector,
            search,
        })
    }

    /// The address the API listens on.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The address replication (QUIC) listens on.
    pub fn sync_addr(&self) -> SocketAddr {
        self.sync.local_addr()
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Stops accepting requests, lets in-flight ones finish, then syncs and closes the store.
    pub async fn shutdown(self) -> Result<(), ReplicaError> {
        let _ = self.stop.send(true);
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "API server task failed"),
            Err(_) => {
                // A stalled client (half-sent request) must not hold the shutdown forever.
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "API requests still open after the grace period; closing them"
                );
                server.abort();
                let _ = server.await;
            }
        }
        // The reporter ends at its next look (a quarter second) once `stop` is set.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.reporter)
            .await
            .is_err()
        {
            tracing::warn!("the status reporter did not stop in time");
        }
        // The collector ends after its current step once `stop` is set.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.collector)
            .await
            .is_err()
        {
            tracing::warn!("the tombstone collector did not stop in time");
        }
        if let Some(search) = &self.search {
            search.join(SHUTDOWN_GRACE).await;
        }
        self.sync.close().await;
        self.replica.close().await?;
        tracing::info!("node stopped; store flushed");
        Ok(())
    }
}

/// Serves `POST /v1/verify` through the replication service.
struct VerifyVia(Arc<SyncService>);

impl api::Verifier for VerifyVia {
    fn verify(&self) -> api::futures_boxed::BoxFuture<Vec<crate::sync::VerifyReport>> {
        let sync = self.0.clone();
        Box::pin(async move { sync.verify().await })
    }
}
