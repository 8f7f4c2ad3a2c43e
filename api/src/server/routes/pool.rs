//! `GET /v1/pool`: the host memory pool per node and zone; `GET /v1/pool/audit`: the pool
//! checked against what the VMs hold.

use axum::extract::State;
use axum::Json;
use memtide_vmm::control::{PoolAudit, PoolInfo};

use super::blocking;
use crate::server::error::ApiError;
use crate::server::AppState;

/// `GET /v1/pool`.
pub async fn get(State(state): State<AppState>) -> Result<Json<PoolInfo>, ApiError> {
    blocking(&state, |p| Ok(p.pool_info())).await.map(Json)
}

/// `GET /v1/pool/audit` (200 with `consistent: false` and the problems when it fails).
pub async fn audit(State(state): State<AppState>) -> Result<Json<PoolAudit>, ApiError> {
    blocking(&state, |p| Ok(p.audit_pool())).await.map(Json)
}
