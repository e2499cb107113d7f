//! The OpenAI routes: a request becomes a [`Plan`] (validated, tokens decided up front), then
//! a [`Running`] request walks it in time: queue, time to first token, one token per
//! `tpot`. Non-streamed responses wait for the end; streamed ones write SSE chunks as tokens
//! come. A request dropped half-way (client gone) counts as aborted.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use crate::engine::FinishReason;
use crate::flavor::Flavor;
use crate::generate::{count_tokens, embedding, Completion};
use crate::openai::{
    self, ApiError, AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, Delta, EmbeddingData,
    EmbeddingList, EmbeddingUsage, EmbeddingValue, Endpoint, GenerationRequest, TextChoice, TextCompletion, Usage,
};
use crate::server::{api_error, App};

/// `max_tokens` when the request gives none.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// What the request log line says about a generation (a response extension).
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// Model as answered.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens (planned, for streams).
    pub completion_tokens: u64,
    /// Streamed.
    pub stream: bool,
    /// Prefix-cache outcome, once known (not for streams: logged when headers go out).
    pub prefix_cache_hit: Option<bool>,
    /// Time to first token in milliseconds, once known.
    pub ttft_ms: Option<u64>,
}

/// A validated generation with its answer decided.
#[derive(Debug)]
pub struct Plan {
    /// Route.
    pub endpoint: Endpoint,
    /// `chatcmpl-...` / `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model echoed in responses.
    pub model: String,
    /// Prompt texts.
    pub prompts: Vec<String>,
    /// Prompt tokens, all prompts.
    pub prompt_tokens: u64,
    /// The answer of each choice (prompt-major: prompt i, choice j is `i * n + j`).
    pub tokens: Vec<Completion>,
    /// Token positions (tokens per choice).
    pub positions: usize,
    /// `length` when `max_tokens` was given, `stop` otherwise.
    pub finish: FinishReason,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

impl Plan {
    /// Checks the model and the context length and decides the answer.
    pub fn new(app: &App, request: GenerationRequest) -> Result<Plan, ApiError> {
        let model = app.resolve_model(request.model.as_deref())?;
        let counts: Vec<u64> = request.prompts.iter().map(|p| count_tokens(p)).collect();
        let longest = counts.iter().copied().max().unwrap_or(0);
        let context = app.config.context_tokens;
        let (max_tokens, finish) = match request.max_tokens {
            Some(n) => (n, FinishReason::Length),
            None => (
                DEFAULT_MAX_TOKENS.min(context.saturating_sub(longest)),
                FinishReason::Stop,
            ),
        };
        if longest + max_tokens > context || longest >= context {
            let place = match request.endpoint {
                Endpoint::Chat => "messages",
                Endpoint::Completions => "prompt",
            };
            return Err(ApiError::bad_request(
                None,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                     ({longest} in the {place}, {max_tokens} in the completion). Please reduce the length of the \
                     {place} or completion.",
                    longest + max_tokens
                ),
            ));
        }
        let positions = usize::try_from(max_tokens).unwrap_or(usize::MAX);
        let tokens = request
            .prompts
            .iter()
            .flat_map(|prompt| (0..request.n).map(move |choice| Completion::new(prompt, choice)))
            .collect();
        let prefix = match request.endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Ok(Plan {
            endpoint: request.endpoint,
            id: app.next_id(prefix),
            created: crate::server::unix_now(),
            model,
            prompt_tokens: counts.iter().sum(),
            prompts: request.prompts,
            tokens,
            positions,
            finish,
            stream: request.stream,
            include_usage: request.include_usage,
        })
    }

    /// Token counts of the whole answer.
    pub fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens, (self.tokens.len() * self.positions) as u64)
    }

    /// The full text of choice `index`.
    pub fn text(&self, index: usize) -> String {
        self.tokens
            .get(index)
            .map(|c| c.text(self.positions))
            .unwrap_or_default()
    }

    fn info(&self, running: Option<&Running>) -> RequestInfo {
        RequestInfo {
            model: self.model.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.usage().completion_tokens,
            stream: self.stream,
            prefix_cache_hit: running.and_then(|r| r.prefix_hit),
            ttft_ms: running.and_then(|r| r.first_token_after).map(|d| d.as_millis() as u64),
        }
    }

    /// The non-streamed response body.
    fn full_response(&self) -> Response {
        let usage = self.usage();
        let finish_reason = self.finish.as_str();
        match self.endpoint {
            Endpoint::Chat => Json(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: (0..self.tokens.len())
                    .map(|index| ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant",
                            content: self.text(index),
                        },
                        logprobs: None,
                        finish_reason,
                    })
                    .collect(),
                usage,
            })
            .into_response(),
            Endpoint::Completions => Json(TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: (0..self.tokens.len())
                    .map(|index| TextChoice {
                        index,
                        text: self.text(index),
                        logprobs: None,
                        finish_reason: Some(finish_reason),
                    })
                    .collect(),
                usage: Some(Some(usage)),
            })
            .into_response(),
        }
    }

    /// `usage` on stream chunks: absent without `include_usage` (or for a flavour that does
    /// not stream it), `null` on all chunks but the last.
    fn chunk_usage(&self, streams_usage: bool) -> Option<Option<Usage>> {
        (self.include_usage && streams_usage).then_some(None)
    }

    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Option<Usage>>) -> String {
        sse(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    fn text_chunk(&self, choices: Vec<TextChoice>, usage: Option<Option<Usage>>) -> String {
        sse(&TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    /// The SSE chunks of token `position` (chat: the role chunk first at position 0).
    fn token_chunks(&self, position: usize, streams_usage: bool) -> String {
        let usage = self.chunk_usage(streams_usage);
        let mut out = String::new();
        for (index, completion) in self.tokens.iter().enumerate() {
            let text = completion.delta(position);
            match self.endpoint {
                Endpoint::Chat => {
                    if position == 0 {
                        let delta = Delta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                        };
                        out.push_str(&self.chat_chunk(vec![chunk_choice(index, delta, None)], usage));
                    }
                    let delta = Delta {
                        role: None,
                        content: Some(text),
                    };
                    out.push_str(&self.chat_chunk(vec![chunk_choice(index, delta, None)], usage));
                }
                Endpoint::Completions => {
                    let choice = TextChoice {
                        index,
                        text,
                        logprobs: None,
                        finish_reason: None,
                    };
                    out.push_str(&self.text_chunk(vec![choice], usage));
                }
            }
        }
        out
    }

    /// The closing chunks: one with `finish_reason` per choice, the usage chunk (empty
    /// `choices`) when asked for, then `data: [DONE]`.
    fn final_chunks(&self, streams_usage: bool) -> String {
        let usage = self.chunk_usage(streams_usage);
        let reason = Some(self.finish.as_str());
        let mut out = String::new();
        for index in 0..self.tokens.len() {
            match self.endpoint {
                Endpoint::Chat => {
                    out.push_str(&self.chat_chunk(vec![chunk_choice(index, Delta::default(), reason)], usage))
                }
                Endpoint::Completions => {
                    let choice = TextChoice {
                        index,
                        text: String::new(),
                        logprobs: None,
                        finish_reason: reason,
                    };
                    out.push_str(&self.text_chunk(vec![choice], usage));
                }
            }
        }
        if usage.is_some() {
            let last = Some(Some(self.usage()));
            out.push_str(&match self.endpoint {
                Endpoint::Chat => self.chat_chunk(Vec::new(), last),
                Endpoint::Completions => self.text_chunk(Vec::new(), last),
            });
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

fn chunk_choice(index: usize, delta: Delta, finish_reason: Option<&'static str>) -> ChatChunkChoice {
    ChatChunkChoice {
        index,
        delta,
        logprobs: None,
        finish_reason,
    }
}

/// One server-sent event.
fn sse(value: &impl Serialize) -> String {
    format!("data: {}\n\n", serde_json::to_string(value).unwrap_or_default())
}

/// A request waiting for a slot: counted as waiting until admitted or dropped.
struct QueueSlot {
    app: Arc<App>,
    admitted: bool,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if !self.admitted {
            self.app.engine().leave_queue();
        }
    }
}

/// A request holding a generation slot, walking its token positions in time.
pub struct Running {
    app: Arc<App>,
    _permit: OwnedSemaphorePermit,
    arrived: Instant,
    deadline: Instant,
    last: Instant,
    ttft: Duration,
    /// Time from arrival to the first token, once generated.
    pub first_token_after: Option<Duration>,
    /// Whether the prefix cache had every prompt (`None`: cache off).
    pub prefix_hit: Option<bool>,
    position: usize,
    positions: usize,
    choices: u64,
    in_flight: u64,
    finished: bool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("position", &self.position)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Queues for a slot (and, for Ollama, for the model to load), then starts.
    pub async fn admit(app: Arc<App>, plan: &Plan) -> Result<Running, ApiError> {
        let arrived = Instant::now();
        app.engine().enqueue();
        let mut slot = QueueSlot {
            app: app.clone(),
            admitted: false,
        };
        if app.flavor() == Flavor::Ollama {
            app.wait_ready().await;
            app.mark_loaded(&plan.model);
        }
        let permit = app
            .admission
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::loading())?;
        slot.admitted = true;
        let started = Instant::now();
        let (ttft, prefix_hit) = {
            let mut engine = app.engine();
            engine.start(plan.prompt_tokens, started - arrived);
            let mut ttft = Duration::ZERO;
            let mut all_hit = None;
            for prompt in &plan.prompts {
                let outcome = engine.lookup_prefix(prompt, count_tokens(prompt));
                ttft = ttft.max(engine.time_to_first_token(outcome));
                if let Some(outcome) = outcome {
                    all_hit = Some(all_hit.unwrap_or(true) && outcome.hit);
                }
            }
            (ttft, all_hit)
        };
        Ok(Running {
            app,
            _permit: permit,
            arrived,
            deadline: started,
            last: started,
            ttft,
            first_token_after: None,
            prefix_hit,
            position: 0,
            positions: plan.positions,
            choices: plan.tokens.len() as u64,
            in_flight: plan.prompt_tokens,
            finished: false,
        })
    }

    /// Waits for the next token position and returns it; `None` once all are out.
    pub async fn next(&mut self) -> Option<usize> {
        if self.position >= self.positions {
            return None;
        }
        let first = self.position == 0;
        let step = if first { self.ttft } else { self.app.config.engine.tpot };
        self.deadline += step;
        // A zero delay answers at once (a benchmark baseline); the timer wheel's 1 ms
        // granularity would add a millisecond of jitter to every token otherwise.
        if !step.is_zero() {
            tokio::time::sleep_until(self.deadline).await;
        }
        let now = Instant::now();
        let since = now.saturating_duration_since(self.last);
        self.last = now;
        {
            let mut engine = self.app.engine();
            engine.tokens(self.choices, first, since);
            if first {
                engine.first_token(now - self.arrived);
            }
        }
        if first {
            self.first_token_after = Some(now - self.arrived);
        }
        self.in_flight += self.choices;
        self.position += 1;
        Some(self.position - 1)
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.arrived.elapsed()
    }

    /// The request completed: counters, and `--crash-after`.
    pub fn finish(mut self, reason: FinishReason) {
        self.finished = true;
        self.record(reason);
        self.app.completed_one();
    }

    fn record(&self, reason: FinishReason) {
        let generated = self.position as u64 * self.choices;
        let ttft = self.first_token_after.unwrap_or_default();
        self.app
            .engine()
            .finish(reason, self.in_flight, generated, self.arrived.elapsed(), ttft);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            self.record(FinishReason::Abort);
        }
    }
}

/// `POST /v1/chat/completions`
pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    generate(app, Endpoint::Chat, &body).await
}

/// `POST /v1/completions`
pub async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    generate(app, Endpoint::Completions, &body).await
}

async fn generate(app: Arc<App>, endpoint: Endpoint, body: &[u8]) -> Response {
    let plan = match openai::parse_generation(endpoint, body).and_then(|request| Plan::new(&app, request)) {
        Ok(plan) => plan,
        Err(e) => return api_error(e),
    };
    if plan.stream {
        return stream(app, plan);
    }
    let mut running = match Running::admit(app, &plan).await {
        Ok(running) => running,
        Err(e) => return api_error(e),
    };
    while running.next().await.is_some() {}
    let info = plan.info(Some(&running));
    running.finish(plan.finish);
    let mut response = plan.full_response();
    response.extensions_mut().insert(info);
    response
}

/// Answers at once with `text/event-stream` and writes the chunks from a task as tokens are
/// generated. The body reads from an in-memory pipe; when the client goes away the next
/// write fails and the request is aborted.
fn stream(app: Arc<App>, plan: Plan) -> Response {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let info = plan.info(None);
    let streams_usage = app.flavor().streams_usage();
    tokio::spawn(async move {
        let mut running = match Running::admit(app, &plan).await {
            Ok(running) => running,
            Err(e) => {
                let body = format!("data: {}\n\ndata: [DONE]\n\n", e.body());
                let _ = writer.write_all(body.as_bytes()).await;
                return;
            }
        };
        while let Some(position) = running.next().await {
            if writer
                .write_all(plan.token_chunks(position, streams_usage).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
        if writer
            .write_all(plan.final_chunks(streams_usage).as_bytes())
            .await
            .is_err()
        {
            return;
        }
        running.finish(plan.finish);
        let _ = writer.shutdown().await;
    });
    let mut response = Body::from_stream(ReaderStream::new(reader)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.extensions_mut().insert(info);
    response
}

/// `POST /v1/embeddings`
pub async fn embeddings(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let request = match openai::parse_embedding(&body) {
        Ok(request) => request,
        Err(e) => return api_error(e),
    };
    let model = match app.resolve_model(request.model.as_deref()) {
        Ok(model) => model,
        Err(e) => return api_error(e),
    };
    let counts: Vec<u64> = request.inputs.iter().map(|i| count_tokens(i)).collect();
    let context = app.config.context_tokens;
    if let Some(longest) = counts.iter().copied().max().filter(|n| *n > context) {
        return api_error(ApiError::bad_request(
            Some("input"),
            format!("This model's maximum context length is {context} tokens. However, you requested {longest} tokens in the input."),
        ));
    }
    if app.flavor() == Flavor::Ollama {
        app.wait_ready().await;
        app.mark_loaded(&model);
    }
    let dimensions = request.dimensions.unwrap_or(app.config.embedding_dim);
    let data = request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(input, dimensions);
            let embedding = if request.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingValue::Base64(crate::generate::base64(&bytes))
            } else {
                EmbeddingValue::Float(vector)
            };
            EmbeddingData {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let prompt_tokens = counts.iter().sum();
    app.engine().embedded(prompt_tokens);
    app.completed_one();
    let mut response = Json(EmbeddingList {
        object: "list",
        data,
        model: model.clone(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response();
    response.extensions_mut().insert(RequestInfo {
        model,
        prompt_tokens,
        completion_tokens: 0,
        stream: false,
        prefix_cache_hit: None,
        ttft_ms: None,
    });
    response
}
