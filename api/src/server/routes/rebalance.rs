//! `PUT /v1/rebalance`: move hot-plugged memory from one VM to another.

use axum::extract::State;
use axum::Json;
use memtide_vmm::control::RebalanceResult;

use super::{blocking, ApiJson};
use crate::model::RebalanceBody;
use crate::server::error::ApiError;
use crate::server::AppState;

/// `PUT /v1/rebalance`.
pub async fn put(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RebalanceBody>,
) -> Result<Json<RebalanceResult>, ApiError> {
    let verb = body.into_verb();
    blocking(&state, move |p| p.rebalance(&verb))
        .await
        .map(Json)
}
