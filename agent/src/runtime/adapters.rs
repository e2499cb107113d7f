//! One adapter per runtime kind (placeholder: filled in by the runtime adapters work).

use super::Adapter;

/// The adapter for `kind`, if Pyxis knows it.
pub fn adapter_for(kind: &str) -> Option<Box<dyn Adapter>> {
    let _ = kind;
    None
}
