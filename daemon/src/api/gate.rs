//! The API's front door: every request but `/health` and `/ready` must carry a user's token
//! (`Authorization: Bearer TOKEN`, or Basic `NAME:TOKEN` for a browser). A missing or wrong
//! token gets 401, an address with too many recent failures 429 with `Retry-After`, and an
//! authenticated request goes on with its [`Principal`] as a request extension, which the
//! handlers check against the route (403 when the role or collection list forbids it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiState;
use crate::auth::{Credential, FailureLimiter, Principal, Role, Users};
use crate::time::unix_ms_now;

/// How the API authenticates: with the node's users, or not at all (`auth = "none"`).
#[derive(Debug, Clone)]
pub enum Gate {
    /// Anyone who reaches the API is an unnamed admin.
    Open,
    /// Requests carry a user's token.
    Tokens {
        /// The node's users.
        users: Users,
        /// The per-address slowdown of failures.
        limiter: Arc<FailureLimiter>,
    },
}

impl Gate {
    /// `p` as it stands now (see [`Users::recheck`]); always itself when the gate is open.
    pub(crate) fn recheck(&self, p: &Principal) -> Option<Principal> {
        match self {
            Gate::Open => Some(p.clone()),
            Gate::Tokens { users, .. } => users.recheck(p),
        }
    }

    /// Changes whenever a user changes (`None`: the gate is open and nothing changes).
    pub(crate) fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Gate::Open => None,
            Gate::Tokens { users, .. } => Some(users.subscribe()),
        }
    }

    /// A gate checking tokens against `users`.
    pub fn tokens(users: Users) -> Self {
        Gate::Tokens {
            users,
            limiter: Arc::new(FailureLimiter::new()),
        }
    }
}

/// Paths served without a token: liveness and readiness probes.
fn is_open_path(path: &str) -> bool {
    matches!(path, "/health" | "/ready")
}

/// The middleware: authenticates the request, or answers 401 or 429 itself.
pub(crate) async fn authenticate(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match &state.gate {
        Gate::Open => Principal::anonymous_admin(),
        Gate::Tokens { .. } if is_open_path(req.uri().path()) => return next.run(req).await,
        Gate::Tokens { users, limiter } => {
            let addr = client_ip(&req);
            let now = unix_ms_now();
            if let Err(wait) = limiter.check(addr, now) {
                return too_many(wait);
            }
            let presented = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().ok().and_then(Credential::parse));
            let refused = match presented {
                None => {
                    "authentication required: send a user's token (Authorization: Bearer \
                     TOKEN, or Basic NAME:TOKEN)"
                }
                Some(None) => {
                    "unsupported Authorization header: use Bearer TOKEN or Basic \
                               NAME:TOKEN"
                }
                Some(Some(credential)) => match users.authenticate(&credential) {
                    Some(p) => {
                        limiter.succeeded(addr);
                        req.extensions_mut().insert(p);
                        return next.run(req).await;
                    }
                    None => "invalid token",
                },
            };
            limiter.failed(addr, now);
            state.audit_refused(addr, req.uri().path(), refused);
            tracing::info!(client = %addr, path = req.uri().path(), "refused an API request: {refused}");
            return unauthorized(refused);
        }
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The client's address (unspecified when the server loop did not record it, as in tests
/// that call the router directly).
fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

fn unauthorized(message: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"officesync\", charset=\"UTF-8\""),
    );
    response
}

fn too_many(wait_secs: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(serde_json::json!({
            "error": format!(
                "too many failed authentications from this address: try again in {wait_secs} s"
            )
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait_secs.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, v);
    }
    response
}

/// The principal of a request that passed [`authenticate`]. Answers as an unnamed reader
/// (the least) if the layer did not run, which only a misbuilt router can cause.
pub(crate) fn principal_of(extensions: &axum::http::Extensions) -> Principal {
    extensions.get::<Principal>().cloned().unwrap_or(Principal {
        user: None,
        role: Role::Reader,
        collections: Some(Vec::new()),
        token_issued_ms: None,
    })
}

/// The extractor of the request's [`Principal`] for handlers.
#[derive(Debug, Clone)]
pub(crate) struct Who(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Who(principal_of(&parts.extensions)))
    }
}

impl Who {
    /// 403 unless an admin made the request; `what` names the action for the message.
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), super::ApiError> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(super::ApiError::Forbidden(format!(
                "{} may not {what}: only an admin may",
                self.describe()
            )))
        }
    }

    /// `user alice (reader)`, for messages.
    pub(crate) fn describe(&self) -> String {
        match &self.0.user {
            Some(u) => format!("user {u} ({})", self.0.role),
            None => format!("this client ({})", self.0.role),
        }
    }
}
