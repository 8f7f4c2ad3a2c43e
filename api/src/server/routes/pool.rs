//! `GET /v1/pool`: the host memory pool per node and zone.

use axum::extract::State;
use axum::Json;
use memtide_vmm::control::PoolInfo;

use super::blocking;
use crate::server::error::ApiError;
use crate::server::AppState;

/// `GET /v1/pool`.
pub async fn get(State(state): State<AppState>) -> Result<Json<PoolInfo>, ApiError> {
    blocking(&state, |p| Ok(p.pool_info())).await.map(Json)
}
