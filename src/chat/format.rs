//! The G1 conversation text and how a reply is shown.
//!
//! The conversation is exactly this text (BlinkDL's model cards for RWKV-7 "G1"):
//!
//! ```text
//! System: SYSTEM\n\n                (only with a system prompt)
//! User: MESSAGE\n\n                 (per turn)
//! Assistant: REPLY\n\n              (`Assistant:` or a think prefix, see [`Think`])
//! ```
//!
//! `\n\n` ends a turn, so a message never contains it: [`clean_message`] folds every run of
//! newlines into one, as the official chat demo does.

use anyhow::{bail, Result};
use std::str::FromStr;

/// What ends a turn: the model writes it after its reply, we write it after every part.
pub const END_OF_TURN: &[u8] = b"\n\n";

/// How the assistant's part begins: whether the model thinks before it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Think {
    /// `Assistant:`: a plain answer.
    #[default]
    Off,
    /// `Assistant: <think`: the model reasons first (`>...</think>`), then answers.
    On,
    /// `Assistant: <think>\n</think`: G1's "fake think", an empty reasoning block (answers
    /// better than none, at no cost).
    Skip,
}

impl Think {
    /// The text fed after the user's part, before the reply.
    pub fn assistant_prefix(self) -> &'static [u8] {
        match self {
            Think::Off => b"Assistant:",
            Think::On => b"Assistant: <think",
            Think::Skip => b"Assistant: <think>\n</think",
        }
    }

    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Think::Off => "off",
            Think::On => "on",
            Think::Skip => "skip",
        }
    }
}

impl std::fmt::Display for Think {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Think {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Think::Off),
            "on" => Ok(Think::On),
            "skip" => Ok(Think::Skip),
            _ => bail!("unknown think mode '{s}' (valid: off, on, skip)"),
        }
    }
}

/// A message as it goes into the conversation, like the official chat demo does it: `\r\n`
/// becomes `\n`, every run of newlines becomes one `\n` (so `\n\n`, the end of a turn, never
/// appears inside it), and leading and trailing whitespace is removed.
pub fn clean_message(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'\r' && text.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        if b == b'\n' && out.last() == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b);
        i += 1;
    }
    let start = out
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(out.len());
    let end = out
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    out[start..end].to_vec()
}

/// `System: TEXT\n\n`, with TEXT cleaned by [`clean_message`].
pub fn system_part(text: &[u8]) -> Vec<u8> {
    part(b"System: ", text)
}

/// `User: MESSAGE\n\n`, with MESSAGE cleaned by [`clean_message`].
pub fn user_part(message: &[u8]) -> Vec<u8> {
    part(b"User: ", message)
}

fn part(role: &[u8], text: &[u8]) -> Vec<u8> {
    let mut p = role.to_vec();
    p.extend_from_slice(&clean_message(text));
    p.extend_from_slice(END_OF_TURN);
    p
}

/// Where `needle` first occurs in `hay`.
pub(crate) use crate::stop::find;

/// A piece of a reply as it is shown: the model's reasoning, or its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Reasoning (`--think on`): the bytes after our `<think`, up to and including `</think>`.
    Thinking(&'a [u8]),
    /// The answer, without its leading whitespace (the model writes `Assistant: Hello`).
    Answer(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Inside `<think ... </think>` (think on).
    Thinking,
    /// After the fake think's `</think`: a `>` closes the tag and is not shown.
    CloseTag,
    /// Before the answer's first visible byte: whitespace is not shown.
    AnswerStart,
    Answer,
}

/// Splits reply bytes, as they are generated, into [`Piece`]s: reasoning and answer, with the
/// answer's leading whitespace and the fake think's closing `>` left out. Bytes arrive in any
/// split (a token may end inside a UTF-8 character or inside `</think>`).
#[derive(Clone, Debug)]
pub struct ReplyView {
    phase: Phase,
    /// The last bytes of the reasoning, to find a `</think>` split across pushes.
    tail: Vec<u8>,
    /// Everything shown so far, by kind.
    pub thinking: Vec<u8>,
    pub answer: Vec<u8>,
}

const THINK_END: &[u8] = b"</think>";

impl ReplyView {
    pub fn new(think: Think) -> Self {
        let phase = match think {
            Think::Off => Phase::AnswerStart,
            Think::On => Phase::Thinking,
            Think::Skip => Phase::CloseTag,
        };
        ReplyView {
            phase,
            tail: Vec::new(),
            thinking: Vec::new(),
            answer: Vec::new(),
        }
    }

    /// Classifies `bytes` (the next bytes of the reply) and hands each piece to `out`.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        out: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Thinking => {
                    // The reasoning ends right after the first `</think>`.
                    let mut end = None;
                    for (i, &b) in bytes.iter().enumerate() {
                        self.tail.push(b);
                        if self.tail.len() > THINK_END.len() {
                            self.tail.remove(0);
                        }
                        if self.tail == THINK_END {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    let n = end.unwrap_or(bytes.len());
                    self.thinking.extend_from_slice(&bytes[..n]);
                    out(Piece::Thinking(&bytes[..n]))?;
                    bytes = &bytes[n..];
                    if end.is_some() {
                        self.phase = Phase::AnswerStart;
                    }
                }
                Phase::CloseTag => {
                    if bytes[0] == b'>' {
                        bytes = &bytes[1..];
                    }
                    self.phase = Phase::AnswerStart;
                }
                Phase::AnswerStart => {
                    let skip = bytes
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                        .unwrap_or(bytes.len());
                    bytes = &bytes[skip..];
                    if !bytes.is_empty() {
                        self.phase = Phase::Answer;
                    }
                }
                Phase::Answer => {
                    self.answer.extend_from_slice(bytes);
                    out(Piece::Answer(bytes))?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_hold_the_end_of_a_turn() {
        assert_eq!(clean_message(b"  hi\n\nthere\n\n\n "), b"hi\nthere");
        assert_eq!(clean_message(b"a\r\n\r\nb"), b"a\nb");
        assert_eq!(clean_message(b"\n\n"), b"");
        assert_eq!(clean_message(b"one line"), b"one line");
        assert_eq!(user_part(b"a\n\n\nb "), b"User: a\nb\n\n");
        assert_eq!(system_part(b"Be brief."), b"System: Be brief.\n\n");
        for m in [&b"x\n\n\n\ny"[..], b"\r\n\r\n\r\n", b"a\n\r\n\nb"] {
            assert!(find(&clean_message(m), b"\n\n").is_none());
        }
    }

    #[test]
    fn think_modes() {
        assert_eq!(Think::Off.assistant_prefix(), b"Assistant:");
        assert_eq!(Think::On.assistant_prefix(), b"Assistant: <think");
        assert_eq!(
            Think::Skip.assistant_prefix(),
            b"Assistant: <think>\n</think"
        );
        for t in [Think::Off, Think::On, Think::Skip] {
            assert_eq!(t.name().parse::<Think>().unwrap(), t);
        }
        assert!("maybe".parse::<Think>().is_err());
    }

    fn view(think: Think, pieces: &[&str]) -> (String, String) {
        let mut v = ReplyView::new(think);
        let (mut t, mut a) = (Vec::new(), Vec::new());
        for p in pieces {
            v.push(p.as_bytes(), &mut |piece| {
                match piece {
                    Piece::Thinking(b) => t.extend_from_slice(b),
                    Piece::Answer(b) => a.extend_from_slice(b),
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(v.thinking, t);
        assert_eq!(v.answer, a);
        (String::from_utf8(t).unwrap(), String::from_utf8(a).unwrap())
    }

    #[test]
    fn the_view_splits_reasoning_from_the_answer() {
        assert_eq!(
            view(Think::Off, &[" Hel", "lo\nyou"]),
            ("".into(), "Hello\nyou".into())
        );
        assert_eq!(
            view(Think::On, &[">\nhmm</thi", "nk>\n", " Yes"]),
            (">\nhmm</think>".into(), "Yes".into())
        );
        assert_eq!(
            view(Think::On, &[">\nstill thinking"]),
            (">\nstill thinking".into(), "".into())
        );
        assert_eq!(
            view(Think::Skip, &[">", "\nSure"]),
            ("".into(), "Sure".into())
        );
        assert_eq!(view(Think::Skip, &[" Sure>"]), ("".into(), "Sure>".into()));
    }
}
