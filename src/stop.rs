//! Stop strings: generated text is held back while it may be the start of one, so that a stop
//! string split across tokens is never shown (used by `generate`, `chat`'s server twin and
//! `serve`).

/// Holds back output that might be the start of a stop string.
#[derive(Clone, Debug, Default)]
pub struct StopFilter {
    stops: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored: they would match everywhere).
    pub fn new(stops: Vec<Vec<u8>>) -> Self {
        StopFilter {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: Vec::new(),
        }
    }

    /// Adds bytes; returns what can be shown now and whether a stop string was reached (the
    /// text then ends before it, and nothing stays pending).
    pub fn push(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        self.pending.extend_from_slice(bytes);
        let found = self
            .stops
            .iter()
            .filter_map(|s| find(&self.pending, s))
            .min();
        if let Some(at) = found {
            let out = self.pending[..at].to_vec();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| self.pending.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let out = self.pending.drain(..self.pending.len() - keep).collect();
        (out, false)
    }

    /// The bytes held back (at the end of the output: they turned out not to be a stop).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// The first position of `needle` in `hay` (never for an empty needle).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_filter(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let (o, stop) = f.push(p.as_bytes());
            out.extend(o);
            if stop {
                return (String::from_utf8(out).unwrap(), true);
            }
        }
        out.extend(f.take_pending());
        (String::from_utf8(out).unwrap(), false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_not_printed() {
        assert_eq!(
            run_filter(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run_filter(&["User:"], &["a Us", "er: b"]),
            ("a ".into(), true)
        );
    }

    #[test]
    fn a_possible_stop_is_held_back_until_it_diverges() {
        let mut f = StopFilter::new(vec![b"\n\n".to_vec()]);
        assert_eq!(f.push(b"Hi\n"), (b"Hi".to_vec(), false));
        assert_eq!(f.push(b"x"), (b"\nx".to_vec(), false));
        assert_eq!(f.push(b"\n\nmore"), (Vec::new(), true));
    }

    #[test]
    fn partial_match_that_diverges_is_printed() {
        assert_eq!(
            run_filter(&["STOP"], &["ST", "ART"]),
            ("START".into(), false)
        );
        assert_eq!(run_filter(&[], &["abc"]), ("abc".into(), false));
        assert_eq!(run_filter(&[""], &["abc"]), ("abc".into(), false));
    }
}
