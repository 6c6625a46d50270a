//! TLS for the HTTP and gRPC listeners: the certificate, key and optional client CA (mutual TLS) from PEM
//! files, re-read when their content changes so a rotated certificate (cert-manager, a Secret update)
//! is served without a restart. A file that fails to load keeps the previous configuration serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsArgs;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Which listener a configuration is for: they differ in the application protocol offered (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, the REST front end.
    Http,
    /// HTTP/2, which gRPC clients require to be negotiated.
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The raw contents of the files, to notice a change.
type Contents = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

pub struct Tls {
    files: Files,
    http: ArcSwap<ServerConfig>,
    grpc: ArcSwap<ServerConfig>,
    loaded: std::sync::Mutex<Contents>,
    handshake_failures: IntCounter,
    reloads: prometheus::IntCounterVec,
}

impl Tls {
    /// `None` without `--tls-cert`. Fails on files that do not load, naming the flag and the file.
    pub fn from_args(
        args: &TlsArgs,
        registry: &prometheus::Registry,
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        };
        let contents = read_all(&files)?;
        let (http, grpc) = build(&files, &contents)?;
        let handshake_failures = IntCounter::new(
            "keel_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out (plain-text clients, unknown CAs, missing client certificates).",
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "keel_tls_reloads_total",
                "Changed certificate files loaded (outcome=success) or refused, keeping the previous ones (outcome=failure).",
            ),
            &["outcome"],
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        // Registered once per process; a second server in the same process (tests) shares nothing.
        let _ = registry.register(Box::new(handshake_failures.clone()));
        let _ = registry.register(Box::new(reloads.clone()));
        tracing::info!(
            cert = %files.cert.display(),
            mutual = files.client_ca.is_some(),
            "TLS on for HTTP and gRPC"
        );
        Ok(Some(Arc::new(Tls {
            files,
            http: ArcSwap::from_pointee(http),
            grpc: ArcSwap::from_pointee(grpc),
            loaded: std::sync::Mutex::new(contents),
            handshake_failures,
            reloads,
        })))
    }

    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let config = match protocol {
            Protocol::Http => self.http.load_full(),
            Protocol::Grpc => self.grpc.load_full(),
        };
        TlsAcceptor::from(config)
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// Looks at the files every `every` until `stopped`; new connections get a changed certificate,
    /// open ones keep the one they were made with.
    pub fn spawn_reload(self: &Arc<Self>, every: Duration, mut stopped: watch::Receiver<bool>) {
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
                let this = tls.clone();
                // File reads stay off the async workers.
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        });
    }

    /// Loads the files if they changed; returns whether a new configuration was published.
    pub fn reload(&self) -> bool {
        let contents = match read_all(&self.files) {
            Ok(contents) => contents,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable; serving the previous certificate");
                return false;
            }
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == contents {
            return false;
        }
        match build(&self.files, &contents) {
            Ok((http, grpc)) => {
                self.http.store(Arc::new(http));
                self.grpc.store(Arc::new(grpc));
                *loaded = contents;
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // A half-written rotation (new certificate, old key) lands here until both files agree.
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::warn!(error = %e, "TLS files changed but do not load; serving the previous certificate");
                *loaded = contents;
                false
            }
        }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn read_all(files: &Files) -> Result<Contents, TlsError> {
    Ok((
        read("--tls-cert", &files.cert)?,
        read("--tls-key", &files.key)?,
        files
            .client_ca
            .as_deref()
            .map(|p| read("--tls-client-ca", p))
            .transpose()?,
    ))
}

fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn build(files: &Files, contents: &Contents) -> Result<(ServerConfig, ServerConfig), TlsError> {
    let chain = certificates("--tls-cert", &files.cert, &contents.0)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.1).map_err(|e| TlsError::Pem {
        flag: "--tls-key",
        path: files.key.clone(),
        reason: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.client_ca, &contents.2) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("--tls-client-ca", path, pem)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    flag: "--tls-client-ca",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let http = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key do not match: {e}")))?;
    let mut grpc = http.clone();
    let mut http = http;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok((http, grpc))
}
