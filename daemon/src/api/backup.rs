//! `GET /v1/backup` (admins only): a consistent copy of the whole store, streamed frame by
//! frame as it is read (see [`crate::backup`]); recorded in the audit log.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::gate::Who;
use super::ApiState;
use crate::audit::{Kind, Record};
use crate::backup::{BackupError, BACKUP_CONTENT_TYPE};
use crate::store::SnapshotError;
use crate::time::unix_ms_now;

/// Frames in flight between the reader thread and the HTTP connection (each up to about
/// 4 MiB): what bounds the memory a slow client costs.
const FRAMES_IN_FLIGHT: usize = 4;

/// The body: frames from the reader thread; an error cuts the body short, so the client
/// never takes a partial file for a whole one (its end frame and checksum are missing).
struct Frames(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Frames {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// `GET /v1/backup`: begins the snapshot before answering (every write acknowledged before
/// the request is in it), then streams the file.
pub(crate) async fn download(
    State(state): State<ApiState>,
    who: Who,
) -> Result<Response, ApiError> {
    who.require_admin("take a backup")?;
    let Some(source) = state.backups.clone() else {
        return Err(ApiError::NotFound(
            "this node serves no backups (it runs without a data dir)".into(),
        ));
    };
    let replica = state.replica.clone();
    let export = tokio::task::spawn_blocking(move || source.begin(&replica, unix_ms_now()))
        .await
        .map_err(|e| ApiError::Internal(format!("backup task failed: {e}")))?
        .map_err(|e| match e {
            BackupError::Snapshot(SnapshotError::Busy) => ApiError::Busy(e.to_string()),
            other => ApiError::Internal(format!("cannot begin the backup: {other}")),
        })?;
    let replica_id = export.header().replica.clone();
    let detail = format!("replica {replica_id}");
    state
        .audit(Record::new(Kind::Backup, who.0.author(state.replica.node())).detail(&detail))
        .await;
    let by = who.describe();
    tracing::info!(by = %by, %detail, "backup begun");
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut sent = 0u64;
        let mut sink = |bytes: Vec<u8>| {
            sent += bytes.len() as u64;
            tx.blocking_send(Ok(Bytes::from(bytes)))
                .map_err(|_| BackupError::Gone)
        };
        match export.write_to(&mut sink) {
            Ok(rows) => {
                tracing::info!(by = %by, rows, bytes = sent, "backup written");
            }
            Err(e) => {
                tracing::warn!(by = %by, error = %e, "backup failed; its body was cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let name = format!(
        "attachment; filename=\"{}.osbackup\"",
        replica_id.replace(['@', '"'], "-")
    );
    let mut response = Body::from_stream(Frames(rx)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(BACKUP_CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
