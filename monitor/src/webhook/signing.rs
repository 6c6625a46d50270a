//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(secret, id "." timestamp "." body)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;

use super::Secret;

/// The `webhook-signature` header value for one attempt.
pub fn signature(secret: &Secret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn matches_the_standard_webhooks_example() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn raw_secrets_are_their_bytes_and_whitespace_is_trimmed() {
        let a = Secret::new("hunter2\n").unwrap();
        let b = Secret::new("hunter2").unwrap();
        assert_eq!(signature(&a, "i", 1, b"x"), signature(&b, "i", 1, b"x"));
        assert_ne!(signature(&a, "i", 1, b"x"), signature(&a, "i", 2, b"x"));
    }

    #[test]
    fn bad_secrets_are_rejected_without_echoing_them() {
        for text in ["", "  \n", "whsec_", "whsec_not*base64"] {
            let error = Secret::new(text).unwrap_err().to_string();
            assert!(
                !text.trim().is_empty() || error.contains("empty"),
                "{error}"
            );
            assert!(!error.contains("not*base64"), "{error}");
        }
        assert_eq!(
            format!(
                "{:?}",
                Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Secret(<redacted>)"
        );
    }
}
