//! Model source URIs (`https://`, `pvc://`, `file:///`) and where each one
//! appears inside a server pod.

use std::fmt;

/// Directory of the model cache in the pod; `https://` models land here and
/// the registry names them relative to it (`SPECDEC_MODEL_DIR`).
pub const MODEL_CACHE_DIR: &str = "/models";
/// Directory under which `pvc://` claims are mounted read-only.
pub const PVC_SOURCES_DIR: &str = "/sources/pvc";
/// Directory under which `file:///` node files are mounted read-only.
pub const NODE_SOURCES_DIR: &str = "/sources/node";

/// A parsed model source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelSource {
    /// Downloaded by an init container and checked against `sha256`.
    Https {
        /// The URL.
        url: String,
        /// Lowercase hex SHA-256.
        sha256: String,
        /// Name the file is stored under in the model cache.
        file_name: String,
    },
    /// A file on a PersistentVolumeClaim of the namespace.
    Pvc {
        /// The claim.
        claim: String,
        /// Path of the file inside the claim's volume, without a leading `/`.
        path: String,
    },
    /// A file already on the node.
    File {
        /// Absolute path on the node.
        path: String,
    },
}

/// A model source URI that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSource(pub String);

impl fmt::Display for InvalidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A relative path without `.`/`..` segments or empty segments.
fn is_plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

impl ModelSource {
    /// Parse the CRD's `{uri, sha256}` pair. The schema already refuses most
    /// bad values; this is the authoritative check (objects created before a
    /// schema change, or by clients that skip validation).
    pub fn parse(uri: &str, sha256: Option<&str>) -> Result<Self, InvalidSource> {
        let invalid = |why: &str| InvalidSource(format!("model uri `{uri}`: {why}"));
        let path_part = uri.split(['?', '#']).next().unwrap_or_default();
        if !path_part.ends_with(".gguf") {
            return Err(invalid("must name a .gguf file"));
        }
        if let Some(rest) = uri.strip_prefix("https://") {
            let sha256 = sha256.ok_or_else(|| invalid("an https:// source needs sha256"))?;
            if sha256.len() != 64
                || !sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid("sha256 must be 64 lowercase hex digits"));
            }
            let (host, path) = rest.split_once('/').ok_or_else(|| invalid("has no path"))?;
            let path = path.split(['?', '#']).next().unwrap_or_default();
            let file_name = path.rsplit('/').next().unwrap_or_default();
            if host.is_empty() || file_name.is_empty() || !file_name.ends_with(".gguf") {
                return Err(invalid("must be https://HOST/PATH/FILE.gguf"));
            }
            return Ok(Self::Https {
                url: uri.to_string(),
                sha256: sha256.to_string(),
                file_name: file_name.to_string(),
            });
        }
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid("must be pvc://CLAIM/PATH"))?;
            if !is_dns_subdomain(claim) {
                return Err(invalid("the claim name is not a valid Kubernetes name"));
            }
            if !is_plain_relative_path(path) {
                return Err(invalid(
                    "the path inside the claim must be plain (no `.`, `..` or `//`)",
                ));
            }
            return Ok(Self::Pvc {
                claim: claim.to_string(),
                path: path.to_string(),
            });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') || !is_plain_relative_path(&path[1..]) {
                return Err(invalid("must be file:///ABSOLUTE/PATH with a plain path"));
            }
            return Ok(Self::File {
                path: path.to_string(),
            });
        }
        Err(invalid("the scheme must be https://, pvc:// or file:///"))
    }

    /// File name of the model.
    pub fn file_name(&self) -> &str {
        match self {
            Self::Https { file_name, .. } => file_name,
            Self::Pvc { path, .. } | Self::File { path } => path.rsplit('/').next().unwrap_or(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000abc";

    #[test]
    fn parses_the_three_schemes() {
        assert_eq!(
            ModelSource::parse("https://h/o/m.gguf?x=1", Some(SHA)).unwrap(),
            ModelSource::Https {
                url: "https://h/o/m.gguf?x=1".into(),
                sha256: SHA.into(),
                file_name: "m.gguf".into()
            }
        );
        assert_eq!(
            ModelSource::parse("pvc://models/qwen/m.gguf", None).unwrap(),
            ModelSource::Pvc {
                claim: "models".into(),
                path: "qwen/m.gguf".into()
            }
        );
        assert_eq!(
            ModelSource::parse("file:///var/lib/m.gguf", None).unwrap(),
            ModelSource::File {
                path: "/var/lib/m.gguf".into()
            }
        );
    }

    #[test]
    fn refuses_bad_sources_with_a_reason() {
        let err = |uri: &str, sha: Option<&str>| ModelSource::parse(uri, sha).unwrap_err().0;
        assert!(err("https://h/m.gguf", None).contains("needs sha256"));
        assert!(err("https://h/m.gguf", Some("ABC")).contains("64 lowercase hex"));
        assert!(err("s3://b/m.gguf", None).contains("scheme"));
        assert!(err("pvc://Bad_Claim/m.gguf", None).contains("claim name"));
        assert!(err("pvc://c/../m.gguf", None).contains("plain"));
        assert!(err("file://relative/m.gguf", None).contains("ABSOLUTE"));
        assert!(err("https://h/m.bin", Some(SHA)).contains(".gguf"));
    }
}
