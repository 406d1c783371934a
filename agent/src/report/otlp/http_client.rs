//! The OTLP/HTTP transport: the agent's reqwest 0.12 (rustls), driven on the agent's tokio
//! runtime. The SDK's batch processors export from their own threads with a plain executor;
//! each request is therefore spawned onto the runtime through a [`Handle`] and only its result
//! is awaited there. (opentelemetry-otlp's own reqwest client would be a second reqwest copy.)

use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tokio::runtime::Handle;

use super::ExportError;

/// Response bodies are tiny (an empty or partial-success message); more is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Where Debian and most images keep the system trust store; `SSL_CERT_FILE` overrides.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// OTLP exporter spec: PEM of the server's CA, for HTTPS endpoints.
const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";

#[derive(Debug, Clone)]
pub struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: Handle,
    timeout: Duration,
}

impl RuntimeHttpClient {
    /// Must be called inside the runtime. Trusts `OTEL_EXPORTER_OTLP_CERTIFICATE` if set, else
    /// the system bundle (read here, not via a reqwest feature, so the k8s client keeps the
    /// cluster CA as its only root).
    pub fn new(timeout: Duration) -> Result<Self, ExportError> {
        let runtime = Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let ca_path = std::env::var(OTEL_EXPORTER_OTLP_CERTIFICATE)
            .or_else(|_| std::env::var("SSL_CERT_FILE"))
            .unwrap_or_else(|_| SYSTEM_CA_BUNDLE.to_owned());
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60));
        match std::fs::read(&ca_path) {
            Ok(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    ExportError::Certificate {
                        path: ca_path.clone(),
                        source,
                    }
                })?;
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            // Plain-http endpoints need no roots; an https one will fail and be counted.
            Err(e) => log::debug!("no CA bundle at {ca_path} ({e}): https endpoints will fail"),
        }
        let client = builder
            .build()
            .map_err(|source| ExportError::HttpClient { source })?;
        Ok(Self {
            client,
            runtime,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut response = client.execute(request).await?;
            let mut builder = Response::builder().status(response.status().as_u16());
            for (name, value) in response.headers() {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
            let mut body = Vec::new();
            let read = tokio::time::timeout(timeout, async {
                while let Some(chunk) = response.chunk().await? {
                    let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok::<_, reqwest::Error>(())
            })
            .await;
            match read {
                Ok(r) => r?,
                Err(_elapsed) => return Err(HttpError::from("reading the response timed out")),
            }
            Ok::<_, HttpError>(builder.body(Bytes::from(body))?)
        });
        // A JoinError means the runtime is shutting down (or the task panicked): a failed send.
        task.await?
    }
}
