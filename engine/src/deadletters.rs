//! The recent dead letters, for the `dead_letters` SQL table: a bounded ring (newest
//! [`DeadLetterLog::CAPACITY`]) of refused events with their reason, error, source subject and
//! sequence, and a printable prefix of their bytes. The dead-letter stream keeps every one in
//! full; this is the quick look, refilled from that stream at start. A replayed message refused
//! again (same sequence and line) is listed once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use crate::schema::ts_type;

/// Bytes of the original input kept per dead letter.
pub const PREFIX_BYTES: usize = 256;

/// One refused event.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// Stream sequence of the message that carried it.
    pub seq: u64,
    /// When it was refused (or, refilled from the stream, stored there), epoch millis.
    pub refused_at: i64,
    pub subject: String,
    pub reason: String,
    /// Line within the message, 1-based.
    pub line: u32,
    pub error: String,
    /// Size of the original bytes.
    pub bytes: u64,
    /// The first [`PREFIX_BYTES`] of them, as text (invalid UTF-8 replaced).
    pub prefix: String,
}

impl DeadLetterRow {
    /// The printable prefix of `bytes`.
    pub fn prefix_of(bytes: &[u8]) -> String {
        String::from_utf8_lossy(&bytes[..bytes.len().min(PREFIX_BYTES)]).into_owned()
    }
}

/// Shared, bounded log of recent dead letters.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterLog {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Debug, Default)]
struct Ring {
    rows: VecDeque<DeadLetterRow>,
    /// (seq, line) of the rows held.
    keys: HashSet<(u64, u32)>,
}

impl DeadLetterLog {
    pub const CAPACITY: usize = 10_000;

    pub fn push(&self, row: DeadLetterRow) {
        let mut ring = self.inner.lock();
        if !ring.keys.insert((row.seq, row.line)) {
            return;
        }
        if ring.rows.len() == Self::CAPACITY
            && let Some(old) = ring.rows.pop_front()
        {
            ring.keys.remove(&(old.seq, old.line));
        }
        ring.rows.push_back(row);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("seq", DataType::UInt64, false),
            Field::new("refused_at", ts_type(), false),
            Field::new("subject", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("line", DataType::UInt32, false),
            Field::new("error", DataType::Utf8, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("prefix", DataType::Utf8, false),
        ]))
    }

    /// The log as one batch, oldest first.
    pub fn batch(&self) -> RecordBatch {
        let ring = self.inner.lock();
        let rows = &ring.rows;
        let col = |f: &dyn Fn(&DeadLetterRow) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.refused_at))
                    .with_timezone(crate::schema::UTC),
            ),
            col(&|r| &r.subject),
            col(&|r| &r.reason),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.line))),
            col(&|r| &r.error),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
            col(&|r| &r.prefix),
        ];
        RecordBatch::try_new(Self::schema(), cols).expect("columns match the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_rows_up_to_capacity() {
        let log = DeadLetterLog::default();
        for i in 0..(DeadLetterLog::CAPACITY as u64 + 5) {
            log.push(DeadLetterRow {
                seq: i,
                refused_at: 0,
                subject: "s".into(),
                reason: "bad_json".into(),
                line: 1,
                error: "e".into(),
                bytes: 3,
                prefix: DeadLetterRow::prefix_of(&[0xff, b'a']),
            });
        }
        let b = log.batch();
        assert_eq!(b.num_rows(), DeadLetterLog::CAPACITY);
        let seq = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(seq.value(0), 5);
        let prefix = b.column(7).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(prefix.value(0), "\u{fffd}a");
        // the same refusal again (a replay) is not listed twice
        log.push(DeadLetterRow {
            seq: DeadLetterLog::CAPACITY as u64 + 4,
            refused_at: 1,
            subject: "s".into(),
            reason: "bad_json".into(),
            line: 1,
            error: "e".into(),
            bytes: 3,
            prefix: String::new(),
        });
        assert_eq!(log.batch().num_rows(), DeadLetterLog::CAPACITY);
    }
}
