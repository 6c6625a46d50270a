//! The signing secret: read once, kept only as a keyed HMAC state, and never printed.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit};
use sha2::Sha256;

use super::WebhookError;

/// Where the secret comes from: configuration names a place, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable holding the secret.
    Env(String),
    /// A file holding the secret (a mounted Kubernetes Secret, say).
    File(PathBuf),
}

/// A Standard Webhooks signing key. `whsec_<base64>` is decoded to its key bytes; any other text
/// is used as raw bytes. Surrounding whitespace (a file's trailing newline) is ignored.
#[derive(Clone)]
pub struct Secret {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Standard base64, with or without padding: generators differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl Secret {
    /// A secret from its text. Errors never include the text.
    pub fn new(text: &str) -> Result<Self, WebhookError> {
        let text = text.trim();
        let key = match text.strip_prefix("whsec_") {
            Some(encoded) => BASE64
                .decode(encoded)
                .map_err(|_| WebhookError::Secret("a whsec_ secret is not valid base64".into()))?,
            None => text.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookError::Secret("the webhook secret is empty".into()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| {
            WebhookError::Secret("the webhook secret cannot key HMAC-SHA256".into())
        })?;
        Ok(Self { mac })
    }

    pub fn from_env(var: &str) -> Result<Self, WebhookError> {
        let text = std::env::var(var).map_err(|error| {
            WebhookError::Secret(format!("environment variable {var}: {error}"))
        })?;
        Self::new(&text)
    }

    pub fn from_file(path: &Path) -> Result<Self, WebhookError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| WebhookError::Secret(format!("{}: {error}", path.display())))?;
        Self::new(&text)
    }

    pub fn load(source: &SecretSource) -> Result<Self, WebhookError> {
        match source {
            SecretSource::Env(var) => Self::from_env(var),
            SecretSource::File(path) => Self::from_file(path),
        }
    }

    /// A fresh HMAC-SHA256 keyed with this secret.
    pub(super) fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }
}
