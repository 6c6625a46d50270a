//! The bearer tokens that guard Keel's APIs on both front ends: the API token (inference, metadata,
//! statistics, feedback; health stays open for probes) and the separate admin token (repository
//! control). With no admin token configured, repository control is disabled rather than open; with no
//! API token, the API is open as in Triton.

use keel_monitor::auth::{AuthFailure, BearerTokens};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct AdminAuth {
    tokens: Option<BearerTokens>,
}

impl AdminAuth {
    pub fn new(tokens: Option<BearerTokens>) -> Self {
        AdminAuth { tokens }
    }

    /// `authorization` is the raw `Authorization` header (HTTP) or metadata value (gRPC).
    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        let Some(tokens) = &self.tokens else {
            return Err(Error::PermissionDenied(
                "repository control is disabled: start keel with --admin-token-file (or --admin-token)"
                    .into(),
            ));
        };
        tokens
            .check(authorization)
            .map_err(|f| Error::Unauthenticated(f.message("admin token")))
    }
}

/// The API token; `None` inside leaves the API open.
#[derive(Clone, Debug, Default)]
pub struct ApiAuth {
    tokens: Option<BearerTokens>,
}

impl ApiAuth {
    pub fn new(tokens: Option<BearerTokens>) -> Self {
        ApiAuth { tokens }
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        match &self.tokens {
            None => Ok(()),
            Some(tokens) => tokens
                .check(authorization)
                .map_err(|f: AuthFailure| Error::Unauthenticated(f.message("API token"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(t: &str) -> Option<BearerTokens> {
        BearerTokens::new(Some(t), None, "--test").unwrap()
    }

    #[test]
    fn admin_token_rules() {
        let disabled = AdminAuth::new(None);
        assert!(matches!(
            disabled.check(Some("Bearer x")),
            Err(Error::PermissionDenied(_))
        ));
        let auth = AdminAuth::new(tokens("s3cret"));
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        assert!(auth.check(Some("bearer s3cret")).is_ok());
        assert!(matches!(
            auth.check(Some("Bearer s3cre")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check(Some("s3cret")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(auth.check(None), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn api_token_rules() {
        let open = ApiAuth::new(None);
        assert!(open.check(None).is_ok());
        let auth = ApiAuth::new(tokens("t0k"));
        assert!(auth.check(Some("Bearer t0k")).is_ok());
        let Err(Error::Unauthenticated(message)) = auth.check(Some("Bearer t0")) else {
            panic!("a wrong token must be refused");
        };
        assert!(!message.contains("t0k"), "{message}");
        assert!(matches!(auth.check(None), Err(Error::Unauthenticated(_))));
    }
}
