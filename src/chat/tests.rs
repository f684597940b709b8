//! The turn mechanics on a mock model whose state is the list of tokens it has read, and a
//! mock tokenizer with multi-byte tokens, so that every way a reply can end is reachable.

use super::*;
use crate::models::{Config, Version};
use crate::sampler::SamplerConfig;

const NN: u32 = 256; // "\n\n"
const A_NL: u32 = 257; // "a\n"
const NL_B: u32 = 258; // "\nb"
const C_NN_D: u32 = 259; // "c\n\nd"
const ASSISTANT: u32 = 260; // "Assistant:"
const EOT: u32 = 0;

const EXTRA: [&[u8]; 5] = [b"\n\n", b"a\n", b"\nb", b"c\n\nd", b"Assistant:"];
const VOCAB: usize = 256 + EXTRA.len();

/// Bytes are their own ids (0 is also the end-of-text token); a few multi-byte tokens on top,
/// greedy longest match.
struct MockTok;

impl Tokenizer for MockTok {
    fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let best = EXTRA
                .iter()
                .enumerate()
                .filter(|(_, t)| text[i..].starts_with(t))
                .max_by_key(|(_, t)| t.len());
            match best {
                Some((k, t)) => {
                    out.push(256 + k as u32);
                    i += t.len();
                }
                None => {
                    out.push(text[i] as u32);
                    i += 1;
                }
            }
        }
        Ok(out)
    }
    fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|&i| self.token_bytes(i)).collect()
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        match id {
            0..=255 => vec![id as u8],
            _ => EXTRA
                .get(id as usize - 256)
                .map(|t| t.to_vec())
                .unwrap_or_default(),
        }
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn name(&self) -> &'static str {
        "mock"
    }
    fn eot_token(&self) -> Option<u32> {
        Some(EOT)
    }
}

/// Its state is the token history (in `layers[0].att_shift`); after the last `Assistant:` it
/// favours `script[k]` for the k-th token of the reply (then `script`'s last), with `z` second.
struct MockModel {
    cfg: Config,
    script: Vec<u32>,
}

fn mock(script: &[u32]) -> Arc<dyn Model> {
    Arc::new(MockModel {
        cfg: Config {
            version: Version::V7,
            n_layer: 1,
            n_embd: 1,
            n_att: 1,
            n_ffn: 1,
            n_head: 1,
            head_size: 1,
            vocab_size: VOCAB,
            n_params: 0,
        },
        script: script.to_vec(),
    })
}

fn history(s: &State) -> Vec<u32> {
    s.layers[0].att_shift[1..]
        .iter()
        .map(|&x| x as u32)
        .collect()
}

impl Model for MockModel {
    fn config(&self) -> &Config {
        &self.cfg
    }
    fn forward_seq(&self, tokens: &[u32], state: &mut State, all: bool) -> Result<Vec<f32>> {
        assert!(!all && !tokens.is_empty());
        state.layers[0]
            .att_shift
            .extend(tokens.iter().map(|&t| t as f32));
        let h = history(state);
        let k = h.iter().rev().position(|&t| t == ASSISTANT).unwrap_or(0);
        let mut logits = vec![0.0; VOCAB];
        logits[b'z' as usize] = 5.0;
        logits[self.script[k.min(self.script.len() - 1)] as usize] = 10.0;
        Ok(logits)
    }
}

fn greedy() -> Sampler {
    Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    })
}

fn conv(script: &[u32], max: usize) -> Conversation {
    Conversation::new(
        mock(script),
        Arc::new(MockTok),
        ChatOptions {
            max_reply_tokens: max,
            ..ChatOptions::default()
        },
    )
}

fn b(c: char) -> u32 {
    c as u32
}

/// Runs one turn; returns (shown answer bytes, the turn's reply text, stop reason).
fn say(c: &mut Conversation, msg: &str) -> (String, String, StopReason) {
    let mut shown = Vec::new();
    let no = AtomicBool::new(false);
    let t = c
        .turn(msg.as_bytes(), &mut greedy(), &no, &mut |p| {
            if let Piece::Answer(x) = p {
                shown.extend_from_slice(x);
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    let (text, stop) = (t.reply.text.clone(), t.stats.stop.unwrap());
    assert_eq!(
        t.reply.answer, shown,
        "the view's answer is what was streamed"
    );
    (
        String::from_utf8(shown).unwrap(),
        String::from_utf8(text).unwrap(),
        stop,
    )
}

/// The tokens of reading `parts`, each tokenized on its own.
fn tokens_of(parts: &[&[u8]]) -> Vec<u32> {
    parts
        .iter()
        .flat_map(|p| MockTok.encode(p).unwrap())
        .collect()
}

fn prompt_tokens(msg: &str) -> Vec<u32> {
    tokens_of(&[&user_part(msg.as_bytes()), b"Assistant:"])
}

#[test]
fn a_reply_that_ends_on_a_whole_token() {
    let mut c = conv(&[b('H'), b('i'), NN, b('x')], 100);
    let (shown, text, stop) = say(&mut c, "hello");
    assert_eq!((shown.as_str(), text.as_str()), ("Hi", "Hi"));
    assert_eq!(stop, StopReason::EndOfTurn);
    let mut want = prompt_tokens("hello");
    want.extend([b('H'), b('i'), NN]);
    assert_eq!(history(c.state()), want);
    assert_eq!(c.context_tokens(), want.len() as u64);
}

#[test]
fn a_reply_whose_end_is_split_across_tokens() {
    // "a" "a\n" "\nb": the text is "aa\n\nb"; the model reads "a", "a\n", then only "\n".
    let mut c = conv(&[b('a'), A_NL, NL_B], 100);
    let (shown, text, stop) = say(&mut c, "hi");
    assert_eq!((shown.as_str(), text.as_str()), ("aa", "aa"));
    assert_eq!(stop, StopReason::EndOfTurn);
    let mut want = prompt_tokens("hi");
    want.extend([b('a'), A_NL, b('\n')]);
    assert_eq!(history(c.state()), want);
}

#[test]
fn a_token_that_carries_text_past_the_end_is_not_read() {
    // "x" "c\n\nd": the reply is "xc"; the model reads the tokenization of "c\n\n".
    let mut c = conv(&[b('x'), C_NN_D], 100);
    let (shown, text, _) = say(&mut c, "hi");
    assert_eq!((shown.as_str(), text.as_str()), ("xc", "xc"));
    let mut want = prompt_tokens("hi");
    want.extend([b('x'), b('c'), NN]);
    assert_eq!(history(c.state()), want);
    let t = c.last_turn().unwrap();
    assert_eq!(t.stats.generated_tokens, 2);
    assert_eq!(t.stats.reply_tokens, 3);
}

#[test]
fn the_token_limit_ends_the_turn_with_our_own_end() {
    let mut c = conv(&[b('a'), b('b'), b('c')], 2);
    let (shown, _, stop) = say(&mut c, "hi");
    assert_eq!((shown.as_str(), stop), ("ab", StopReason::MaxTokens));
    let mut want = prompt_tokens("hi");
    want.extend([b('a'), b('b'), NN]);
    assert_eq!(history(c.state()), want);

    // A reply cut right after a newline: that newline starts the end, never shown.
    let mut c = conv(&[b('a'), b('\n'), b('q')], 2);
    let (shown, text, _) = say(&mut c, "hi");
    assert_eq!((shown.as_str(), text.as_str()), ("a", "a"));
    let mut want = prompt_tokens("hi");
    want.extend([b('a'), b('\n'), b('\n')]);
    assert_eq!(history(c.state()), want);
}

#[test]
fn end_of_text_is_never_sampled() {
    let mut c = conv(&[EOT, NN], 3);
    let (shown, _, _) = say(&mut c, "hi");
    assert_eq!(shown, "z", "the second best token instead of end-of-text");
}

#[test]
fn cancelling_mid_reply_keeps_the_conversation_consistent() {
    let mut c = conv(&[b('a'), b('b'), b('c'), b('d')], 100);
    let cancel = AtomicBool::new(false);
    let t = c
        .turn(b"hi", &mut greedy(), &cancel, &mut |_| {
            cancel.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(t.reply.text, b"a");
    assert_eq!(t.stats.stop, Some(StopReason::Cancelled));
    let mut want = prompt_tokens("hi");
    want.extend([b('a'), NN]);
    assert_eq!(history(c.state()), want);

    // Cancelled before the reply: nothing happened.
    let before = c.state().clone();
    let r = c.turn(b"again", &mut greedy(), &cancel, &mut |_| Ok(()));
    assert!(r.unwrap().is_none());
    assert_eq!(c.state(), &before);
    assert_eq!(c.turn_count(), 1);
}

#[test]
fn an_error_from_the_caller_leaves_the_state_as_before() {
    let mut c = conv(&[b('a'), b('b'), NN], 100);
    say(&mut c, "one");
    let before = (c.state().clone(), c.context_tokens());
    let no = AtomicBool::new(false);
    let r = c.turn(b"two", &mut greedy(), &no, &mut |_| bail!("reader gone"));
    assert!(r.is_err());
    assert_eq!((c.state().clone(), c.context_tokens()), before);
    assert_eq!(c.turn_count(), 1);
}

#[test]
fn system_prompt_counts_in_the_first_turn_and_context_adds_up() {
    let mut c = conv(&[b('o'), b('k'), NN], 100);
    let no = AtomicBool::new(false);
    assert!(c.set_system(Some(b"Be\n\nbrief. "), &no).unwrap());
    assert_eq!(c.system(), Some(&b"Be\nbrief."[..]));
    let sys = tokens_of(&[b"System: Be\nbrief.\n\n"]);
    say(&mut c, "one");
    let s1 = c.last_turn().unwrap().stats.clone();
    assert_eq!(s1.prompt_tokens, sys.len() + prompt_tokens("one").len());
    assert_eq!(s1.turn, 1);
    say(&mut c, "two two");
    let s2 = c.last_turn().unwrap().stats.clone();
    assert_eq!(s2.turn, 2);
    assert_eq!(s2.prompt_tokens, prompt_tokens("two two").len());
    assert_eq!(
        s2.context_tokens,
        s1.context_tokens + (s2.prompt_tokens + s2.reply_tokens) as u64
    );
    // The whole history is the conversation text, part by part.
    let mut want = sys.clone();
    for t in c.turns() {
        want.extend(tokens_of(&[
            &user_part(&t.message),
            b"Assistant:",
            &t.reply.text,
            b"\n\n",
        ]));
        assert_eq!(
            t.text(),
            [user_part(&t.message), b"Assistant:ok\n\n".to_vec()].concat()
        );
    }
    assert_eq!(history(c.state()), want);
    // Reset goes back to the system prompt.
    assert!(c.reset(&no).unwrap());
    assert_eq!(history(c.state()), sys);
    assert_eq!(c.turn_count(), 0);
}

#[test]
fn undo_and_retry_restore_the_state_of_before_the_turn() {
    let mut c = conv(&[b('a'), b('b'), NN], 100);
    say(&mut c, "one");
    let after_one = (c.state().clone(), c.context_tokens());
    say(&mut c, "two");
    let after_two = (c.state().clone(), c.context_tokens());
    let undone = c.undo().unwrap();
    assert_eq!(undone.message, b"two");
    assert_eq!((c.state().clone(), c.context_tokens()), after_one);
    say(&mut c, "two");
    assert_eq!((c.state().clone(), c.context_tokens()), after_two);
    let no = AtomicBool::new(false);
    let t = c
        .retry(&mut greedy(), &no, &mut |_| Ok(()))
        .unwrap()
        .unwrap();
    assert_eq!(t.message, b"two");
    assert_eq!(t.stats.turn, 2);
    assert_eq!((c.state().clone(), c.context_tokens()), after_two);
    // A retry cancelled before its reply keeps the previous turn.
    let yes = AtomicBool::new(true);
    assert!(c
        .retry(&mut greedy(), &yes, &mut |_| Ok(()))
        .unwrap()
        .is_none());
    assert_eq!((c.state().clone(), c.context_tokens()), after_two);
    assert_eq!(c.turn_count(), 2);
    c.undo();
    c.undo();
    assert!(c.undo().is_none());
    assert_eq!(c.context_tokens(), 0);
}

#[test]
fn the_undo_depth_bounds_the_snapshots() {
    let mut c = conv(&[b('a'), NN], 100);
    c.options_mut().undo_depth = 2;
    for m in ["1", "2", "3"] {
        say(&mut c, m);
    }
    assert_eq!(c.turns().count(), 2);
    assert_eq!(c.turn_count(), 3);
    assert!(c.undo().is_some() && c.undo().is_some());
    assert!(c.undo().is_none());
    assert_eq!(c.turn_count(), 1);
}

#[test]
fn at_undo_depth_zero_turns_run_and_none_can_be_undone() {
    let mut c = conv(&[b('a'), NN], 100);
    c.options_mut().undo_depth = 0;
    for m in ["1", "2"] {
        let (shown, _, stop) = say(&mut c, m);
        assert_eq!((shown.as_str(), stop), ("a", StopReason::EndOfTurn));
    }
    assert_eq!(c.turn_count(), 2);
    assert_eq!(
        c.last_turn().map(|t| t.message.clone()),
        Some(b"2".to_vec())
    );
    assert_eq!(c.turns().count(), 0);
    assert!(!c.can_undo() && c.undo().is_none());
    let no = AtomicBool::new(false);
    assert!(c
        .retry(&mut greedy(), &no, &mut |_| Ok(()))
        .unwrap()
        .is_none());
    assert_eq!(c.turn_count(), 2);
}

#[test]
fn saved_states_round_trip() {
    let mut c = conv(&[b('a'), NN], 100);
    assert!(c.saved_state().is_none(), "nothing read yet");
    say(&mut c, "one");
    let saved = c.saved_state().unwrap();
    assert_eq!(saved.tokens, c.context_tokens());
    let mut d = conv(&[b('a'), NN], 100);
    d.load(saved.clone());
    assert_eq!(d.state(), c.state());
    say(&mut c, "two");
    say(&mut d, "two");
    assert_eq!(d.state(), c.state());
    assert_eq!(d.context_tokens(), c.context_tokens());
    assert_eq!(
        d.last_turn().unwrap().stats.turn,
        1,
        "turns count from the load"
    );
    let no = AtomicBool::new(false);
    d.reset(&no).unwrap();
    assert_eq!(
        d.state(),
        &saved.state,
        "reset goes back to the loaded state"
    );
}

#[test]
fn think_on_streams_the_reasoning_apart() {
    let reply: Vec<u32> = ">\nhm</think>\n Yes"
        .bytes()
        .map(u32::from)
        .chain([NN])
        .collect();
    // The mock counts from `Assistant:`; the 7 tokens of " <think" come first.
    let script: Vec<u32> = [b('?'); 7].iter().copied().chain(reply.clone()).collect();
    let mut c = conv(&script, 100);
    c.options_mut().think = Think::On;
    let mut pieces: Vec<(bool, Vec<u8>)> = Vec::new();
    let no = AtomicBool::new(false);
    let t = c
        .turn(b"q", &mut greedy(), &no, &mut |p| {
            match p {
                Piece::Thinking(x) => pieces.push((true, x.to_vec())),
                Piece::Answer(x) => pieces.push((false, x.to_vec())),
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(t.reply.text, b">\nhm</think>\n Yes");
    assert_eq!(t.reply.thinking, b">\nhm</think>");
    assert_eq!(t.reply.answer, b"Yes");
    let think: Vec<u8> = pieces
        .iter()
        .filter(|p| p.0)
        .flat_map(|p| p.1.clone())
        .collect();
    assert_eq!(think, b">\nhm</think>");
    let mut want = tokens_of(&[&user_part(b"q"), b"Assistant: <think"]);
    want.extend(reply);
    assert_eq!(history(c.state()), want);
}

#[test]
fn a_cancelled_system_prompt_leaves_a_fresh_conversation() {
    let mut c = conv(&[b('a'), NN], 100);
    say(&mut c, "one");
    let yes = AtomicBool::new(true);
    assert!(!c.set_system(Some(b"Be brief."), &yes).unwrap());
    assert_eq!(c.system(), None);
    assert_eq!(c.context_tokens(), 0);
    assert!(history(c.state()).is_empty());
    say(&mut c, "two");
    assert_eq!(
        c.last_turn().unwrap().stats.prompt_tokens,
        prompt_tokens("two").len(),
        "nothing of the cancelled prompt is counted"
    );
}
