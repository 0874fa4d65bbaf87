//! API keys: who may use the model. `/v1/*` requires `Authorization: Bearer
//! KEY` when keys are configured; health, readiness and metrics stay open
//! for probes and Prometheus. Keys are compared by their SHA-256 digests in
//! constant time and never logged.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The keys a request may present; empty: no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys, nor their digests.
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Keys from `text`: one per line (or separated by commas), blank lines
    /// and lines starting with `#` ignored.
    pub fn parse(text: &str) -> Self {
        let digests = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(digest)
            .collect();
        Self { digests }
    }

    /// The keys of `file` and of `inline` (the environment's list), together.
    /// Asking for keys and finding none is an error, not an open server.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<Self, String> {
        let mut keys = Self::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?;
            let from_file = Self::parse(&text);
            if from_file.is_empty() {
                return Err(format!("the API key file {} holds no key", path.display()));
            }
            keys.digests.extend(from_file.digests);
        }
        if let Some(text) = inline {
            let inline = Self::parse(text);
            if inline.is_empty() {
                return Err("the API key list from the environment holds no key".into());
            }
            keys.digests.extend(inline.digests);
        }
        Ok(keys)
    }

    /// Whether no key is required.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Check an `Authorization` header's value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "missing API key: send `Authorization: Bearer KEY`".into(),
            ));
        };
        let key = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer KEY`".into())
            })?;
        let presented = digest(key);
        // Every key is compared, each in constant time: the time taken says
        // nothing about which bytes matched.
        let matched = self
            .digests
            .iter()
            .fold(false, |found, d| found | constant_time_eq(d, &presented));
        if matched {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("incorrect API key provided".into()))
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_lines_and_lists() {
        let keys = ApiKeys::parse("# team A\nsk-one\n\n  sk-two , sk-three\n");
        assert_eq!(keys.digests.len(), 3);
        assert!(keys.check(Some(b"Bearer sk-two")).is_ok());
        assert!(keys.check(Some(b"Bearer sk-three")).is_ok());
        assert!(format!("{keys:?}").contains("3 keys"));
        assert!(!format!("{keys:?}").contains("sk-"));
    }

    #[test]
    fn a_missing_malformed_or_wrong_key_is_unauthorized() {
        let keys = ApiKeys::parse("sk-right");
        for header in [
            None,
            Some(&b"sk-right"[..]),
            Some(b"Bearer sk-wrong"),
            Some(b"Bearer \xff"),
        ] {
            match keys.check(header) {
                Err(ApiError::Unauthorized(message)) => assert!(!message.contains("sk-right")),
                other => panic!("{header:?}: {other:?}"),
            }
        }
        assert!(keys.check(Some(b"Bearer sk-right")).is_ok());
        // No keys: open.
        assert!(ApiKeys::default().check(None).is_ok());
    }

    #[test]
    fn asking_for_keys_and_finding_none_is_an_error() {
        let dir = std::env::temp_dir().join(format!("specdec-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n\n").unwrap();
        assert!(ApiKeys::load(Some(&empty), None)
            .unwrap_err()
            .contains("holds no key"));
        assert!(ApiKeys::load(Some(&dir.join("absent")), None)
            .unwrap_err()
            .contains("cannot read"));
        assert!(ApiKeys::load(None, Some(" , ")).is_err());
        let both = ApiKeys::load(None, Some("a,b")).unwrap();
        assert_eq!(both.digests.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
