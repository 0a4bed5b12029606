//! The cost of origin signatures: signing and verifying versions (Ed25519 node keys, verified
//! in batches of a sync batch's size, and P-256 keys of 0.1.0 bundles, verified one by one),
//! and local writes per second with and without signing on the writer thread. Catch-up and
//! live propagation between daemons include both, in their own groups.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use officesync_daemon::pki::{self, IssueOptions, KeyType};
use officesync_daemon::policy::PolicyHandle;
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::signing::{Keyring, NodeSigner};
use officesync_daemon::store::SledStore;
use officesync_protocol::policy::Policy;
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use serde_json::json;

use crate::replication::progress;
use crate::{emit, TableRow};

/// Versions per verified batch: a sync batch's default size.
const BATCH: usize = 512;

fn versions(n: usize) -> Vec<Version> {
    let origin = ReplicaId::new("hefei", 1).expect("valid id");
    (1..=n as u64)
        .map(|i| Version {
            collection: "situation".into(),
            key: format!("river/{i:08}"),
            dot: Dot::new(origin.clone(), i),
            hlc: Hlc {
                ms: 1_700_000_000_000 + i,
                logical: 0,
            },
            context: VersionVector::new(),
            value: Some(vec![b'v'; 256]),
            author: Some("li@hefei".into()),
            signature: None,
        })
        .collect()
}

/// Signs and verifies `n` versions with a key of `key_type`: (signs/s, verifications/s).
fn sign_and_verify(dir: &std::path::Path, key_type: KeyType, n: usize) -> Result<(f64, f64)> {
    let out = dir.join(format!("{key_type:?}"));
    let opts = IssueOptions {
        key_type,
        ..IssueOptions::default()
    };
    let issued = pki::issue("hefei", &dir.join("ca"), &out, &opts)?;
    let signer = NodeSigner::load(&issued.cert_path, &issued.key_path)?;
    let ca = pki::load_cert_ders(&issued.ca_path)?.remove(0);
    let keyring = Keyring::new(ca, PolicyHandle::fixed(Policy::default()));
    keyring.learn(signer.cert_der())?;
    let mut vs = versions(n);
    let start = Instant::now();
    for v in &mut vs {
        v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), v.author.as_deref()));
    }
    let signs = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for chunk in vs.chunks(BATCH) {
        anyhow::ensure!(
            keyring.check(chunk).is_none(),
            "an honest batch was refused"
        );
    }
    let verifies = n as f64 / start.elapsed().as_secs_f64();
    Ok((signs, verifies))
}

/// Local writes per second by one writer (periodic durability), with or without a signer.
async fn writes(dir: &std::path::Path, signer: Option<Arc<NodeSigner>>, n: usize) -> Result<f64> {
    let tag = if signer.is_some() {
        "signed"
    } else {
        "unsigned"
    };
    let store = SledStore::open(&dir.join(format!("store-{tag}")))?;
    let mut opts = ReplicaOptions::new("hefei");
    opts.commit = CommitMode::Periodic(std::time::Duration::from_millis(100));
    opts.signer = signer;
    let replica = Replica::open(Arc::new(store), opts)?;
    let value = vec![b'v'; 256];
    let start = Instant::now();
    for i in 0..n {
        replica
            .write("bench", &format!("k{i:08}"), Some(value.clone()))
            .await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    replica.close().await?;
    Ok(rate)
}

/// The `signing` figures.
pub(crate) async fn run(quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let n = if quick { 2_048 } else { 51_200 };
    let w = if quick { 2_000 } else { 20_000 };
    progress(format_args!(
        "signing: {n} versions per key type, {w} local writes"
    ));
    let dir = tempfile::tempdir()?;
    pki::init_ca(&dir.path().join("ca"), false)?;
    for (key_type, name, how) in [
        (KeyType::Ed25519, "Ed25519", "batches of 512"),
        (KeyType::EcdsaP256, "P-256 (0.1.0 bundles)", "one by one"),
    ] {
        let (signs, verifies) =
            tokio::task::block_in_place(|| sign_and_verify(dir.path(), key_type, n))?;
        emit(
            rows,
            json!({
                "figure": "signing", "key": name, "versions": n, "value_bytes": 256,
                "signs_per_sec": signs.round(), "verifies_per_sec": verifies.round(),
                "sign_us": 1e6 / signs, "verify_us": 1e6 / verifies, "verified": how,
            }),
            TableRow {
                figure: "signing".into(),
                case: format!("{name}: {n} versions of 256 B, one core"),
                result: format!(
                    "sign {:.1} µs, verify {:.1} µs ({how})",
                    1e6 / signs,
                    1e6 / verifies
                ),
                baseline: "-".into(),
                ratio: None,
                target: "-".into(),
                met: None,
            },
        );
    }
    let issued = pki::issue(
        "hefei",
        &dir.path().join("ca"),
        &dir.path().join("writer"),
        &IssueOptions::default(),
    )?;
    let signer = Arc::new(NodeSigner::load(&issued.cert_path, &issued.key_path)?);
    let unsigned = writes(dir.path(), None, w).await?;
    let signed = writes(dir.path(), Some(signer), w).await?;
    emit(
        rows,
        json!({
            "figure": "signing_writes", "writes": w, "writers": 1, "durability": "periodic",
            "signed_per_sec": signed.round(), "unsigned_per_sec": unsigned.round(),
            "ratio": signed / unsigned,
        }),
        TableRow {
            figure: "signing_writes".into(),
            case: format!("{w} local writes, 1 writer, periodic"),
            result: format!("{signed:.0} writes/s signed (Ed25519)"),
            baseline: format!("{unsigned:.0} writes/s unsigned"),
            ratio: Some(signed / unsigned),
            target: "-".into(),
            met: None,
        },
    );
    Ok(())
}
