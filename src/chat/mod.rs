//! Conversations in the G1 chat format, on a state that never grows.
//!
//! A [`Conversation`] owns a recurrent [`State`] and feeds it the conversation text part by
//! part ([`format`](mod@format) says what the text is): each part is tokenized on its own and read through
//! the model's sequence path, the reply is sampled one token at a time through the recurrent
//! path, and after every turn the state equals the state of reading the conversation so far.
//! A turn therefore costs only its own tokens, whatever the length of the history.
//!
//! The end of a turn is the model writing `\n\n`. A sampled token is fed to the model only
//! after its bytes are seen: when the reply plus this token contains `\n\n`, the reply ends
//! at the first `\n\n` and the model is fed the bytes up to and including it (the sampled token
//! itself when it ends there, else the tokenization of those bytes), so the state never reads
//! text beyond the end of the turn. When the reply is cut (the token limit, or the caller's
//! cancellation flag), the `\n\n` is fed by us. A reply never contains `\n\n`.
//!
//! Nothing here knows about terminals: the reply streams through a callback as [`Piece`]s of
//! raw bytes (a token may end inside a UTF-8 character), and a shared flag cancels a turn.
//! The command line (`rwkv-cli chat`) and a server both drive this type.

pub mod format;

pub use format::{clean_message, system_part, user_part, Piece, ReplyView, Think, END_OF_TURN};

use crate::models::{Model, State};
use crate::sampler::Sampler;
use crate::state_file::SavedState;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a conversation runs.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// How the assistant's part begins (see [`Think`]).
    pub think: Think,
    /// Tokens sampled per reply at most; then the turn is ended by us.
    pub max_reply_tokens: usize,
    /// Tokens per chunk of the sequence path.
    pub chunk: usize,
    /// Turns that [`Conversation::undo`] and [`Conversation::retry`] can go back (one state
    /// snapshot each); older snapshots are dropped.
    pub undo_depth: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            think: Think::Off,
            max_reply_tokens: 1000,
            chunk: crate::models::DEFAULT_CHUNK,
            undo_depth: 64,
        }
    }
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model wrote `\n\n`.
    EndOfTurn,
    /// [`ChatOptions::max_reply_tokens`] were sampled; we fed the `\n\n`.
    MaxTokens,
    /// The cancellation flag was set during the reply; we fed the `\n\n`.
    Cancelled,
}

/// What one turn read and wrote, and how long it took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnStats {
    /// The turn's number in the conversation (1 for the first; after an undo the next turn
    /// takes the number again).
    pub turn: usize,
    /// Tokens read this turn before the reply: the user's part and the assistant's prefix, plus
    /// anything read since the previous turn (a system prompt).
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    /// Tokens sampled for the reply.
    pub generated_tokens: usize,
    /// Tokens of the reply in the context: the sampled ones up to the end of the turn, and the
    /// `\n\n` (whether the model wrote it or we did). The context grows by
    /// `prompt_tokens + reply_tokens` per turn.
    pub reply_tokens: usize,
    pub reply_secs: f64,
    /// From the start of the turn to the first reply token sampled.
    pub first_token_secs: f64,
    /// Tokens the state has read in all (with those of a loaded state).
    pub context_tokens: u64,
    pub stop: Option<StopReason>,
}

impl TurnStats {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_sec(self.prompt_tokens, self.prompt_secs)
    }
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_sec(self.reply_tokens, self.reply_secs)
    }
}

fn per_sec(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A reply: the text as it is in the conversation, and as it is shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The bytes after the assistant's prefix, up to (not including) the `\n\n` that ended it.
    pub text: Vec<u8>,
    /// The reasoning shown ([`Think::On`]), see [`Piece::Thinking`].
    pub thinking: Vec<u8>,
    /// The answer shown, see [`Piece::Answer`].
    pub answer: Vec<u8>,
}

/// A state the conversation can return to.
#[derive(Clone, Debug)]
struct Snapshot {
    state: State,
    /// Next-token logits after what the state has read (none before the first token).
    logits: Option<Vec<f32>>,
    context_tokens: u64,
}

/// One finished turn.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The message as it went in (cleaned, see [`clean_message`]).
    pub message: Vec<u8>,
    pub reply: Reply,
    pub stats: TurnStats,
    /// The think mode the reply was generated with.
    pub think: Think,
    /// The conversation just before this turn's user part (`None` past the undo depth: the
    /// last turn is kept for its text and stats even at depth 0, without a snapshot).
    before: Option<Snapshot>,
}

impl Turn {
    /// The turn's text in the conversation: `User: M\n\nAssistant:<reply>\n\n`.
    pub fn text(&self) -> Vec<u8> {
        let mut t = user_part(&self.message);
        t.extend_from_slice(self.think.assistant_prefix());
        t.extend_from_slice(&self.reply.text);
        t.extend_from_slice(END_OF_TURN);
        t
    }
}

/// A conversation with one model: its state, its turns (with a snapshot each for undo), and
/// token counts.
pub struct Conversation {
    model: Arc<dyn Model>,
    tok: Arc<dyn Tokenizer>,
    opts: ChatOptions,
    /// Where a reset goes back to: a fresh state, or a loaded one.
    base: Snapshot,
    system: Option<Vec<u8>>,
    now: Snapshot,
    turns: VecDeque<Turn>,
    /// Turns in the conversation (some may be older than the undo depth).
    turn_count: usize,
    /// Tokens read (and seconds spent) since the last turn's stats: a system prompt.
    unreported: (usize, f64),
}

impl Conversation {
    /// A new conversation on a fresh state.
    pub fn new(model: Arc<dyn Model>, tok: Arc<dyn Tokenizer>, opts: ChatOptions) -> Self {
        let base = Snapshot {
            state: model.new_state(),
            logits: None,
            context_tokens: 0,
        };
        Conversation {
            model,
            tok,
            opts,
            now: base.clone(),
            base,
            system: None,
            turns: VecDeque::new(),
            turn_count: 0,
            unreported: (0, 0.0),
        }
    }

    /// Starts from `state` (a state-tuned initial state) instead of a fresh one: it becomes the
    /// start that [`reset`](Self::reset) goes back to. Call it before the first turn.
    pub fn start_from(&mut self, state: State) {
        self.base = Snapshot {
            state,
            logits: None,
            context_tokens: 0,
        };
        self.now = self.base.clone();
    }

    pub fn options(&self) -> &ChatOptions {
        &self.opts
    }

    /// Changes the options; they apply from the next turn.
    pub fn options_mut(&mut self) -> &mut ChatOptions {
        &mut self.opts
    }

    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    pub fn tokenizer(&self) -> &dyn Tokenizer {
        self.tok.as_ref()
    }

    /// The system prompt (cleaned), if any.
    pub fn system(&self) -> Option<&[u8]> {
        self.system.as_deref()
    }

    /// The turns that can still be undone, oldest first.
    pub fn turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter().filter(|t| t.before.is_some())
    }

    /// Whether there is a turn to undo (or retry).
    pub fn can_undo(&self) -> bool {
        self.turns.back().is_some_and(|t| t.before.is_some())
    }

    /// The last turn, also when the undo depth keeps none to undo.
    pub fn last_turn(&self) -> Option<&Turn> {
        self.turns.back()
    }

    /// Turns in the conversation (those beyond the undo depth included).
    pub fn turn_count(&self) -> usize {
        self.turn_count
    }

    /// Tokens the state has read, those of a loaded state included.
    pub fn context_tokens(&self) -> u64 {
        self.now.context_tokens
    }

    pub fn state(&self) -> &State {
        &self.now.state
    }

    /// Next-token logits after everything read (none before the first token).
    pub fn logits(&self) -> Option<&[f32]> {
        self.now.logits.as_deref()
    }

    /// The state and logits for a state file ([`crate::state_file`]); `None` when nothing has
    /// been read yet (a state file holds the logits after its last token).
    pub fn saved_state(&self) -> Option<SavedState> {
        Some(SavedState {
            state: self.now.state.clone(),
            logits: self.now.logits.clone()?,
            tokens: self.now.context_tokens,
        })
    }

    /// Continues from a saved state (a state file of `generate` or `chat`), which must end at
    /// a turn boundary: it becomes the start that [`reset`](Self::reset) goes back to, the
    /// turns and the system prompt are forgotten (the state holds whatever it read).
    pub fn load(&mut self, saved: SavedState) {
        self.base = Snapshot {
            state: saved.state,
            logits: Some(saved.logits),
            context_tokens: saved.tokens,
        };
        self.now = self.base.clone();
        self.system = None;
        self.turns.clear();
        self.turn_count = 0;
        self.unreported = (0, 0.0);
    }

    /// Goes back to the start (fresh or loaded) and reads the system prompt again, if any.
    /// Returns `false` when `cancel` stopped the system prompt (the conversation is then at
    /// the start, without it).
    pub fn reset(&mut self, cancel: &AtomicBool) -> Result<bool> {
        self.now = self.base.clone();
        self.turns.clear();
        self.turn_count = 0;
        self.unreported = (0, 0.0);
        match self.system.clone() {
            Some(s) => {
                let ok = self.read(&[&system_part(&s)], cancel)?.is_some();
                if !ok {
                    self.now = self.base.clone();
                    self.unreported = (0, 0.0);
                    self.system = None;
                }
                Ok(ok)
            }
            None => Ok(true),
        }
    }

    /// Sets the system prompt (`None` or empty text: none) and starts over from the start
    /// with it, like [`reset`](Self::reset).
    pub fn set_system(&mut self, system: Option<&[u8]>, cancel: &AtomicBool) -> Result<bool> {
        self.system = system.map(clean_message).filter(|s| !s.is_empty());
        self.reset(cancel)
    }

    /// Feeds `parts` (each tokenized on its own) through the sequence path, chunk by chunk.
    /// Returns the tokens read, or `None` when `cancel` was set before it finished: the state
    /// has then read part of them, and the caller puts back the one it had.
    fn read(&mut self, parts: &[&[u8]], cancel: &AtomicBool) -> Result<Option<usize>> {
        let t0 = Instant::now();
        let mut n = 0;
        for part in parts {
            let tokens = self.tok.encode(part)?;
            for c in tokens.chunks(self.opts.chunk.max(1)) {
                if cancel.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                self.now.logits = Some(self.model.forward_seq(c, &mut self.now.state, false)?);
                self.now.context_tokens += c.len() as u64;
                n += c.len();
            }
        }
        self.unreported.0 += n;
        self.unreported.1 += t0.elapsed().as_secs_f64();
        Ok(Some(n))
    }

    /// One turn: reads `User: MESSAGE\n\n` and the assistant's prefix, then samples the reply,
    /// handing its pieces to `on_piece` as they come. Returns the finished turn, or `None`
    /// when `cancel` was set while the message was being read (nothing changed then). Once
    /// the reply has begun, `cancel` ends it early and the turn still counts.
    ///
    /// An error (from the model or from `on_piece`) leaves the conversation as it was before
    /// the turn. `message` must not be empty after [`clean_message`].
    pub fn turn(
        &mut self,
        message: &[u8],
        sampler: &mut Sampler,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<Option<&Turn>> {
        let message = clean_message(message);
        if message.is_empty() {
            bail!("empty message");
        }
        // The turn keeps it for /undo; a failed turn puts it back (one copy either way).
        let mut before = Some(self.now.clone());
        let unreported = self.unreported;
        match self.run_turn(message, &mut before, sampler, cancel, on_piece) {
            Ok(Some(turn)) => {
                self.turns.push_back(turn);
                // The last turn stays (for its stats), its snapshot only within the depth.
                while self.turns.len() > self.opts.undo_depth.max(1) {
                    self.turns.pop_front();
                }
                if self.opts.undo_depth == 0 {
                    self.turns.iter_mut().for_each(|t| t.before = None);
                }
                self.turn_count += 1;
                Ok(self.turns.back())
            }
            Ok(None) => {
                self.now = before.expect("a turn that did not finish leaves its snapshot");
                self.unreported = unreported;
                Ok(None)
            }
            Err(e) => {
                self.now = before.expect("a turn that did not finish leaves its snapshot");
                self.unreported = unreported;
                Err(e)
            }
        }
    }

    fn run_turn(
        &mut self,
        message: Vec<u8>,
        before: &mut Option<Snapshot>,
        sampler: &mut Sampler,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<Option<Turn>> {
        let t0 = Instant::now();
        let think = self.opts.think;
        if self
            .read(&[&user_part(&message), think.assistant_prefix()], cancel)?
            .is_none()
        {
            return Ok(None);
        }
        let (prompt_tokens, prompt_secs) = std::mem::take(&mut self.unreported);
        let context_before_reply = self.now.context_tokens;

        let t1 = Instant::now();
        let mut first_token_secs = 0.0;
        let eot = self.tok.eot_token();
        let mut view = ReplyView::new(think);
        // Like the official demo, penalties count this reply's tokens only.
        sampler.reset_penalties();
        let mut text: Vec<u8> = Vec::new();
        // `text[..shown]` went to the view; a trailing `\n` waits (it may begin `\n\n`).
        let mut shown = 0;
        let mut generated = 0;
        let stop = loop {
            if cancel.load(Ordering::SeqCst) {
                break StopReason::Cancelled;
            }
            if generated >= self.opts.max_reply_tokens {
                break StopReason::MaxTokens;
            }
            // The end-of-text token never ends a turn: `\n\n` does (as in the official demo).
            // (These logits are replaced by the next token's before anyone else sees them.)
            let logits = self.now.logits.as_mut().expect("the prefix was read");
            crate::models::check_logits(logits)?;
            if let Some(l) = eot.and_then(|e| logits.get_mut(e as usize)) {
                *l = f32::NEG_INFINITY;
            }
            let token = sampler.sample(logits);
            if generated == 0 {
                first_token_secs = t0.elapsed().as_secs_f64();
            }
            generated += 1;
            let bytes = self.tok.token_bytes(token);
            let old_len = text.len();
            text.extend_from_slice(&bytes);
            let from = old_len.saturating_sub(1);
            if let Some(at) = format::find(&text[from..], END_OF_TURN).map(|i| i + from) {
                // The turn ends at the first `\n\n`: the model reads up to it, no further.
                let end = at + END_OF_TURN.len();
                if end == text.len() {
                    self.now.logits = Some(self.model.step(token, &mut self.now.state)?);
                    self.now.context_tokens += 1;
                } else {
                    let rest = text[old_len..end].to_vec();
                    self.feed_tokens(&rest)?;
                }
                text.truncate(at);
                break StopReason::EndOfTurn;
            }
            sampler.accept(token);
            self.now.logits = Some(self.model.step(token, &mut self.now.state)?);
            self.now.context_tokens += 1;
            let ready = text.len() - usize::from(text.ends_with(b"\n"));
            if ready > shown {
                view.push(&text[shown..ready], on_piece)?;
                shown = ready;
            }
        };
        if stop != StopReason::EndOfTurn {
            // We end the turn: a trailing `\n` of the reply becomes the first of the `\n\n`.
            let end: &[u8] = if text.ends_with(b"\n") {
                text.pop();
                b"\n"
            } else {
                END_OF_TURN
            };
            self.feed_tokens(end)?;
        }
        // What the end of the turn released (the bytes of its last token before `\n\n`).
        if text.len() > shown {
            view.push(&text[shown..], on_piece)?;
        }
        let reply_secs = t1.elapsed().as_secs_f64();
        let stats = TurnStats {
            turn: self.turn_count + 1,
            prompt_tokens,
            prompt_secs,
            generated_tokens: generated,
            reply_tokens: (self.now.context_tokens - context_before_reply) as usize,
            reply_secs,
            first_token_secs,
            context_tokens: self.now.context_tokens,
            stop: Some(stop),
        };
        Ok(Some(Turn {
            message,
            reply: Reply {
                text,
                thinking: view.thinking,
                answer: view.answer,
            },
            stats,
            think,
            // Taken only here, once nothing can fail any more.
            before: Some(before.take().expect("taken once")),
        }))
    }

    /// Feeds the tokenization of `bytes` (not cancellable: it keeps the state at a turn
    /// boundary).
    fn feed_tokens(&mut self, bytes: &[u8]) -> Result<()> {
        let tokens = self.tok.encode(bytes)?;
        for c in tokens.chunks(self.opts.chunk.max(1)) {
            self.now.logits = Some(self.model.forward_seq(c, &mut self.now.state, false)?);
            self.now.context_tokens += c.len() as u64;
        }
        Ok(())
    }

    /// Takes back the last turn: the state is again that of before its message. `None` when
    /// there is no turn to undo (none yet, or older than the undo depth).
    pub fn undo(&mut self) -> Option<Turn> {
        if !self.can_undo() {
            return None;
        }
        let turn = self.turns.pop_back()?;
        self.now = turn.before.clone().expect("checked by can_undo");
        self.turn_count -= 1;
        self.unreported = (0, 0.0);
        Some(turn)
    }

    /// Samples the last reply anew: undoes the last turn and sends its message again.
    /// `Ok(None)` when there is no turn to retry, or when `cancel` stopped the message (the
    /// previous reply is then kept).
    pub fn retry(
        &mut self,
        sampler: &mut Sampler,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<Option<&Turn>> {
        let after = self.now.clone();
        let unreported = self.unreported;
        let Some(last) = self.undo() else {
            return Ok(None);
        };
        let think = std::mem::replace(&mut self.opts.think, last.think);
        let result = self
            .turn(&last.message, sampler, cancel, on_piece)
            .map(|t| t.is_some());
        self.opts.think = think;
        if let Ok(true) = result {
            return Ok(self.turns.back());
        }
        // Put the previous turn back, and the state after it.
        self.turns.push_back(last);
        self.turn_count += 1;
        self.now = after;
        self.unreported = unreported;
        result.map(|_| None)
    }
}

#[cfg(test)]
mod tests;
