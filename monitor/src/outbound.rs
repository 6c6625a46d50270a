//! Outbound HTTP clients (the MLflow registry, webhook receivers): rustls with the system's roots plus
//! `--ca-bundle`, shared by `keel serve` and `keel monitor`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot read --ca-bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ca-bundle {path} holds no usable PEM certificate: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// `--ca-bundle`: the same flag on `keel serve` and `keel monitor`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundTlsArgs {
    /// PEM file of extra root certificates for https to MLflow and webhook receivers (a private CA),
    /// trusted besides the system's roots.
    #[arg(long, env = "KEEL_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

impl OutboundTlsArgs {
    /// A client builder that trusts the system's roots and the bundle. Reads the bundle now, so a bad
    /// file fails start-up rather than the first delivery.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, OutboundError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(true)
            .https_only(false);
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path).map_err(|source| OutboundError::Read {
                path: path.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OutboundError::Pem {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(OutboundError::Pem {
                    path: path.clone(),
                    reason: "no CERTIFICATE block".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder)
    }
}

/// True when `url` is plain `http://` to a host other than loopback: credentials sent there can be read
/// on the way.
pub fn credentials_exposed(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if parsed.scheme() != "http" {
        return false;
    }
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

/// Logs a warning when credentials are about to go over plain http to another host.
pub fn warn_if_credentials_exposed(url: &str, what: &str) {
    if credentials_exposed(url) {
        tracing::warn!(
            url = %redact_url(url),
            "{what} are sent over plain http to a host that is not loopback; use https"
        );
    }
}

/// The URL without user:password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL we can take apart: hide anything between "//" and "@".
        Err(_) => match (url.find("//"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}//***@{}", &url[..start], &url[at + 1..])
            }
            _ => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_to_other_hosts() {
        assert!(credentials_exposed("http://mlflow.example:5000"));
        assert!(credentials_exposed("http://10.0.0.3/hook"));
        assert!(!credentials_exposed("http://127.0.0.1:5000"));
        assert!(!credentials_exposed("http://localhost:5000"));
        assert!(!credentials_exposed("http://[::1]:5000"));
        assert!(!credentials_exposed("https://mlflow.example"));
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://user:pw@mlflow.example/api"),
            "https://mlflow.example/api"
        );
        assert_eq!(
            redact_url("https://mlflow.example/"),
            "https://mlflow.example/"
        );
    }

    #[test]
    fn bundle_errors() {
        let missing = OutboundTlsArgs {
            ca_bundle: Some("/nonexistent/ca.pem".into()),
        };
        assert!(matches!(
            missing.client_builder(),
            Err(OutboundError::Read { .. })
        ));
        let dir = std::env::temp_dir().join(format!("keel-outbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = OutboundTlsArgs {
            ca_bundle: Some(junk),
        };
        assert!(matches!(
            junk.client_builder(),
            Err(OutboundError::Pem { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(OutboundTlsArgs::default().client_builder().is_ok());
    }
}
