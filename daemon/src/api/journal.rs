//! The API's side of the audit log: one thread appends what the handlers record, in groups
//! (one fdatasync for every record waiting), and a write or a user change is answered only once
//! its entry is durable. Refused authentications are handed over without waiting, under the
//! log's own rate limit. Also the admin routes `GET /v1/audit` and `GET /v1/audit/verify`.

use std::sync::mpsc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use tokio::sync::oneshot;

use super::error::ApiError;
use super::gate::Who;
use super::params::parse_query;
use super::ApiState;
use crate::audit::{self, AuditError, AuditLog, Page, Record, VerifySummary};
use crate::time::unix_ms_now;

/// Most records one group appends.
const MAX_GROUP: usize = 512;
/// Most records waiting for the appender; beyond it, handlers wait for room.
const QUEUE: usize = 4096;
/// How often the appender wakes without work, to write summaries of suppressed refusals.
const TICK: Duration = Duration::from_secs(5);

enum Job {
    Append(Record, Option<oneshot::Sender<Result<u64, String>>>),
    Refused { addr: String, detail: String },
}

/// The handlers' handle on the audit log: cheap to clone; the appender thread stops (writing
/// the counts of suppressed refusals) when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Journal {
    log: AuditLog,
    /// Boxed: std's bounded channel writes every slot when it is made, so a slot the size
    /// of a [`Job`] would cost every daemon about 700 KiB of resident memory for the queue.
    jobs: mpsc::SyncSender<Box<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Journal {
    /// Starts the appender of `log`.
    pub fn start(log: AuditLog) -> std::io::Result<Journal> {
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let appender = log.clone();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || run(&appender, &rx))?;
        Ok(Journal { log, jobs })
    }

    /// Appends `record` and waits until it is durable; `Err` with the reason when it could
    /// not be written (the caller has already done the work: it logs and answers anyway).
    pub async fn record(&self, record: Record) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        match self.jobs.try_send(Box::new(Job::Append(record, Some(tx)))) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                // A full queue: wait for room off the async workers.
                let jobs = self.jobs.clone();
                let sent = tokio::task::spawn_blocking(move || jobs.send(job).is_ok())
                    .await
                    .map_err(|e| e.to_string())?;
                if !sent {
                    return Err("the audit appender stopped".to_owned());
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err("the audit appender stopped".to_owned())
            }
        }
        rx.await
            .map_err(|_| "the audit appender stopped".to_owned())?
    }

    /// Hands a refused authentication from `addr` to the log without waiting (dropped when the
    /// queue is full: the log rate-limits these anyway).
    pub fn refused(&self, addr: &str, detail: &str) {
        let _ = self.jobs.try_send(Box::new(Job::Refused {
            addr: addr.to_owned(),
            detail: detail.to_owned(),
        }));
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        self.log.dir()
    }
}

fn run(log: &AuditLog, rx: &mpsc::Receiver<Box<Job>>) {
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = log.tick(unix_ms_now()) {
                    tracing::error!(error = %e, "audit log: cannot write suppressed-refusal counts");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![*first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(*job),
                Err(_) => break,
            }
        }
        append_group(log, group);
    }
    if let Err(e) = log.flush_suppressed(unix_ms_now()) {
        tracing::error!(error = %e, "audit log: cannot write suppressed-refusal counts at stop");
    }
}

/// Appends a group: refusals one by one (rate-limited), records in one batch; answers each
/// waiting record with its sequence number or the error.
fn append_group(log: &AuditLog, group: Vec<Job>) {
    let now = unix_ms_now();
    let mut records = Vec::new();
    let mut waiting = Vec::new();
    for job in group {
        match job {
            Job::Refused { addr, detail } => {
                if let Err(e) = log.refused(&addr, &detail, now) {
                    tracing::error!(error = %e, "audit log: cannot record a refused authentication");
                }
            }
            Job::Append(record, reply) => {
                records.push(record);
                waiting.push(reply);
            }
        }
    }
    if records.is_empty() {
        return;
    }
    let n = records.len() as u64;
    let outcome = log.append_batch(records, now);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "audit log: append failed");
    }
    for (i, reply) in waiting.into_iter().enumerate() {
        let answer = match &outcome {
            Ok(last) => Ok(last + 1 + i as u64 - n),
            Err(e) => Err(e.to_string()),
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

fn journal_of<'s>(state: &'s ApiState, who: &Who, what: &str) -> Result<&'s Journal, ApiError> {
    who.require_admin(what)?;
    state.journal.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this node keeps no audit log (it serves with api.auth = \"none\")".into(),
        )
    })
}

fn audit_error(e: AuditError) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// `GET /v1/audit?after=SEQ&limit=N` (admin): `{"entries": [..], "more"}`, entries after
/// `after` oldest first (`more`: pass the last one's `seq` as `after` for the rest); without
/// `after`, the last `limit` (default 100, at most 1000).
pub(crate) async fn list(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<Page>, ApiError> {
    let journal = journal_of(&state, &who, "read the audit log")?;
    let query = parse_query(uri.query(), &["after", "limit"])?;
    let limit = match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit={raw:?}: use a whole number from 1 to 1000"
                )))
            }
        },
    };
    let after = match query.get("after") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("invalid after={raw:?}: use an entry's seq"))
        })?),
    };
    let dir = journal.dir().to_owned();
    let page = tokio::task::spawn_blocking(move || match after {
        Some(after) => audit::read(&dir, after, limit),
        None => audit::read_last(&dir, limit),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(audit_error)?;
    Ok(Json(page))
}

/// `GET /v1/audit/verify` (admin): checks the whole chain; 200 with the summary when intact,
/// 500 naming the first bad entry otherwise.
pub(crate) async fn verify(
    State(state): State<ApiState>,
    who: Who,
) -> Result<Json<VerifySummary>, ApiError> {
    let journal = journal_of(&state, &who, "verify the audit log")?;
    let dir = journal.dir().to_owned();
    tokio::task::spawn_blocking(move || audit::verify(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .map_err(audit_error)
}
