//! `/v1/vms`: create, list, info, pause, resume, shutdown, resize, balloon, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use memtide_vmm::control::{BalloonReport, ResizeResult, VmInfo};

use super::{blocking, ApiJson, ApiPath};
use crate::model::{BalloonBody, CreateVmBody, ResizeBody};
use crate::server::error::ApiError;
use crate::server::AppState;

/// `GET /v1/vms`.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<VmInfo>>, ApiError> {
    blocking(&state, |p| Ok(p.list_vms())).await.map(Json)
}

/// `POST /v1/vms`: build and boot; 201 with the VM's info.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateVmBody>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let verb = body.into_verb()?;
    let info = blocking(&state, move |p| p.create_vm(verb)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /v1/vms/{id}`.
pub async fn info(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmInfo>, ApiError> {
    blocking(&state, move |p| p.vm_info(&id)).await.map(Json)
}

/// `DELETE /v1/vms/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |p| p.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/vms/{id}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmInfo>, ApiError> {
    blocking(&state, move |p| p.pause(&id)).await.map(Json)
}

/// `PUT /v1/vms/{id}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmInfo>, ApiError> {
    blocking(&state, move |p| p.resume(&id)).await.map(Json)
}

/// `PUT /v1/vms/{id}/shutdown`: returns once the VM stopped.
pub async fn shutdown(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmInfo>, ApiError> {
    blocking(&state, move |p| p.shutdown(&id)).await.map(Json)
}

/// `PUT /v1/vms/{id}/resize`.
pub async fn resize(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ResizeBody>,
) -> Result<Json<ResizeResult>, ApiError> {
    let verb = body.into_verb(id);
    blocking(&state, move |p| p.resize(&verb)).await.map(Json)
}

/// `GET /v1/vms/{id}/balloon`.
pub async fn balloon_info(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BalloonReport>, ApiError> {
    blocking(&state, move |p| p.balloon_info(&id))
        .await
        .map(Json)
}

/// `PUT /v1/vms/{id}/balloon`: sets the target; returns at once (poll GET for progress).
pub async fn set_balloon(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<BalloonBody>,
) -> Result<Json<BalloonReport>, ApiError> {
    let verb = body.into_verb(id)?;
    blocking(&state, move |p| p.set_balloon(&verb))
        .await
        .map(Json)
}
