//! The multilingual pretraining corpus, built from Debian documentation
//! packages: the Debian Administrator's Handbook (HTML, one directory per
//! locale) and the manual pages (`manpages` in English and its translations,
//! gzipped groff).
//!
//! Prose paragraphs are extracted, cleaned, filtered (length, letters,
//! nothing that looks like code), checked for language (untranslated English
//! inside a translation does not count as that language) and deduplicated
//! across the whole corpus. Each language goes to `<lang>.jsonl`, one
//! [`Paragraph`] per line, and `manifest.json` records the inputs (package
//! versions, options, tokenizer), per-language statistics and each file's
//! SHA-256.
//!
//! Evaluation data stays out: the Debian Reference and gettext catalogs are
//! never read (see [`is_excluded`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use whatlang::{Detector, Lang};

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The script that installs the Debian packages the corpus is built from.
pub const SETUP_COMMAND: &str = "scripts/setup-train";

/// Name of the manifest in the output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Default minimum paragraph length, in characters.
pub const DEFAULT_MIN_CHARS: usize = 60;

/// Default minimum length for Japanese and Chinese, which say as much in
/// about a third of the characters.
pub const DEFAULT_MIN_CHARS_DENSE: usize = 20;

/// Default maximum paragraph length, in characters; longer ones are split at
/// sentence ends.
pub const DEFAULT_MAX_CHARS: usize = 4000;

/// Default minimum share of letters among the non-space characters.
pub const DEFAULT_MIN_LETTER_RATIO: f64 = 0.6;

/// Bumped whenever extraction or filtering changes, so that an older corpus
/// is rebuilt instead of being taken as up to date.
const FORMAT_VERSION: u32 = 1;

const HANDBOOK_PACKAGE: &str = "debian-handbook";
const HANDBOOK_ROOT: &str = "/usr/share/doc/debian-handbook/html";
const MAN_ROOT: &str = "/usr/share/man";

/// The manual page packages and the language each one holds. Portuguese
/// pages live in `manpages-pt-br` (`manpages-pt` is an empty package that
/// depends on it).
const MAN_PACKAGES: &[(&str, &str)] = &[
    ("manpages", "en"),
    ("manpages-de", "de"),
    ("manpages-es", "es"),
    ("manpages-fr", "fr"),
    ("manpages-it", "it"),
    ("manpages-ja", "ja"),
    ("manpages-pt-br", "pt"),
    ("manpages-ru", "ru"),
    ("manpages-zh", "zh"),
];

/// Why the corpus cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// Source packages are not installed (or their files were left out).
    #[error("Debian package(s) {} not available ({detail}); install them with {}", .packages.join(", "), SETUP_COMMAND)]
    MissingPackages {
        /// The Debian package names.
        packages: Vec<String>,
        /// What exactly is missing.
        detail: String,
    },
    /// A requested language has no source text.
    #[error("no source text for language {code:?} (available: {})", .available.join(", "))]
    UnknownLanguage {
        /// The requested code.
        code: String,
        /// The codes that have sources.
        available: Vec<String>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A corpus file is truncated or corrupt.
    #[error("{}:{line}: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A corpus file differs from what the manifest recorded.
    #[error("{}: SHA-256 {actual} does not match the manifest's {expected}", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Digest recorded in the manifest.
        expected: String,
        /// Digest of the file now.
        actual: String,
    },
    /// The manifest cannot be read.
    #[error("{}: invalid manifest: {reason}", .path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Counting tokens failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CorpusError + '_ {
    move |source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to build and how to filter.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// Output directory.
    pub out: PathBuf,
    /// ISO 639-1 codes to build; `None` builds every language found.
    pub languages: Option<Vec<String>>,
    /// Rebuild even when the manifest says the corpus is up to date.
    pub force: bool,
    /// Minimum paragraph length in characters.
    pub min_chars: usize,
    /// Minimum length for Japanese and Chinese.
    pub min_chars_dense: usize,
    /// Maximum paragraph length in characters (longer ones are split).
    pub max_chars: usize,
    /// Minimum share of letters among non-space characters.
    pub min_letter_ratio: f64,
    /// Drop paragraphs reliably detected as English in another language's file.
    pub language_check: bool,
}

impl CorpusOptions {
    /// Default filtering, writing to `out`.
    pub fn new(out: PathBuf) -> Self {
        Self {
            out,
            languages: None,
            force: false,
            min_chars: DEFAULT_MIN_CHARS,
            min_chars_dense: DEFAULT_MIN_CHARS_DENSE,
            max_chars: DEFAULT_MAX_CHARS,
            min_letter_ratio: DEFAULT_MIN_LETTER_RATIO,
            language_check: true,
        }
    }
}

/// One line of a `<lang>.jsonl` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paragraph {
    /// `<Debian package>:<path relative to the package's document root>`.
    pub source: String,
    /// Cleaned text, whitespace collapsed.
    pub text: String,
}

/// Everything the output depends on; an existing corpus built from equal
/// inputs is reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// Version of the extraction and filtering code.
    pub format: u32,
    /// Debian package name to installed version.
    pub packages: BTreeMap<String, String>,
    /// Languages asked for (`None`: all found).
    pub languages: Option<Vec<String>>,
    /// Minimum paragraph length.
    pub min_chars: usize,
    /// Minimum length for Japanese and Chinese.
    pub min_chars_dense: usize,
    /// Maximum paragraph length.
    pub max_chars: usize,
    /// Minimum share of letters.
    pub min_letter_ratio: f64,
    /// Whether the language check ran.
    pub language_check: bool,
    /// File name of the model whose tokenizer counted the tokens.
    pub tokenizer: String,
    /// Its vocabulary size.
    pub vocab_size: usize,
}

/// Paragraphs left out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Shorter than the minimum.
    pub short: usize,
    /// A sentence longer than the maximum.
    pub long: usize,
    /// Code, command lines, option tables, URL lists.
    pub not_prose: usize,
    /// Reliably detected as English in another language's file.
    pub foreign: usize,
    /// Seen before, anywhere in the corpus.
    pub duplicate: usize,
}

/// Statistics of one language's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanguageStats {
    /// File name in the output directory.
    pub file: String,
    /// SHA-256 of the file, hexadecimal.
    pub sha256: String,
    /// Debian packages the text came from, with their versions.
    pub packages: BTreeMap<String, String>,
    /// Source files read.
    pub sources: usize,
    /// Source files skipped (`.so` redirects, not UTF-8).
    pub skipped_sources: usize,
    /// Paragraphs written.
    pub paragraphs: usize,
    /// Characters written (Unicode scalar values).
    pub chars: usize,
    /// Tokens of the target's tokenizer (no BOS).
    pub tokens: usize,
    /// Paragraphs left out.
    pub dropped: Dropped,
}

/// Contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the corpus was built from.
    pub inputs: Inputs,
    /// Per ISO 639-1 code.
    pub languages: BTreeMap<String, LanguageStats>,
}

/// English name of an ISO 639-1 code (for prompts); unknown codes come back
/// unchanged.
pub fn language_name(code: &str) -> &str {
    match code {
        "ar" => "Arabic",
        "ca" => "Catalan",
        "cs" => "Czech",
        "da" => "Danish",
        "de" => "German",
        "el" => "Greek",
        "en" => "English",
        "es" => "Spanish",
        "fa" => "Persian",
        "fi" => "Finnish",
        "fr" => "French",
        "hr" => "Croatian",
        "hu" => "Hungarian",
        "id" => "Indonesian",
        "it" => "Italian",
        "ja" => "Japanese",
        "ko" => "Korean",
        "nb" => "Norwegian Bokmål",
        "nl" => "Dutch",
        "pl" => "Polish",
        "pt" => "Portuguese",
        "ro" => "Romanian",
        "ru" => "Russian",
        "sv" => "Swedish",
        "tr" => "Turkish",
        "uk" => "Ukrainian",
        "vi" => "Vietnamese",
        "zh" => "Chinese",
        other => other,
    }
}

/// The language detector's name for an ISO 639-1 code.
fn detector_lang(code: &str) -> Option<Lang> {
    Some(match code {
        "ar" => Lang::Ara,
        "ca" => Lang::Cat,
        "cs" => Lang::Ces,
        "da" => Lang::Dan,
        "de" => Lang::Deu,
        "el" => Lang::Ell,
        "en" => Lang::Eng,
        "es" => Lang::Spa,
        "fa" => Lang::Pes,
        "fi" => Lang::Fin,
        "fr" => Lang::Fra,
        "hr" => Lang::Hrv,
        "hu" => Lang::Hun,
        "id" => Lang::Ind,
        "it" => Lang::Ita,
        "ja" => Lang::Jpn,
        "ko" => Lang::Kor,
        "nb" => Lang::Nob,
        "nl" => Lang::Nld,
        "pl" => Lang::Pol,
        "pt" => Lang::Por,
        "ro" => Lang::Ron,
        "ru" => Lang::Rus,
        "sv" => Lang::Swe,
        "tr" => Lang::Tur,
        "uk" => Lang::Ukr,
        "vi" => Lang::Vie,
        "zh" => Lang::Cmn,
        _ => return None,
    })
}

/// ISO 639-1 code of a locale name (`de-DE`, `pt_BR`, `zh-TW`, `ja`).
fn locale_language(locale: &str) -> Option<String> {
    let code = locale
        .split(['-', '_', '.', '@'])
        .next()?
        .to_ascii_lowercase();
    (code.len() == 2 && code.chars().all(|c| c.is_ascii_lowercase())).then_some(code)
}

/// Whether a path must never be read: the Debian Reference (evaluation text)
/// and gettext catalogs (`.po`, `.pot`, `.mo`, `.gmo`, also gzipped), which
/// hold translations aligned with their originals.
pub fn is_excluded(path: &Path) -> bool {
    let in_reference = path.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("debian-reference"))
    });
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let catalog = [".po", ".pot", ".mo", ".gmo"]
        .iter()
        .any(|ext| name.ends_with(ext));
    in_reference || catalog
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Man,
}

/// One file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceFile {
    package: String,
    path: PathBuf,
    /// Path relative to the package's document root.
    relative: String,
    language: String,
    format: Format,
}

/// The files of `package` (as its file list names them) that hold text for
/// the corpus, with their language; excluded paths never come back.
fn select_sources(package: &str, files: &[PathBuf]) -> Vec<SourceFile> {
    let mut out = Vec::new();
    for path in files {
        if is_excluded(path) {
            continue;
        }
        let name = path.to_string_lossy();
        let (format, root) = if name.ends_with(".html") {
            (Format::Html, HANDBOOK_ROOT)
        } else if name.ends_with(".gz") {
            (Format::Man, MAN_ROOT)
        } else {
            continue;
        };
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
        let language = match (format, parts.as_slice()) {
            // <locale>/<page>.html; Common_Content and images are not text.
            (Format::Html, [locale, _page]) => locale_language(locale),
            // man<N>/<page>.gz is English; <locale>/man<N>/<page>.gz.
            (Format::Man, [section, _page]) if section.starts_with("man") => Some("en".to_string()),
            (Format::Man, [locale, section, _page]) if section.starts_with("man") => {
                locale_language(locale)
            }
            _ => None,
        };
        let Some(language) = language else {
            continue;
        };
        out.push(SourceFile {
            package: package.to_string(),
            path: path.clone(),
            relative: parts.join("/"),
            language,
            format,
        });
    }
    out
}

/// Installed version and file list of a Debian package; `Err` says why it
/// is not available.
fn query_package(package: &str) -> Result<(String, Vec<PathBuf>), String> {
    let status = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}\t${Version}", package])
        .output()
        .map_err(|e| format!("cannot query the package database: {e}"))?;
    let text = String::from_utf8_lossy(&status.stdout);
    let (state, version) = text.split_once('\t').unwrap_or(("", ""));
    if !status.status.success() || state != "installed" {
        return Err("not installed".into());
    }
    let list = Command::new("dpkg-query")
        .args(["-L", package])
        .output()
        .map_err(|e| format!("cannot list its files: {e}"))?;
    if !list.status.success() {
        return Err("cannot list its files".into());
    }
    let files = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    Ok((version.to_string(), files))
}

/// Lower-cased, trimmed, deduplicated and sorted.
fn normalise_languages(languages: &Option<Vec<String>>) -> Option<Vec<String>> {
    languages.as_ref().map(|list| {
        let set: BTreeSet<String> = list.iter().map(|c| c.trim().to_ascii_lowercase()).collect();
        set.into_iter().collect()
    })
}

/// Build the corpus into `options.out`, or reuse it when its manifest
/// matches the inputs (unless `options.force`).
pub fn build(options: &CorpusOptions, tokenizer: &Tokenizer) -> Result<Manifest, CorpusError> {
    let started = Instant::now();
    let languages = normalise_languages(&options.languages);
    let wanted = |code: &str| {
        languages
            .as_ref()
            .is_none_or(|l| l.iter().any(|c| c == code))
    };

    // Which packages are needed: the handbook always, a man page package
    // when its language is wanted.
    let mut needed = vec![HANDBOOK_PACKAGE];
    needed.extend(
        MAN_PACKAGES
            .iter()
            .filter(|(_, l)| wanted(l))
            .map(|(p, _)| *p),
    );
    let mut versions = BTreeMap::new();
    let mut sources = Vec::new();
    let mut missing = Vec::new();
    let mut details = Vec::new();
    for package in &needed {
        match query_package(package) {
            Ok((version, files)) => {
                let selected: Vec<SourceFile> = select_sources(package, &files)
                    .into_iter()
                    .filter(|s| s.path.exists())
                    .collect();
                if selected.is_empty() {
                    missing.push(package.to_string());
                    details.push(format!(
                        "{package} is installed but its documentation files are absent"
                    ));
                }
                versions.insert(package.to_string(), version);
                sources.extend(selected);
            }
            Err(reason) => {
                missing.push(package.to_string());
                details.push(format!("{package}: {reason}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(CorpusError::MissingPackages {
            packages: missing,
            detail: details.join("; "),
        });
    }
    let available: BTreeSet<String> = sources.iter().map(|s| s.language.clone()).collect();
    if let Some(list) = &languages {
        if let Some(code) = list.iter().find(|c| !available.contains(*c)) {
            return Err(CorpusError::UnknownLanguage {
                code: code.clone(),
                available: available.into_iter().collect(),
            });
        }
    }
    sources.retain(|s| wanted(&s.language));
    // English first, so that text a translation left in English is credited
    // to English by the deduplication; then by language, package and path,
    // so that runs are reproducible.
    sources.sort_by(|a, b| {
        (a.language != "en", &a.language, &a.package, &a.relative).cmp(&(
            b.language != "en",
            &b.language,
            &b.package,
            &b.relative,
        ))
    });

    let inputs = Inputs {
        format: FORMAT_VERSION,
        packages: versions,
        languages: languages.clone(),
        min_chars: options.min_chars,
        min_chars_dense: options.min_chars_dense,
        max_chars: options.max_chars,
        min_letter_ratio: options.min_letter_ratio,
        language_check: options.language_check,
        tokenizer: tokenizer
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        vocab_size: tokenizer.vocab_size(),
    };
    let manifest_path = options.out.join(MANIFEST_FILE);
    let previous = if manifest_path.exists() {
        match read_manifest(&options.out) {
            Ok(manifest) if manifest.inputs == inputs && !options.force => {
                tracing::info!(
                    "the corpus in {} is up to date with its inputs; --force rebuilds it",
                    options.out.display()
                );
                return Ok(manifest);
            }
            Ok(manifest) => Some(manifest),
            Err(e) => {
                tracing::warn!("rebuilding the corpus: {e}");
                None
            }
        }
    } else {
        None
    };

    let mut corpus = extract(&sources, options)?;
    let token_counts = count_tokens(&corpus, tokenizer)?;

    fs::create_dir_all(&options.out).map_err(io_error(&options.out))?;
    let mut stats = BTreeMap::new();
    for (language, lang) in corpus.iter_mut() {
        let file = format!("{language}.jsonl");
        let sha256 = write_jsonl(&options.out.join(&file), &lang.paragraphs)?;
        stats.insert(
            language.clone(),
            LanguageStats {
                file,
                sha256,
                packages: lang
                    .packages
                    .iter()
                    .map(|p| {
                        (
                            p.clone(),
                            inputs.packages.get(p).cloned().unwrap_or_default(),
                        )
                    })
                    .collect(),
                sources: lang.sources,
                skipped_sources: lang.skipped_sources,
                paragraphs: lang.paragraphs.len(),
                chars: lang.paragraphs.iter().map(|p| p.text.chars().count()).sum(),
                tokens: token_counts.get(language).copied().unwrap_or(0),
                dropped: lang.dropped.clone(),
            },
        );
    }
    for (language, s) in &stats {
        tracing::info!(
            "{language}: {} paragraphs, {} characters, {} tokens from {} files; dropped {} short, \
             {} long, {} not prose, {} English in a translation, {} duplicates",
            s.paragraphs,
            s.chars,
            s.tokens,
            s.sources,
            s.dropped.short,
            s.dropped.long,
            s.dropped.not_prose,
            s.dropped.foreign,
            s.dropped.duplicate
        );
    }
    // Files of languages the previous build had and this one has not.
    if let Some(previous) = previous {
        for (language, old) in &previous.languages {
            if !stats.contains_key(language) {
                let path = options.out.join(&old.file);
                if path.exists() {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
            }
        }
    }
    let manifest = Manifest {
        inputs,
        languages: stats,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| CorpusError::Manifest {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&manifest_path, format!("{json}\n").as_bytes())?;
    tracing::info!(
        "corpus written to {} in {:.1} s",
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// One language's paragraphs while the corpus is being built.
#[derive(Default)]
struct LanguageCorpus {
    paragraphs: Vec<Paragraph>,
    packages: BTreeSet<String>,
    sources: usize,
    skipped_sources: usize,
    dropped: Dropped,
}

fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Read every source and keep the paragraphs that pass the filters, in
/// source order.
fn extract(
    sources: &[SourceFile],
    options: &CorpusOptions,
) -> Result<BTreeMap<String, LanguageCorpus>, CorpusError> {
    let bar = progress_bar(
        sources.len() as u64,
        "extracting {bar:40} {pos}/{len} files, {elapsed} elapsed, ETA {eta}",
    );
    let mut corpus: BTreeMap<String, LanguageCorpus> = BTreeMap::new();
    let mut seen = HashSet::new();
    let filter = Filter::from_options(options);
    for source in sources {
        bar.inc(1);
        // Links duplicate other pages.
        let regular = fs::symlink_metadata(&source.path)
            .map_err(io_error(&source.path))?
            .file_type()
            .is_file();
        if !regular {
            continue;
        }
        let lang = corpus.entry(source.language.clone()).or_default();
        let Some(candidates) = read_source(source)? else {
            lang.skipped_sources += 1;
            continue;
        };
        lang.sources += 1;
        let before = lang.paragraphs.len();
        for candidate in candidates {
            for piece in split_long(&candidate, filter.max_chars) {
                match filter.check(&piece, &source.language) {
                    Err(reason) => reason.count(&mut lang.dropped),
                    Ok(()) if !seen.insert(dedup_key(&piece)) => lang.dropped.duplicate += 1,
                    Ok(()) => lang.paragraphs.push(Paragraph {
                        source: format!("{}:{}", source.package, source.relative),
                        text: piece,
                    }),
                }
            }
        }
        if lang.paragraphs.len() > before {
            lang.packages.insert(source.package.clone());
        }
    }
    bar.finish_and_clear();
    Ok(corpus)
}

/// Candidate paragraphs of one file, or `None` for a file that holds no
/// text of its own (a `.so` redirect, not UTF-8).
fn read_source(source: &SourceFile) -> Result<Option<Vec<String>>, CorpusError> {
    let file = fs::File::open(&source.path).map_err(io_error(&source.path))?;
    let mut bytes = Vec::new();
    match source.format {
        Format::Html => (&file).read_to_end(&mut bytes),
        Format::Man => GzDecoder::new(file).read_to_end(&mut bytes),
    }
    .map_err(io_error(&source.path))?;
    let Ok(text) = String::from_utf8(bytes) else {
        tracing::debug!("{}: not UTF-8, skipped", source.path.display());
        return Ok(None);
    };
    Ok(match source.format {
        Format::Html => Some(html_paragraphs(&text)),
        Format::Man => man_paragraphs(&text),
    })
}

/// Exact-duplicate key: the text lower-cased (whitespace is already collapsed).
fn dedup_key(text: &str) -> [u8; 16] {
    let digest = Sha256::digest(text.to_lowercase().as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Tokens per language, counted on all cores with a progress bar (the
/// tokenizer is read-only and shared).
fn count_tokens(
    corpus: &BTreeMap<String, LanguageCorpus>,
    tokenizer: &Tokenizer,
) -> Result<BTreeMap<String, usize>, CorpusError> {
    let total: usize = corpus
        .values()
        .flat_map(|l| &l.paragraphs)
        .map(|p| p.text.len())
        .sum();
    let bar = progress_bar(
        total as u64,
        "counting tokens {bar:40} {bytes}/{total_bytes}, {elapsed} elapsed, ETA {eta}",
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = BTreeMap::new();
    for (language, lang) in corpus {
        let chunk = lang.paragraphs.len().div_ceil(threads).max(1);
        let results: Vec<Result<usize, TokenizerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lang
                .paragraphs
                .chunks(chunk)
                .map(|part| {
                    let bar = bar.clone();
                    scope.spawn(move || {
                        let mut n = 0;
                        for p in part {
                            n += tokenizer.encode(&p.text, false)?.len();
                            bar.inc(p.text.len() as u64);
                        }
                        Ok(n)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TokenizerError::Tokenize(
                            "a token counting thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut n = 0;
        for r in results {
            n += r?;
        }
        counts.insert(language.clone(), n);
    }
    bar.finish_and_clear();
    Ok(counts)
}

/// Write `bytes` to `path` through a temporary file and a rename, so that a
/// reader never sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CorpusError> {
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

/// Write paragraphs as JSON lines; returns the file's SHA-256.
fn write_jsonl(path: &Path, paragraphs: &[Paragraph]) -> Result<String, CorpusError> {
    let mut bytes = Vec::new();
    for p in paragraphs {
        let line = serde_json::to_string(p).map_err(|e| CorpusError::Corrupt {
            path: path.to_path_buf(),
            line: 0,
            reason: e.to_string(),
        })?;
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    write_atomic(path, &bytes)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Read a `<lang>.jsonl` file; a truncated file (no final newline), invalid
/// UTF-8 or a line that is not a paragraph is refused with its line number.
pub fn read_paragraphs(path: &Path) -> Result<Vec<Paragraph>, CorpusError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let corrupt = |line: usize, reason: String| CorpusError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // The last element is what follows the final newline: empty when whole.
    let complete = lines.len() - 1;
    if !lines[complete].is_empty() {
        return Err(corrupt(
            lines.len(),
            "truncated: the last line has no final newline".into(),
        ));
    }
    let mut paragraphs = Vec::with_capacity(complete);
    for (i, line) in lines[..complete].iter().enumerate() {
        let text =
            std::str::from_utf8(line).map_err(|e| corrupt(i + 1, format!("invalid UTF-8: {e}")))?;
        let paragraph: Paragraph =
            serde_json::from_str(text).map_err(|e| corrupt(i + 1, format!("invalid JSON: {e}")))?;
        paragraphs.push(paragraph);
    }
    Ok(paragraphs)
}

/// Read `manifest.json` in `dir` and verify every file's SHA-256 against it.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CorpusError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(io_error(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| CorpusError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    for stats in manifest.languages.values() {
        let file = dir.join(&stats.file);
        let data = fs::read(&file).map_err(io_error(&file))?;
        let actual = hex::encode(Sha256::digest(&data));
        if actual != stats.sha256 {
            return Err(CorpusError::Checksum {
                path: file,
                expected: stats.sha256.clone(),
                actual,
            });
        }
    }
    Ok(manifest)
}

// ---------------------------------------------------------------------------
// Filtering

/// Why a paragraph was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Short,
    Long,
    NotProse,
    Foreign,
}

impl DropReason {
    fn count(self, dropped: &mut Dropped) {
        match self {
            Self::Short => dropped.short += 1,
            Self::Long => dropped.long += 1,
            Self::NotProse => dropped.not_prose += 1,
            Self::Foreign => dropped.foreign += 1,
        }
    }
}

struct Filter {
    min_chars: usize,
    min_chars_dense: usize,
    max_chars: usize,
    min_letter_ratio: f64,
    language_check: bool,
}

impl Filter {
    fn from_options(o: &CorpusOptions) -> Self {
        Self {
            min_chars: o.min_chars,
            min_chars_dense: o.min_chars_dense,
            max_chars: o.max_chars,
            min_letter_ratio: o.min_letter_ratio,
            language_check: o.language_check,
        }
    }

    fn check(&self, text: &str, language: &str) -> Result<(), DropReason> {
        let chars = text.chars().count();
        let min = if matches!(language, "ja" | "zh") {
            self.min_chars_dense
        } else {
            self.min_chars
        };
        if chars < min {
            return Err(DropReason::Short);
        }
        if chars > self.max_chars {
            return Err(DropReason::Long);
        }
        if !is_prose(text, self.min_letter_ratio) {
            return Err(DropReason::NotProse);
        }
        if self.language_check && is_foreign(text, language) {
            return Err(DropReason::Foreign);
        }
        Ok(())
    }
}

/// Characters that are frequent in code and command lines and rare in prose.
const CODE_SYMBOLS: &str = "{}[]<>=;|$`\\_/*#@~^&";

/// Whether a whitespace-separated word is technical: a URL, a path, a
/// command-line option, an assignment, a call or a C++/Perl name.
fn is_technical_word(word: &str) -> bool {
    let w =
        word.trim_matches(|c: char| matches!(c, ',' | '.' | ';' | ':' | '(' | ')' | '"' | '\''));
    w.contains("://")
        || w.starts_with('/')
        || w.starts_with("~/")
        || w.starts_with("./")
        || (w.starts_with('-')
            && w.chars()
                .nth(1)
                .is_some_and(|c| c.is_alphanumeric() || c == '-'))
        || (w.contains('=') && w.len() > 1)
        || w.contains("::")
        || w.ends_with("()")
        || w.contains("->")
        || w.starts_with('$')
}

/// Whether a paragraph reads as prose: mostly letters, not a command line,
/// and neither code symbols nor technical words (options, paths, URLs)
/// make up much of it. Shares are of characters, not words, because
/// Japanese and Chinese put no spaces between words.
fn is_prose(text: &str, min_letter_ratio: f64) -> bool {
    let non_space = text.chars().filter(|c| !c.is_whitespace()).count();
    if non_space == 0 {
        return false;
    }
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    if (letters as f64) < min_letter_ratio * non_space as f64 {
        return false;
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if matches!(words.first(), Some(&("$" | "#" | "%" | ">"))) {
        return false;
    }
    // A Japanese or Chinese character carries about as much as three
    // Latin letters, so it weighs three in the shares below.
    let weight = |c: char| if is_cjk(c) { 3 } else { 1 };
    let total: usize = words.iter().flat_map(|w| w.chars()).map(weight).sum();
    let mut technical = 0;
    let mut symbols = 0;
    for word in &words {
        if is_technical_word(word) {
            technical += word.chars().count();
        } else {
            symbols += word.chars().filter(|c| CODE_SYMBOLS.contains(*c)).count();
        }
    }
    symbols * 100 <= total * 5 && technical * 100 <= total * 40
}

/// Whether a letter belongs to a script other than Latin (Greek, Cyrillic,
/// Arabic, CJK, Hangul, ...).
fn is_non_latin_letter(c: char) -> bool {
    c.is_alphabetic() && (c as u32) > 0x24F
}

/// Whether a paragraph in `language`'s file is reliably English instead.
/// Translations here only ever leave English behind (untranslated parts), so
/// the detector chooses between the file's language and English; deciding
/// among all languages would drop good text between close neighbours
/// (Croatian and Serbian, Bokmål and Danish).
fn is_foreign(text: &str, language: &str) -> bool {
    let Some(expected) = detector_lang(language) else {
        return false;
    };
    if expected == Lang::Eng {
        return false;
    }
    // Japanese or Russian prose full of English command names still
    // counts as its own language when its own script is well represented.
    if detector_lang_is_non_latin(expected) {
        let weight = |c: char| if is_cjk(c) { 3 } else { 1 };
        let letters: usize = text.chars().filter(|c| c.is_alphabetic()).map(weight).sum();
        let own: usize = text
            .chars()
            .filter(|c| is_non_latin_letter(*c))
            .map(weight)
            .sum();
        if own * 5 >= letters {
            return false;
        }
    }
    let detector = Detector::with_allowlist(vec![expected, Lang::Eng]);
    detector
        .detect(text)
        .is_some_and(|info| info.lang() == Lang::Eng && info.is_reliable())
}

fn detector_lang_is_non_latin(lang: Lang) -> bool {
    matches!(
        lang,
        Lang::Ara
            | Lang::Ell
            | Lang::Jpn
            | Lang::Kor
            | Lang::Pes
            | Lang::Rus
            | Lang::Ukr
            | Lang::Cmn
    )
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '…')
}

fn is_dense_sentence_end(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

/// Split a paragraph longer than `max_chars` characters at sentence ends into
/// pieces of at most `max_chars` (a single longer sentence stays whole and is
/// dropped by the length filter).
fn split_long(text: &str, max_chars: usize) -> Vec<String> {
    if text.chars().count() <= max_chars {
        return vec![text.to_string()];
    }
    let mut sentences = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let end = is_dense_sentence_end(c)
            || (is_sentence_end(c) && next.is_none_or(char::is_whitespace));
        if end {
            let stop = i + c.len_utf8();
            sentences.push(text[start..stop].trim());
            start = stop;
        }
    }
    sentences.push(text[start..].trim());
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for sentence in sentences.into_iter().filter(|s| !s.is_empty()) {
        let n = sentence.chars().count();
        if current_chars > 0 && current_chars + 1 + n > max_chars {
            pieces.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        if current_chars > 0 && !ends_dense(&current) {
            current.push(' ');
            current_chars += 1;
        }
        current.push_str(sentence);
        current_chars += n;
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

fn ends_dense(text: &str) -> bool {
    text.chars().last().is_some_and(is_cjk)
}

// ---------------------------------------------------------------------------
// Text helpers

/// Characters of scripts written without spaces between words (Japanese,
/// Chinese), including their punctuation and full-width forms.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x309F | 0x30A0..=0x30FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF)
}

/// Collapse whitespace runs to one space and trim; a line break between two
/// Japanese or Chinese characters disappears, as it does when a browser or
/// groff fills such text. Soft hyphens and zero-width spaces go.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut pending_newline = false;
    let mut previous: Option<char> = None;
    for c in text.chars() {
        if matches!(c, '\u{AD}' | '\u{200B}' | '\u{FEFF}') {
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            pending_newline |= c == '\n';
            continue;
        }
        if pending_space && previous.is_some() {
            let joined = pending_newline && previous.is_some_and(is_cjk) && is_cjk(c);
            if !joined {
                out.push(' ');
            }
        }
        pending_space = false;
        pending_newline = false;
        out.push(c);
        previous = Some(c);
    }
    out
}

// ---------------------------------------------------------------------------
// HTML

/// How an element takes part in paragraph extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Its text is never wanted (headings, code, navigation, captions).
    Skip,
    /// A paragraph: its text is kept.
    Para,
    /// A list item, table cell or term: its text is kept if it is a sentence.
    Item,
    /// Another block: its loose text is kept if it is a sentence.
    Block,
    /// Inside a paragraph.
    Inline,
}

const INLINE_ELEMENTS: &[&str] = &[
    "a", "abbr", "acronym", "b", "bdi", "bdo", "big", "br", "cite", "code", "del", "dfn", "em",
    "font", "i", "img", "ins", "kbd", "label", "mark", "q", "s", "samp", "small", "span", "strike",
    "strong", "sub", "sup", "time", "tt", "u", "var", "wbr",
];

const VOID_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

fn has_class(tag: &str, wanted: &[&str]) -> bool {
    attribute(tag, "class").is_some_and(|v| v.split_whitespace().any(|c| wanted.contains(&c)))
}

/// Value of an attribute in the text of a start tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().last();
        let after = rest[i + name.len()..].trim_start();
        rest = &rest[i + name.len()..];
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let quote = value.chars().next()?;
        if quote == '"' || quote == '\'' {
            let inner = &value[1..];
            return inner.find(quote).map(|end| &inner[..end]);
        }
        return value
            .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .next();
    }
    None
}

fn role_of(name: &str, tag: &str) -> Role {
    let skip_classes = [
        "title",
        "docnav",
        "toc",
        "programlisting",
        "screen",
        "synopsis",
    ];
    match name {
        "head" | "script" | "style" | "title" | "pre" | "textarea" | "nav" | "h1" | "h2" | "h3"
        | "h4" | "h5" | "h6" => Role::Skip,
        _ if has_class(tag, &skip_classes) => Role::Skip,
        "p" => Role::Para,
        "div" if has_class(tag, &["para"]) => Role::Para,
        "li" | "td" | "th" | "dd" | "dt" | "caption" => Role::Item,
        _ if INLINE_ELEMENTS.contains(&name) => Role::Inline,
        _ => Role::Block,
    }
}

/// Index of the `>` closing the tag that `text` starts with, ignoring `>`
/// inside quoted attribute values.
fn tag_end(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Whether a text ends like a sentence (after closing quotes and brackets).
fn ends_like_sentence(text: &str) -> bool {
    text.trim_end_matches(|c: char| {
        matches!(c, ')' | '"' | '\'' | '”' | '’' | '»' | '」' | '』' | '）') || c.is_whitespace()
    })
    .chars()
    .last()
    .is_some_and(is_sentence_end)
}

/// Prose paragraphs of an HTML page: the text of `<p>` and publican's
/// `<div class="para">`, and of list items, table cells and loose block
/// text when it is a sentence; tags removed, entities decoded, whitespace
/// collapsed. Headings, preformatted text, navigation and captions are left
/// out.
fn html_paragraphs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<(String, Role)> = Vec::new();
    let mut skipping = 0usize;
    let mut buffer = String::new();
    let flush = |buffer: &mut String, stack: &[(String, Role)], out: &mut Vec<String>| {
        let kind = stack
            .iter()
            .rev()
            .map(|(_, r)| *r)
            .find(|r| *r != Role::Inline)
            .unwrap_or(Role::Block);
        let text = collapse_whitespace(&decode_entities(buffer));
        buffer.clear();
        if text.is_empty() {
            return;
        }
        if kind == Role::Para || ends_like_sentence(&text) {
            out.push(text);
        }
    };
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        if skipping == 0 {
            buffer.push_str(&rest[..lt]);
        }
        let at = &rest[lt..];
        if let Some(comment) = at.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |i| &comment[i + 3..]);
            continue;
        }
        if let Some(cdata) = at.strip_prefix("<![CDATA[") {
            let end = cdata.find("]]>").unwrap_or(cdata.len());
            if skipping == 0 {
                buffer.push_str(&cdata[..end]);
            }
            rest = cdata.get(end + 3..).unwrap_or("");
            continue;
        }
        let Some(end) = tag_end(at) else {
            rest = "";
            break;
        };
        let tag = &at[1..end];
        rest = &at[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let closing = tag.starts_with('/');
        let body = tag.trim_start_matches('/');
        let name = body
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if closing {
            if let Some(pos) = stack.iter().rposition(|(n, _)| *n == name) {
                let block = stack[pos..].iter().any(|(_, r)| *r != Role::Inline);
                if block && skipping == 0 {
                    flush(&mut buffer, &stack, &mut out);
                }
                for (_, role) in stack.drain(pos..) {
                    if role == Role::Skip {
                        skipping -= 1;
                    }
                }
            }
            continue;
        }
        let role = role_of(&name, body);
        if role != Role::Inline && skipping == 0 {
            flush(&mut buffer, &stack, &mut out);
        }
        if name == "br" && skipping == 0 {
            buffer.push(' ');
        }
        let void = body.ends_with('/') || VOID_ELEMENTS.contains(&name.as_str());
        if !void {
            if role == Role::Skip {
                skipping += 1;
            }
            stack.push((name, role));
        }
    }
    if skipping == 0 {
        buffer.push_str(rest);
        flush(&mut buffer, &stack, &mut out);
    }
    out
}

/// Decode HTML character references: numeric ones and the common named ones;
/// anything else stays as written.
fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let at = &rest[amp..];
        let reference = at[1..]
            .find(';')
            .filter(|&i| i > 0 && i <= 10)
            .map(|i| &at[1..=i]);
        let decoded = reference.and_then(|r| {
            if let Some(num) = r.strip_prefix("#x").or_else(|| r.strip_prefix("#X")) {
                u32::from_str_radix(num, 16).ok().and_then(char::from_u32)
            } else if let Some(num) = r.strip_prefix('#') {
                num.parse().ok().and_then(char::from_u32)
            } else {
                named_entity(r)
            }
        });
        match (reference, decoded) {
            (Some(r), Some(c)) => {
                out.push(c);
                rest = &at[r.len() + 2..];
            }
            _ => {
                out.push('&');
                rest = &at[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{A0}',
        "shy" => '\u{AD}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "sbquo" => '‚',
        "ldquo" => '“',
        "rdquo" => '”',
        "bdquo" => '„',
        "laquo" => '«',
        "raquo" => '»',
        "lsaquo" => '‹',
        "rsaquo" => '›',
        "bull" => '•',
        "middot" => '·',
        "times" => '×',
        "divide" => '÷',
        "deg" => '°',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "para" => '¶',
        "plusmn" => '±',
        "minus" => '−',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "harr" => '↔',
        "le" => '≤',
        "ge" => '≥',
        "ne" => '≠',
        "iexcl" => '¡',
        "iquest" => '¿',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" => '\u{200C}',
        "zwj" => '\u{200D}',
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Manual pages (groff, man and mdoc macros)

/// Macros whose arguments are running text, joined with spaces.
const TEXT_MACROS: &[&str] = &["B", "I", "SM", "SB"];
/// Macros alternating fonts: arguments joined without spaces.
const ALTERNATING_MACROS: &[&str] = &["BR", "IR", "RB", "RI", "BI", "IB"];
/// mdoc macros whose arguments are words of the running text.
const MDOC_TEXT_MACROS: &[&str] = &[
    "Nm", "Em", "Sy", "Pa", "Ar", "Li", "Ql", "Dq", "Sq", "Qq", "Ev", "Cm", "Va", "Dv", "Xr", "An",
    "Tn", "Ux", "Bx",
];
/// mdoc macro names that can appear among another macro's arguments.
const MDOC_CALLABLE: &[&str] = &[
    "Ac", "Ao", "Ap", "Aq", "Ar", "Bc", "Bo", "Bq", "Cm", "Dc", "Do", "Dq", "Dv", "Ec", "Em", "Eo",
    "Er", "Ev", "Fa", "Fl", "Ic", "Li", "Nm", "No", "Ns", "Oc", "Oo", "Op", "Pa", "Pc", "Po", "Pq",
    "Qc", "Ql", "Qo", "Qq", "Sc", "So", "Sq", "Sy", "Va", "Xc", "Xo", "Xr",
];
/// Requests and macros that end a paragraph.
const BREAKS: &[&str] = &[
    "PP", "P", "LP", "TP", "TQ", "IP", "HP", "SH", "SS", "br", "sp", "RS", "RE", "in", "ti", "bp",
    "ce", "Pp", "Lp", "Sh", "Ss", "It", "Bl", "El", "Bd", "Ed", "D1", "Dl", "Sx", "Rs", "Re", "Nd",
    "SY", "YS", "OP", "nf", "fi", "EX", "EE", "TS", "TE",
];

/// Arguments of a request line, with groff's double-quote rules (`""`
/// inside quotes is a literal quote).
fn macro_arguments(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            break;
        };
        let mut arg = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        arg.push('"');
                    } else {
                        break;
                    }
                } else {
                    arg.push(c);
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '\t' {
                    break;
                }
                arg.push(c);
                chars.next();
                // An escaped space belongs to the argument.
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        arg.push(n);
                    }
                }
            }
        }
        out.push(arg);
    }
    out
}

/// Text of a groff special character name (`\(xx`, `\[name]`, `\C'name'`);
/// unknown names are dropped.
fn special_char(name: &str) -> &'static str {
    match name {
        "aq" | "cq" | "oq" | "fm" => "'",
        "dq" | "lq" | "rq" | "Do" => match name {
            "lq" => "“",
            "rq" => "”",
            "Do" => "$",
            _ => "\"",
        },
        "em" => "—",
        "en" => "–",
        "hy" | "mi" | "\\-" | "-" => "-",
        "bu" => "•",
        "co" => "©",
        "rg" => "®",
        "tm" => "™",
        "Fo" => "«",
        "Fc" => "»",
        "fo" => "‹",
        "fc" => "›",
        "Bq" => "„",
        "bq" => "‚",
        "mu" => "×",
        "di" => "÷",
        "de" => "°",
        "+-" => "±",
        "ti" | "ap" => "~",
        "ha" | "a^" => "^",
        "rs" => "\\",
        "sl" => "/",
        "ba" | "or" => "|",
        "at" => "@",
        "sh" => "#",
        "ru" | "ul" => "_",
        "pl" => "+",
        "eq" => "=",
        "->" | "rA" => "→",
        "<-" | "lA" => "←",
        ">=" => "≥",
        "<=" => "≤",
        "!=" => "≠",
        "ga" => "`",
        "aa" => "´",
        "ss" => "ß",
        ":a" => "ä",
        ":o" => "ö",
        ":u" => "ü",
        ":A" => "Ä",
        ":O" => "Ö",
        ":U" => "Ü",
        "'e" => "é",
        "`e" => "è",
        "^e" => "ê",
        "'a" => "á",
        "`a" => "à",
        "^a" => "â",
        ",c" => "ç",
        "~n" => "ñ",
        "'o" => "ó",
        "'i" => "í",
        "'u" => "ú",
        "hellip" | ".." => "…",
        "sp" => " ",
        _ => "",
    }
}

/// Skip a groff escape's name argument: `(xx`, `[name]` or one character.
/// Returns the name.
fn escape_name(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    match chars.next() {
        Some('(') => chars.by_ref().take(2).collect(),
        Some('[') => chars.by_ref().take_while(|c| *c != ']').collect(),
        Some(c) => c.to_string(),
        None => String::new(),
    }
}

/// Skip a delimited escape argument (`'...'`); returns its content.
fn escape_delimited(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    match chars.next() {
        Some(delimiter) => chars.by_ref().take_while(|c| *c != delimiter).collect(),
        None => String::new(),
    }
}

/// Text of one line of groff with its inline escapes resolved: fonts, sizes,
/// registers and motions removed, special characters as Unicode. The flag
/// says the line ends in `\c` (continues without a space).
fn groff_inline(line: &str) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut continues = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            break;
        };
        continues = false;
        match e {
            // A comment runs to the end of the line.
            '"' | '#' => break,
            'f' | 'F' | 'g' | 'k' | 'm' | 'M' | 'n' | 'V' | 'Y' | '$' => {
                if e == 'n' && matches!(chars.peek(), Some('+' | '-')) {
                    chars.next();
                }
                escape_name(&mut chars);
            }
            's' => {
                if matches!(chars.peek(), Some('+' | '-')) {
                    chars.next();
                }
                match chars.peek() {
                    Some('(') | Some('[') => {
                        escape_name(&mut chars);
                    }
                    Some('\'') => {
                        escape_delimited(&mut chars);
                    }
                    _ => {
                        // One digit, or two for sizes 10 to 39.
                        if let Some(d) = chars.next() {
                            if matches!(d, '1'..='3')
                                && chars.peek().is_some_and(char::is_ascii_digit)
                            {
                                chars.next();
                            }
                        }
                    }
                }
            }
            '*' => {
                let name = escape_name(&mut chars);
                out.push_str(match name.as_str() {
                    "lq" | "L\"" => "“",
                    "rq" | "R\"" => "”",
                    "Tm" => "™",
                    "R" => "®",
                    _ => "",
                });
            }
            '(' => {
                let name: String = chars.by_ref().take(2).collect();
                out.push_str(special_char(&name));
            }
            '[' => {
                let name: String = chars.by_ref().take_while(|c| *c != ']').collect();
                let unicode = name
                    .strip_prefix('u')
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                match unicode {
                    Some(c) => out.push(c),
                    None => out.push_str(special_char(&name)),
                }
            }
            'C' => {
                let name = escape_delimited(&mut chars);
                out.push_str(special_char(&name));
            }
            'N' => {
                let code = escape_delimited(&mut chars);
                if let Some(c) = code.parse().ok().and_then(char::from_u32) {
                    out.push(c);
                }
            }
            'h' | 'v' | 'w' | 'l' | 'L' | 'o' | 'X' | 'b' | 'x' | 'D' | 'Z' | 'A' | 'B' | 'R'
            | 'S' => {
                escape_delimited(&mut chars);
            }
            'e' | 'E' | '\\' => out.push('\\'),
            '-' => out.push('-'),
            ' ' | '~' | '0' | 't' => out.push(' '),
            '\'' => out.push('\''),
            '`' => out.push('`'),
            '.' => out.push('.'),
            'c' => continues = true,
            // Zero-width and hyphenation escapes, italic corrections.
            '&' | '|' | '^' | ',' | '/' | ')' | '%' | ':' | '{' | '}' | 'd' | 'u' | 'r' | 'z'
            | 'a' | 'p' => {}
            other => out.push(other),
        }
    }
    (out, continues)
}

/// Remove a groff comment (`\"` or `\#` to the end of the line), keeping
/// escaped backslashes intact.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes[i + 1] == b'"' || bytes[i + 1] == b'#' {
                return &line[..i];
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    line
}

/// The paragraph being assembled from groff lines.
#[derive(Default)]
struct ManParagraph {
    text: String,
    /// The last line ended in `\c`.
    continues: bool,
}

impl ManParagraph {
    fn push(&mut self, line: &str, continues: bool) {
        if !self.text.is_empty() && !self.continues {
            self.text.push('\n');
        }
        self.text.push_str(line);
        self.continues = continues;
    }

    fn attach(&mut self, suffix: &str) {
        self.text.push_str(suffix);
    }

    fn flush(&mut self, out: &mut Vec<String>) {
        let text = collapse_whitespace(&self.text);
        if !text.is_empty() {
            out.push(text);
        }
        self.text.clear();
        self.continues = false;
    }
}

/// Prose paragraphs of a manual page in groff (man or mdoc macros): text
/// lines and the text of font macros joined per paragraph, headings, tags of
/// tagged paragraphs, displays, tables and examples left out. `None` for a
/// page that is only a `.so` redirect to another page.
fn man_paragraphs(source: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut paragraph = ManParagraph::default();
    // The next text line is a heading or a tag, not prose.
    let mut skip_next_text = false;
    // Skipping a block until this request (`fi`, `EE`, `TE`, `..`, `Ed`).
    let mut skip_until: Option<&str> = None;
    let mut seen_text = false;
    for raw in source.lines() {
        let is_control = raw.starts_with('.') || raw.starts_with('\'');
        let line = strip_comment(raw);
        let (name, args) = if is_control {
            let rest = line[1..].trim_start_matches([' ', '\t']);
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            (&rest[..end], rest[end..].trim_start_matches([' ', '\t']))
        } else {
            ("", "")
        };
        if let Some(end) = skip_until {
            if is_control && name == end {
                skip_until = None;
            }
            continue;
        }
        if !is_control {
            if line.trim().is_empty() {
                // A blank line is a paragraph break; a comment line is not.
                if raw.trim().is_empty() {
                    paragraph.flush(&mut out);
                }
                continue;
            }
            seen_text = true;
            if skip_next_text {
                skip_next_text = false;
                continue;
            }
            let (text, continues) = groff_inline(line);
            paragraph.push(&text, continues);
            continue;
        }
        if name.is_empty() || name.starts_with('\\') {
            continue;
        }
        if name == "so" && !seen_text {
            return None;
        }
        if BREAKS.contains(&name) {
            paragraph.flush(&mut out);
        }
        match name {
            "nf" => skip_until = Some("fi"),
            "EX" => skip_until = Some("EE"),
            "TS" => skip_until = Some("TE"),
            "EQ" => skip_until = Some("EN"),
            "de" | "de1" | "am" | "ig" => skip_until = Some(".."),
            "Bd" if args.contains("-literal") || args.contains("-unfilled") => {
                skip_until = Some("Ed");
            }
            "SH" | "SS" | "Sh" | "Ss" => skip_next_text = args.trim().is_empty(),
            "TP" | "TQ" => skip_next_text = true,
            _ if TEXT_MACROS.contains(&name) || ALTERNATING_MACROS.contains(&name) => {
                let words = macro_arguments(args);
                if words.is_empty() {
                    continue;
                }
                seen_text = true;
                if skip_next_text {
                    skip_next_text = false;
                    continue;
                }
                let separator = if TEXT_MACROS.contains(&name) { " " } else { "" };
                let (text, continues) = groff_inline(&words.join(separator));
                paragraph.push(&text, continues);
            }
            _ if MDOC_TEXT_MACROS.contains(&name) => {
                let text = mdoc_text(name, args);
                if !text.is_empty() {
                    seen_text = true;
                    paragraph.push(&text, false);
                }
            }
            "UE" | "ME" => {
                // Punctuation right after a link.
                let (text, _) = groff_inline(&macro_arguments(args).join(""));
                paragraph.attach(&text);
            }
            _ => {}
        }
    }
    paragraph.flush(&mut out);
    Some(out)
}

/// Running text of an mdoc text macro line (`.Nm`, `.Em word ,`, `.Xr ls 1`).
fn mdoc_text(name: &str, args: &str) -> String {
    let words: Vec<String> = macro_arguments(args)
        .into_iter()
        .filter(|w| !MDOC_CALLABLE.contains(&w.as_str()))
        .map(|w| groff_inline(&w).0)
        .collect();
    let mut text = String::new();
    if name == "Xr" && words.len() >= 2 {
        text = format!("{}({})", words[0], words[1]);
        for w in &words[2..] {
            text.push_str(w);
        }
        return text;
    }
    for word in &words {
        let punctuation = word
            .chars()
            .all(|c| matches!(c, '.' | ',' | ';' | ':' | ')' | '!' | '?'));
        if !text.is_empty() && !punctuation {
            text.push(' ');
        }
        text.push_str(word);
    }
    match name {
        "Dq" | "Qq" => format!("“{text}”"),
        "Sq" => format!("‘{text}’"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter::from_options(&CorpusOptions::new(PathBuf::from("out")))
    }

    #[test]
    fn html_paragraphs_decode_entities_and_drop_tags() {
        let html = r#"<?xml version="1.0"?><html><head><title>Kapitel 6</title></head><body>
<ul class="docnav"><li class="previous"><a href="x.html"><strong>Zurück</strong></a></li></ul>
<h1 class="title">Kapitel 6. APT</h1>
<div class="para">
		Das Programm <span class="emphasis"><em>APT</em></span> liest die Datei
		<code class="filename">sources.list</code> &amp; lädt &lt;Pakete&gt; &quot;schnell&quot; &#228;&#xE4;&nbsp;herunter.
</div>
<pre class="screen"><code>$ apt update</code></pre>
<p class="title"><strong>Beispiel 6.1. Datei</strong></p>
<ul><li class="listitem">Ein ganzer Satz in einer Liste.</li><li>apt-get</li></ul>
<table><tr><td>DEC Unix (OSF/1)</td><td>alpha, mipsel</td></tr></table>
<!-- <p>comment</p> -->
<p>日本語の文章は
改行されても続きます。</p>
</body></html>"#;
        let paragraphs = html_paragraphs(html);
        assert_eq!(
            paragraphs,
            vec![
                "Das Programm APT liest die Datei sources.list & lädt <Pakete> \"schnell\" ää herunter."
                    .to_string(),
                "Ein ganzer Satz in einer Liste.".to_string(),
                "日本語の文章は改行されても続きます。".to_string(),
            ]
        );
    }

    #[test]
    fn entities_unknown_or_bare_ampersands_stay() {
        assert_eq!(
            decode_entities("a & b &foo; &#65;&hellip;"),
            "a & b &foo; A…"
        );
    }

    #[test]
    fn groff_paragraphs_are_cleaned_and_joined() {
        let page = r#".\" -*- coding: UTF-8 -*-
.TH LS 1 "September 2022" "GNU coreutils 9.1"
.SH BESCHREIBUNG
.\" Add any additional description here
.PP
Auflistung von Informationen über die \fBDATEIen\fP (Standard\-vorgabe ist das
aktuelle Verzeichnis); siehe \fI\,GRÖSSE\/\fR und \(aqquoted\(aq \(dqtext\(dq\(em mit
\e und \&.dot \*(lqso\*(rq.
.TP
\fB\-a\fP, \fB\-\-all\fP
Einträge nicht ignorieren,
.B die
mit
.BR ls (1)
beginnen.
.SH "SIEHE AUCH"
.nf
$ ls -la
.fi
.SH
Überschrift
Letzter Absatz
"#;
        let paragraphs = man_paragraphs(page).unwrap();
        assert_eq!(
            paragraphs,
            vec![
                "Auflistung von Informationen über die DATEIen (Standard-vorgabe ist das aktuelle \
                 Verzeichnis); siehe GRÖSSE und 'quoted' \"text\"— mit \\ und .dot “so”."
                    .to_string(),
                "Einträge nicht ignorieren, die mit ls(1) beginnen.".to_string(),
                "Letzter Absatz".to_string(),
            ]
        );
    }

    #[test]
    fn groff_joins_japanese_lines_without_spaces() {
        let page = ".PP\nディレクトリの内容ではなく\nディレクトリ自身を一覧表示する。\n";
        assert_eq!(
            man_paragraphs(page).unwrap(),
            vec!["ディレクトリの内容ではなくディレクトリ自身を一覧表示する。".to_string()]
        );
    }

    #[test]
    fn groff_so_redirect_is_skipped() {
        assert_eq!(man_paragraphs(".\\\" comment\n.so man1/ls.1\n"), None);
    }

    #[test]
    fn groff_escapes() {
        assert_eq!(
            groff_inline(r"\f(CWcode\fP \s-1small\s0 \[u00E9]t\[:a] \N'65'").0,
            "code small étä A"
        );
        assert_eq!(groff_inline(r"a\h'2n'b\c"), ("ab".to_string(), true));
        assert_eq!(groff_inline(r#"text \" comment"#).0, "text ");
    }

    #[test]
    fn code_like_paragraphs_are_dropped() {
        let f = filter();
        let prose = "Die Einträge werden alphabetisch sortiert, falls weder die eine noch die andere Option angegeben wurde.";
        assert_eq!(f.check(prose, "de"), Ok(()));
        let code =
            "for (int i = 0; i < n; i++) { total += values[i]; } return total; /* sum of values */";
        assert_eq!(f.check(code, "en"), Err(DropReason::NotProse));
        let command =
            "$ sudo apt-get install --no-install-recommends debian-handbook manpages-de now please";
        assert_eq!(f.check(command, "en"), Err(DropReason::NotProse));
        let options = "-a, --all -A, --almost-all --author -b, --escape --block-size=SIZE -B --ignore-backups";
        assert_eq!(f.check(options, "en"), Err(DropReason::NotProse));
        let urls =
            "https://www.debian.org/ https://wiki.debian.org/ https://bugs.debian.org/ and more";
        assert_eq!(f.check(urls, "en"), Err(DropReason::NotProse));
        let numbers = "1024 2048 4096 8192 16384 32768 65536 131072 262144 524288 1048576 2097152";
        assert_eq!(f.check(numbers, "en"), Err(DropReason::NotProse));
    }

    #[test]
    fn dense_languages_have_a_lower_minimum() {
        let f = filter();
        let japanese = "ディレクトリの内容ではなくディレクトリ自身を一覧表示する。";
        assert!(japanese.chars().count() < DEFAULT_MIN_CHARS);
        assert_eq!(f.check(japanese, "ja"), Ok(()));
        assert_eq!(f.check("列出目录内容。", "zh"), Err(DropReason::Short));
        assert_eq!(
            f.check("Verzeichnisse an sich auflisten.", "de"),
            Err(DropReason::Short)
        );
    }

    #[test]
    fn english_in_a_translation_is_foreign() {
        let f = filter();
        let english = "APT is the abbreviation for Advanced Packaging Tool. What makes this program advanced is its approach to packages.";
        assert_eq!(f.check(english, "de"), Err(DropReason::Foreign));
        assert_eq!(f.check(english, "en"), Ok(()));
        let german = "Dass Debian bei Administratoren so beliebt ist, liegt an der einfachen Installation von Software.";
        assert_eq!(f.check(german, "de"), Ok(()));
        // Japanese with English command names is still Japanese.
        let japanese =
            "ls コマンドは --color オプションと一緒に使うとファイルの種類を色で表示します。";
        assert_eq!(f.check(japanese, "ja"), Ok(()));
    }

    #[test]
    fn long_paragraphs_split_at_sentence_ends() {
        let sentence = "Dies ist ein Satz mit genau einigen Wörtern darin.";
        let text = [sentence; 10].join(" ");
        let pieces = split_long(&text, 120);
        assert!(pieces.len() >= 4);
        assert!(pieces.iter().all(|p| p.chars().count() <= 120));
        assert_eq!(pieces.join(" "), text);
        let japanese = "短い文です。".repeat(10);
        let pieces = split_long(&japanese, 20);
        assert!(pieces.iter().all(|p| p.chars().count() <= 20));
        assert_eq!(pieces.concat(), japanese);
    }

    #[test]
    fn duplicates_share_a_key_regardless_of_case() {
        assert_eq!(dedup_key("Debian ist toll."), dedup_key("debian ist TOLL."));
        assert_ne!(dedup_key("Debian ist toll."), dedup_key("Debian ist toll!"));
    }

    #[test]
    fn reference_and_catalogs_are_excluded() {
        for path in [
            "/usr/share/doc/debian-reference-de/html/index.de.html",
            "/usr/share/doc/debian-reference-common/html/ch01.en.html",
            "/usr/share/man/de/man1/debian-reference.1.gz",
            "/usr/share/locale/de/LC_MESSAGES/apt.mo",
            "/usr/share/doc/debian-handbook/po/de-DE/apt.po",
            "/usr/share/doc/x/translations.pot",
            "/usr/share/doc/x/de.po.gz",
        ] {
            assert!(is_excluded(Path::new(path)), "{path}");
        }
        assert!(!is_excluded(Path::new(
            "/usr/share/doc/debian-handbook/html/de-DE/apt.html"
        )));
        assert!(!is_excluded(Path::new("/usr/share/man/de/man1/pod.1.gz")));

        let files: Vec<PathBuf> = [
            "/usr/share/doc/debian-handbook/html/de-DE/apt.html",
            "/usr/share/doc/debian-handbook/html/zh-TW/apt.html",
            "/usr/share/doc/debian-handbook/html/de-DE/Common_Content/css/x.html",
            "/usr/share/doc/debian-reference-de/html/index.de.html",
            "/usr/share/doc/debian-handbook/html/de-DE/apt.po",
            "/usr/share/man/de/man1/ls.1.gz",
            "/usr/share/man/pt_BR/man1/ls.1.gz",
            "/usr/share/man/man1/ls.1.gz",
            "/usr/share/locale/de/LC_MESSAGES/man.mo",
            "/usr/share/doc/manpages-de/changelog.gz",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let selected: Vec<(String, String)> = select_sources("p", &files)
            .into_iter()
            .map(|s| (s.relative, s.language))
            .collect();
        let expected: Vec<(String, String)> = [
            ("de-DE/apt.html", "de"),
            ("zh-TW/apt.html", "zh"),
            ("de/man1/ls.1.gz", "de"),
            ("pt_BR/man1/ls.1.gz", "pt"),
            ("man1/ls.1.gz", "en"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(selected, expected);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("specdec-corpus-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn jsonl_round_trip_and_corruption_is_refused() {
        let dir = temp_dir("jsonl");
        let path = dir.join("de.jsonl");
        let paragraphs = vec![
            Paragraph {
                source: "debian-handbook:de-DE/apt.html".into(),
                text: "Ein \"Satz\" mit Umlauten: äöü.".into(),
            },
            Paragraph {
                source: "manpages-de:de/man1/ls.1.gz".into(),
                text: "Noch ein Satz.".into(),
            },
        ];
        let sha = write_jsonl(&path, &paragraphs).unwrap();
        assert_eq!(read_paragraphs(&path).unwrap(), paragraphs);
        assert!(!dir.join("de.jsonl.tmp").exists());

        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        match read_paragraphs(&path) {
            Err(CorpusError::Corrupt {
                line: 2, reason, ..
            }) => assert!(reason.contains("truncated")),
            other => panic!("{other:?}"),
        }
        let mut bad = bytes.clone();
        bad.extend_from_slice(b"{\"source\": 1}\n");
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_paragraphs(&path),
            Err(CorpusError::Corrupt { line: 3, .. })
        ));
        let mut bad = b"{\"source\":\"a\",\"text\":\"\xff\"}\n".to_vec();
        bad.extend_from_slice(&bytes);
        fs::write(&path, &bad).unwrap();
        match read_paragraphs(&path) {
            Err(e @ CorpusError::Corrupt { line: 1, .. }) => {
                assert!(e.to_string().contains("de.jsonl:1"))
            }
            other => panic!("{other:?}"),
        }

        // The manifest catches a changed file.
        fs::write(&path, &bytes).unwrap();
        let manifest = Manifest {
            inputs: Inputs {
                format: FORMAT_VERSION,
                packages: BTreeMap::new(),
                languages: None,
                min_chars: 60,
                min_chars_dense: 20,
                max_chars: 4000,
                min_letter_ratio: 0.6,
                language_check: true,
                tokenizer: "t.gguf".into(),
                vocab_size: 1,
            },
            languages: BTreeMap::from([(
                "de".to_string(),
                LanguageStats {
                    file: "de.jsonl".into(),
                    sha256: sha,
                    packages: BTreeMap::new(),
                    sources: 1,
                    skipped_sources: 0,
                    paragraphs: 2,
                    chars: 0,
                    tokens: 0,
                    dropped: Dropped::default(),
                },
            )]),
        };
        fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        assert_eq!(read_manifest(&dir).unwrap(), manifest);
        fs::write(&path, b"{}\n").unwrap();
        assert!(matches!(
            read_manifest(&dir),
            Err(CorpusError::Checksum { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_package_names_the_setup_script() {
        assert!(query_package("specdec-no-such-package").is_err());
        let error = CorpusError::MissingPackages {
            packages: vec!["manpages-de".into()],
            detail: "manpages-de: not installed".into(),
        };
        let message = error.to_string();
        assert!(message.contains("manpages-de"), "{message}");
        assert!(message.contains(SETUP_COMMAND), "{message}");
    }

    #[test]
    fn language_names_and_locales() {
        assert_eq!(language_name("ja"), "Japanese");
        assert_eq!(language_name("xx"), "xx");
        assert_eq!(locale_language("zh-TW").as_deref(), Some("zh"));
        assert_eq!(locale_language("pt_BR").as_deref(), Some("pt"));
        assert_eq!(locale_language("Common_Content"), None);
    }

    /// Builds the real corpus from the installed packages:
    /// `SPECDEC_CORPUS_OUT=DIR cargo test --release -p specdec-train --lib corpus::tests::real -- --ignored --nocapture`
    #[test]
    #[ignore = "needs the Debian packages and the target model"]
    fn real_corpus() {
        let out = std::env::var_os("SPECDEC_CORPUS_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("specdec-corpus"));
        let model =
            specdec_backend::models::model_path(specdec_backend::models::DEFAULT_TARGET_FILE);
        let tokenizer = Tokenizer::load(&model).unwrap();
        let mut options = CorpusOptions::new(out.clone());
        options.force = std::env::var_os("SPECDEC_CORPUS_FORCE").is_some();
        let started = Instant::now();
        let manifest = build(&options, &tokenizer).unwrap();
        println!("built in {:.1} s", started.elapsed().as_secs_f64());
        for (code, stats) in &manifest.languages {
            println!(
                "{code}: {} files ({} skipped), {} paragraphs, {} chars, {} tokens, dropped {:?}",
                stats.sources,
                stats.skipped_sources,
                stats.paragraphs,
                stats.chars,
                stats.tokens,
                stats.dropped
            );
        }
        let again = read_manifest(&out).unwrap();
        assert_eq!(again, manifest);
        for stats in manifest.languages.values() {
            assert_eq!(
                read_paragraphs(&out.join(&stats.file)).unwrap().len(),
                stats.paragraphs
            );
        }
    }
}
