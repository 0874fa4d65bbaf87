//! Acceptance per language, from the pods' Prometheus text exposition: the
//! parsing and summing are pure; the controller does the HTTP.

use std::collections::BTreeMap;

use specdec_backend::metric_names::{
    exported, LABEL_DRAFTER, LABEL_LANGUAGE, SPEC_DECODE_NUM_ACCEPTED_TOKENS,
    SPEC_DECODE_NUM_DRAFTS, SPEC_DECODE_NUM_DRAFT_TOKENS,
};

use crate::crd::LanguageAcceptance;

/// Counters of one (language, drafter) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Verification rounds with drafted tokens.
    pub drafts: u64,
    /// Drafted tokens.
    pub draft_tokens: u64,
    /// Accepted tokens.
    pub accepted_tokens: u64,
}

/// Counters keyed by (language, drafter), summed over pods.
pub type Totals = BTreeMap<(String, String), Counters>;

/// One sample line: metric name, labels, value. `None` for comments, blank
/// lines and lines that do not parse.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &body[end..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// Add the acceptance counters of one pod's `/metrics` text to `totals`.
pub fn add_exposition(totals: &mut Totals, text: &str) {
    let drafts = exported(SPEC_DECODE_NUM_DRAFTS);
    let draft_tokens = exported(SPEC_DECODE_NUM_DRAFT_TOKENS);
    let accepted = exported(SPEC_DECODE_NUM_ACCEPTED_TOKENS);
    for line in text.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let field: fn(&mut Counters) -> &mut u64 = if name == drafts {
            |c| &mut c.drafts
        } else if name == draft_tokens {
            |c| &mut c.draft_tokens
        } else if name == accepted {
            |c| &mut c.accepted_tokens
        } else {
            continue;
        };
        let (Some(language), Some(drafter)) =
            (labels.get(LABEL_LANGUAGE), labels.get(LABEL_DRAFTER))
        else {
            continue;
        };
        let counters = totals
            .entry((language.clone(), drafter.clone()))
            .or_default();
        *field(counters) += value.max(0.0) as u64;
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Per-language acceptance for the status, sorted by language; languages
/// that drafted nothing are left out.
pub fn summarize(totals: &Totals) -> Vec<LanguageAcceptance> {
    totals
        .iter()
        .filter(|(_, c)| c.draft_tokens > 0)
        .map(|((language, drafter), c)| LanguageAcceptance {
            language: language.clone(),
            drafter: drafter.clone(),
            drafts: saturating_i64(c.drafts),
            draft_tokens: saturating_i64(c.draft_tokens),
            accepted_tokens: saturating_i64(c.accepted_tokens),
            acceptance_rate: format!(
                "{:.2}",
                ratio(c.accepted_tokens, c.draft_tokens).unwrap_or(0.0)
            ),
            mean_accepted_length: format!(
                "{:.2}",
                1.0 + ratio(c.accepted_tokens, c.drafts).unwrap_or(0.0)
            ),
        })
        .collect()
}

/// Acceptance over every language, or `None` before any token was drafted.
pub fn overall_rate(totals: &Totals) -> Option<f64> {
    let (accepted, drafted) = totals.values().fold((0, 0), |(a, d), c| {
        (a + c.accepted_tokens, d + c.draft_tokens)
    });
    ratio(accepted, drafted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_A: &str = r#"# HELP specdec_spec_decode_num_draft_tokens_total Tokens proposed by drafters.
# TYPE specdec_spec_decode_num_draft_tokens_total counter
specdec_spec_decode_num_draft_tokens_total{drafter="qwen-0-5b",language="de"} 100
specdec_spec_decode_num_accepted_tokens_total{drafter="qwen-0-5b",language="de"} 74
specdec_spec_decode_num_drafts_total{drafter="qwen-0-5b",language="de"} 25
specdec_spec_decode_num_accepted_tokens_per_pos_total{drafter="qwen-0-5b",language="de",position="0"} 20
specdec_spec_decode_num_draft_tokens_total{drafter="lookup",language="unknown"} 10
specdec_spec_decode_num_accepted_tokens_total{drafter="lookup",language="unknown"} 1
specdec_spec_decode_num_drafts_total{drafter="lookup",language="unknown"} 5
specdec_generation_tokens_total 999
"#;
    const POD_B: &str = "specdec_spec_decode_num_draft_tokens_total{drafter=\"qwen-0-5b\",language=\"de\"} 100\nspecdec_spec_decode_num_accepted_tokens_total{language=\"de\",drafter=\"qwen-0-5b\"} 76\nspecdec_spec_decode_num_drafts_total{drafter=\"qwen-0-5b\",language=\"de\"} 25\n";

    #[test]
    fn sums_counters_over_pods_per_language() {
        let mut totals = Totals::new();
        add_exposition(&mut totals, POD_A);
        add_exposition(&mut totals, POD_B);
        let de = totals[&("de".to_string(), "qwen-0-5b".to_string())];
        assert_eq!(
            de,
            Counters {
                drafts: 50,
                draft_tokens: 200,
                accepted_tokens: 150
            }
        );
        let summary = summarize(&totals);
        assert_eq!(summary[0].language, "de");
        assert_eq!(summary[0].acceptance_rate, "0.75");
        assert_eq!(summary[0].mean_accepted_length, "4.00");
        assert_eq!(summary[1].language, "unknown");
        assert_eq!(summary[1].mean_accepted_length, "1.20");
        let overall = overall_rate(&totals).unwrap();
        assert!((overall - 151.0 / 210.0).abs() < 1e-9);
    }

    #[test]
    fn ignores_garbage_and_escapes_label_values() {
        let mut totals = Totals::new();
        add_exposition(
            &mut totals,
            "not a metric\nspecdec_spec_decode_num_draft_tokens_total{drafter=\"a\\\"b\",language=\"fr\"} 3\nspecdec_spec_decode_num_draft_tokens_total{drafter=\"x\" 3\n",
        );
        assert_eq!(totals.len(), 1);
        assert!(totals.contains_key(&("fr".to_string(), "a\"b".to_string())));
        assert!(overall_rate(&Totals::new()).is_none());
    }
}
