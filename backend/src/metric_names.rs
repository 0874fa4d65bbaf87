//! Names of the backend's Prometheus metrics that others read: one
//! definition, used by the server that exports them and by the operator that
//! scrapes them from the pods.

/// Prefix of every metric.
pub const NAMESPACE: &str = "specdec";

/// Verification rounds that checked at least one drafted token (vLLM's `num_drafts`).
pub const SPEC_DECODE_NUM_DRAFTS: &str = "spec_decode_num_drafts_total";
/// Tokens proposed by drafters.
pub const SPEC_DECODE_NUM_DRAFT_TOKENS: &str = "spec_decode_num_draft_tokens_total";
/// Drafted tokens the target accepted.
pub const SPEC_DECODE_NUM_ACCEPTED_TOKENS: &str = "spec_decode_num_accepted_tokens_total";
/// Accepted drafted tokens by position in the draft.
pub const SPEC_DECODE_NUM_ACCEPTED_TOKENS_PER_POS: &str =
    "spec_decode_num_accepted_tokens_per_pos_total";

/// Per language and candidate drafter: the candidate's share of the
/// language's recent rounds (discounted, about the last 50), as the bandit
/// choosing among several candidates sees it.
pub const BANDIT_CHOICE_SHARE: &str = "bandit_choice_share";
/// Per language and candidate drafter: tokens per second of its recent
/// rounds (the bandit's discounted mean reward).
pub const BANDIT_TOKENS_PER_SECOND: &str = "bandit_tokens_per_second";

/// Label naming the drafter.
pub const LABEL_DRAFTER: &str = "drafter";
/// Label naming the request's language.
pub const LABEL_LANGUAGE: &str = "language";
/// Label naming how a request samples: [`SAMPLING_GREEDY`] or
/// [`SAMPLING_SAMPLED`] (adaptive drafting learns each apart: a drafter's
/// acceptance differs between them).
pub const LABEL_SAMPLING: &str = "sampling";
/// [`LABEL_SAMPLING`] of greedy requests (temperature 0).
pub const SAMPLING_GREEDY: &str = "greedy";
/// [`LABEL_SAMPLING`] of sampled requests.
pub const SAMPLING_SAMPLED: &str = "sampled";
/// Label naming a draft length.
pub const LABEL_LENGTH: &str = "length";
/// Label naming the draft position.
pub const LABEL_POSITION: &str = "position";

/// The exported name: `specdec_` + `name`.
pub fn exported(name: &str) -> String {
    format!("{NAMESPACE}_{name}")
}
