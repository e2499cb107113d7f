//! Text to YAML documents to typed, validated manifests, collecting every error.
//!
//! Each document is read into an untyped YAML value first, so that its kind and name are
//! known for every error, and then decoded into its kind's types with the field path of
//! each failure. serde stops at the first failure; to report more than one shape error per
//! document, the offending entry (or the list holding an offending item) is removed and the
//! decode retried, until the document decodes or a required field is missing (a required
//! field removed that way is not reported again). The rules across fields run only on a
//! document that decoded cleanly, so they never report a consequence of an earlier error;
//! only `metadata`'s rules also run when just the `spec` failed.

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize};
use serde_norway::{Mapping, Value};

use super::{
    error::{ManifestError, Problem},
    types::{HardwareClass, HardwareClassSpec, ModelDeployment, ModelDeploymentSpec, ObjectMeta, Tenant, TenantSpec},
    validate, Kind, Manifest, API_VERSION,
};

/// The most documents one input may hold.
pub const MAX_DOCUMENTS: usize = 1000;

/// The most shape errors reported for one document before giving up on it.
const MAX_ERRORS_PER_DOCUMENT: usize = 50;

/// Parses one or many YAML documents (separated by `---`; JSON is YAML too) into validated
/// manifests.
///
/// Returns every manifest, in input order, or, when any document has a problem, every
/// problem found, ordered by document: nothing is half-applied. Empty documents (a trailing
/// `---`, only comments) are skipped; an input with no manifest is `Ok(vec![])`. `status` is
/// accepted and ignored. An object defined twice in one input is an error.
pub fn parse_documents(text: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    parse_numbered(text).map(|manifests| manifests.into_iter().map(|(_, manifest)| manifest).collect())
}

/// [`parse_documents`], with each manifest's document number (from 1), so that problems
/// found later (references between objects) can say where they are.
pub fn parse_numbered(text: &str) -> Result<Vec<(usize, Manifest)>, Vec<ManifestError>> {
    let mut manifests: Vec<(usize, Manifest)> = Vec::new();
    let mut errors = Vec::new();
    let mut last_yaml_error: Option<String> = None;
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let context = Context::unknown(number);
        if number > MAX_DOCUMENTS {
            errors.push(context.error("", Problem::TooManyDocuments { max: MAX_DOCUMENTS }));
            break;
        }
        match Value::deserialize(document) {
            Ok(value) => match parse_document(number, value) {
                Ok(Some(manifest)) => manifests.push((number, manifest)),
                Ok(None) => {}
                Err(mut document_errors) => errors.append(&mut document_errors),
            },
            Err(error) => {
                // A duplicate key spoils only its document. Any other error ends the stream:
                // the parser cannot resume (it yields the same error for ever, or noise).
                let message = error.to_string();
                if last_yaml_error.as_deref() == Some(message.as_str()) {
                    break;
                }
                let resumable = message.contains("duplicate entry with key");
                errors.push(context.error(
                    "",
                    Problem::Syntax {
                        message: message.clone(),
                    },
                ));
                if !resumable {
                    break;
                }
                last_yaml_error = Some(message);
            }
        }
    }
    errors.extend(duplicates(&manifests));
    if errors.is_empty() {
        Ok(manifests)
    } else {
        errors.sort_by_key(|e| e.document);
        Err(errors)
    }
}

/// What is known about a document, for its errors.
struct Context {
    document: usize,
    kind: Option<Kind>,
    name: Option<String>,
    namespace: Option<String>,
}

impl Context {
    fn unknown(document: usize) -> Self {
        Context {
            document,
            kind: None,
            name: None,
            namespace: None,
        }
    }

    fn error(&self, path: impl Into<String>, problem: Problem) -> ManifestError {
        ManifestError {
            document: self.document,
            kind: self.kind,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            path: path.into(),
            problem,
        }
    }
}

/// `metadata` and `spec` of any kind; `apiVersion`, `kind` and `status` are taken out
/// before decoding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<S> {
    metadata: ObjectMeta,
    spec: Option<S>,
}

/// One document: `Ok(None)` when it is empty.
fn parse_document(number: usize, mut value: Value) -> Result<Option<Manifest>, Vec<ManifestError>> {
    let mut context = Context::unknown(number);
    if let Err(error) = value.apply_merge() {
        let message = error.to_string();
        return Err(vec![context.error("", Problem::Syntax { message })]);
    }
    let mut mapping = match value {
        Value::Null => return Ok(None),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err(vec![context.error(
                "",
                Problem::NotAMapping {
                    found: describe(&other),
                },
            )])
        }
    };
    let metadata = mapping.get("metadata");
    let text_at = |key: &str| {
        metadata
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    context.name = text_at("name");
    context.namespace = text_at("namespace");

    let mut errors = Vec::new();
    match mapping.remove("apiVersion") {
        Some(Value::String(version)) if version == API_VERSION => {}
        Some(Value::String(found)) => errors.push(context.error("apiVersion", Problem::ApiVersion { found })),
        Some(other) => errors.push(context.error("apiVersion", not_a_string(&other))),
        None => errors.push(context.error("apiVersion", missing(format!("write apiVersion: {API_VERSION}")))),
    }
    let kind = match mapping.remove("kind") {
        Some(Value::String(found)) => match Kind::parse(&found) {
            Some(kind) => kind,
            None => {
                errors.push(context.error("kind", Problem::UnknownKind { found }));
                return Err(errors);
            }
        },
        Some(other) => {
            errors.push(context.error("kind", not_a_string(&other)));
            return Err(errors);
        }
        None => {
            let kinds = Kind::ALL.map(Kind::as_str).join(", ");
            errors.push(context.error("kind", missing(format!("one of {kinds}"))));
            return Err(errors);
        }
    };
    context.kind = Some(kind);
    // The store owns status: accepted so that `get -o yaml` output can be applied again.
    mapping.remove("status");

    let metadata = mapping.get("metadata").cloned();
    let manifest = decode_kind(kind, mapping, &context, &mut errors);
    let rule_errors = match &manifest {
        Some(manifest) => validate::manifest(manifest),
        // The rules on metadata still apply when only the spec failed to decode.
        None => metadata
            .and_then(|value| ObjectMeta::deserialize(value).ok())
            .map(|metadata| validate::metadata_only(kind, &metadata))
            .unwrap_or_default(),
    };
    for (path, problem) in rule_errors {
        errors.push(context.error(path, problem));
    }
    match manifest {
        Some(manifest) if errors.is_empty() => Ok(Some(manifest)),
        _ => Err(errors),
    }
}

/// Decodes `metadata` and `spec` into the kind's types (`None` after any error).
fn decode_kind(kind: Kind, mapping: Mapping, context: &Context, errors: &mut Vec<ManifestError>) -> Option<Manifest> {
    let value = Value::Mapping(mapping);
    match kind {
        Kind::Tenant => {
            let body: Body<TenantSpec> = decode(value, context, errors)?;
            Some(Manifest::Tenant(Tenant {
                metadata: body.metadata,
                spec: body.spec.unwrap_or_default(),
            }))
        }
        Kind::HardwareClass => {
            let body: Body<HardwareClassSpec> = decode(value, context, errors)?;
            let spec = required_spec_of(body.spec, context, errors)?;
            Some(Manifest::HardwareClass(HardwareClass {
                metadata: body.metadata,
                spec,
            }))
        }
        Kind::ModelDeployment => {
            let body: Body<ModelDeploymentSpec> = decode(value, context, errors)?;
            let spec = required_spec_of(body.spec, context, errors)?;
            Some(Manifest::ModelDeployment(ModelDeployment {
                metadata: body.metadata,
                spec,
            }))
        }
    }
}

/// `spec`, reported missing when absent (only a `Tenant` may leave it out).
fn required_spec_of<S>(spec: Option<S>, context: &Context, errors: &mut Vec<ManifestError>) -> Option<S> {
    if spec.is_none() {
        errors.push(context.error("spec", missing(String::new())));
    }
    spec
}

/// Decodes `value` as `T`, reporting every shape error it can reach (see the module doc).
fn decode<T: DeserializeOwned>(mut value: Value, context: &Context, errors: &mut Vec<ManifestError>) -> Option<T> {
    let mut reported: Vec<String> = Vec::new();
    for _ in 0..MAX_ERRORS_PER_DOCUMENT {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(decoded) => return reported.is_empty().then_some(decoded),
            Err(error) => error,
        };
        let segments: Vec<Segment> = error.path().iter().map(Segment::from).collect();
        let message = error.inner().to_string();
        if let Some(field) = quoted_after(&message, "missing field `") {
            let mut path = segments;
            path.push(Segment::Key(field));
            let path = render(&path);
            // A required field removed after an error of its own is not missing twice.
            if !reported.contains(&path) {
                errors.push(context.error(path, missing(String::new())));
            }
            return None;
        }
        let problem = match message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, "))
        {
            Some((_, expected)) => Problem::UnknownField {
                expected: expected.to_string(),
            },
            None => Problem::Type {
                message: friendlier(&message),
            },
        };
        let path = render(&segments);
        errors.push(context.error(path.clone(), problem));
        reported.push(path);
        // Remove the nearest mapping entry holding the error: the field itself, or the
        // whole list when the error is in one of its items (removing an item would shift
        // the paths of the next ones).
        let last_key = segments.iter().rposition(|s| matches!(s, Segment::Key(_)))?;
        let entry = &segments[..=last_key];
        if !remove(&mut value, entry) {
            return None;
        }
        reported.push(render(entry));
    }
    None
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// A mapping key (struct field or map entry).
    Key(String),
    /// A sequence index.
    Index(usize),
    /// Something serde_path_to_error could not name.
    Unknown,
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Segment::Key(variant.clone()),
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            _ => Segment::Unknown,
        }
    }
}

/// `spec.runtimes[0].env[CUDA_VISIBLE_DEVICES]`: keys that are plain identifiers are
/// dotted, others bracketed so a `.` or `/` inside a key cannot be misread.
pub(super) fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) => push_key(&mut out, key),
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
            Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    out
}

/// Appends one key to a rendered path.
pub(super) fn push_key(out: &mut String, key: &str) {
    let identifier = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push('[');
        out.push_str(key);
        out.push(']');
    }
}

/// Removes the mapping entry at `segments`, so the decode can go on past it. `false` when
/// there is no such entry (then the document is given up).
fn remove(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((Segment::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (Segment::Key(key), Value::Mapping(mapping)) => mapping.get_mut(key.as_str()),
            (Segment::Index(index), Value::Sequence(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match current {
        Value::Mapping(mapping) => mapping.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// The text between `prefix` and the next backtick.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(field, _)| field.to_string())
}

/// serde's messages, with Rust type names put in users' words.
fn friendlier(message: &str) -> String {
    let mut text = message
        .replace("expected u32", "expected a whole number from 0 to 4294967295")
        .replace("expected u64", "expected a whole number, 0 or more")
        .replace("expected f64", "expected a number");
    // `expected struct RuntimeChoice`: a Rust type name means nothing to a user.
    if let Some(start) = text.find("expected struct ") {
        let name_start = start + "expected struct ".len();
        let name_end = text[name_start..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(text.len(), |end| name_start + end);
        text.replace_range(start..name_end, "expected a mapping");
    }
    if text.starts_with("invalid type:") && text.ends_with("expected a string") {
        text.push_str(" (quote it: \"...\")");
    }
    text
}

fn missing(hint: String) -> Problem {
    Problem::Missing {
        hint: (!hint.is_empty()).then_some(hint),
    }
}

fn not_a_string(value: &Value) -> Problem {
    Problem::Type {
        message: format!("expected a string, found {}", describe(value)),
    }
}

/// A YAML value's kind, for messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// An error for every object defined again after its first document.
fn duplicates(manifests: &[(usize, Manifest)]) -> Vec<ManifestError> {
    let mut first: HashMap<(Kind, Option<&str>, &str), usize> = HashMap::new();
    let mut errors = Vec::new();
    for (number, manifest) in manifests {
        let key = (manifest.kind(), manifest.namespace(), manifest.name());
        match first.get(&key) {
            Some(&first) => {
                let name = match manifest.namespace() {
                    Some(namespace) => format!("{namespace}/{}", manifest.name()),
                    None => manifest.name().to_string(),
                };
                let context = Context {
                    document: *number,
                    kind: Some(manifest.kind()),
                    name: Some(manifest.name().to_string()),
                    namespace: manifest.namespace().map(str::to_string),
                };
                let problem = Problem::Duplicate {
                    kind: manifest.kind(),
                    name,
                    first,
                };
                errors.push(context.error("metadata.name", problem));
            }
            None => {
                first.insert(key, *number);
            }
        }
    }
    errors
}
