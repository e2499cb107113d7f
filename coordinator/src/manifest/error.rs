//! [`ManifestError`]: one problem in one document, with where it is and why.

use std::fmt;

use serde::Serialize;

use super::{Kind, API_VERSION};

/// One problem found in one manifest document. [`super::parse_documents`] returns every one
/// it finds, so a user fixes a file in one pass.
///
/// Displayed as `document 2 (ModelDeployment research/qwen-7b): spec.resources.gpusPerReplica:
/// invalid type: string "one", expected u32`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct ManifestError {
    /// Position of the document in the input, counting from 1 (documents are separated by
    /// `---`; empty documents count).
    pub document: usize,
    /// The document's kind, when it names a supported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// `metadata.name`, when the document has a string there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `metadata.namespace` (the tenant), when the document has a string there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The field, dotted from the document's root (`spec.runtimes[1].custom.command`); map
    /// keys that are not plain identifiers are bracketed (`spec.guarantee[H100-80GB]`).
    /// Empty when the problem is the document as a whole.
    pub path: String,
    /// What is wrong.
    #[serde(rename = "reason", serialize_with = "display")]
    pub problem: Problem,
}

fn display<S: serde::Serializer>(problem: &Problem, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(problem)
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => match &self.namespace {
                Some(namespace) => write!(f, " ({kind} {namespace}/{name})")?,
                None => write!(f, " ({kind} {name})")?,
            },
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, Some(name)) => write!(f, " ({name})")?,
            (None, None) => {}
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The text is not valid YAML (the message carries the line and column). The YAML parser
    /// cannot resume after a syntax error, so later documents are not read.
    #[error("invalid YAML: {message}")]
    Syntax {
        /// The YAML parser's message.
        message: String,
    },
    /// The document is YAML but not a mapping.
    #[error("a manifest is a mapping with apiVersion, kind, metadata and spec; found {found}")]
    NotAMapping {
        /// What the document is instead (`a sequence`, `a string`, ...).
        found: &'static str,
    },
    /// A required field is absent.
    #[error("required field is missing{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    Missing {
        /// What the field is for, when that helps.
        hint: Option<String>,
    },
    /// The kind has no such field (a typo, or a field of another kind or version).
    #[error("unknown field; {expected}")]
    UnknownField {
        /// The fields allowed here, as serde lists them (`expected one of `min`, `max``).
        expected: String,
    },
    /// `apiVersion` is not the one this coordinator serves.
    #[error("unsupported apiVersion {found:?}; use {API_VERSION}")]
    ApiVersion {
        /// The apiVersion given.
        found: String,
    },
    /// `kind` names no supported kind.
    #[error("{}", unknown_kind(found))]
    UnknownKind {
        /// The kind given.
        found: String,
    },
    /// The value has the wrong type or is not one of the allowed values (serde's message,
    /// for example `unknown variant `fast`, expected `always-warm`, `warm-zero` or `hot-zero``).
    #[error("{message}")]
    Type {
        /// The deserializer's message.
        message: String,
    },
    /// The value is well-formed but breaks a rule (zero where a positive number is needed,
    /// `min` above `max`, an invalid name, ...).
    #[error("{reason}")]
    Invalid {
        /// The rule broken, and the value when it helps.
        reason: String,
    },
    /// Another document of the same input describes the same object.
    #[error("{kind} {name} is also defined by document {first}; an object may appear once per apply")]
    Duplicate {
        /// The kind of both documents.
        kind: Kind,
        /// `namespace/name` or `name`.
        name: String,
        /// The document (1-based) that defined it first.
        first: usize,
    },
    /// The input holds more documents than one apply takes.
    #[error("too many documents: at most {max} per apply")]
    TooManyDocuments {
        /// The limit.
        max: usize,
    },
}

/// The message for an unknown kind, naming the supported kinds (and the right spelling when
/// only the case is wrong).
fn unknown_kind(found: &str) -> String {
    let supported = Kind::ALL.map(Kind::as_str).join(", ");
    if let Some(kind) = Kind::ALL.iter().find(|k| k.as_str().eq_ignore_ascii_case(found)) {
        return format!(
            "unknown kind {found:?}; kinds are case-sensitive: did you mean {kind}? (supported: {supported})"
        );
    }
    if Kind::PLANNED.contains(&found) {
        return format!("kind {found} is not supported by this coordinator yet; supported kinds: {supported}");
    }
    format!("unknown kind {found:?}; supported kinds: {supported}")
}
