//! The staff-access routes: `GET /v1/whoami` (any user) and the user management of
//! `officesync user` (admins only): `GET /v1/users`, `POST /v1/users`,
//! `DELETE /v1/users/{name}` and `POST /v1/users/{name}/token`.

use axum::extract::{Path, State};
use axum::Json;
use officesync_api::{NewUser, RemovedBody, TokenBody, UsersBody, WhoAmI};

use super::error::ApiError;
use super::gate::{Gate, Who};
use super::ApiState;
use crate::audit::{Kind, Record};
use crate::auth::{AuthError, Users};
use crate::time::unix_ms_now;

/// `GET /v1/whoami`: who the request's token belongs to.
pub(crate) async fn whoami(State(state): State<ApiState>, who: Who) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: who.0.user,
        role: who.0.role,
        collections: who.0.collections,
        auth: match state.gate {
            Gate::Open => "none",
            Gate::Tokens { .. } => "token",
        }
        .to_owned(),
    })
}

/// The node's users, for an admin; a 400 when the node serves without authentication.
fn users_for<'s>(state: &'s ApiState, who: &Who, what: &str) -> Result<&'s Users, ApiError> {
    who.require_admin(what)?;
    match &state.gate {
        Gate::Tokens { users, .. } => Ok(users),
        Gate::Open => Err(ApiError::BadRequest(
            "this node serves with api.auth = \"none\": it has no users (set auth = \"token\" \
             in [api] and restart it)"
                .into(),
        )),
    }
}

fn user_error(e: AuthError) -> ApiError {
    match e {
        AuthError::NoSuchUser(_) => ApiError::NotFound(e.to_string()),
        AuthError::File { .. } | AuthError::Random => ApiError::Internal(e.to_string()),
        _ => ApiError::BadRequest(e.to_string()),
    }
}

/// Runs a users-file change on the blocking pool (it fsyncs).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("user change failed: {e}")))?
        .map_err(user_error)
}

/// `GET /v1/users`: every user, without tokens.
pub(crate) async fn list(
    State(state): State<ApiState>,
    who: Who,
) -> Result<Json<UsersBody>, ApiError> {
    let users = users_for(&state, &who, "list users")?;
    Ok(Json(UsersBody {
        users: users.list(),
    }))
}

/// `POST /v1/users` with `{"name", "role", "collections"}`: adds a user and answers its token.
pub(crate) async fn add(
    State(state): State<ApiState>,
    who: Who,
    body: axum::body::Bytes,
) -> Result<Json<TokenBody>, ApiError> {
    let users = users_for(&state, &who, "add users")?.clone();
    let new: NewUser = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid user: {e} (send {{\"name\", \"role\", \"collections\"}})"
        ))
    })?;
    let (name, role, collections) = (new.name.clone(), new.role, new.collections.clone());
    let token = blocking(move || users.add(&name, role, collections, unix_ms_now())).await?;
    state
        .audit(
            user_record(&state, &who, Kind::UserAdd, &new.name).detail(format!(
                "role {role}, collections {}",
                new.collections
                    .as_ref()
                    .map_or("all".to_owned(), |c| c.join(","))
            )),
        )
        .await;
    tracing::info!(by = %who.describe(), user = %new.name, %role, "added a user");
    Ok(Json(TokenBody {
        name: new.name,
        role,
        token,
    }))
}

/// `DELETE /v1/users/{name}`: removes a user; its token stops working at once.
pub(crate) async fn remove(
    State(state): State<ApiState>,
    who: Who,
    Path(name): Path<String>,
) -> Result<Json<RemovedBody>, ApiError> {
    let users = users_for(&state, &who, "remove users")?.clone();
    let target = name.clone();
    blocking(move || users.remove(&target)).await?;
    state
        .audit(user_record(&state, &who, Kind::UserRemove, &name))
        .await;
    tracing::info!(by = %who.describe(), user = %name, "removed a user");
    Ok(Json(RemovedBody { removed: name }))
}

/// `POST /v1/users/{name}/token`: a new token for a user; the old one stops working at once.
pub(crate) async fn rotate(
    State(state): State<ApiState>,
    who: Who,
    Path(name): Path<String>,
) -> Result<Json<TokenBody>, ApiError> {
    let users = users_for(&state, &who, "issue tokens")?.clone();
    let target = name.clone();
    let (token, role) = blocking(move || users.rotate(&target, unix_ms_now())).await?;
    state
        .audit(user_record(&state, &who, Kind::UserToken, &name))
        .await;
    tracing::info!(by = %who.describe(), user = %name, "issued a new token");
    Ok(Json(TokenBody { name, role, token }))
}

/// The audit record of a change of `user` by `who`.
fn user_record(state: &ApiState, who: &Who, kind: Kind, user: &str) -> Record {
    Record::new(kind, who.0.author(state.replica.node())).key(user)
}
