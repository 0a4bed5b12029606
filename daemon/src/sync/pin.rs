//! A test-only pin of the wire protocol: with `OFFICESYNC_MAX_PROTOCOL=1` in its environment
//! a node speaks at most protocol 1, as a node of the previous release (0.1.0) does, so the
//! mixed-release suite runs old and new protocols side by side from one build.

/// Environment variable, for tests only, capping the protocol version this node offers and
/// accepts (between `MIN_PROTOCOL_VERSION` and `PROTOCOL_VERSION`; anything else is ignored).
pub const MAX_PROTOCOL_ENV: &str = "OFFICESYNC_MAX_PROTOCOL";

/// The pinned protocol version, when [`MAX_PROTOCOL_ENV`] names a supported one (read, and
/// warned about, once).
pub fn pinned_max_protocol() -> Option<u16> {
    static PINNED: std::sync::OnceLock<Option<u16>> = std::sync::OnceLock::new();
    *PINNED.get_or_init(read)
}

fn read() -> Option<u16> {
    let value: u16 = std::env::var(MAX_PROTOCOL_ENV).ok()?.trim().parse().ok()?;
    let supported = officesync_protocol::wire::MIN_PROTOCOL_VERSION
        ..=officesync_protocol::wire::PROTOCOL_VERSION;
    if supported.contains(&value) {
        tracing::warn!(
            protocol = value,
            "{MAX_PROTOCOL_ENV} is set: this node speaks at most protocol {value} (for tests only)"
        );
        Some(value)
    } else {
        None
    }
}
