//! The one decoder of wire format v1: bytes of a NATS message (one event, or NDJSON lines) into a
//! [`DecodedBatch`], with a precise [`EventError`] for every line it refuses.
//!
//! JSON is parsed once by a hand-written serde visitor that borrows strings from the input where
//! it can and records each field as a loosely-typed value; validation then checks types, values
//! and per-type required fields with messages that name the field. Nothing here allocates per
//! event on the happy path except the arena copy of the strings.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::batch::{
    DecodedBatch, F_ATTRS, F_CAMPAIGN, F_CUSTOMER, F_DEVICE, F_ID, F_LOCATION, F_OFFER, F_OPERATOR,
    F_PASS, F_PROGRAM, F_RESULT, F_SOURCE, Row, STR_FIELDS, Span,
};
use super::error::{EventError, Reason};
use super::kind::{EventType, Field, Platform};
use crate::time;

/// Longest accepted `id`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest accepted value of any other string field, in characters.
pub const MAX_STR_CHARS: usize = 256;
/// Most keys accepted in `attrs`.
pub const MAX_ATTRS: usize = 64;
/// Longest accepted `attrs` key, in characters.
pub const MAX_ATTR_KEY_CHARS: usize = 64;

/// Decodes one NATS message: a single JSON event or NDJSON lines (blank lines are skipped).
///
/// Good events are appended to `out` with stream sequence `seq`; each refused line is passed to
/// `reject` with its error and its original bytes. Returns the number of events accepted.
pub fn decode_message(
    payload: &[u8],
    seq: u64,
    out: &mut DecodedBatch,
    mut reject: impl FnMut(EventError, &[u8]),
) -> usize {
    out.note_seq(seq);
    let mut accepted = 0;
    let mut any_line = false;
    for (i, line) in payload.split(|&b| b == b'\n').enumerate() {
        let line = trim_ascii(line);
        if line.is_empty() {
            continue;
        }
        any_line = true;
        match decode_line(line, i + 1, seq, out) {
            Ok(_) => accepted += 1,
            Err(e) => reject(e, line),
        }
    }
    if !any_line {
        reject(
            EventError::new(
                1,
                Reason::BadJson,
                "empty message: expected one JSON event or NDJSON lines",
            ),
            payload,
        );
    }
    accepted
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Decodes and validates one JSON event (`index` is its 1-based line number, for messages).
/// On error `out` is left unchanged.
pub fn decode_line(
    line: &[u8],
    index: usize,
    seq: u64,
    out: &mut DecodedBatch,
) -> Result<EventType, EventError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        EventError::new(
            index,
            Reason::BadUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut raw = Raw::default();
    let other = de
        .deserialize_any(RawVisitor(&mut raw))
        .map_err(|e| json_error(index, &e))?;
    de.end().map_err(|e| json_error(index, &e))?;
    if let Some(kind) = other {
        return Err(EventError::new(
            index,
            Reason::WrongType,
            format!("expected a JSON object, got {kind}"),
        ));
    }
    let mark = out.arena_len();
    let res = validate(raw, index, seq, out);
    if res.is_err() {
        out.truncate_arena(mark);
    }
    res
}

fn json_error(index: usize, e: &serde_json::Error) -> EventError {
    // serde_json's own message ends with "at line L column C"; inside one line the column is
    // what helps.
    let msg = e.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_string())
        .unwrap_or(msg);
    EventError::new(
        index,
        Reason::BadJson,
        format!("malformed JSON: {msg} at column {}", e.column()),
    )
}

// ---------------------------------------------------------------------------------------------
// Parsing: JSON into loosely-typed fields.

const N_FIELDS: usize = 16;
const NAMES: [&str; N_FIELDS] = [
    "id", "type", "ts", "pass", "program", "customer", "device", "platform", "location",
    "operator", "source", "campaign", "offer", "value", "result", "attrs",
];
const K_ID: usize = 0;
const K_TYPE: usize = 1;
const K_TS: usize = 2;
const K_PLATFORM: usize = 7;
const K_VALUE: usize = 13;
const K_RESULT: usize = 14;
const K_ATTRS: usize = 15;

/// Position of a v1 field name in [`NAMES`].
#[inline]
fn field_index(key: &str) -> Option<usize> {
    Some(match key {
        "id" => 0,
        "type" => 1,
        "ts" => 2,
        "pass" => 3,
        "program" => 4,
        "customer" => 5,
        "device" => 6,
        "platform" => 7,
        "location" => 8,
        "operator" => 9,
        "source" => 10,
        "campaign" => 11,
        "offer" => 12,
        "value" => 13,
        "result" => 14,
        "attrs" => 15,
        _ => return None,
    })
}

/// A JSON value, as much as validation needs to know of it.
#[derive(Debug)]
enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Object(Vec<(Cow<'a, str>, Val<'a>)>),
    Array,
}

impl Val<'_> {
    fn kind(&self) -> String {
        match self {
            Val::Str(s) => {
                let mut t: String = s.chars().take(40).collect();
                if t.len() < s.len() {
                    t.push('…');
                }
                format!("{t:?}")
            }
            Val::Int(i) => i.to_string(),
            Val::UInt(u) => u.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Null => "null".into(),
            Val::Object(_) => "an object".into(),
            Val::Array => "an array".into(),
        }
    }
}

struct ValVisitor {
    /// Objects are kept (key/values) only one level deep: for `attrs`.
    keep_object: bool,
}

impl<'de> DeserializeSeed<'de> for ValVisitor {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Val::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Val::Float(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Val::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            if self.keep_object {
                let v = map.next_value_seed(ValVisitor { keep_object: false })?;
                entries.push((k, v));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Val::Object(entries))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[derive(Default)]
struct Raw<'a> {
    vals: [Option<Val<'a>>; N_FIELDS],
    unknown: Option<String>,
    duplicate: Option<&'static str>,
}

/// Parses the top-level value into a [`Raw`]; yields `Some(kind)` if it is not an object.
struct RawVisitor<'r, 'a>(&'r mut Raw<'a>);

impl<'de> Visitor<'de> for RawVisitor<'_, 'de> {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let raw = self.0;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match field_index(&key) {
                Some(k) => {
                    let v = map.next_value_seed(ValVisitor {
                        keep_object: k == K_ATTRS,
                    })?;
                    if raw.vals[k].is_some() {
                        raw.duplicate.get_or_insert(NAMES[k]);
                    }
                    raw.vals[k] = Some(v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    raw.unknown.get_or_insert_with(|| key.into_owned());
                }
            }
        }
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: loosely-typed fields into a row, or a precise error.

fn validate(
    mut raw: Raw<'_>,
    index: usize,
    seq: u64,
    out: &mut DecodedBatch,
) -> Result<EventType, EventError> {
    if let Some(name) = raw.unknown {
        return Err(EventError::field(
            index,
            name,
            Reason::UnknownField,
            "not a field of event format v1 (fields: id, type, ts, pass, program, customer, \
             device, platform, location, operator, source, campaign, offer, value, result, attrs)",
        ));
    }
    if let Some(name) = raw.duplicate {
        return Err(EventError::field(
            index,
            name,
            Reason::BadJson,
            "appears more than once in the object",
        ));
    }

    let id = match raw.vals[K_ID].take() {
        None | Some(Val::Null) => {
            return Err(missing(index, "id", "every event needs one"));
        }
        Some(Val::Str(s)) => {
            let n = s.chars().count();
            if n == 0 || n > MAX_ID_CHARS {
                return Err(EventError::field(
                    index,
                    "id",
                    Reason::InvalidValue,
                    format!("expected 1 to {MAX_ID_CHARS} characters, got {n}"),
                ));
            }
            // the idempotency key is shown, logged and compared: blank or invisible ids (" ",
            // "\u0000") name nothing a producer can retry by
            check_visible(index, "id", &s)?;
            s
        }
        Some(v) => return Err(wrong(index, "id", "a string", &v)),
    };

    let kind = match raw.vals[K_TYPE].take() {
        None | Some(Val::Null) => return Err(missing(index, "type", "every event needs one")),
        Some(Val::Str(s)) => EventType::parse(&s).ok_or_else(|| {
            EventError::field(
                index,
                "type",
                Reason::UnknownType,
                format!(
                    "unknown event type {:?} (expected one of: {})",
                    s,
                    EventType::ALL.map(|t| t.as_str()).join(", ")
                ),
            )
        })?,
        Some(v) => return Err(wrong(index, "type", "a string", &v)),
    };

    let ts = match raw.vals[K_TS].take() {
        None | Some(Val::Null) => return Err(missing(index, "ts", "every event needs one")),
        Some(Val::Str(s)) => time::parse_rfc3339_millis(&s).ok_or_else(|| {
            EventError::field(
                index,
                "ts",
                Reason::InvalidValue,
                format!(
                    "expected RFC 3339 or epoch millis, got {}",
                    Val::Str(s.clone()).kind()
                ),
            )
        })?,
        Some(Val::Int(ms)) => check_millis(index, ms)?,
        Some(Val::UInt(ms)) => check_millis(index, i64::try_from(ms).unwrap_or(i64::MAX))?,
        Some(v) => return Err(wrong(index, "ts", "RFC 3339 or epoch millis", &v)),
    };
    if let Some(latest) = out.latest_accepted_ts()
        && ts > latest
    {
        let skew = latest - out.arrival();
        return Err(EventError::field(
            index,
            "ts",
            Reason::InvalidValue,
            format!(
                "{} is more than {} after the broker received the event ({}); fix the \
                 producer's clock, or raise ingest.max_future_skew",
                time::format_millis(ts),
                span_text(skew),
                time::format_millis(out.arrival()),
            ),
        ));
    }

    let platform = match raw.vals[K_PLATFORM].take() {
        None | Some(Val::Null) => None,
        Some(Val::Str(s)) => Some(Platform::parse(&s).ok_or_else(|| {
            EventError::field(
                index,
                "platform",
                Reason::InvalidValue,
                format!(
                    "expected \"apple\" or \"google\", got {}",
                    Val::Str(s).kind()
                ),
            )
        })?),
        Some(v) => return Err(wrong(index, "platform", "\"apple\" or \"google\"", &v)),
    };

    let value = match raw.vals[K_VALUE].take() {
        None | Some(Val::Null) => None,
        Some(Val::Int(i)) => Some(i as f64),
        Some(Val::UInt(u)) => Some(u as f64),
        Some(Val::Float(f)) if f.is_finite() => Some(f),
        Some(v) => return Err(wrong(index, "value", "a number", &v)),
    };

    let result = match raw.vals[K_RESULT].take() {
        None | Some(Val::Null) => None,
        Some(Val::Str(s)) => {
            if kind == EventType::Scan && s != "accepted" && s != "rejected" {
                return Err(EventError::field(
                    index,
                    "result",
                    Reason::InvalidValue,
                    format!(
                        "a scan's result must be \"accepted\" or \"rejected\", got {}",
                        Val::Str(s).kind()
                    ),
                ));
            }
            check_len(index, "result", &s)?;
            Some(s)
        }
        Some(v) => return Err(wrong(index, "result", "a string", &v)),
    };

    // The plain optional string fields, in NAMES order 3..=12 except platform (7).
    const PLAIN: [(usize, usize); 9] = [
        (3, F_PASS),
        (4, F_PROGRAM),
        (5, F_CUSTOMER),
        (6, F_DEVICE),
        (8, F_LOCATION),
        (9, F_OPERATOR),
        (10, F_SOURCE),
        (11, F_CAMPAIGN),
        (12, F_OFFER),
    ];
    let mut strs = [Span::ABSENT; STR_FIELDS];
    let mut present = [false; N_FIELDS];
    present[K_PLATFORM] = platform.is_some();
    for (k, slot) in PLAIN {
        match raw.vals[k].take() {
            None | Some(Val::Null) => {}
            Some(Val::Str(s)) => {
                check_len(index, NAMES[k], &s)?;
                present[k] = true;
                strs[slot] = out.intern(&s);
            }
            Some(v) => return Err(wrong(index, NAMES[k], "a string", &v)),
        }
    }

    for f in kind.required() {
        if *f == Field::Result {
            if result.is_none() {
                return Err(missing(index, f.name(), &format!("required for {kind}")));
            }
            continue;
        }
        let k = match f {
            Field::Pass => 3,
            Field::Program => 4,
            Field::Customer => 5,
            Field::Device => 6,
            Field::Platform => K_PLATFORM,
            Field::Location => 8,
            Field::Operator => 9,
            Field::Source => 10,
            Field::Offer => 12,
            Field::Result => unreachable!("checked above"),
        };
        if !present[k] {
            return Err(missing(index, f.name(), &format!("required for {kind}")));
        }
    }

    match raw.vals[K_ATTRS].take() {
        None | Some(Val::Null) => {}
        Some(Val::Object(entries)) => {
            if entries.len() > MAX_ATTRS {
                return Err(EventError::field(
                    index,
                    "attrs",
                    Reason::InvalidValue,
                    format!("at most {MAX_ATTRS} attributes, got {}", entries.len()),
                ));
            }
            for (i, (k, v)) in entries.iter().enumerate() {
                let n = k.chars().count();
                if n == 0 || n > MAX_ATTR_KEY_CHARS {
                    let shown: String = k.chars().take(40).collect();
                    return Err(EventError::field(
                        index,
                        "attrs",
                        Reason::InvalidValue,
                        format!(
                            "keys must be 1 to {MAX_ATTR_KEY_CHARS} characters, got {n} ({shown:?}{})",
                            if n > 40 { "…" } else { "" }
                        ),
                    ));
                }
                check_visible(index, "attrs", k)?;
                if entries[..i].iter().any(|(k2, _)| k2 == k) {
                    return Err(EventError::field(
                        index,
                        format!("attrs.{k}"),
                        Reason::BadJson,
                        "appears more than once in the object",
                    ));
                }
                match v {
                    Val::Str(s) => check_len(index, "attrs", s)?,
                    Val::Int(_) | Val::UInt(_) => {}
                    Val::Float(f) if f.is_finite() => {}
                    other => {
                        return Err(wrong(
                            index,
                            &format!("attrs.{k}"),
                            "a string or a number",
                            other,
                        ));
                    }
                }
            }
            strs[F_ATTRS] = out.write_with(|buf| write_attrs(buf, &entries));
        }
        Some(v) => return Err(wrong(index, "attrs", "an object", &v)),
    }

    strs[F_ID] = out.intern(&id);
    if let Some(r) = result {
        strs[F_RESULT] = out.intern(&r);
    }
    out.push_row(Row {
        seq,
        arrival: 0,
        ts,
        value: value.unwrap_or(0.0),
        has_value: value.is_some(),
        kind,
        platform,
        strs,
    });
    Ok(kind)
}

fn check_millis(index: usize, ms: i64) -> Result<i64, EventError> {
    if (0..=time::MAX_MILLIS).contains(&ms) {
        Ok(ms)
    } else {
        Err(EventError::field(
            index,
            "ts",
            Reason::InvalidValue,
            format!(
                "expected epoch millis between 0 and {} (year 9999), got {ms}",
                time::MAX_MILLIS
            ),
        ))
    }
}

/// Refuses text that is blank or holds control characters (names and keys, not free text).
fn check_visible(index: usize, field: &str, s: &str) -> Result<(), EventError> {
    if s.trim().is_empty() {
        return Err(EventError::field(
            index,
            field,
            Reason::InvalidValue,
            format!("must not be blank, got {:?}", s),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(EventError::field(
            index,
            field,
            Reason::InvalidValue,
            format!("must not contain control characters, found {c:?}"),
        ));
    }
    Ok(())
}

/// A duration in millis as short text: `1h`, `90min`, `2s`, `250ms`.
fn span_text(ms: i64) -> String {
    const H: i64 = 3_600_000;
    match ms {
        ms if ms >= H && ms % H == 0 => format!("{}h", ms / H),
        ms if ms >= time::MINUTE_MS && ms % time::MINUTE_MS == 0 => {
            format!("{}min", ms / time::MINUTE_MS)
        }
        ms if ms >= 1000 && ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

fn check_len(index: usize, field: &str, s: &str) -> Result<(), EventError> {
    let n = s.chars().count();
    if n == 0 || n > MAX_STR_CHARS {
        return Err(EventError::field(
            index,
            field,
            Reason::InvalidValue,
            format!("expected 1 to {MAX_STR_CHARS} characters, got {n}"),
        ));
    }
    Ok(())
}

fn missing(index: usize, field: &str, why: &str) -> EventError {
    EventError::field(
        index,
        field,
        Reason::MissingField,
        format!("missing ({why})"),
    )
}

fn wrong(index: usize, field: &str, expected: &str, got: &Val<'_>) -> EventError {
    EventError::field(
        index,
        field,
        Reason::WrongType,
        format!("expected {expected}, got {}", got.kind()),
    )
}

/// Writes `attrs` back as compact JSON (keys in input order).
fn write_attrs(buf: &mut String, entries: &[(Cow<'_, str>, Val<'_>)]) {
    use std::fmt::Write;
    buf.push('{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        write_json_str(buf, k);
        buf.push(':');
        match v {
            Val::Str(s) => write_json_str(buf, s),
            Val::Int(n) => {
                let _ = write!(buf, "{n}");
            }
            Val::UInt(n) => {
                let _ = write!(buf, "{n}");
            }
            Val::Float(f) => {
                let _ = write!(buf, "{f}");
            }
            // validated above: only strings and numbers reach here
            _ => buf.push_str("null"),
        }
    }
    buf.push('}');
}

fn write_json_str(buf: &mut String, s: &str) {
    use std::fmt::Write;
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<DecodedBatch, EventError> {
        let mut b = DecodedBatch::new();
        decode_line(line.as_bytes(), 1, 7, &mut b).map(|_| b)
    }

    fn err(line: &str) -> EventError {
        one(line).expect_err("should be refused")
    }

    #[test]
    fn decodes_a_full_scan() {
        let b = one(r#"{"id":"e1","type":"scan","ts":"2026-11-24T10:15:00.250Z","pass":"P1","location":"berlin","device":"scanner-3","operator":"op-7","result":"accepted","attrs":{"lane":"2","n":3}}"#).unwrap();
        let e = b.get(0);
        assert_eq!(e.id, "e1");
        assert_eq!(e.kind, EventType::Scan);
        assert_eq!(e.ts, 1_795_515_300_250);
        assert_eq!(e.seq, 7);
        assert_eq!(e.location, Some("berlin"));
        assert_eq!(e.result, Some("accepted"));
        assert_eq!(e.attrs, Some(r#"{"lane":"2","n":3}"#));
        assert_eq!(e.value, None);
        assert_eq!(e.platform, None);
    }

    #[test]
    fn epoch_millis_and_escaped_strings() {
        let b = one(r#"{"id":"a\"b","type":"pass.installed","ts":1795990500250,"pass":"P\u00e9","device":"d","platform":"google","value":2.5}"#).unwrap();
        let e = b.get(0);
        assert_eq!(e.id, "a\"b");
        assert_eq!(e.pass, Some("Pé"));
        assert_eq!(e.ts, 1_795_990_500_250);
        assert_eq!(e.platform, Some(Platform::Google));
        assert_eq!(e.value, Some(2.5));
    }

    #[test]
    fn precise_errors() {
        let cases: &[(&str, Reason, &str)] = &[
            (
                r#"{"id":"e","type":"scan","ts":"yesterday","pass":"p","location":"l","device":"d","operator":"o"}"#,
                Reason::InvalidValue,
                r#"event 1: field "ts": expected RFC 3339 or epoch millis, got "yesterday""#,
            ),
            (
                r#"{"id":"e","type":"pass.exploded","ts":1}"#,
                Reason::UnknownType,
                "event 1: field \"type\": unknown event type \"pass.exploded\"",
            ),
            (
                r#"{"id":"e","type":"pass.installed","ts":1,"pass":"p","platform":"apple"}"#,
                Reason::MissingField,
                r#"event 1: field "device": missing (required for pass.installed)"#,
            ),
            (
                r#"{"id":5,"type":"scan","ts":1}"#,
                Reason::WrongType,
                r#"event 1: field "id": expected a string, got 5"#,
            ),
            (
                r#"{"id":"e","type":"scan","ts":1,"colour":"red"}"#,
                Reason::UnknownField,
                r#"event 1: field "colour": not a field"#,
            ),
            (
                r#"{"id":"e","type":"scan""#,
                Reason::BadJson,
                "event 1: malformed JSON",
            ),
            (
                r#"[1,2]"#,
                Reason::WrongType,
                "event 1: expected a JSON object, got an array",
            ),
            (
                r#"{"id":"","type":"scan","ts":1}"#,
                Reason::InvalidValue,
                r#"event 1: field "id": expected 1 to 128 characters, got 0"#,
            ),
            (
                r#"{"id":"e","type":"pass.updated","ts":1,"pass":"p","attrs":{"x":{"y":1}}}"#,
                Reason::WrongType,
                r#"event 1: field "attrs.x": expected a string or a number, got an object"#,
            ),
            (
                r#"{"id":"e","type":"pass.updated","ts":1,"pass":"p","platform":"nokia"}"#,
                Reason::InvalidValue,
                r#"field "platform": expected "apple" or "google", got "nokia""#,
            ),
            (
                r#"{"id":"e","id":"f","type":"pass.updated","ts":1,"pass":"p"}"#,
                Reason::BadJson,
                r#"field "id": appears more than once"#,
            ),
            (
                r#"{"id":"e","type":"pass.updated","ts":1.5,"pass":"p"}"#,
                Reason::WrongType,
                r#"field "ts": expected RFC 3339 or epoch millis, got 1.5"#,
            ),
            (
                r#"{"id":"e","type":"pass.updated","ts":-5,"pass":"p"}"#,
                Reason::InvalidValue,
                r#"field "ts": expected epoch millis between 0"#,
            ),
            (
                r#"{"id":"e","type":"scan","ts":1,"pass":"p","location":"l","device":"d","operator":"o","result":"maybe"}"#,
                Reason::InvalidValue,
                "result must be",
            ),
        ];
        for (line, reason, msg) in cases {
            let e = err(line);
            assert_eq!(e.reason, *reason, "{line}: {e}");
            assert!(e.to_string().contains(msg), "{line}: got {e}, want {msg}");
        }
    }

    #[test]
    fn field_index_agrees_with_names() {
        for (i, n) in NAMES.iter().enumerate() {
            assert_eq!(field_index(n), Some(i));
        }
        assert_eq!(field_index("colour"), None);
    }

    #[test]
    fn invalid_utf8_is_its_own_reason() {
        let mut b = DecodedBatch::new();
        let e = decode_line(b"{\"id\":\"\xff\"}", 3, 0, &mut b).unwrap_err();
        assert_eq!(e.reason, Reason::BadUtf8);
        assert_eq!(e.index, 3);
    }

    #[test]
    fn a_bad_line_in_a_batch_keeps_the_good_ones() {
        let payload = b"{\"id\":\"a\",\"type\":\"pass.updated\",\"ts\":1,\"pass\":\"p\"}\n\
            {\"id\":\"b\",\"type\":\"pass.updated\",\"ts\":\"soon\",\"pass\":\"p\"}\n\n\
            {\"id\":\"c\",\"type\":\"pass.updated\",\"ts\":2,\"pass\":\"p\"}\n";
        let mut b = DecodedBatch::new();
        let mut bad = Vec::new();
        let n = decode_message(payload, 9, &mut b, |e, line| bad.push((e, line.to_vec())));
        assert_eq!(n, 2);
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0.index, 2);
        assert!(bad[0].1.starts_with(b"{\"id\":\"b\""));
    }

    #[test]
    fn a_failed_line_leaves_no_bytes_behind() {
        let mut b = DecodedBatch::new();
        let bad = r#"{"id":"e","type":"scan","ts":1,"pass":"a-long-pass-serial","location":"l"}"#;
        assert!(decode_line(bad.as_bytes(), 1, 0, &mut b).is_err());
        assert_eq!(b.arena_len(), 0);
    }

    #[test]
    fn empty_message_is_dead_lettered() {
        let mut b = DecodedBatch::new();
        let mut bad = Vec::new();
        decode_message(b"  \n ", 1, &mut b, |e, _| bad.push(e));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].reason, Reason::BadJson);
    }
    fn decode_at(arrival: i64, skew: Option<i64>, line: &str) -> Result<(), EventError> {
        let mut b = DecodedBatch::new();
        b.set_arrival(arrival);
        b.set_max_future_skew(skew);
        decode_line(line.as_bytes(), 1, 1, &mut b).map(|_| ())
    }

    #[test]
    fn an_event_time_too_far_after_its_arrival_is_refused() {
        const HOUR: i64 = 3_600_000;
        let arrival = 1_795_515_300_000; // 2026-11-24T10:15:00Z
        let at = |ts: &str| format!(r#"{{"id":"e","type":"pass.updated","ts":{ts},"pass":"p"}}"#);
        // within the skew, and any time in the past: accepted
        assert!(decode_at(arrival, Some(HOUR), &at(&(arrival + HOUR).to_string())).is_ok());
        assert!(decode_at(arrival, Some(HOUR), &at("1")).is_ok());
        // the outlier of issue 17: year 9999, valid as a time, refused as an event time
        for ts in [
            (arrival + HOUR + 1).to_string(),
            "\"9999-12-31T00:00:00Z\"".to_string(),
        ] {
            let e = decode_at(arrival, Some(HOUR), &at(&ts)).unwrap_err();
            assert_eq!(e.reason, Reason::InvalidValue, "{e}");
            let msg = e.to_string();
            assert!(msg.starts_with("event 1: field \"ts\": "), "{msg}");
            assert!(
                msg.contains(
                    "is more than 1h after the broker received the event (2026-11-24T10:15:00.000Z)"
                ),
                "{msg}"
            );
            assert!(msg.contains("ingest.max_future_skew"), "{msg}");
        }
        // no arrival time (a line checked before it is published) or no bound: not checked here
        assert!(decode_at(0, Some(HOUR), &at("\"9999-12-31T00:00:00Z\"")).is_ok());
        assert!(decode_at(arrival, None, &at("\"9999-12-31T00:00:00Z\"")).is_ok());
    }

    #[test]
    fn blank_and_invisible_ids_are_refused() {
        for id in [" ", "\\u0000", "\\t\\n", "a\\u0007b", "\\u001b[31m"] {
            let e = err(&format!(
                r#"{{"id":"{id}","type":"pass.updated","ts":1,"pass":"p"}}"#
            ));
            assert_eq!(e.reason, Reason::InvalidValue, "{id}: {e}");
            assert!(e.to_string().contains("field \"id\""), "{id}: {e}");
        }
        // ordinary ids, also with spaces and non-ASCII letters inside, stay fine
        for id in ["e-1", "a b", "café:42"] {
            assert!(
                one(&format!(
                    r#"{{"id":"{id}","type":"pass.updated","ts":1,"pass":"p"}}"#
                ))
                .is_ok()
            );
        }
    }

    #[test]
    fn attrs_keys_are_bounded() {
        let with_key = |k: &str| {
            format!(r#"{{"id":"e","type":"pass.updated","ts":1,"pass":"p","attrs":{{"{k}":1}}}}"#)
        };
        assert!(one(&with_key(&"k".repeat(MAX_ATTR_KEY_CHARS))).is_ok());
        for k in [
            "k".repeat(MAX_ATTR_KEY_CHARS + 1),
            "k".repeat(1 << 20),
            String::new(),
            " ".into(),
            "a\\nb".into(),
        ] {
            let e = err(&with_key(&k));
            assert_eq!(e.reason, Reason::InvalidValue, "{e}");
            assert!(e.to_string().contains("field \"attrs\""), "{e}");
            assert!(
                e.to_string().len() < 300,
                "the error does not echo the key: {e}"
            );
        }
    }
}
