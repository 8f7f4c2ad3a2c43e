//! The routes, one module per resource, and [`ROUTES`]: every (method, path) the router
//! serves, which the OpenAPI document must list exactly (a test compares them).

pub mod health;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod rebalance;
pub mod vms;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::Json;
use memtide_vmm::control::{ControlError, ControlPlane};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// Every route: `(method, path)` in axum's path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/v1/pool"),
    ("GET", "/v1/pool/audit"),
    ("GET", "/v1/vms"),
    ("POST", "/v1/vms"),
    ("GET", "/v1/vms/{id}"),
    ("DELETE", "/v1/vms/{id}"),
    ("PUT", "/v1/vms/{id}/pause"),
    ("PUT", "/v1/vms/{id}/resume"),
    ("PUT", "/v1/vms/{id}/shutdown"),
    ("PUT", "/v1/vms/{id}/resize"),
    ("GET", "/v1/vms/{id}/balloon"),
    ("PUT", "/v1/vms/{id}/balloon"),
    ("PUT", "/v1/rebalance"),
];

/// The router of every route (without fallbacks and layers; see [`super::router`]).
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, put};
    axum::Router::new()
        .route("/health", get(health::get))
        .route("/openapi.json", get(openapi::get))
        .route("/metrics", get(metrics::get))
        .route("/v1/pool", get(pool::get))
        .route("/v1/pool/audit", get(pool::audit))
        .route("/v1/vms", get(vms::list).post(vms::create))
        .route("/v1/vms/{id}", get(vms::info).delete(vms::delete))
        .route("/v1/vms/{id}/pause", put(vms::pause))
        .route("/v1/vms/{id}/resume", put(vms::resume))
        .route("/v1/vms/{id}/shutdown", put(vms::shutdown))
        .route("/v1/vms/{id}/resize", put(vms::resize))
        .route(
            "/v1/vms/{id}/balloon",
            get(vms::balloon_info).put(vms::set_balloon),
        )
        .route("/v1/rebalance", put(rebalance::put))
}

/// A JSON body whose rejections become [`ApiError`]s (400/413/415 with `{"error": ...}`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(r.into()),
        }
    }
}

/// A path parameter whose rejections (e.g. invalid UTF-8 after percent-decoding) become
/// 400 [`ApiError`]s.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("bad path: {}", r.body_text()),
            )),
        }
    }
}

/// Runs `f` on the control plane on a blocking thread (verbs may wait for VMs).
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&ControlPlane) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let plane = state.plane.clone();
    match tokio::task::spawn_blocking(move || f(&plane)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the control plane task failed: {e}"),
        )),
    }
}
