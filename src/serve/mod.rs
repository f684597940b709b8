//! The serving engine behind `rwkv-cli serve`: one worker thread owns the model and runs
//! every request with continuous batching and a prefix-state cache. No HTTP here: the command
//! line wraps it in a server.
//!
//! Requests ([`Job`]) arrive through [`Engine::submit`]. Each step of the worker's loop:
//! 1. takes new jobs into free slots (at most [`EngineOptions::max_batch`] at once); a job
//!    starts from the state of the longest cached prefix of its tokens ([`PrefixCache`]);
//! 2. reads one chunk of every prompt still being read (sequence path), so a long prompt
//!    is read over several steps while the others keep decoding;
//! 3. feeds the last sampled token of every decoding sequence through one
//!    [`Model::step_batch`] call: B sequences, one read of the weights.
//!
//! After a prompt is read, its state is cached under its tokens, and again when a request
//! ends (the prompt and the reply tokens fed so far). A [`Job`]'s `sink` receives its text as
//! it is sampled; when the sink returns `false` (the client has gone) the job is dropped at
//! that step and its slot freed.
//!
//! Sampling matches `rwkv-cli generate` (completions: the end-of-text token stops, stop strings
//! are not part of the text) and `rwkv-cli chat` (chat: the end-of-text token is never
//! sampled, `\n\n` ends the reply): with the same tokens and sampler settings, the same text.

pub mod cache;

pub use cache::PrefixCache;

use crate::chat::format::END_OF_TURN;
use crate::models::{Model, State, DEFAULT_CHUNK};
use crate::sampler::{Sampler, SamplerConfig};
use crate::stop::StopFilter;
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Bytes of the prefix-state cache (0: no cache).
    pub cache_bytes: usize,
    /// Jobs waiting for a slot at most (beyond those the free slots take at the next step);
    /// [`Engine::submit`] refuses more.
    pub max_queue: usize,
    /// Prompt tokens read per sequence and step.
    pub prefill_chunk: usize,
    /// The state every request starts from before its first token (a state-tuned initial
    /// state); `None`: the model's fresh state. One per server, so cached prefixes stay valid.
    pub initial_state: Option<crate::models::State>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 8,
            cache_bytes: 512 << 20,
            max_queue: 64,
            prefill_chunk: DEFAULT_CHUNK,
            initial_state: None,
        }
    }
}

/// Why a job's text ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop string, the end-of-text token (completions) or `\n\n` (chat).
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl Finish {
    /// The OpenAI name.
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a finished job used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub completion_tokens: usize,
    /// Prompt tokens whose state came from the cache.
    pub cached_tokens: usize,
}

/// A sampled token's log-probabilities (jobs that ask for them: [`Job::logprobs`]), under
/// the model's distribution before any sampling setting, as `generate --logprobs` prints them
/// ([`crate::sampler::top_logprobs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub bytes: Vec<u8>,
    /// Natural log.
    pub logprob: f64,
    /// The [`Job::logprobs`] most likely tokens, best first: `(id, bytes, logprob)`.
    pub top: Vec<(u32, Vec<u8>, f64)>,
}

/// What a job's sink receives, in order: `Text` and `Token` events, then `Done` or `Failed`.
#[derive(Clone, Debug)]
pub enum Event {
    /// The next bytes of the text (raw: may end inside a UTF-8 character). Empty before each
    /// chunk of the prompt: a probe whether anyone still listens.
    Text(Vec<u8>),
    /// A sampled token's log-probabilities, sent before its text (whose bytes a stop string
    /// may hold back or cut): one per generated token, when the job asks for them.
    Token(TokenLogprobs),
    /// [`Job::echo`]: the prompt's tokens, each with its log-probabilities after the ones
    /// before it (the first, which nothing predicts, has a NaN `logprob` and no `top`); sent
    /// to every choice once the prompt is read, before anything else of theirs.
    Prompt(Vec<TokenLogprobs>),
    Done(Outcome),
    Failed(String),
}

/// Receives a job's events, each with the index of its choice (`0..n`); returns `false` when
/// nobody listens any more (the choice is then dropped).
pub type Sink = Arc<dyn Fn(usize, Event) -> bool + Send + Sync>;

/// The text a follow-up request holds for a chat reply, given the reply's bytes
/// ([`Job::follow_up`]).
pub type ResentFn = fn(&[u8]) -> Vec<u8>;

/// One request.
#[derive(Clone)]
pub struct Job {
    /// The prompt's tokens (not empty).
    pub tokens: Vec<u32>,
    pub sampler: SamplerConfig,
    /// Tokens to sample at most.
    pub max_tokens: usize,
    /// Stop strings (not empty ones): the text ends before the first.
    pub stops: Vec<Vec<u8>>,
    /// Chat reply: the end-of-text token is never sampled and `\n\n` ends the text.
    pub chat: bool,
    /// Send a [`Event::Token`] for every generated token, with this many top alternatives.
    pub logprobs: Option<usize>,
    /// Independent samples of the prompt (at least 1, at most [`EngineOptions::max_batch`]):
    /// the prompt is read once, then each choice `i` decodes from a copy of its state with the
    /// sampler seeded `seed + i`, in a slot of its own (the job waits until it has `n`).
    pub n: usize,
    /// Chat: the text by which a follow-up request sends this reply back (given the reply's
    /// bytes, ending with `\n\n`). The state after the reply is then cached under the prompt
    /// and that text's tokens too, so that the follow-up finds it where they differ from the
    /// tokens the model wrote (leading spaces the reply did not show, a split of a word into
    /// tokens other than the tokenizer's) and goes on from the state `chat` would have.
    pub follow_up: Option<ResentFn>,
    /// Completions' `echo`: score the prompt ([`Event::Prompt`], with [`Job::logprobs`]
    /// alternatives per token). Such a job reads its whole prompt (a cached state has no
    /// log-probabilities for the tokens before it).
    pub echo: bool,
    pub sink: Sink,
}

/// Why [`Engine::submit`] refused a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// [`EngineOptions::max_queue`] jobs already wait.
    QueueFull,
    /// The engine has stopped (shut down, or its worker failed).
    Stopped,
}

/// Counters for a health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Jobs waiting for a slot.
    pub queued: usize,
    /// Jobs in slots (reading their prompt or decoding).
    pub active: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
}

/// A running engine: a worker thread that owns the model.
pub struct Engine {
    tx: Option<mpsc::Sender<Job>>,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
    max_queue: usize,
    max_batch: usize,
    worker: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker.
    pub fn start(model: Arc<dyn Model>, tok: Arc<dyn Tokenizer>, opts: EngineOptions) -> Engine {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (max_queue, max_batch) = (opts.max_queue, opts.max_batch.max(1));
        let worker = {
            let (queued, stats) = (queued.clone(), stats.clone());
            std::thread::Builder::new()
                .name("rwkv-serve".into())
                .spawn(move || {
                    Worker {
                        model,
                        tok,
                        cache: PrefixCache::new(opts.cache_bytes),
                        opts,
                        queued,
                        stats,
                    }
                    .run(rx)
                })
                .expect("cannot start the model's worker thread")
        };
        Engine {
            tx: Some(tx),
            queued,
            stats,
            max_queue,
            max_batch,
            worker: Some(worker),
        }
    }

    /// Queues a job. Its events go to its sink from the worker thread.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        // Jobs that will find a free slot at the next step do not count as waiting.
        let free = self.max_batch.saturating_sub(self.stats().active);
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_queue + free {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        tx.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        s.queued = self.queued.load(Ordering::SeqCst);
        s
    }

    /// Stops taking jobs, lets the worker finish those it has, and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A job's choice in a slot (while the prompt is read, the slot of all its choices).
struct Seq {
    job: Job,
    /// The choice this sequence samples (`0..job.n`).
    choice: usize,
    state: State,
    /// Tokens the state has read: the prompt's first `read`, then the fed reply tokens.
    read: usize,
    /// The prompt and the reply tokens fed so far (the cache key of the state).
    fed: Vec<u32>,
    cached_tokens: usize,
    sampler: Sampler,
    filter: StopFilter,
    /// All sampled bytes (chat: to see whether `\n\n` ends a token exactly).
    raw: Vec<u8>,
    generated: usize,
    /// The sampled token to feed at the next decode step.
    next: Option<u32>,
    /// The job ends once `next` is fed (chat: the token that ends with `\n\n`, so that the
    /// cached state ends at a turn boundary).
    finish_after_feed: Option<Finish>,
    done: bool,
    /// [`Job::echo`]: the prompt's scores so far.
    echo: Option<Echo>,
}

/// The prompt's log-probabilities as its chunks are read ([`Job::echo`]).
#[derive(Default)]
struct Echo {
    scored: Vec<TokenLogprobs>,
    /// The logits after the last chunk's last token: they score the next chunk's first.
    last: Option<Vec<f32>>,
}

struct Worker {
    model: Arc<dyn Model>,
    tok: Arc<dyn Tokenizer>,
    opts: EngineOptions,
    cache: PrefixCache,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Seq {
    /// Slots held: all its choices' while the prompt is read, then one.
    fn slots(&self) -> usize {
        if self.read < self.job.tokens.len() {
            self.job.n.max(1)
        } else {
            1
        }
    }
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut active: Vec<Seq> = Vec::new();
        let mut open = true;
        loop {
            if active.is_empty() && waiting.is_empty() {
                if !open {
                    break;
                }
                match rx.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            // A job reading its prompt holds the slots of all its choices.
            let mut used: usize = active.iter().map(Seq::slots).sum();
            while let Some(job) = waiting.front() {
                let n = job.n.max(1);
                if used > 0 && used + n > self.opts.max_batch.max(1) {
                    break;
                }
                let job = waiting.pop_front().expect("front");
                self.queued.fetch_sub(1, Ordering::SeqCst);
                used += n;
                let mut forks = Vec::new();
                active.push(self.admit(job, &mut forks));
                active.extend(forks);
            }
            self.publish(active.len());
            self.prefill_step(&mut active);
            self.decode_step(&mut active);
            active.retain(|s| !s.done);
            self.publish(active.len());
        }
        self.publish(0);
    }

    fn publish(&self, active: usize) {
        if let Ok(mut s) = self.stats.lock() {
            s.active = active;
            s.cache_entries = self.cache.len();
            s.cache_bytes = self.cache.used_bytes();
        }
    }

    /// A job in a slot, from the longest cached prefix of its tokens (a job whose whole prompt
    /// is cached forks its other choices into `forks` at once).
    fn admit(&mut self, job: Job, forks: &mut Vec<Seq>) -> Seq {
        let hit = if job.echo {
            None
        } else {
            self.cache.lookup(&job.tokens)
        };
        let mut seq = Seq {
            sampler: Sampler::new(job.sampler.clone()),
            filter: stop_filter(&job),
            state: match &self.opts.initial_state {
                Some(s) => s.clone(),
                None => self.model.new_state(),
            },
            read: 0,
            fed: job.tokens.clone(),
            cached_tokens: 0,
            raw: Vec::new(),
            generated: 0,
            next: None,
            finish_after_feed: None,
            done: false,
            echo: None,
            choice: 0,
            job,
        };
        if let Some(hit) = hit {
            seq.state = hit.state;
            seq.read = hit.len;
            seq.cached_tokens = hit.len;
            if hit.len == seq.job.tokens.len() {
                self.prompt_read(&mut seq, hit.logits, forks);
            }
        }
        seq
    }

    /// The prompt has been read (`logits` after it): its other choices fork from its state,
    /// and every choice samples its first token.
    fn prompt_read(&mut self, seq: &mut Seq, mut logits: Vec<f32>, forks: &mut Vec<Seq>) {
        for choice in 1..seq.job.n.max(1) {
            let mut cfg = seq.job.sampler.clone();
            cfg.seed = cfg.seed.wrapping_add(choice as u64);
            let mut fork = Seq {
                job: seq.job.clone(),
                choice,
                state: seq.state.clone(),
                read: seq.read,
                fed: seq.fed.clone(),
                cached_tokens: seq.cached_tokens,
                sampler: Sampler::new(cfg),
                filter: stop_filter(&seq.job),
                raw: Vec::new(),
                generated: 0,
                next: None,
                finish_after_feed: None,
                done: false,
                echo: None,
            };
            let mut l = logits.clone();
            self.after_logits(&mut fork, &mut l);
            forks.push(fork);
        }
        self.after_logits(seq, &mut logits);
    }

    /// One chunk of every prompt still being read.
    fn prefill_step(&mut self, active: &mut Vec<Seq>) {
        let chunk = self.opts.prefill_chunk.max(1);
        let mut forks = Vec::new();
        for seq in active.iter_mut().filter(|s| !s.done) {
            let n = seq.job.tokens.len();
            if seq.read >= n {
                continue;
            }
            // Nobody listens any more (a client gone while its long prompt is read).
            if !(seq.job.sink)(seq.choice, Event::Text(Vec::new())) {
                seq.done = true;
                continue;
            }
            let end = (seq.read + chunk).min(n);
            let all = seq.job.echo;
            let mut logits =
                match self
                    .model
                    .forward_seq(&seq.job.tokens[seq.read..end], &mut seq.state, all)
                {
                    Ok(l) => l,
                    Err(e) => {
                        fail(seq, &e);
                        continue;
                    }
                };
            if all {
                logits = self.score_prompt(seq, end, logits);
            }
            seq.read = end;
            if end == n && seq.job.echo {
                let scored = seq.echo.take().unwrap_or_default().scored;
                for choice in 0..seq.job.n.max(1) {
                    if !(seq.job.sink)(choice, Event::Prompt(scored.clone())) {
                        seq.done = true;
                    }
                }
                if seq.done {
                    continue;
                }
            }
            if end == n {
                self.cache.insert(&seq.job.tokens, &seq.state, &logits);
                self.prompt_read(seq, logits, &mut forks);
            }
        }
        active.extend(forks);
    }

    /// `token`'s log-probabilities under `logits`, with the `top` most likely tokens.
    fn token_logprobs(&self, logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
        let (logprob, best) = crate::sampler::top_logprobs(logits, token, top);
        TokenLogprobs {
            id: token,
            bytes: self.tok.token_bytes(token),
            logprob,
            top: best
                .into_iter()
                .map(|(id, lp)| (id, self.tok.token_bytes(id), lp))
                .collect(),
        }
    }

    /// [`Job::echo`]: scores the prompt's tokens `seq.read..end` from `logits` (after each of
    /// them) and the logits kept from the chunk before; returns the logits after the last.
    fn score_prompt(&self, seq: &mut Seq, end: usize, logits: Vec<f32>) -> Vec<f32> {
        let (from, tokens) = (seq.read, &seq.job.tokens);
        let vocab = logits.len() / (end - from);
        let top = seq.job.logprobs.unwrap_or(0);
        let lp = |logits: &[f32], token: u32| self.token_logprobs(logits, token, top);
        let e = seq.echo.get_or_insert_with(Echo::default);
        match e.last.take() {
            Some(before) => e.scored.push(lp(&before, tokens[from])),
            None => e.scored.push(TokenLogprobs {
                id: tokens[from],
                bytes: self.tok.token_bytes(tokens[from]),
                logprob: f64::NAN,
                top: Vec::new(),
            }),
        }
        let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
        for (row, &next) in rows.iter().zip(&tokens[from + 1..end]) {
            e.scored.push(lp(row, next));
        }
        let last = rows[rows.len() - 1].to_vec();
        e.last = Some(last.clone());
        last
    }

    /// Feeds every decoding sequence's sampled token at once, then samples the next.
    fn decode_step(&mut self, active: &mut [Seq]) {
        let mut batch: Vec<&mut Seq> = active
            .iter_mut()
            .filter(|s| !s.done && s.next.is_some())
            .collect();
        if batch.is_empty() {
            return;
        }
        let tokens: Vec<u32> = batch.iter().map(|s| s.next.expect("filtered")).collect();
        let result = {
            let mut states: Vec<&mut State> = batch.iter_mut().map(|s| &mut s.state).collect();
            self.model.step_batch(&tokens, &mut states)
        };
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                for seq in batch {
                    fail(seq, &e);
                }
                return;
            }
        };
        let vocab = logits.len() / tokens.len();
        for (i, seq) in batch.into_iter().enumerate() {
            let t = seq.next.take().expect("filtered");
            seq.fed.push(t);
            // Each sequence's row of the batch's logits, in place (no copy per step).
            let row = &mut logits[i * vocab..(i + 1) * vocab];
            if let Some(finish) = seq.finish_after_feed {
                self.finish(seq, finish, row);
            } else {
                self.after_logits(seq, row);
            }
        }
    }

    /// Samples the next token from `logits` and sends its text; decides whether the job goes
    /// on (then `next` is set).
    fn after_logits(&mut self, seq: &mut Seq, logits: &mut [f32]) {
        if seq.generated >= seq.job.max_tokens {
            return self.finish(seq, Finish::Length, logits);
        }
        let eot = self.tok.eot_token();
        let masked = match eot.filter(|&e| seq.job.chat && (e as usize) < logits.len()) {
            Some(e) => Some((
                e as usize,
                std::mem::replace(&mut logits[e as usize], f32::NEG_INFINITY),
            )),
            None => None,
        };
        let token = seq.sampler.sample(logits);
        if let Some((e, v)) = masked {
            logits[e] = v;
        }
        if !seq.job.chat && Some(token) == eot {
            return self.finish(seq, Finish::Stop, logits);
        }
        seq.sampler.accept(token);
        seq.generated += 1;
        let bytes = self.tok.token_bytes(token);
        if let Some(n) = seq.job.logprobs {
            let info = self.token_logprobs(logits, token, n);
            if !(seq.job.sink)(seq.choice, Event::Token(info)) {
                seq.done = true; // the client has gone
                return;
            }
        }
        seq.raw.extend_from_slice(&bytes);
        let (text, stopped) = seq.filter.push(&bytes);
        if !text.is_empty() && !(seq.job.sink)(seq.choice, Event::Text(text)) {
            seq.done = true; // the client has gone
            return;
        }
        if stopped {
            // A chat reply whose `\n\n` ends with this token: feed it, so that the cached
            // state ends at the turn boundary a follow-up request starts from.
            let at_turn_end = seq.job.chat
                && crate::chat::format::find(&seq.raw, END_OF_TURN)
                    == Some(seq.raw.len() - END_OF_TURN.len());
            if at_turn_end && self.opts.cache_bytes > 0 {
                seq.next = Some(token);
                seq.finish_after_feed = Some(Finish::Stop);
                return;
            }
            return self.finish(seq, Finish::Stop, logits);
        }
        if seq.generated >= seq.job.max_tokens {
            return self.finish(seq, Finish::Length, logits);
        }
        seq.next = Some(token);
    }

    /// Ends the job: caches the state after the prompt and the reply tokens read (when any
    /// were; `logits` are the next-token logits after them) and sends the rest of the text.
    fn finish(&mut self, seq: &mut Seq, finish: Finish, logits: &[f32]) {
        seq.done = true;
        if seq.fed.len() > seq.job.tokens.len() {
            self.cache.insert(&seq.fed, &seq.state, logits);
            // A chat reply that ended its turn (its `\n\n` fed): also under the tokens of
            // the text a follow-up sends back for it.
            if let (Some(resent), Finish::Stop) = (seq.job.follow_up, finish) {
                if seq.raw.ends_with(END_OF_TURN) {
                    if let Ok(reply) = self.tok.encode(&resent(&seq.raw)) {
                        let mut key = seq.job.tokens.clone();
                        key.extend(reply);
                        if key != seq.fed {
                            self.cache.insert(&key, &seq.state, logits);
                        }
                    }
                }
            }
        }
        let rest = seq.filter.take_pending();
        if !rest.is_empty() && !(seq.job.sink)(seq.choice, Event::Text(rest)) {
            return;
        }
        let outcome = Outcome {
            finish,
            prompt_tokens: seq.job.tokens.len(),
            completion_tokens: seq.generated,
            cached_tokens: seq.cached_tokens,
        };
        (seq.job.sink)(seq.choice, Event::Done(outcome));
    }
}

/// The job's stop strings (and a chat reply's end of turn).
fn stop_filter(job: &Job) -> StopFilter {
    let mut stops = job.stops.clone();
    if job.chat {
        stops.push(END_OF_TURN.to_vec());
    }
    StopFilter::new(stops)
}

fn fail(seq: &mut Seq, e: &anyhow::Error) {
    seq.done = true;
    (seq.job.sink)(seq.choice, Event::Failed(format!("{e:#}")));
}
