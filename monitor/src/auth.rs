//! Bearer tokens, shared by `keel serve` (API and admin tokens) and the `keel monitor` sidecar.
//!
//! A token comes from a flag or variable, or from a file holding one accepted token per line. Files are
//! re-read when their content changes (a Kubernetes Secret update), and several lines let a rotation
//! overlap: add the new token, move the clients, remove the old one. Every token, from a flag or a file,
//! is trimmed of surrounding ASCII whitespace (the same trim everywhere), and so is the presented one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use clap::Args;
use sha2::{Digest, Sha256};

/// How often token files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} holds no token")]
    Empty(PathBuf),
    #[error("{0} is set but empty")]
    EmptyFlag(&'static str),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Wrong,
}

impl AuthFailure {
    /// The message for the client: it says what to send, never what was expected.
    pub fn message(self, what: &str) -> String {
        match self {
            AuthFailure::Missing => format!("missing 'Authorization: Bearer <{what}>'"),
            AuthFailure::Wrong => format!("wrong {what}"),
        }
    }
}

/// The accepted tokens, as SHA-256 digests: comparing digests takes the same time whatever the
/// presented token's length or how much of it is right.
#[derive(Clone)]
pub struct BearerTokens {
    inner: Arc<Inner>,
}

struct Inner {
    fixed: Vec<[u8; 32]>,
    file: Option<PathBuf>,
    /// The file's tokens and the raw content they came from (to notice a change).
    from_file: RwLock<(Vec<[u8; 32]>, Vec<u8>)>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokens")
            .field("file", &self.inner.file)
            .finish_non_exhaustive()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn parse_file(content: &[u8]) -> Vec<[u8; 32]> {
    content
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty())
        .map(digest)
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl BearerTokens {
    /// `None` when neither a token nor a file is given: the endpoints they guard are open (API) or
    /// disabled (admin), as the caller decides. An empty token or a file without one is an error, so a
    /// mistyped Secret never opens an endpoint.
    pub fn new(
        token: Option<&str>,
        file: Option<&Path>,
        flag: &'static str,
    ) -> Result<Option<Self>, AuthError> {
        let fixed = match token {
            Some(t) if t.trim_ascii().is_empty() => return Err(AuthError::EmptyFlag(flag)),
            Some(t) => vec![digest(t.trim_ascii().as_bytes())],
            None => Vec::new(),
        };
        let from_file = match file {
            Some(path) => {
                let content = read(path)?;
                let tokens = parse_file(&content);
                if tokens.is_empty() {
                    return Err(AuthError::Empty(path.to_path_buf()));
                }
                (tokens, content)
            }
            None => (Vec::new(), Vec::new()),
        };
        if fixed.is_empty() && file.is_none() {
            return Ok(None);
        }
        let tokens = BearerTokens {
            inner: Arc::new(Inner {
                fixed,
                file: file.map(Path::to_path_buf),
                from_file: RwLock::new(from_file),
            }),
        };
        if file.is_some() {
            tokens.watch();
        }
        Ok(Some(tokens))
    }

    /// Re-reads the file on a thread of its own (file reads stay off the async workers); the thread
    /// ends once every handle is dropped.
    fn watch(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("keel-token-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RELOAD_EVERY);
                    let Some(inner) = weak.upgrade() else { return };
                    inner.reload();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the token reload thread; token files are read once");
        }
    }

    /// Checks an `Authorization` header (HTTP) or `authorization` metadata value (gRPC). The scheme is
    /// case-insensitive, as HTTP says.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthFailure> {
        let presented = authorization
            .map(str::trim_ascii)
            .and_then(|v| {
                let (scheme, rest) = v.split_once(|c: char| c.is_ascii_whitespace())?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(rest.trim_ascii())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let presented = digest(presented.as_bytes());
        let from_file = self
            .inner
            .from_file
            .read()
            .unwrap_or_else(|e| e.into_inner());
        // No early exit: every accepted token is compared.
        let matched = self
            .inner
            .fixed
            .iter()
            .chain(from_file.0.iter())
            .fold(false, |found, accepted| {
                found | constant_time_eq(accepted, &presented)
            });
        if matched {
            Ok(())
        } else {
            Err(AuthFailure::Wrong)
        }
    }

    /// Re-reads the token file now, as the reload thread does every two seconds.
    pub fn reload_now(&self) {
        self.inner.reload();
    }
}

impl Inner {
    fn reload(&self) {
        let Some(path) = &self.file else { return };
        let content = match read(path) {
            Ok(content) => content,
            Err(e) => {
                // A Secret update swaps a symlink: a read can miss once. Keep the last tokens.
                tracing::warn!(error = %e, "keeping the previous tokens");
                return;
            }
        };
        if self
            .from_file
            .read()
            .map(|current| current.1 == content)
            .unwrap_or(false)
        {
            return;
        }
        let tokens = parse_file(&content);
        if tokens.is_empty() {
            tracing::warn!(path = %path.display(), "the token file holds no token; keeping the previous tokens");
            return;
        }
        tracing::info!(path = %path.display(), tokens = tokens.len(), "token file re-read");
        *self.from_file.write().unwrap_or_else(|e| e.into_inner()) = (tokens, content);
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token to present, from a flag or the first token of a file (re-read on each call, so a rotated
/// Secret is picked up at the next connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientToken {
    pub token: Option<String>,
    pub file: Option<PathBuf>,
}

impl ClientToken {
    pub fn current(&self) -> Result<Option<String>, AuthError> {
        if let Some(path) = &self.file {
            let content = read(path)?;
            let first = String::from_utf8_lossy(&content)
                .lines()
                .map(str::trim_ascii)
                .find(|l| !l.is_empty())
                .map(str::to_string);
            return first
                .map(Some)
                .ok_or_else(|| AuthError::Empty(path.clone()));
        }
        Ok(self
            .token
            .as_deref()
            .map(str::trim_ascii)
            .filter(|t| !t.is_empty())
            .map(str::to_string))
    }
}

/// `--api-token` / `--api-token-file`, the same on `keel serve` and `keel monitor`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiTokenArgs {
    /// Bearer token every API call must present (`Authorization: Bearer <token>`; gRPC metadata
    /// `authorization`), except health probes. Prefer --api-token-file: a flag shows in process listings.
    #[arg(long, env = "KEEL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File of accepted API tokens, one a line; re-read when it changes, so a rotation can overlap.
    #[arg(long, env = "KEEL_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

impl ApiTokenArgs {
    pub fn tokens(&self) -> Result<Option<BearerTokens>, AuthError> {
        BearerTokens::new(
            self.api_token.as_deref(),
            self.api_token_file.as_deref(),
            "--api-token",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_token() {
        assert!(BearerTokens::new(None, None, "--x").unwrap().is_none());
        assert!(BearerTokens::new(Some("  "), None, "--x").is_err());
        let t = BearerTokens::new(Some(" s3cret\n"), None, "--x")
            .unwrap()
            .unwrap();
        assert_eq!(t.check(Some("Bearer s3cret")), Ok(()));
        assert_eq!(t.check(Some("bearer  s3cret ")), Ok(()));
        assert_eq!(t.check(Some("BEARER s3cret")), Ok(()));
        assert_eq!(t.check(Some("Bearer s3cre")), Err(AuthFailure::Wrong));
        assert_eq!(t.check(Some("Bearer s3cret2")), Err(AuthFailure::Wrong));
        assert_eq!(t.check(Some("Basic s3cret")), Err(AuthFailure::Missing));
        assert_eq!(t.check(Some("s3cret")), Err(AuthFailure::Missing));
        assert_eq!(t.check(Some("Bearer ")), Err(AuthFailure::Missing));
        assert_eq!(t.check(None), Err(AuthFailure::Missing));
    }

    #[test]
    fn file_tokens_rotate() {
        let dir = std::env::temp_dir().join(format!("keel-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "old\r\n\n").unwrap();
        let t = BearerTokens::new(None, Some(&file), "--x")
            .unwrap()
            .unwrap();
        assert_eq!(t.check(Some("Bearer old")), Ok(()));
        std::fs::write(&file, "old\nnew\n").unwrap();
        t.reload_now();
        assert_eq!(t.check(Some("Bearer old")), Ok(()));
        assert_eq!(t.check(Some("Bearer new")), Ok(()));
        std::fs::write(&file, "new").unwrap();
        t.reload_now();
        assert_eq!(t.check(Some("Bearer old")), Err(AuthFailure::Wrong));
        // An emptied file keeps the last tokens rather than opening or closing everything.
        std::fs::write(&file, "\n").unwrap();
        t.reload_now();
        assert_eq!(t.check(Some("Bearer new")), Ok(()));
        let client = ClientToken {
            token: None,
            file: Some(file.clone()),
        };
        assert!(client.current().is_err());
        std::fs::write(&file, " first \nsecond\n").unwrap();
        assert_eq!(client.current().unwrap().as_deref(), Some("first"));
        std::fs::write(&file, "").unwrap();
        assert!(BearerTokens::new(None, Some(&file), "--x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
