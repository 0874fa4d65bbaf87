//! Downloading a model file into the model directory with SHA-256
//! verification: what `specdec fetch` does, and what the operator's init
//! container runs for `https://` model sources.
//!
//! The file appears under its final name only once its checksum matched, so a
//! crash or a bad download never leaves a file that looks complete. A file
//! already present with the right checksum is kept (idempotent, and cheap on a
//! persistent model cache).
//!
//! Pods starting together may share the cache (a ReadWriteMany claim): each
//! downloads into a temporary file of its own, and a lock file serialises the
//! check-and-download of one file, so the second finds the first's file
//! verified instead of downloading it again. A verified file's checksum is
//! recorded beside it with its size and modification time, so the next start
//! skips hashing gigabytes while the file is unchanged.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Attempts per download before giving up on transport errors.
const ATTEMPTS: u32 = 3;

/// A download that cannot be completed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The arguments are unusable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server answered with an error or could not be reached.
    #[error("downloading {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an HTTP error status (not retried).
    #[error("downloading {url}: the server answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The bytes arrived but are not the expected file.
    #[error(
        "checksum mismatch for {url}: expected sha256 {expected}, got {actual}; nothing was kept"
    )]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// The SHA-256 asked for.
        expected: String,
        /// The SHA-256 of what arrived.
        actual: String,
    },
    /// The server sends more than the size the file was declared to have:
    /// the download stops before it fills the disk.
    #[error("downloading {url}: the file is larger than its declared size of {expected} bytes; nothing was kept")]
    TooLarge {
        /// The URL.
        url: String,
        /// The declared size.
        expected: u64,
    },
    /// The whole file arrived, smaller than its declared size.
    #[error("downloading {url}: got {actual} bytes, but the file was declared to have {expected}; nothing was kept")]
    SizeMismatch {
        /// The URL.
        url: String,
        /// The declared size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// Local file system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The certificate authorities an `https://` download trusts.
#[derive(Debug, Clone, Default)]
pub enum TrustedRoots {
    /// The public web's roots (Mozilla's list, built in).
    #[default]
    Public,
    /// Only the certificates of a PEM bundle, as `curl --cacert` does: a
    /// model server signed by a private CA. A bundle that should reach public
    /// hosts too includes their roots.
    Bundle(Vec<Certificate<'static>>),
}

impl TrustedRoots {
    /// The certificates of the PEM file at `path`; refused when it cannot be
    /// read or holds no certificate, before anything is downloaded.
    pub fn from_pem_file(path: &Path) -> Result<Self, FetchError> {
        let pem = std::fs::read(path).map_err(|source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |why: String| {
            FetchError::InvalidArgument(format!("CA bundle {}: {why}", path.display()))
        };
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item.map_err(|e| invalid(e.to_string()))? {
                PemItem::Certificate(certificate) => certificates.push(certificate),
                _ => return Err(invalid("holds something other than certificates".into())),
            }
        }
        if certificates.is_empty() {
            return Err(invalid("holds no PEM certificate".into()));
        }
        Ok(Self::Bundle(certificates))
    }

    fn tls_config(&self) -> TlsConfig {
        let roots = match self {
            Self::Public => RootCerts::WebPki,
            Self::Bundle(certificates) => RootCerts::new_with_certs(certificates),
        };
        TlsConfig::builder().root_certs(roots).build()
    }
}

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Downloaded and verified `bytes` bytes.
    Downloaded {
        /// Size of the file.
        bytes: u64,
    },
    /// The file was already there with the right checksum.
    AlreadyPresent,
}

/// The file name a URL is stored under: its last path segment.
pub fn file_name_of(url: &str) -> Result<String, FetchError> {
    let invalid = |why: &str| FetchError::InvalidArgument(format!("url `{url}`: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("only http:// and https:// are supported"))?;
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let (_, path) = path
        .split_once('/')
        .ok_or_else(|| invalid("has no path naming a file"))?;
    let name = path.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') {
        return Err(invalid("its path does not end in a file name"));
    }
    Ok(name.to_string())
}

/// Check that `sha256` is 64 hex digits and normalise it to lowercase.
pub fn parse_sha256(sha256: &str) -> Result<String, FetchError> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha256.to_ascii_lowercase())
    } else {
        Err(FetchError::InvalidArgument(format!(
            "sha256 `{sha256}` is not 64 hexadecimal digits"
        )))
    }
}

/// Download `url` into `dir` under its file name, verifying `sha256` and,
/// when given, `size` (in bytes; a larger download is stopped at that size),
/// over TLS that trusts `roots`. Returns the file's path and what was done.
pub fn fetch(
    url: &str,
    sha256: &str,
    size: Option<u64>,
    dir: &Path,
    roots: &TrustedRoots,
) -> Result<(PathBuf, FetchOutcome), FetchError> {
    let expected = parse_sha256(sha256)?;
    let name = file_name_of(url)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let destination = dir.join(&name);
    let record = dir.join(format!(".{name}.sha256"));
    // Held until this function returns: another fetch of the same file waits.
    let lock_path = dir.join(format!(".{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    // Under the lock nobody writes this file's temporaries: what is left is
    // from a fetch that was killed.
    let stale_prefix = format!(".{name}.");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with(&stale_prefix) && file_name.ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if destination.is_file() {
        if recorded_checksum(&record, &destination).as_deref() == Some(expected.as_str())
            || sha256_of_file(&destination)? == expected
        {
            write_record(&record, &destination, &expected);
            return Ok((destination, FetchOutcome::AlreadyPresent));
        }
        tracing::warn!(
            path = %destination.display(),
            "present file has another checksum; downloading again"
        );
    }
    let _ = std::fs::remove_file(&record);
    let partial = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        match download(url, &partial, size, roots) {
            Ok((bytes, actual)) => {
                if let Some(expected) = size.filter(|&expected| expected != bytes) {
                    let _ = std::fs::remove_file(&partial);
                    return Err(FetchError::SizeMismatch {
                        url: url.to_string(),
                        expected,
                        actual: bytes,
                    });
                }
                if actual != expected {
                    let _ = std::fs::remove_file(&partial);
                    return Err(FetchError::ChecksumMismatch {
                        url: url.to_string(),
                        expected,
                        actual,
                    });
                }
                std::fs::rename(&partial, &destination).map_err(io(&destination))?;
                write_record(&record, &destination, &actual);
                return Ok((destination, FetchOutcome::Downloaded { bytes }));
            }
            Err(e @ FetchError::Transport { .. }) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "download failed; retrying");
                std::thread::sleep(Duration::from_secs(2u64.pow(attempt)));
                last_error = Some(e);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_file(&partial);
    Err(last_error.unwrap_or_else(|| FetchError::Transport {
        url: url.to_string(),
        message: "no attempt made".into(),
    }))
}

/// What identifies a file's content cheaply: its size and modification time.
fn stamp(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{} {}", meta.len(), modified.as_nanos()))
}

/// The checksum recorded for `file`, if the record is for the file as it is
/// now (same size and modification time).
fn recorded_checksum(record: &Path, file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(record).ok()?;
    let (sha256, recorded_stamp) = text.trim_end().split_once(' ')?;
    (Some(recorded_stamp) == stamp(file).as_deref()).then(|| sha256.to_string())
}

/// Record `sha256` as verified for `file` as it is now. A record that cannot
/// be written only costs a hash on the next start.
fn write_record(record: &Path, file: &Path, sha256: &str) {
    let Some(stamp) = stamp(file) else { return };
    let partial = record.with_extension(format!("{}.partial", std::process::id()));
    let written = std::fs::write(&partial, format!("{sha256} {stamp}\n"))
        .and_then(|()| std::fs::rename(&partial, record));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        tracing::warn!(path = %record.display(), error = %e, "cannot record the checksum");
    }
}

/// Stream `url` into `path`, hashing on the way, stopping past `limit`
/// bytes. Returns size and SHA-256.
fn download(
    url: &str,
    path: &Path,
    limit: Option<u64>,
    roots: &TrustedRoots,
) -> Result<(u64, String), FetchError> {
    let transport = |message: String| FetchError::Transport {
        url: url.to_string(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(None)
        .tls_config(roots.tls_config())
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(status) => FetchError::HttpStatus {
            url: url.to_string(),
            status,
        },
        other => transport(other.to_string()),
    })?;
    let announced = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(expected) = limit.filter(|&limit| announced.is_some_and(|n| n > limit)) {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            expected,
        });
    }
    let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut file = File::create(path).map_err(|source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let mut next_report = 256u64 << 20;
    loop {
        let n = body
            .read(&mut buffer)
            .map_err(|e| transport(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])
            .map_err(|source| FetchError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        bytes += n as u64;
        if let Some(expected) = limit.filter(|&limit| bytes > limit) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                expected,
            });
        }
        if bytes >= next_report {
            tracing::info!(url, mib = bytes >> 20, "downloading");
            next_report += 256 << 20;
        }
    }
    file.sync_all().map_err(|source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_of_file(path: &Path) -> Result<String, FetchError> {
    let io = |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_is_the_last_path_segment() {
        assert_eq!(
            file_name_of("https://host/org/repo/resolve/main/model.gguf?download=true").unwrap(),
            "model.gguf"
        );
        assert!(file_name_of("https://host/").is_err());
        assert!(file_name_of("https://host").is_err());
        assert!(file_name_of("ftp://host/a.gguf").is_err());
        assert!(file_name_of("https://host/dir/..").is_err());
    }

    #[test]
    fn a_record_holds_only_while_the_file_is_unchanged() {
        let dir = std::env::temp_dir().join(format!("specdec-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.gguf");
        let record = dir.join(".m.gguf.sha256");
        std::fs::write(&file, b"model").unwrap();
        let sha = sha256_of_file(&file).unwrap();
        write_record(&record, &file, &sha);
        assert_eq!(recorded_checksum(&record, &file), Some(sha));
        // Rewritten in place (another size): the record no longer holds.
        std::fs::write(&file, b"changed model").unwrap();
        assert_eq!(recorded_checksum(&record, &file), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
