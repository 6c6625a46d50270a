//! The admin bearer token that guards repository control on both front ends. With no token configured
//! the endpoints are disabled rather than open.

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct AdminAuth {
    token: Option<String>,
}

impl AdminAuth {
    pub fn new(token: Option<String>) -> Self {
        AdminAuth {
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// `authorization` is the raw `Authorization` header (HTTP) or metadata value (gRPC).
    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        let Some(expected) = &self.token else {
            return Err(Error::PermissionDenied(
                "repository control is disabled: start keel with --admin-token (KEEL_ADMIN_TOKEN)"
                    .into(),
            ));
        };
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(p) if constant_time_eq(p.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(Error::Unauthenticated("wrong admin token".into())),
            None => Err(Error::Unauthenticated(
                "missing 'Authorization: Bearer <admin token>'".into(),
            )),
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let open = AdminAuth::new(None);
        assert!(matches!(
            open.check(Some("Bearer x")),
            Err(Error::PermissionDenied(_))
        ));
        let auth = AdminAuth::new(Some("s3cret".into()));
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
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
}
