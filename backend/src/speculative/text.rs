//! Turning generated token bytes into text that is safe to stream: complete
//! UTF-8 only, and never a piece that might turn out to be the start of a stop
//! string.

/// Longest stop string accepted, in bytes. Every generated token is checked
/// against the held-back text, which is as long as the longest stop string,
/// so this bounds the work a request's stop strings cost per token.
pub const MAX_STOP_BYTES: usize = 256;

/// What [`TextAssembler::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Text that may be released to the client now.
    pub released: String,
    /// A stop string was completed; nothing more is to be generated.
    pub stopped: bool,
}

/// Accumulates token pieces, decodes UTF-8 incrementally and watches for stop
/// strings. The released text never contains a stop string.
#[derive(Debug, Default)]
pub struct TextAssembler {
    stops: Vec<String>,
    pending_bytes: Vec<u8>,
    held: String,
    stopped: bool,
}

impl TextAssembler {
    /// An assembler that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Add the bytes of one token.
    pub fn push(&mut self, piece: &[u8]) -> Pushed {
        if self.stopped {
            return Pushed {
                released: String::new(),
                stopped: true,
            };
        }
        self.pending_bytes.extend_from_slice(piece);
        let valid_up_to = match std::str::from_utf8(&self.pending_bytes) {
            Ok(_) => self.pending_bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid (not merely incomplete) bytes: replace them, as a
            // tokenizer's byte tokens may split characters oddly.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                self.held.push_str(&text);
                return self.release();
            }
        };
        let rest = self.pending_bytes.split_off(valid_up_to);
        let complete = std::mem::replace(&mut self.pending_bytes, rest);
        // Valid by construction.
        self.held.push_str(&String::from_utf8_lossy(&complete));
        self.release()
    }

    /// Release whatever is held at the end of generation. The bytes of a
    /// character the last token left incomplete (generation stopped at
    /// `max_tokens` inside it) are dropped, not sent as U+FFFD: the text
    /// ends at the last whole character.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        // Only an incomplete character can be pending: `push` replaces
        // invalid bytes at once.
        self.pending_bytes.clear();
        std::mem::take(&mut self.held)
    }

    fn release(&mut self) -> Pushed {
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            self.stopped = true;
            let mut released = std::mem::take(&mut self.held);
            released.truncate(at);
            return Pushed {
                released,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - hold;
        let released = self.held[..cut].to_string();
        self.held.drain(..cut);
        Pushed {
            released,
            stopped: false,
        }
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of
/// `stop`, cut at character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(asm: &mut TextAssembler, pieces: &[&[u8]]) -> (String, bool) {
        let mut out = String::new();
        let mut stopped = false;
        for p in pieces {
            let pushed = asm.push(p);
            out.push_str(&pushed.released);
            stopped |= pushed.stopped;
        }
        if !stopped {
            out.push_str(&asm.finish());
        }
        (out, stopped)
    }

    #[test]
    fn joins_split_utf8_characters() {
        let bytes = "日本".as_bytes();
        let mut asm = TextAssembler::new(vec![]);
        let first = asm.push(&bytes[..2]);
        assert_eq!(first.released, "");
        let (rest, _) = feed(&mut asm, &[&bytes[2..]]);
        assert_eq!(rest, "日本");
    }

    #[test]
    fn a_character_cut_by_the_end_of_generation_is_dropped() {
        // U+202E is three bytes; generation ends after two of them.
        let bytes = "ok\u{202e}".as_bytes();
        let mut asm = TextAssembler::new(vec![]);
        assert_eq!(asm.push(&bytes[..4]).released, "ok");
        assert_eq!(asm.finish(), "");
        // Invalid bytes in the middle are still replaced, not dropped.
        let mut asm = TextAssembler::new(vec![]);
        let (text, _) = feed(&mut asm, &[b"a\xffb"]);
        assert_eq!(text, "a\u{fffd}b");
    }

    #[test]
    fn stop_string_across_tokens_is_cut() {
        let mut asm = TextAssembler::new(vec!["\n\n".into()]);
        let (text, stopped) = feed(&mut asm, &[b"Hello", b"\n", b"\nWorld"]);
        assert_eq!(text, "Hello");
        assert!(stopped);
    }

    #[test]
    fn possible_stop_prefix_is_held_then_released() {
        let mut asm = TextAssembler::new(vec!["END".into()]);
        assert_eq!(asm.push(b"the E").released, "the ");
        assert_eq!(asm.push(b"xit").released, "Exit");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut asm = TextAssembler::new(vec!["c".into(), "b".into()]);
        let (text, stopped) = feed(&mut asm, &[b"abc"]);
        assert_eq!((text.as_str(), stopped), ("a", true));
    }

    #[test]
    fn without_stops_everything_is_released() {
        let mut asm = TextAssembler::new(vec![String::new()]);
        assert_eq!(asm.push(b"abc").released, "abc");
    }
}
