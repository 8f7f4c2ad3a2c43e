//! The API client of the CLI and the tests: blocking calls over the service's Unix socket
//! (or a TCP address), HTTP/1.1 with hyper, one connection per request. Non-2xx answers
//! become [`ClientError::Api`] with the server's `{"error": ...}` message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use memtide_vmm::control::{BalloonReport, PoolInfo, RebalanceResult, ResizeResult, VmInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{BalloonBody, CreateVmBody, ErrorBody, Health, RebalanceBody, ResizeBody};

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service cannot be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The request took too long.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The service answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The runtime could not start.
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    /// Whether the service said the request was bad (4xx): CLI exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status))
    }
}

/// A raw answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// Content-Type, if any.
    pub content_type: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A blocking API client.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the service at `endpoint`; each request may take `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client {
            endpoint,
            timeout,
            rt,
        })
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let fut = send(
            self.endpoint.clone(),
            method.to_string(),
            path.to_string(),
            body,
        );
        self.rt.block_on(async {
            tokio::time::timeout(self.timeout, fut)
                .await
                .map_err(|_| ClientError::Timeout(self.timeout))?
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let r = self.raw(method, path, bytes)?;
        check(&r)?;
        serde_json::from_slice(&r.body)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&r.body))))
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.call("GET", "/health", None::<&()>)
    }

    /// `GET /v1/pool`.
    pub fn pool(&self) -> Result<PoolInfo, ClientError> {
        self.call("GET", "/v1/pool", None::<&()>)
    }

    /// `GET /v1/pool/audit`.
    pub fn pool_audit(&self) -> Result<memtide_vmm::control::PoolAudit, ClientError> {
        self.call("GET", "/v1/pool/audit", None::<&()>)
    }

    /// `GET /v1/vms`.
    pub fn list_vms(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.call("GET", "/v1/vms", None::<&()>)
    }

    /// `GET /v1/vms/{id}`.
    pub fn vm(&self, id: &str) -> Result<VmInfo, ClientError> {
        self.call("GET", &format!("/v1/vms/{}", encode(id)), None::<&()>)
    }

    /// `POST /v1/vms`.
    pub fn create_vm(&self, body: &CreateVmBody) -> Result<VmInfo, ClientError> {
        self.call("POST", "/v1/vms", Some(body))
    }

    /// `PUT /v1/vms/{id}/{verb}` for pause, resume, shutdown.
    pub fn vm_verb(&self, id: &str, verb: &str) -> Result<VmInfo, ClientError> {
        self.call(
            "PUT",
            &format!("/v1/vms/{}/{verb}", encode(id)),
            None::<&()>,
        )
    }

    /// `DELETE /v1/vms/{id}`.
    pub fn delete_vm(&self, id: &str) -> Result<(), ClientError> {
        let r = self.raw("DELETE", &format!("/v1/vms/{}", encode(id)), None)?;
        check(&r)
    }

    /// `GET /v1/vms/{id}/balloon`.
    pub fn balloon(&self, id: &str) -> Result<BalloonReport, ClientError> {
        self.call(
            "GET",
            &format!("/v1/vms/{}/balloon", encode(id)),
            None::<&()>,
        )
    }

    /// `PUT /v1/vms/{id}/balloon`.
    pub fn set_balloon(&self, id: &str, body: &BalloonBody) -> Result<BalloonReport, ClientError> {
        self.call(
            "PUT",
            &format!("/v1/vms/{}/balloon", encode(id)),
            Some(body),
        )
    }

    /// `PUT /v1/vms/{id}/resize`.
    pub fn resize(&self, id: &str, body: &ResizeBody) -> Result<ResizeResult, ClientError> {
        self.call("PUT", &format!("/v1/vms/{}/resize", encode(id)), Some(body))
    }

    /// `PUT /v1/rebalance`.
    pub fn rebalance(&self, body: &RebalanceBody) -> Result<RebalanceResult, ClientError> {
        self.call("PUT", "/v1/rebalance", Some(body))
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> Result<String, ClientError> {
        let r = self.raw("GET", "/metrics", None)?;
        check(&r)?;
        String::from_utf8(r.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /openapi.json`.
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.call("GET", "/openapi.json", None::<&()>)
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub fn encode(seg: &str) -> String {
    let mut out = String::new();
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check(r: &RawResponse) -> Result<(), ClientError> {
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    let message = serde_json::from_slice::<ErrorBody>(&r.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
    Err(ClientError::Api {
        status: r.status,
        message,
    })
}

async fn send(
    endpoint: Endpoint,
    method: String,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<RawResponse, ClientError> {
    let http = |e: hyper::Error| ClientError::Http(e.to_string());
    let mut builder = Request::builder()
        .method(method.as_str())
        .uri(path.as_str())
        .header(hyper::header::HOST, "localhost");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = match &endpoint {
        Endpoint::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| ClientError::Connect(p.display().to_string(), e))?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            tx.send_request(req).await.map_err(http)?
        }
        Endpoint::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(|e| ClientError::Connect(a.to_string(), e))?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            tx.send_request(req).await.map_err(http)?
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes()
        .to_vec();
    Ok(RawResponse {
        status,
        content_type,
        body,
    })
}
