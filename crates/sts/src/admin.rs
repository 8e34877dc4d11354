//! `/v1/clients`: create (the secret is answered once), list, read and disable clients.
//! Disabling revokes every live token of the client at once, through the outbox.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use caracal_store::revocation::Revocation;
use caracal_store::{NewEvent, outbox, rfc3339};
use caracal_tokens::Scope;
use caracal_tokens::claims::now_unix;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::StsState;
use crate::clients::{ClientEntry, digest};
use crate::error::StsError;

/// A client to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClient {
    /// The client id: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    /// Generated when absent.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    client_id: Option<String>,
    /// Scopes the client may ask for (at least one).
    #[schema(min_items = 1, value_type = Vec<ScopeName>)]
    scopes: Vec<String>,
    /// What the client is for.
    #[schema(max_length = 256)]
    description: Option<String>,
}

/// A scope name.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) enum ScopeName {
    #[schema(rename = "targets:read")]
    TargetsRead,
    #[schema(rename = "targets:write")]
    TargetsWrite,
    #[schema(rename = "events:read")]
    EventsRead,
    #[schema(rename = "metrics:read")]
    MetricsRead,
    #[schema(rename = "clients:write")]
    ClientsWrite,
    #[schema(rename = "targets:admin")]
    TargetsAdmin,
    #[schema(rename = "tokens:introspect")]
    TokensIntrospect,
}

/// A client as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Client {
    client_id: String,
    #[schema(value_type = Vec<ScopeName>)]
    scopes: Vec<String>,
    description: String,
    /// RFC 3339.
    created_at: String,
}

/// A client just created, with its secret: shown this once, stored only as a digest.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedClient {
    #[serde(flatten)]
    client: Client,
    /// 256 random bits, base64url. Not retrievable later.
    client_secret: String,
}

/// A client row: id, scopes, description, created at.
type Row = (String, Vec<String>, String, String);

macro_rules! select_clients {
    ($tail:literal) => {
        concat!("SELECT id, scopes, description, ", rfc3339!("created_at"), " FROM sts_clients", $tail)
    };
}

fn to_client((client_id, scopes, description, created_at): Row) -> Client {
    Client { client_id, scopes, description, created_at }
}

fn validate(spec: &NewClient) -> Result<(String, Vec<String>, String), StsError> {
    let id = match &spec.client_id {
        Some(id) => {
            let ok = (1..=64).contains(&id.len())
                && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(StsError::invalid(
                    "client_id",
                    "expected 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
                ));
            }
            id.clone()
        }
        None => {
            let suffix = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::keys::random::<9>()?);
            format!("client-{}", suffix.replace(['_', '-'], "x"))
        }
    };
    if spec.scopes.is_empty() {
        return Err(StsError::invalid("scopes", "expected at least one scope"));
    }
    for (i, scope) in spec.scopes.iter().enumerate() {
        if Scope::parse(scope).is_none() {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            return Err(StsError::invalid(
                format!("scopes[{i}]"),
                format!("unknown scope; expected one of {}", known.join(", ")),
            ));
        }
    }
    let scopes: Vec<String> =
        Scope::ALL.iter().map(|s| s.as_str().to_string()).filter(|s| spec.scopes.contains(s)).collect();
    let description = spec.description.clone().unwrap_or_default();
    if description.chars().count() > 256 {
        return Err(StsError::invalid("description", "expected at most 256 characters"));
    }
    Ok((id, scopes, description))
}

/// Create a client; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/clients", tag = "clients", request_body = NewClient,
    responses((status = 201, body = CreatedClient), (status = 400, description = "Malformed JSON"),
              (status = 401, description = "No valid admin token"), (status = 403, description = "The token lacks clients:write"),
              (status = 409, description = "The client id is taken"), (status = 413, description = "Body too large"),
              (status = 415, description = "Not application/json"), (status = 422, description = "A field is invalid")),
    security(("admin" = []), ("sts_token" = ["clients:write"])))]
pub(crate) async fn create(
    State(state): State<StsState>,
    body: Result<Json<NewClient>, JsonRejection>,
) -> Result<Response, StsError> {
    let Json(spec) = body?;
    let (id, scopes, description) = validate(&spec)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::keys::random::<32>()?);
    let secret_digest = digest(&secret);
    let mut tx = state.pool.begin().await?;
    let inserted: Option<Row> = sqlx::query_as(concat!(
        "WITH c AS (INSERT INTO sts_clients (id, secret_sha256, scopes, description) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING RETURNING *) ",
        "SELECT id, scopes, description, ",
        rfc3339!("created_at"),
        " FROM c"
    ))
    .bind(&id)
    .bind(secret_digest.as_slice())
    .bind(&scopes)
    .bind(&description)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = inserted else { return Err(StsError::Conflict(id)) };
    let event = NewEvent {
        event_type: "sts.client_created".into(),
        target: None,
        instance: None,
        payload: serde_json::json!({ "client_id": id, "scopes": scopes }),
    };
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    state.clients.upsert(ClientEntry { id: id.clone(), digest: secret_digest, scopes, disabled: false });
    let created = CreatedClient { client: to_client(row), client_secret: secret };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// List every client (a deleted one is gone from here).
#[utoipa::path(get, path = "/v1/clients", tag = "clients",
    responses((status = 200, body = [Client]), (status = 401, description = "No valid admin token"), (status = 403, description = "The token lacks clients:write")),
    security(("admin" = []), ("sts_token" = ["clients:write"])))]
pub(crate) async fn list(State(state): State<StsState>) -> Result<Json<Vec<Client>>, StsError> {
    let rows: Vec<Row> =
        sqlx::query_as(select_clients!(" WHERE disabled_at IS NULL ORDER BY id")).fetch_all(&state.pool).await?;
    Ok(Json(rows.into_iter().map(to_client).collect()))
}

/// One client.
#[utoipa::path(get, path = "/v1/clients/{id}", tag = "clients", params(("id" = String, Path, description = "Client id")),
    responses((status = 200, body = Client), (status = 401, description = "No valid admin token"),
              (status = 403, description = "The token lacks clients:write"), (status = 404, description = "No such client, or it was deleted")),
    security(("admin" = []), ("sts_token" = ["clients:write"])))]
pub(crate) async fn get_one(State(state): State<StsState>, Path(id): Path<String>) -> Result<Json<Client>, StsError> {
    let row: Option<Row> = sqlx::query_as(select_clients!(" WHERE id = $1 AND disabled_at IS NULL"))
        .bind(&id)
        .fetch_optional(&state.pool)
        .await?;
    row.map(|r| Json(to_client(r))).ok_or(StsError::NotFound(id))
}

/// Delete a client: it can get no new token, every token it holds is revoked at once, and it
/// is gone from `/v1/clients`. Its id stays taken (the ledger and the revocations name it),
/// so a new client cannot inherit it.
#[utoipa::path(delete, path = "/v1/clients/{id}", tag = "clients", params(("id" = String, Path, description = "Client id")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No valid admin token"),
              (status = 403, description = "The token lacks clients:write"), (status = 404, description = "No such client, or it was deleted already")),
    security(("admin" = []), ("sts_token" = ["clients:write"])))]
pub(crate) async fn disable(State(state): State<StsState>, Path(id): Path<String>) -> Result<StatusCode, StsError> {
    let mut tx = state.pool.begin().await?;
    let row: Option<(Vec<u8>, Vec<String>, bool)> = sqlx::query_as(
        "SELECT secret_sha256, scopes, disabled_at IS NOT NULL FROM sts_clients WHERE id = $1 FOR UPDATE",
    )
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((secret, scopes, false)) = row else { return Err(StsError::NotFound(id)) };
    sqlx::query("UPDATE sts_clients SET disabled_at = now(), updated_at = now() WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let now = now_unix() as i64;
    let revocation = Revocation {
        jti: None,
        client_id: Some(id.clone()),
        revoked_at: now,
        expires_at: now + state.config.retire_margin().as_secs() as i64,
    };
    caracal_store::revocation::record(&mut tx, &revocation).await?;
    let event = NewEvent {
        event_type: "sts.client_disabled".into(),
        target: None,
        instance: None,
        payload: serde_json::json!({ "client_id": id }),
    };
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    state.verifier.revocations().insert(&revocation);
    state.metrics.revocations.inc();
    let digest = <[u8; 32]>::try_from(secret.as_slice()).unwrap_or([0; 32]);
    state.clients.upsert(ClientEntry { id, digest, scopes, disabled: true });
    Ok(StatusCode::NO_CONTENT)
}
