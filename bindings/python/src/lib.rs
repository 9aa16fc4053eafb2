//! Placeholder crate: filled by a later issue.

/// The version of the core this crate is built against.
pub fn core_version() -> &'static str {
    connect_core::VERSION
}
