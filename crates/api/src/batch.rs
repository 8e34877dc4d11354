//! `POST /v1/targets/_batch`: up to 1,000 creates, replaces and deletes in one request and one
//! transaction, with one invalidation for the whole batch (`caracal apply` sends its plan this
//! way). Every document is judged as `POST` and `PUT` judge one, before anything is written: one
//! invalid document refuses the batch. A change the registry refuses (a name taken, a target
//! gone, another owner's target) is refused alone and reported; the others are made.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use caracal_store::registry::Writer;
use caracal_store::registry::batch::{self, Change};
use caracal_store::target::TargetSpec;
use caracal_tokens::Caller;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::ApiState;
use crate::targets::{admit, allowed};

/// The largest body this route takes itself (1,000 documents of a few hundred bytes, with
/// room); every route is also held to `http.body_limit_bytes` (1 MiB by default) before it,
/// so `caracal apply` keeps a batch under 768 KiB.
pub(crate) const BODY_LIMIT: usize = 4 << 20;

/// A batch of changes; each list may be left out. At most 1,000 changes in all, each target
/// named once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    /// Documents to register.
    #[serde(default)]
    create: Vec<TargetSpec>,
    /// Documents replacing those of the targets they name (`name` is required here).
    #[serde(default)]
    replace: Vec<TargetSpec>,
    /// Names of targets to delete.
    #[serde(default)]
    #[schema(value_type = Vec<String>, pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    delete: Vec<String>,
}

/// What became of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchOutcome {
    /// The changes made, in the order sent (creates, replaces, deletes).
    pub done: Vec<BatchItem>,
    /// The changes refused, each alone, with why.
    pub refused: Vec<BatchRefusal>,
}

/// One change made.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// `create`, `replace` or `delete`.
    pub action: String,
    /// The target.
    pub name: String,
}

/// One change refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchRefusal {
    /// `create`, `replace` or `delete`.
    pub action: String,
    /// The target.
    pub name: String,
    /// The code the single write would have answered: `conflict`, `not_found`,
    /// `managed_by_control`, `platform_target` or `discovered_instances`.
    pub code: String,
    /// Why, in words.
    pub message: String,
}

/// Apply a batch of target changes.
#[utoipa::path(post, path = "/v1/targets/_batch", tag = "targets", request_body = Batch,
    responses((status = 200, description = "The batch was applied: what was done and what was refused", body = BatchOutcome),
              (status = 400, description = "Malformed JSON"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write, or targets:admin for `tls.insecure_skip_verify`"),
              (status = 413, description = "Body too large"), (status = 415, description = "The body is not application/json"),
              (status = 422, description = "A document is invalid (the field names it: `create[3].instances[0]`), more than 1,000 changes, or a target named twice; nothing was written")))]
pub(crate) async fn apply(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<Batch>, JsonRejection>,
) -> Result<Json<BatchOutcome>, ApiError> {
    let Json(batch) = body?;
    let count = batch.create.len() + batch.replace.len() + batch.delete.len();
    if count > batch::MAX {
        return Err(ApiError::invalid("(body)", format!("at most {} changes in one batch, not {count}", batch::MAX)));
    }
    if let Some(i) = batch.delete.iter().position(|name| !caracal_store::target::valid_name(name)) {
        return Err(ApiError::invalid(
            format!("delete[{i}]"),
            format!("a target name matches {}", caracal_store::target::NAME_PATTERN),
        ));
    }
    let caller = caller.as_ref().map(|c| &c.0);
    for (list, specs) in [("create", &batch.create), ("replace", &batch.replace)] {
        for (i, spec) in specs.iter().enumerate() {
            let at = |e: ApiError| match e {
                ApiError::Validation { field, message } => {
                    ApiError::Validation { field: format!("{list}[{i}].{field}"), message }
                }
                other => other,
            };
            if list == "replace" && spec.name.is_empty() {
                return Err(ApiError::invalid(format!("replace[{i}].name"), "a replaced document names its target"));
            }
            allowed(caller, spec).map_err(at)?;
            admit(&state, spec).await.map_err(at)?;
        }
    }
    let writer = Writer::Api;
    let changes: Vec<(&str, Change<'_>)> = batch
        .create
        .iter()
        .map(|s| ("create", Change::Create(s, &writer)))
        .chain(batch.replace.iter().map(|s| ("replace", Change::Replace(s, &writer))))
        .chain(batch.delete.iter().map(|n| ("delete", Change::Delete(n, &writer))))
        .collect();
    let only: Vec<Change<'_>> = changes.iter().map(|(_, c)| *c).collect();
    let outcome = batch::apply(&state.pool, &only).await?;
    let item = |i: usize| (changes[i].0.to_string(), changes[i].1.name().to_string());
    Ok(Json(BatchOutcome {
        done: outcome.done.iter().map(|i| item(*i)).map(|(action, name)| BatchItem { action, name }).collect(),
        refused: outcome
            .refused
            .into_iter()
            .map(|(i, refused)| {
                let (action, name) = item(i);
                BatchRefusal { action, name, code: refused.code().into(), message: refused.to_string() }
            })
            .collect(),
    }))
}
