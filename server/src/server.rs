//! Start-up and graceful shutdown of everything `keel serve` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::onnxruntime;
use crate::config::ServeConfig;
use crate::http::{self, HttpState};
use crate::infer::Infer;
use crate::repository::Repository;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the model repository {path}: {source}")]
    Repository {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    http_addr: SocketAddr,
    infer: Infer,
    ready: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Loads the repository, then binds and serves. Returns once the server accepts requests.
    pub async fn start(config: ServeConfig) -> Result<Self, StartError> {
        match onnxruntime::init(config.ort_library.as_deref()) {
            Ok(path) => tracing::info!(library = %path.display(), "ONNX Runtime loaded"),
            Err(why) => {
                tracing::warn!(%why, "ONNX Runtime unavailable; models with backend \"auto\" run on tract")
            }
        }
        let repository = Repository::load(&config.model_repository)
            .await
            .map_err(|source| StartError::Repository {
                path: config.model_repository.display().to_string(),
                source,
            })?;
        let infer = Infer::new(Arc::new(repository));
        let ready = Arc::new(AtomicBool::new(true));
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.http_addr,
            source,
        })?;
        let router = http::router(HttpState {
            infer: infer.clone(),
            max_body_bytes: config.max_body_bytes,
            ready: ready.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%http_addr, "serving KServe V2 HTTP");
        Ok(Server {
            http_addr,
            infer,
            ready,
            stop,
            http,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn infer(&self) -> &Infer {
        &self.infer
    }

    /// Stops accepting connections, lets in-flight requests finish, then returns.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(());
        match self.http.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
