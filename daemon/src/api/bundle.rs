//! The offline-bundle routes (admins only): `GET /v1/bundle/want` (this node's vectors),
//! `POST /v1/bundle/export` (a JSON [`ExportRequest`] in, the bundle's bytes out) and
//! `POST /v1/bundle/import` (the bundle's bytes in, an [`ImportReport`] out). Each export and
//! import is recorded in the audit log, refused imports too.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use officesync_api::{ExportRequest, ImportReport, WantBody};

use super::error::ApiError;
use super::gate::Who;
use super::ApiState;
use crate::audit::{Kind, Record};
use crate::bundle::{self, BundleError, Bundles, ExportParams, ImportContext, Want};
use crate::time::unix_ms_now;

/// The media type of a bundle.
pub const BUNDLE_CONTENT_TYPE: &str = "application/vnd.officesync.bundle";

/// The header of an export's answer giving how many versions the bundle holds.
pub const BUNDLE_VERSIONS_HEADER: &str = "officesync-bundle-versions";

impl From<BundleError> for ApiError {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::Malformed(m)
            | BundleError::Altered(m)
            | BundleError::Refused(m)
            | BundleError::BadRequest(m) => ApiError::BadRequest(m),
            BundleError::Untrusted(m) | BundleError::Forbidden(m) => ApiError::Forbidden(m),
            BundleError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            BundleError::Replica(e) => ApiError::Replica(e),
        }
    }
}

/// A request body that could not be read; too large names the bundle limit.
fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(too_large_message());
    }
    ApiError::from_body(rejection, bundle::MAX_BUNDLE_BYTES)
}

/// Why a body over [`bundle::MAX_BUNDLE_BYTES`] is refused.
pub(crate) fn too_large_message() -> String {
    format!(
        "a bundle (or an export request) is at most {} bytes: carry the versions in several \
         bundles (export --collections with fewer collections)",
        bundle::MAX_BUNDLE_BYTES
    )
}

fn bundles<'s>(state: &'s ApiState, who: &Who, what: &str) -> Result<&'s Bundles, ApiError> {
    who.require_admin(what)?;
    state.bundles.as_deref().ok_or_else(|| {
        ApiError::NotFound("this node serves no bundles (it runs without its node key)".into())
    })
}

/// `GET /v1/bundle/want`: this node's name, replica id and the vector of every collection it
/// holds, for `officesync bundle want`.
pub(crate) async fn want(
    State(state): State<ApiState>,
    who: Who,
) -> Result<Json<WantBody>, ApiError> {
    bundles(&state, &who, "write a want file")?;
    Ok(Json(Want::body_of(&state.replica).await?))
}

/// `POST /v1/bundle/export` with an [`ExportRequest`]: the bundle, signed by this node, which
/// must be an admin node (an importer takes bundles only from one).
pub(crate) async fn export(
    State(state): State<ApiState>,
    who: Who,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = bundles(&state, &who, "export bundles")?;
    let body = body.map_err(body_error)?;
    if !state.access.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "node {} is not an admin node ([cluster] admins, with a certificate issued with \
             --admin): offices take bundles only from an admin node, so export at the general \
             office",
            state.replica.node()
        )));
    }
    let request: ExportRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid export request: {e} (send {{\"collections\", \"for\", \"want\"}})"
        ))
    })?;
    let params = ExportParams {
        collections: request.collections,
        for_node: request.for_node,
        want: request.want.as_ref().map(Want::from_body).transpose()?,
    };
    let policy = state.access.policy().current();
    let _turn = service.one_at_a_time().await;
    let made = bundle::export(
        &state.replica,
        service.signer(),
        &policy,
        params,
        service.limits(),
        unix_ms_now(),
    )
    .await?;
    let info = &made.info;
    let detail = format!(
        "for {}, {} versions in {} collections{}, {} bytes",
        info.for_node.as_deref().unwrap_or("any node"),
        info.versions,
        info.collections.len(),
        if info.incremental {
            " (incremental)"
        } else {
            ""
        },
        made.bytes.len()
    );
    state
        .audit(Record::new(Kind::BundleExport, who.0.author(state.replica.node())).detail(&detail))
        .await;
    tracing::info!(by = %who.describe(), %detail, "exported a bundle");
    let versions = HeaderValue::from(info.versions);
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static(BUNDLE_CONTENT_TYPE)),
            (HeaderName::from_static(BUNDLE_VERSIONS_HEADER), versions),
        ],
        made.bytes,
    )
        .into_response())
}

/// `POST /v1/bundle/import` with a bundle's bytes: checked whole, then applied; nothing is
/// applied when it is refused.
pub(crate) async fn import(
    State(state): State<ApiState>,
    who: Who,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImportReport>, ApiError> {
    let service = bundles(&state, &who, "import bundles")?;
    let body = body.map_err(body_error)?;
    let _turn = service.one_at_a_time().await;
    let cx = ImportContext {
        replica: state.replica.clone(),
        keyring: service.keyring().clone(),
        policy: state.access.policy().clone(),
        admins: service.admins().clone(),
        limits: service.limits(),
    };
    let actor = who.0.author(state.replica.node());
    match bundle::import(&cx, body).await {
        Ok(report) => {
            let detail = format!(
                "from {}, {} versions: {} applied, {} already held",
                report.exporter, report.versions, report.applied, report.ignored
            );
            state
                .audit(Record::new(Kind::BundleImport, actor).detail(&detail))
                .await;
            tracing::info!(by = %who.describe(), %detail, "imported a bundle");
            Ok(Json(report))
        }
        Err(e) => {
            if !matches!(e, BundleError::Replica(_)) {
                state
                    .audit(Record::new(Kind::BundleRefused, actor).detail(e.to_string()))
                    .await;
                tracing::warn!(by = %who.describe(), error = %e, "refused a bundle");
            }
            Err(e.into())
        }
    }
}
