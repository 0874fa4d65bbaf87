//! What the prompts ask for. Translation into English is the multilingual
//! task of the research this product follows; proofreading (correct the
//! typos of a paragraph and return it) is an editing task whose output
//! mostly repeats its input, where prompt-lookup drafting is cheap and often
//! right, so speculation can pay even where a model drafter cannot.

use serde::{Deserialize, Serialize};

use crate::corpus::{is_cjk, Paragraph};

/// A kind of prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Translate the paragraph into English; the English original is the reference.
    Translate,
    /// Correct typos put into the paragraph; the paragraph itself is the reference.
    Proofread,
}

impl Task {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Task::Translate => "translate",
            Task::Proofread => "proofread",
        }
    }

    /// The user message for `p`.
    pub fn prompt(self, p: &Paragraph) -> String {
        let language = language_name(&p.language);
        match self {
            Task::Translate => format!(
                "Translate the following {language} text into English. Reply with the translation only.\n\n{}",
                p.source
            ),
            Task::Proofread => format!(
                "Correct the spelling mistakes in the following {language} text. Reply with the corrected text only, in {language}.\n\n{}",
                with_typos(&p.source)
            ),
        }
    }

    /// What a perfect answer to `p` would be.
    pub fn reference(self, p: &Paragraph) -> &str {
        match self {
            Task::Translate => &p.reference,
            Task::Proofread => &p.source,
        }
    }
}

/// English names of the benchmark's languages.
pub fn language_name(code: &str) -> &'static str {
    match code {
        "de" => "German",
        "fr" => "French",
        "es" => "Spanish",
        "it" => "Italian",
        "ja" => "Japanese",
        "zh-cn" => "Chinese",
        "pt" => "Portuguese",
        "id" => "Indonesian",
        _ => "source-language",
    }
}

/// `text` with deterministic typos: in every fifth word of five or more
/// letters the second and third letters swapped; in text without spaces
/// between words (Japanese, Chinese), every twelfth CJK character swapped
/// with the next one.
pub fn with_typos(text: &str) -> String {
    let cjk = text.chars().filter(|&c| is_cjk(c)).count();
    if cjk * 2 > text.chars().count() {
        let mut chars: Vec<char> = text.chars().collect();
        let mut seen = 0;
        let mut i = 0;
        while i + 1 < chars.len() {
            if is_cjk(chars[i]) {
                seen += 1;
                if seen % 12 == 0 && is_cjk(chars[i + 1]) && chars[i] != chars[i + 1] {
                    chars.swap(i, i + 1);
                    i += 1;
                }
            }
            i += 1;
        }
        return chars.into_iter().collect();
    }
    let mut long_words = 0;
    text.split(' ')
        .map(|word| {
            let letters: Vec<char> = word.chars().collect();
            if letters.len() >= 5 && letters.iter().all(|c| c.is_alphabetic()) {
                long_words += 1;
                if long_words % 5 == 0 && letters[1] != letters[2] {
                    let mut swapped = letters;
                    swapped.swap(1, 2);
                    return swapped.into_iter().collect();
                }
            }
            word.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fifth_long_word_gets_a_typo() {
        let text = "Dieses System verwendet einen Paketmanager namens apt, welcher Pakete installiert und entfernt.";
        let typo = with_typos(text);
        assert_eq!(
            typo,
            "Dieses System verwendet einen Pkaetmanager namens apt, welcher Pakete installiert und entfernt."
        );
        assert_eq!(typo.chars().count(), text.chars().count());
        assert_eq!(with_typos(text), typo, "deterministic");
    }

    #[test]
    fn cjk_text_gets_swapped_characters() {
        let text = "在屏幕会话中，除了命令键之外，所有键盘输入都会发送到当前窗口。所有命令键都以控制键开始。";
        let typo = with_typos(text);
        assert_ne!(typo, text);
        let mut a: Vec<char> = typo.chars().collect();
        let mut b: Vec<char> = text.chars().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "the same characters, two of them swapped");
    }

    #[test]
    fn prompts_and_references_follow_the_task() {
        let p = Paragraph {
            language: "zh-cn".into(),
            iso639_1: "zh".into(),
            source: "源".into(),
            reference: "source".into(),
            origin: "ch01.zh-cn.html#1".into(),
        };
        assert!(Task::Translate
            .prompt(&p)
            .starts_with("Translate the following Chinese text into English."));
        assert!(Task::Proofread.prompt(&p).contains("in Chinese"));
        assert_eq!(Task::Translate.reference(&p), "source");
        assert_eq!(Task::Proofread.reference(&p), "源");
    }
}
