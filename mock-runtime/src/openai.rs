//! The OpenAI wire format: request parsing with precise 400s, and the response, stream chunk
//! and error bodies. Pure (serde only): the server decides timing and status.

use serde::Serialize;
use serde_json::{Map, Value};

/// Most choices (prompts × `n`) one request may ask for.
pub const MAX_CHOICES: usize = 128;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`...).
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<&'static str>,
    /// Machine-readable code (`model_not_found`...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for a malformed or invalid request field.
    pub fn bad_request(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// 404 for a model this server does not serve.
    pub fn unknown_model(model: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }
    }

    /// 401 for a missing or wrong API key.
    pub fn unauthorized() -> Self {
        ApiError {
            status: 401,
            message: "Incorrect API key provided.".to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 404 for a route the flavour's runtime does not have.
    pub fn no_route(path: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("Route {path} not found"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 503 while the model loads.
    pub fn loading() -> Self {
        ApiError {
            status: 503,
            message: "Loading model".to_string(),
            kind: "unavailable_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body, fields in OpenAI's order.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        }
    }
}

/// `{"error": {...}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// OpenAI's error object.
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    /// Human-readable message.
    pub message: &'a str,
    /// Error type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Field at fault, or null.
    pub param: Option<&'static str>,
    /// Code, or null.
    pub code: Option<&'static str>,
}

impl std::fmt::Display for ErrorBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).unwrap_or_default())
    }
}

/// Which generation route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
}

/// A validated chat or completions request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    /// Route.
    pub endpoint: Endpoint,
    /// The `model` field, if given.
    pub model: Option<String>,
    /// Prompt texts: one for chat (the messages' contents joined by newlines), one per
    /// prompt for completions (token-id prompts become their ids joined by spaces).
    pub prompts: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// `max_tokens` (or chat's `max_completion_tokens`), if given.
    pub max_tokens: Option<u64>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingRequest {
    /// The `model` field, if given.
    pub model: Option<String>,
    /// Input texts.
    pub inputs: Vec<String>,
    /// `dimensions`, if given.
    pub dimensions: Option<usize>,
    /// `encoding_format: "base64"`.
    pub base64: bool,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(None, "The request body must be a JSON object.")),
        Err(e) => Err(ApiError::bad_request(None, format!("Invalid JSON body: {e}"))),
    }
}

/// A field that is absent or `null` is `None`.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn model(map: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match field(map, "model") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(Some("model"), "'model' must be a string.")),
    }
}

fn bool_field(map: &Map<String, Value>, name: &'static str) -> Result<bool, ApiError> {
    match field(map, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(
            Some(name),
            format!("'{name}' must be a boolean."),
        )),
    }
}

fn integer(map: &Map<String, Value>, name: &'static str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
    match field(map, name) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(
                Some(name),
                format!("'{name}' must be an integer from {min} to {max}, got {value}."),
            )),
        },
    }
}

/// The text of a message's `content`: a string, or the `text` of its text parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => Some(s.clone()),
                Value::Object(p) => match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Some(t.clone()),
                    (Some("text"), _) => None,
                    // Images, audio...: no text, accepted.
                    (Some(_), _) => Some(String::new()),
                    (None, _) => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .map(|texts| texts.join(" ")),
        _ => None,
    }
}

fn chat_prompt(map: &Map<String, Value>) -> Result<String, ApiError> {
    let messages = match field(map, "messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err(ApiError::bad_request(Some("messages"), "'messages' must not be empty.")),
        Some(_) => return Err(ApiError::bad_request(Some("messages"), "'messages' must be an array.")),
        None => {
            return Err(ApiError::bad_request(
                Some("messages"),
                "'messages' is a required property.",
            ))
        }
    };
    let mut texts = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::bad_request(
                Some("messages"),
                format!("'messages[{i}]' must be an object."),
            ));
        };
        if !matches!(message.get("role"), Some(Value::String(_))) {
            return Err(ApiError::bad_request(
                Some("messages"),
                format!("'messages[{i}].role' must be a string."),
            ));
        }
        let text = content_text(message.get("content").unwrap_or(&Value::Null)).ok_or_else(|| {
            ApiError::bad_request(
                Some("messages"),
                format!("'messages[{i}].content' must be a string or an array of content parts."),
            )
        })?;
        texts.push(text);
    }
    Ok(texts.join("\n"))
}

fn token_ids(values: &[Value]) -> Option<String> {
    values
        .iter()
        .map(|v| v.as_u64().map(|id| id.to_string()))
        .collect::<Option<Vec<_>>>()
        .map(|ids| ids.join(" "))
}

/// A completions `prompt` or embeddings `input`: a string, strings, token ids, or lists of
/// token ids.
fn text_inputs(map: &Map<String, Value>, name: &'static str) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            Some(name),
            format!("'{name}' must be a string, an array of strings, or an array of token ids."),
        )
    };
    match field(map, name) {
        None => Err(ApiError::bad_request(
            Some(name),
            format!("'{name}' is a required property."),
        )),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::bad_request(
            Some(name),
            format!("'{name}' must not be empty."),
        )),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid),
            Value::Number(_) => token_ids(items).map(|ids| vec![ids]).ok_or_else(invalid),
            Value::Array(_) => items
                .iter()
                .map(|v| v.as_array().and_then(|ids| token_ids(ids)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

/// Parses a chat or completions body.
pub fn parse_generation(endpoint: Endpoint, body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let map = object(body)?;
    let model = model(&map)?;
    let prompts = match endpoint {
        Endpoint::Chat => vec![chat_prompt(&map)?],
        Endpoint::Completions => text_inputs(&map, "prompt")?,
    };
    let n = integer(&map, "n", 1, MAX_CHOICES as u64)?.unwrap_or(1) as usize;
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("At most {MAX_CHOICES} choices (prompts × n) per request."),
        ));
    }
    let mut max_tokens = integer(&map, "max_tokens", 1, 1_000_000)?;
    if endpoint == Endpoint::Chat {
        if let Some(n) = integer(&map, "max_completion_tokens", 1, 1_000_000)? {
            max_tokens = Some(n);
        }
    }
    let stream = bool_field(&map, "stream")?;
    let include_usage = match field(&map, "stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::bad_request(
                Some("stream_options"),
                "Stream options can only be defined when `stream=True`.",
            ))
        }
        Some(Value::Object(options)) => bool_field(options, "include_usage")?,
        Some(_) => {
            return Err(ApiError::bad_request(
                Some("stream_options"),
                "'stream_options' must be an object.",
            ))
        }
    };
    Ok(GenerationRequest {
        endpoint,
        model,
        prompts,
        n,
        max_tokens,
        stream,
        include_usage,
    })
}

/// Parses an embeddings body.
pub fn parse_embedding(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let map = object(body)?;
    let model = model(&map)?;
    let inputs = text_inputs(&map, "input")?;
    let dimensions = integer(&map, "dimensions", 1, 8192)?.map(|d| d as usize);
    let base64 = match field(&map, "encoding_format").map(|v| v.as_str()) {
        None | Some(Some("float")) => false,
        Some(Some("base64")) => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                Some("encoding_format"),
                "'encoding_format' must be \"float\" or \"base64\".",
            ))
        }
    };
    Ok(EmbeddingRequest {
        model,
        inputs,
        dimensions,
        base64,
    })
}

/// Token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (all prompts, counted once each).
    pub prompt_tokens: u64,
    /// Generated tokens over all choices.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage from prompt and completion counts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Embeddings usage (no completion tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EmbeddingUsage {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    pub total_tokens: u64,
}

/// `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model as requested (or the served name).
    pub model: String,
    /// One per choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// A chat choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// Index.
    pub index: usize,
    /// The assistant message.
    pub message: AssistantMessage,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// `{"role": "assistant", "content": ...}`
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub struct ChatChunk {
    /// Same id for every chunk of a response.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model.
    pub model: String,
    /// Empty in the final usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A streamed chat choice.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    /// Index.
    pub index: usize,
    /// What is new.
    pub delta: Delta,
    /// Always null.
    pub logprobs: Option<()>,
    /// Null until the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A chat delta: the role on the first chunk, content after; `{}` on the last.
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    /// `assistant` on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `text_completion` (also the object of its stream chunks).
#[derive(Debug, Serialize)]
pub struct TextCompletion {
    /// `cmpl-...`
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model.
    pub model: String,
    /// One per choice.
    pub choices: Vec<TextChoice>,
    /// Present on non-streamed responses; on streams as for [`ChatChunk::usage`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A completions choice.
#[derive(Debug, Serialize)]
pub struct TextChoice {
    /// Index.
    pub index: usize,
    /// Text (new text, on stream chunks).
    pub text: String,
    /// Always null.
    pub logprobs: Option<()>,
    /// Null on stream chunks until the last.
    pub finish_reason: Option<&'static str>,
}

/// Embeddings response.
#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: &'static str,
    /// One per input.
    pub data: Vec<EmbeddingData>,
    /// Model.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}

/// One embedding.
#[derive(Debug, Serialize)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: &'static str,
    /// Input index.
    pub index: usize,
    /// The vector (or its base64).
    pub embedding: EmbeddingValue,
}

/// `float` or `base64` encoding.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    /// Components.
    Float(Vec<f32>),
    /// Base64 of the little-endian `f32` bytes.
    Base64(String),
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// Models.
    pub data: Vec<ModelCard>,
}

/// One model.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// Served name.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds (process start).
    pub created: u64,
    /// The runtime's owner string (`vllm`, `sglang`, `llamacpp`...).
    pub owned_by: &'static str,
    /// vLLM: the model path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// vLLM: context length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
    /// llama.cpp: model metadata, `null` while loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<GenerationRequest, String> {
        parse_generation(Endpoint::Chat, body.as_bytes()).map_err(|e| format!("{} {}", e.status, e.message))
    }

    fn completions(body: &str) -> Result<GenerationRequest, String> {
        parse_generation(Endpoint::Completions, body.as_bytes()).map_err(|e| format!("{} {}", e.status, e.message))
    }

    #[test]
    fn chat_requests() {
        let r = chat(r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi there"},{"type":"image_url","image_url":{}}]}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":3}"#).unwrap();
        assert_eq!(r.prompts, vec!["be brief\nhi there ".to_string()]);
        assert_eq!(
            (r.model.as_deref(), r.max_tokens, r.stream, r.include_usage, r.n),
            (Some("m"), Some(3), true, true, 1)
        );
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":null,"stream":null}"#).unwrap();
        assert_eq!((r.model, r.max_tokens, r.stream), (None, None, false));
    }

    #[test]
    fn chat_errors() {
        let cases = [
            ("not json", "400 Invalid JSON body"),
            ("[1]", "400 The request body must be a JSON object."),
            (r#"{"model":"m"}"#, "400 'messages' is a required property."),
            (r#"{"messages":[]}"#, "400 'messages' must not be empty."),
            (r#"{"messages":"hi"}"#, "400 'messages' must be an array."),
            (
                r#"{"messages":[{"content":"x"}]}"#,
                "400 'messages[0].role' must be a string.",
            ),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                "400 'messages[0].content' must be",
            ),
            (
                r#"{"model":1,"messages":[{"role":"user","content":"x"}]}"#,
                "400 'model' must be a string.",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "400 'max_tokens' must be an integer from 1",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"5"}"#,
                "400 'max_tokens' must be",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "400 'stream' must be a boolean.",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "400 Stream options can only be defined",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#,
                "400 'n' must be an integer",
            ),
        ];
        for (body, expected) in cases {
            let got = chat(body).unwrap_err();
            assert!(got.starts_with(expected), "{body}: {got}");
        }
    }

    #[test]
    fn completion_prompts() {
        assert_eq!(completions(r#"{"prompt":"a b"}"#).unwrap().prompts, vec!["a b"]);
        assert_eq!(
            completions(r#"{"prompt":["a","b"],"n":2}"#).unwrap().prompts,
            vec!["a", "b"]
        );
        assert_eq!(completions(r#"{"prompt":[1,2,3]}"#).unwrap().prompts, vec!["1 2 3"]);
        assert_eq!(
            completions(r#"{"prompt":[[1],[2,3]]}"#).unwrap().prompts,
            vec!["1", "2 3"]
        );
        for (body, expected) in [
            (r#"{}"#, "400 'prompt' is a required property."),
            (r#"{"prompt":[]}"#, "400 'prompt' must not be empty."),
            (r#"{"prompt":["a",1]}"#, "400 'prompt' must be a string"),
            (r#"{"prompt":{"a":1}}"#, "400 'prompt' must be a string"),
            (r#"{"prompt":["a","b"],"n":100}"#, "400 At most 128 choices"),
        ] {
            let got = completions(body).unwrap_err();
            assert!(got.starts_with(expected), "{body}: {got}");
        }
    }

    #[test]
    fn embedding_requests() {
        let r =
            parse_embedding(br#"{"model":"e","input":["a","b c"],"dimensions":8,"encoding_format":"base64"}"#).unwrap();
        assert_eq!((r.inputs.len(), r.dimensions, r.base64), (2, Some(8), true));
        let e = parse_embedding(br#"{"input":"a","encoding_format":"hex"}"#).unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("encoding_format")));
        assert_eq!(parse_embedding(br#"{"model":"e"}"#).unwrap_err().param, Some("input"));
    }

    #[test]
    fn stream_chunks_carry_usage_null_until_the_last() {
        let chunk = ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: Delta {
                    role: None,
                    content: Some("hi".into()),
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: Some(None),
        };
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}],"usage":null}"#
        );
        let last = ChatChunk {
            choices: vec![],
            usage: Some(Some(Usage::new(2, 3))),
            ..chunk
        };
        assert_eq!(
            serde_json::to_string(&last).unwrap(),
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#
        );
    }

    #[test]
    fn errors_have_the_openai_shape() {
        assert_eq!(
            ApiError::unknown_model("x").body().to_string(),
            r#"{"error":{"message":"The model `x` does not exist.","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#
        );
    }
}
