//! Why an event was refused: a machine-readable [`Reason`] (the dead-letter subject token and the
//! metrics label) and a human message that names the event, the field and what was expected.

use std::fmt;

/// Dead-letter reason. `as_str` is the last token of `passpulse.deadletter.<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The line is not valid UTF-8.
    BadUtf8,
    /// The line is not well-formed JSON (or is empty, or has a duplicate key).
    BadJson,
    /// A top-level field that wire format v1 does not define.
    UnknownField,
    /// A field the event's type requires is absent (or null).
    MissingField,
    /// A field has the wrong JSON type (a number where a string belongs, …).
    WrongType,
    /// A field has the right JSON type but an unacceptable value (bad timestamp, empty id, …).
    InvalidValue,
    /// `type` is not one of the v1 event types.
    UnknownType,
    /// The message is larger than the configured limit; it was not parsed.
    TooLarge,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::BadUtf8,
        Reason::BadJson,
        Reason::UnknownField,
        Reason::MissingField,
        Reason::WrongType,
        Reason::InvalidValue,
        Reason::UnknownType,
        Reason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadUtf8 => "bad_utf8",
            Reason::BadJson => "bad_json",
            Reason::UnknownField => "unknown_field",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::InvalidValue => "invalid_value",
            Reason::UnknownType => "unknown_type",
            Reason::TooLarge => "too_large",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused event. `index` is the 1-based line number inside its message (1 for a message that
/// carries a single event).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct EventError {
    pub index: usize,
    pub field: Option<String>,
    pub reason: Reason,
    pub detail: String,
}

impl EventError {
    /// A message over the size limit; it is refused whole, unparsed.
    pub fn too_large(bytes: usize, limit: usize) -> Self {
        EventError::new(
            1,
            Reason::TooLarge,
            format!(
                "message of {bytes} bytes exceeds the {limit}-byte limit; split it into smaller batches"
            ),
        )
    }

    pub(crate) fn new(index: usize, reason: Reason, detail: impl Into<String>) -> Self {
        EventError {
            index,
            field: None,
            reason,
            detail: detail.into(),
        }
    }

    pub(crate) fn field(
        index: usize,
        field: impl Into<String>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        EventError {
            index,
            field: Some(field.into()),
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "event {}: field \"{field}\": {}",
                self.index, self.detail
            ),
            None => write!(f, "event {}: {}", self.index, self.detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_event_field_and_expectation() {
        let e = EventError::field(
            41,
            "ts",
            Reason::InvalidValue,
            "expected RFC 3339 or epoch millis, got \"yesterday\"",
        );
        assert_eq!(
            e.to_string(),
            "event 41: field \"ts\": expected RFC 3339 or epoch millis, got \"yesterday\""
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }
}
