//! Parallel paragraphs from the Debian Reference manual.
//!
//! Debian packages the manual's HTML in English and in translations
//! (`debian-reference-en`, `debian-reference-de`, ...) as `chNN.LANG.html`,
//! `apa.LANG.html`, `pr01.LANG.html` and `index.LANG.html`. The translations
//! are made with po4a, so a translated file keeps the DocBook structure of the
//! English one and its body paragraphs line up with the English ones by
//! position. This module pairs them and picks, per language, a deterministic
//! spread of prose paragraphs that are really translated.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use scraper::{ElementRef, Html, Node};
use serde::{Deserialize, Serialize};

/// Default location of the manual's HTML.
pub const DEFAULT_DIR: &str = "/usr/share/debian-reference";

/// The languages of the benchmark, in report order (Debian's codes).
pub const LANGUAGES: [&str; 8] = ["de", "fr", "es", "it", "ja", "zh-cn", "pt", "id"];

/// Default shortest source paragraph kept, in characters.
pub const DEFAULT_MIN_CHARS: usize = 150;

/// Default longest source paragraph kept, in characters.
pub const DEFAULT_MAX_CHARS: usize = 600;

/// Language code of the manual's original text.
const ENGLISH: &str = "en";

/// `<div>` classes whose paragraphs are not body text: navigation, tables of
/// contents, title pages, and captioned tables, examples and figures (the
/// tables are mostly lists of commands and packages).
const NON_BODY_DIV_CLASSES: [&str; 14] = [
    "navheader",
    "navfooter",
    "toc",
    "list-of-tables",
    "list-of-examples",
    "list-of-figures",
    "titlepage",
    "legalnotice",
    "table",
    "informaltable",
    "example",
    "informalexample",
    "figure",
    "informalfigure",
];

/// DocBook admonitions; the stylesheets lay them out as a one-cell `<table>`
/// around ordinary prose, so their paragraphs count as body text.
const ADMONITION_CLASSES: [&str; 5] = ["note", "tip", "caution", "warning", "important"];

/// HTML elements that never have content; only these may be self-closing
/// once the XHTML is read by an HTML parser.
const VOID_ELEMENTS: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// A source paragraph is rejected when at least this share of its words also
/// occur in the English paragraph: po4a leaves untranslated paragraphs in
/// English and only the cross-references in them get translated, so they
/// differ from the English without being translations.
const MAX_SHARED_WORD_SHARE: f64 = 0.5;

/// Least share of CJK characters among the letters of a Japanese or Chinese
/// paragraph; below it the paragraph is English with a translated
/// cross-reference or mostly commands.
const MIN_CJK_LETTER_SHARE: f64 = 0.15;

/// A paragraph counts as prose when at most this share of the English
/// words look like code (see [`is_code_like`]).
const MAX_PROSE_CODE_SHARE: f64 = 0.1;

/// One translated paragraph with its English original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paragraph {
    /// Debian's language code, e.g. "zh-cn".
    pub language: String,
    /// ISO 639-1 code: "zh" for "zh-cn", otherwise the Debian code.
    pub iso639_1: String,
    /// The translated paragraph (whitespace collapsed).
    pub source: String,
    /// The English original (whitespace collapsed).
    pub reference: String,
    /// File and 0-based body-paragraph index, e.g. "ch02.de.html#12".
    pub origin: String,
}

/// How many paragraphs to take per language and how long they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Paragraphs wanted for each language.
    pub per_language: usize,
    /// Shortest source paragraph kept, in characters (not bytes).
    pub min_chars: usize,
    /// Longest source paragraph kept, in characters (not bytes).
    pub max_chars: usize,
}

impl Selection {
    /// `per_language` paragraphs of [`DEFAULT_MIN_CHARS`]..=[`DEFAULT_MAX_CHARS`]
    /// characters.
    pub fn new(per_language: usize) -> Self {
        Self {
            per_language,
            min_chars: DEFAULT_MIN_CHARS,
            max_chars: DEFAULT_MAX_CHARS,
        }
    }
}

/// Why the corpus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The manual's directory does not exist.
    #[error(
        "the Debian Reference directory {} does not exist; install debian-reference-en \
         and debian-reference-LANG for each benchmark language",
        dir.display()
    )]
    MissingDirectory {
        /// The directory looked in.
        dir: PathBuf,
    },
    /// The directory holds no English HTML.
    #[error("no English HTML (*.en.html) in {}; install debian-reference-en", dir.display())]
    MissingEnglish {
        /// The directory looked in.
        dir: PathBuf,
    },
    /// A translated file that the English manual has is missing.
    #[error("{} is missing; install {package}", path.display())]
    MissingTranslation {
        /// Debian's language code.
        language: String,
        /// The Debian package that ships the file.
        package: String,
        /// The file looked for.
        path: PathBuf,
    },
    /// A file or the directory listing could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Too few paragraphs of a language passed the filters.
    #[error(
        "only {found} usable paragraphs found for language {language}, \
         {wanted} wanted"
    )]
    TooFewCandidates {
        /// Debian's language code.
        language: String,
        /// Paragraphs that passed the filters.
        found: usize,
        /// `Selection::per_language`.
        wanted: usize,
    },
}

/// Reads the manual in `dir` and returns `selection.per_language` paragraph
/// pairs for each of `languages`, grouped by language in the given order and
/// in manual order within a language.
///
/// Alignment: the body paragraphs of each translated file (running text and
/// admonitions; not navigation, tables of contents, captioned tables or
/// `<pre>`) are paired by position with those of the English file of the
/// same name. A file whose paragraph count differs from the English one is
/// skipped rather than guessed at. Text is whitespace-collapsed and trimmed,
/// inline markup dropped but its text kept.
///
/// Filters: a pair is a candidate when the source has
/// `min_chars..=max_chars` characters, differs from the English, looks
/// translated, and the English has at least `min_chars / 2` characters.
/// "Looks translated" means fewer than half of the source's words occur in
/// the English and, for Japanese and Chinese, at least 15% of its letters are
/// CJK (with some kana for Japanese). A source repeated in the manual is kept
/// once.
///
/// Choice: prose candidates, whose English has at most 10% code-like tokens
/// (tokens with `/`, `$`, `_`, `=`, `<`, `>`, `|`, `\`, `~` or `--`), are
/// preferred. The pick takes the middle candidate of each of `per_language`
/// equal slices of the prose candidates in manual order, and only when there
/// is too little prose tops up the same way from the other candidates. The
/// result depends only on the files.
pub fn extract(
    dir: &Path,
    languages: &[&str],
    selection: &Selection,
) -> Result<Vec<Paragraph>, CorpusError> {
    let english = read_english(dir)?;
    let mut paragraphs = Vec::new();
    for &language in languages {
        let files = read_translation(dir, language, &english)?;
        paragraphs.extend(select_language(language, &files, selection)?);
    }
    Ok(paragraphs)
}

/// The body paragraphs of one English file.
struct EnglishFile {
    /// File name without ".en.html", e.g. "ch02".
    stem: String,
    paragraphs: Vec<String>,
}

/// The body paragraphs of a translated file next to the English ones.
struct AlignedFile {
    /// File name without ".LANG.html", e.g. "ch02".
    stem: String,
    english: Vec<String>,
    translated: Vec<String>,
}

/// A pair that passed the filters, in manual order.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    paragraph: Paragraph,
    /// Share of code-like words in the English, 0..=1.
    code_share: f64,
}

/// Reads every English file of the manual, in reading order.
fn read_english(dir: &Path) -> Result<Vec<EnglishFile>, CorpusError> {
    if !dir.is_dir() {
        return Err(CorpusError::MissingDirectory {
            dir: dir.to_path_buf(),
        });
    }
    let listing = fs::read_dir(dir).map_err(|source| CorpusError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let english_suffix = format!(".{ENGLISH}.html");
    let mut stems = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| CorpusError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(&english_suffix)) {
            if !stem.is_empty() && !stem.contains('.') {
                stems.push(stem.to_string());
            }
        }
    }
    if stems.is_empty() {
        return Err(CorpusError::MissingEnglish {
            dir: dir.to_path_buf(),
        });
    }
    // read_dir's order is arbitrary; sorting keeps the selection reproducible.
    stems.sort_by(|a, b| reading_rank(a).cmp(&reading_rank(b)).then_with(|| a.cmp(b)));
    stems
        .into_iter()
        .map(|stem| {
            let html = read_file(&dir.join(format!("{stem}.{ENGLISH}.html")))?;
            Ok(EnglishFile {
                paragraphs: body_paragraphs(&html),
                stem,
            })
        })
        .collect()
}

/// Reads the translated counterpart of every English file.
fn read_translation(
    dir: &Path,
    language: &str,
    english: &[EnglishFile],
) -> Result<Vec<AlignedFile>, CorpusError> {
    english
        .iter()
        .map(|file| {
            let path = dir.join(format!("{}.{language}.html", file.stem));
            if !path.is_file() {
                return Err(CorpusError::MissingTranslation {
                    language: language.to_string(),
                    package: format!("debian-reference-{language}"),
                    path,
                });
            }
            Ok(AlignedFile {
                stem: file.stem.clone(),
                english: file.paragraphs.clone(),
                translated: body_paragraphs(&read_file(&path)?),
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<String, CorpusError> {
    fs::read_to_string(path).map_err(|source| CorpusError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Position of a file stem in the book: title page, preface, chapters,
/// appendices, then anything unknown.
fn reading_rank(stem: &str) -> u8 {
    if stem == "index" {
        0
    } else if stem.starts_with("pr") {
        1
    } else if stem.starts_with("ch") {
        2
    } else if stem.starts_with("ap") {
        3
    } else {
        4
    }
}

/// Chooses the paragraphs of one language from its aligned files.
fn select_language(
    language: &str,
    files: &[AlignedFile],
    selection: &Selection,
) -> Result<Vec<Paragraph>, CorpusError> {
    let all = candidates(language, files, selection);
    if all.len() < selection.per_language {
        return Err(CorpusError::TooFewCandidates {
            language: language.to_string(),
            found: all.len(),
            wanted: selection.per_language,
        });
    }
    // Positions in `all` keep manual order when prose and the rest are merged.
    let (prose, other): (Vec<usize>, Vec<usize>) =
        (0..all.len()).partition(|&i| all[i].code_share <= MAX_PROSE_CODE_SHARE);
    let from_prose = selection.per_language.min(prose.len());
    let mut chosen = evenly_spaced(&prose, from_prose);
    chosen.extend(evenly_spaced(&other, selection.per_language - from_prose));
    chosen.sort_unstable();
    Ok(chosen
        .into_iter()
        .map(|i| all[i].paragraph.clone())
        .collect())
}

/// `count` items spread over `items`: the middle of each of `count` equal
/// slices. Needs `count <= items.len()`, which makes the picks distinct.
fn evenly_spaced(items: &[usize], count: usize) -> Vec<usize> {
    (0..count)
        .filter_map(|slice| items.get((2 * slice + 1) * items.len() / (2 * count)))
        .copied()
        .collect()
}

/// Every pair of `language` that passes the filters, in manual order.
fn candidates(language: &str, files: &[AlignedFile], selection: &Selection) -> Vec<Candidate> {
    let mut seen_sources = HashSet::new();
    let mut found = Vec::new();
    for file in files {
        if file.english.len() != file.translated.len() {
            continue;
        }
        for (index, (source, reference)) in file.translated.iter().zip(&file.english).enumerate() {
            if !is_usable_pair(source, reference, language, selection) {
                continue;
            }
            if !seen_sources.insert(source.as_str()) {
                continue;
            }
            found.push(Candidate {
                paragraph: Paragraph {
                    language: language.to_string(),
                    iso639_1: iso639_1(language),
                    source: source.clone(),
                    reference: reference.clone(),
                    origin: format!("{}.{language}.html#{index}", file.stem),
                },
                code_share: code_like_share(reference),
            });
        }
    }
    found
}

/// ISO 639-1 code of a Debian language code ("zh-cn" → "zh").
fn iso639_1(language: &str) -> String {
    language
        .split_once('-')
        .map_or(language, |(primary, _)| primary)
        .to_string()
}

/// The length and translation filters of [`extract`].
fn is_usable_pair(source: &str, reference: &str, language: &str, selection: &Selection) -> bool {
    let source_chars = source.chars().count();
    (selection.min_chars..=selection.max_chars).contains(&source_chars)
        && reference.chars().count() >= selection.min_chars / 2
        && source != reference
        && looks_translated(source, reference, language)
}

/// Cheap check that `source` is a translation of `reference` into
/// `language`: fewer than half of its words also appear in the English, and
/// for Japanese and Chinese at least 15% of its letters are CJK characters
/// (Japanese must also contain kana).
fn looks_translated(source: &str, reference: &str, language: &str) -> bool {
    if shared_word_share(source, reference) >= MAX_SHARED_WORD_SHARE {
        return false;
    }
    match iso639_1(language).as_str() {
        "ja" => cjk_letter_share(source) >= MIN_CJK_LETTER_SHARE && source.chars().any(is_kana),
        "zh" => cjk_letter_share(source) >= MIN_CJK_LETTER_SHARE,
        _ => true,
    }
}

/// Lower-cased runs of letters.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Share of the words of `source` that also occur in `reference`; 1 when
/// `source` has no words, so that it is never taken for a translation.
fn shared_word_share(source: &str, reference: &str) -> f64 {
    let reference_words: HashSet<String> = words(reference).collect();
    let (shared, total) = words(source).fold((0usize, 0usize), |(shared, total), word| {
        (
            shared + usize::from(reference_words.contains(&word)),
            total + 1,
        )
    });
    if total == 0 {
        1.0
    } else {
        shared as f64 / total as f64
    }
}

fn is_kana(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30ff}' | '\u{31f0}'..='\u{31ff}')
}

/// Whether `c` is kana or a CJK ideograph.
pub fn is_cjk(c: char) -> bool {
    is_kana(c)
        || matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}')
}

/// Share of CJK characters among the letters of `text`.
fn cjk_letter_share(text: &str) -> f64 {
    share(text.chars().filter(|c| c.is_alphabetic()), |&c| is_cjk(c))
}

/// Share of `items` that satisfy `pred`, 0 when there are none.
fn share<T>(items: impl Iterator<Item = T>, pred: impl Fn(&T) -> bool) -> f64 {
    let (hits, total) = items.fold((0usize, 0usize), |(hits, total), item| {
        (hits + usize::from(pred(&item)), total + 1)
    });
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// Characters that mark a token as code: paths, variables, identifiers,
/// assignments, redirections, pipes, home directories.
const CODE_CHARACTERS: [char; 9] = ['/', '$', '_', '=', '<', '>', '|', '\\', '~'];

/// Whether a whitespace-separated token looks like code rather than a word:
/// it holds one of [`CODE_CHARACTERS`] or a `--` option.
fn is_code_like(token: &str) -> bool {
    token.contains("--") || token.contains(CODE_CHARACTERS)
}

/// Share of code-like tokens in `text` (English, so whitespace separates
/// words), 0..=1.
fn code_like_share(text: &str) -> f64 {
    share(text.split_whitespace(), |token| is_code_like(token))
}

/// The normalised text of every body-text `<p>` of a DocBook XHTML page, in
/// document order (see [`is_body_paragraph`]). Empty paragraphs are kept so
/// that positions stay comparable between languages.
fn body_paragraphs(xhtml: &str) -> Vec<String> {
    let document = Html::parse_document(&expand_self_closing_tags(xhtml));
    document
        .root_element()
        .descendants()
        .filter_map(ElementRef::wrap)
        .filter(|element| element.value().name() == "p" && is_body_paragraph(*element))
        .map(normalised_text)
        .collect()
}

/// Whether a `<p>` is running text: classless (DocBook marks captions and
/// copyright lines with a class), outside `<pre>`, outside the `<div>`s of
/// [`NON_BODY_DIV_CLASSES`], and outside any table except the layout table
/// of an admonition.
fn is_body_paragraph(paragraph: ElementRef) -> bool {
    if paragraph.value().attr("class").is_some() {
        return false;
    }
    paragraph
        .ancestors()
        .filter_map(ElementRef::wrap)
        .all(|ancestor| match ancestor.value().name() {
            "pre" => false,
            "div" => !ancestor
                .value()
                .classes()
                .any(|class| NON_BODY_DIV_CLASSES.contains(&class)),
            "table" => ancestor
                .parent()
                .and_then(ElementRef::wrap)
                .is_some_and(|parent| {
                    parent.value().name() == "div"
                        && parent
                            .value()
                            .classes()
                            .any(|class| ADMONITION_CLASSES.contains(&class))
                }),
            _ => true,
        })
}

/// The text of an element with inline markup dropped, `<br>` read as a
/// space, whitespace runs collapsed to one space and the ends trimmed.
fn normalised_text(element: ElementRef) -> String {
    let mut text = String::new();
    for node in element.descendants() {
        match node.value() {
            Node::Text(fragment) => text.push_str(fragment),
            Node::Element(inner) if inner.name() == "br" => text.push(' '),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rewrites XML self-closing tags of non-void elements (`<a id="x"/>`) as a
/// start and an end tag. An HTML parser reads `<a id="x"/>` as an unclosed
/// start tag, which would swallow the following paragraphs.
fn expand_self_closing_tags(xhtml: &str) -> String {
    let mut expanded = String::with_capacity(xhtml.len() + xhtml.len() / 32);
    let mut rest = xhtml;
    while let Some(start) = rest.find('<') {
        expanded.push_str(&rest[..start]);
        let from_tag = &rest[start..];
        let Some(length) = tag_length(from_tag) else {
            // Unterminated tag: leave the remainder to the parser.
            expanded.push_str(from_tag);
            return expanded;
        };
        let (tag, after) = from_tag.split_at(length);
        match self_closing_element_name(tag) {
            Some(name) if !VOID_ELEMENTS.contains(&name.to_ascii_lowercase().as_str()) => {
                expanded.push_str(tag[..length - 2].trim_end());
                expanded.push_str("></");
                expanded.push_str(name);
                expanded.push('>');
            }
            _ => expanded.push_str(tag),
        }
        rest = after;
    }
    expanded.push_str(rest);
    expanded
}

/// Length in bytes of the markup starting at `text[0] == '<'` up to and
/// including its closing `>`, skipping `>` inside quoted attribute values.
fn tag_length(text: &str) -> Option<usize> {
    let is_declaration_or_comment = text[1..].starts_with(['!', '?']);
    let mut quote = None;
    for (offset, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (None, '>') => return Some(offset + 1),
            (None, '"' | '\'') if !is_declaration_or_comment => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            _ => {}
        }
    }
    None
}

/// The element name of a self-closing start tag such as `<a id="x"/>`.
fn self_closing_element_name(tag: &str) -> Option<&str> {
    let inner = tag.strip_prefix('<')?.strip_suffix("/>")?;
    let name_length = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ':'))
        .unwrap_or(inner.len());
    let name = &inner[..name_length];
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DocBook-like page: navigation, table of contents, body paragraphs
    /// (`body` is inserted into the chapter), a command table, a `<pre>` and
    /// the footer.
    fn page(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>T</title></head><body>
<div class="navheader"><table summary="Navigation header"><tr><td><p>nav</p></td></tr></table><hr/></div>
<div class="chapter"><div class="titlepage"><h1><a id="top"/>Chapter</h1></div>
<div class="toc"><p><strong>Table of Contents</strong></p></div>
{body}
<div class="table"><a id="t1"/><p class="title"><strong>Table 1. List of commands</strong></p>
<div class="table-contents"><table><tr><td><p>apt-get install foo</p></td></tr></table></div></div>
<pre class="screen">$ echo <p>not a paragraph</p></pre>
</div>
<div class="navfooter"><table><tr><td><p>footer</p></td></tr></table></div>
</body></html>"#
        )
    }

    fn prose(words: &str, repeat: usize) -> String {
        vec![words; repeat].join(" ")
    }

    fn aligned(stem: &str, pairs: &[(&str, &str)]) -> AlignedFile {
        AlignedFile {
            stem: stem.to_string(),
            translated: pairs.iter().map(|(source, _)| source.to_string()).collect(),
            english: pairs
                .iter()
                .map(|(_, reference)| reference.to_string())
                .collect(),
        }
    }

    fn small_selection(per_language: usize) -> Selection {
        Selection {
            per_language,
            min_chars: 20,
            max_chars: 200,
        }
    }

    /// A scratch directory removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("specdec-corpus-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create scratch directory");
            Self(path)
        }

        fn write(&self, name: &str, contents: &str) {
            fs::write(self.0.join(name), contents).expect("write scratch file");
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn body_paragraphs_keep_running_text_and_admonitions_only() {
        let html = page(
            r#"<div class="section"><a id="s1"/><p>First   paragraph with <code class="literal">apt</code> and
  <a class="ulink" href="https://example.org">a link</a>.</p>
<div class="itemizedlist"><ul><li class="listitem"><p>A list item.</p></li></ul></div>
<div class="note"><table border="0" summary="Note"><tr><th>Note</th></tr><tr><td><p>A note.</p></td></tr></table></div>
<p/>
<p>Line<br/>break</p></div>"#,
        );
        assert_eq!(
            body_paragraphs(&html),
            vec![
                "First paragraph with apt and a link.",
                "A list item.",
                "A note.",
                "",
                "Line break",
            ]
        );
    }

    #[test]
    fn self_closing_anchors_do_not_swallow_text() {
        let expanded = expand_self_closing_tags(r#"<a id="x"/><p>t</p><br/><img src="a>b"/>"#);
        assert_eq!(expanded, r#"<a id="x"></a><p>t</p><br/><img src="a>b"/>"#);
        let html = page(r#"<div class="section"><p><a id="x"/>One</p><p>Two</p></div>"#);
        assert_eq!(body_paragraphs(&html), vec!["One", "Two"]);
    }

    #[test]
    fn paragraphs_align_by_position() {
        let english = page("<p>One.</p><div class=\"tip\"><table><tr><td><p>Two.</p></td></tr></table></div><p>Three.</p>");
        let german = page("<p>Eins.</p><div class=\"tip\"><table><tr><td><p>Zwei.</p></td></tr></table></div><p>Drei.</p>");
        let pairs: Vec<(String, String)> = body_paragraphs(&german)
            .into_iter()
            .zip(body_paragraphs(&english))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("Eins.".to_string(), "One.".to_string()),
                ("Zwei.".to_string(), "Two.".to_string()),
                ("Drei.".to_string(), "Three.".to_string()),
            ]
        );
    }

    #[test]
    fn filters_reject_short_long_untranslated_and_wrong_script() {
        let reference = "The package manager installs the software you ask for.";
        let translated = "Die Paketverwaltung installiert die gewünschte Software.";
        let cases: [(&str, &str, &str, bool); 9] = [
            ("de", translated, reference, true),
            ("de", "Zu kurz.", reference, false),
            ("de", &prose("Viel zu lang", 30), reference, false),
            ("de", reference, reference, false),
            // Untranslated except for its cross-reference.
            (
                "de",
                "The package manager installs the software (Abschnitt 2).",
                "The package manager installs the software (Section 2).",
                false,
            ),
            ("de", translated, "Too short", false),
            (
                "ja",
                "パッケージマネージャーは要求されたソフトウェアをインストールします。",
                reference,
                true,
            ),
            // Chinese characters without kana are not Japanese.
            (
                "ja",
                "软件包管理器会安装你要求的软件，非常方便快捷。",
                reference,
                false,
            ),
            (
                "zh-cn",
                "软件包管理器会安装你要求的软件，非常方便快捷。",
                reference,
                true,
            ),
        ];
        for (language, source, reference, expected) in cases {
            assert_eq!(
                is_usable_pair(source, reference, language, &small_selection(1)),
                expected,
                "{language}: {source:?}"
            );
        }
    }

    #[test]
    fn character_counts_are_chars_not_bytes() {
        // 21 characters, 63 bytes.
        let source = "日本語の文章を書いています。とても良いです";
        let selection = Selection {
            per_language: 1,
            min_chars: 21,
            max_chars: 25,
        };
        assert_eq!(source.chars().count(), 21);
        assert!(is_usable_pair(
            source,
            "I am writing Japanese text here",
            "ja",
            &selection
        ));
    }

    #[test]
    fn files_with_mismatched_paragraph_counts_are_skipped() {
        let good = aligned(
            "ch01",
            &[(
                "Die Paketverwaltung installiert Software.",
                "The package manager installs software.",
            )],
        );
        let mismatched = AlignedFile {
            stem: "ch02".to_string(),
            english: vec!["The kernel boots the system quickly.".to_string()],
            translated: vec![
                "Der Kern startet das System schnell.".to_string(),
                "Ein zusätzlicher Absatz der Übersetzung.".to_string(),
            ],
        };
        let found = candidates("de", &[good, mismatched], &small_selection(1));
        let origins: Vec<&str> = found.iter().map(|c| c.paragraph.origin.as_str()).collect();
        assert_eq!(origins, vec!["ch01.de.html#0"]);
        assert_eq!(found[0].paragraph.iso639_1, "de");
    }

    fn numbered_files(count: usize, code_every: usize) -> Vec<AlignedFile> {
        (0..count)
            .map(|i| {
                let (source, reference) = if code_every > 0 && i % code_every == 0 {
                    (
                        format!("Führen Sie /usr/bin/tool --option=wert_{i} aus, bitte jetzt"),
                        format!("Run /usr/bin/tool --option=value_{i} now please"),
                    )
                } else {
                    (
                        format!("Absatz Nummer {i} erklärt etwas Wichtiges."),
                        format!("Paragraph number {i} explains something important."),
                    )
                };
                AlignedFile {
                    stem: format!("ch{i:02}"),
                    english: vec![reference],
                    translated: vec![source],
                }
            })
            .collect()
    }

    #[test]
    fn selection_is_spread_deterministic_and_prefers_prose() {
        let files = numbered_files(10, 0);
        let first = select_language("de", &files, &small_selection(3)).expect("enough candidates");
        let second = select_language("de", &files, &small_selection(3)).expect("enough candidates");
        assert_eq!(first, second);
        let origins: Vec<&str> = first.iter().map(|p| p.origin.as_str()).collect();
        // Middles of three equal slices of ten: 10/6, 30/6, 50/6.
        assert_eq!(
            origins,
            vec!["ch01.de.html#0", "ch05.de.html#0", "ch08.de.html#0"]
        );

        // Every other paragraph is code-heavy: only prose is chosen.
        let mixed = numbered_files(12, 2);
        let chosen = select_language("de", &mixed, &small_selection(4)).expect("enough candidates");
        assert!(chosen
            .iter()
            .all(|p| code_like_share(&p.reference) <= MAX_PROSE_CODE_SHARE));
        assert_eq!(chosen.len(), 4);

        // Not enough prose: the rest is topped up from code-heavy paragraphs.
        let topped_up =
            select_language("de", &mixed, &small_selection(8)).expect("enough candidates");
        assert_eq!(topped_up.len(), 8);
        assert_eq!(
            topped_up
                .iter()
                .filter(|p| code_like_share(&p.reference) > MAX_PROSE_CODE_SHARE)
                .count(),
            2
        );
    }

    #[test]
    fn repeated_sources_are_kept_once() {
        let pair = (
            "Die Paketverwaltung installiert Software.",
            "The package manager installs software.",
        );
        let found = candidates("de", &[aligned("ch01", &[pair, pair])], &small_selection(1));
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn too_few_candidates_reports_the_count() {
        let error = select_language("de", &numbered_files(2, 0), &small_selection(3))
            .expect_err("two candidates cannot give three");
        assert!(matches!(
            error,
            CorpusError::TooFewCandidates {
                found: 2,
                wanted: 3,
                ..
            }
        ));
        assert!(error.to_string().contains("only 2 usable paragraphs"));
    }

    #[test]
    fn extract_reads_files_and_names_missing_packages() {
        let scratch = ScratchDir::new("extract");
        scratch.write(
            "ch01.en.html",
            &page("<p>The package manager installs the software you ask for.</p><p>Short.</p>"),
        );
        scratch.write(
            "ch01.de.html",
            &page("<p>Die Paketverwaltung installiert die gewünschte Software.</p><p>Kurz.</p>"),
        );
        let paragraphs = extract(&scratch.0, &["de"], &small_selection(1)).expect("extract");
        assert_eq!(
            paragraphs,
            vec![Paragraph {
                language: "de".to_string(),
                iso639_1: "de".to_string(),
                source: "Die Paketverwaltung installiert die gewünschte Software.".to_string(),
                reference: "The package manager installs the software you ask for.".to_string(),
                origin: "ch01.de.html#0".to_string(),
            }]
        );

        let missing =
            extract(&scratch.0, &["zh-cn"], &small_selection(1)).expect_err("no Chinese files");
        assert!(
            missing.to_string().contains("debian-reference-zh-cn"),
            "{missing}"
        );

        let absent = scratch.0.join("absent");
        let error = extract(&absent, &["de"], &small_selection(1)).expect_err("no directory");
        assert!(matches!(error, CorpusError::MissingDirectory { .. }));
        assert!(error.to_string().contains("debian-reference-en"), "{error}");
    }

    #[test]
    fn real_manual_gives_three_paragraphs_per_language() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.is_dir() {
            println!("skipped: {DEFAULT_DIR} is absent (install debian-reference-*)");
            return;
        }
        let selection = Selection::new(3);
        let english = read_english(dir).expect("English manual");
        for language in LANGUAGES {
            let files = read_translation(dir, language, &english).expect("translation");
            let skipped: Vec<&str> = files
                .iter()
                .filter(|f| f.english.len() != f.translated.len())
                .map(|f| f.stem.as_str())
                .collect();
            let found = candidates(language, &files, &selection);
            let prose = found
                .iter()
                .filter(|c| c.code_share <= MAX_PROSE_CODE_SHARE)
                .count();
            println!(
                "{language}: {} candidates ({prose} prose), files skipped: {skipped:?}",
                found.len()
            );
        }

        let paragraphs = extract(dir, &LANGUAGES, &selection).expect("extract");
        assert_eq!(paragraphs.len(), LANGUAGES.len() * 3);
        for (language, group) in LANGUAGES.iter().zip(paragraphs.chunks(3)) {
            for paragraph in group {
                assert_eq!(&paragraph.language, language);
                let length = paragraph.source.chars().count();
                assert!((selection.min_chars..=selection.max_chars).contains(&length));
                println!(
                    "{} [{}]\n  {}\n  {}",
                    paragraph.origin, paragraph.iso639_1, paragraph.source, paragraph.reference
                );
            }
        }
        let sources: HashSet<&str> = paragraphs.iter().map(|p| p.source.as_str()).collect();
        assert_eq!(sources.len(), paragraphs.len());
    }
}
