//! Wire format v1: event types, the decoder/validator and the decoded batch it produces.

mod batch;
mod decode;
mod error;
mod kind;

pub use batch::{DecodedBatch, EventRef};
pub use decode::{
    MAX_ATTR_KEY_CHARS, MAX_ATTRS, MAX_ID_CHARS, MAX_STR_CHARS, decode_line, decode_message,
};
pub use error::{EventError, Reason};
pub use kind::{EventType, Field, Platform};
