//! `GET /health`: the service answers.

use axum::extract::State;
use axum::Json;

use crate::model::Health;
use crate::server::AppState;

/// `GET /health`.
pub async fn get(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vms: state.plane.list_vms().len(),
    })
}
