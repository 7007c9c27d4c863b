//! [`SealedBatch`]: an immutable batch of the hot store in a compact, lossless in-memory
//! encoding, decoded column by column when a query or a flush reads it.
//!
//! Plain Arrow spends 8 bytes per row on every integer column, 2 per dictionary key and 4 per
//! string offset even where a row has no value. A sealed batch never changes, so it can be
//! stored the way column stores keep their segments, with encodings that cost one pass to write
//! and one cheap pass to read (no general-purpose compression):
//!
//! - **Frame of reference**: a non-null 64-bit integer or timestamp column (`seq`, `ts`,
//!   `ingested_at`) is its minimum plus each row's offset in the narrowest of 8, 16 or 32 bits
//!   that holds the batch's range (plain when the range needs 64).
//! - **Narrow dictionary keys**: a dictionary with at most 256 values keeps 8-bit keys.
//! - **Sparse**: a column with nulls keeps only its non-null values, in row order, plus the
//!   validity bitmap; decoding scatters them back (strings share the value bytes, only the
//!   offsets are rebuilt).
//!
//! [`SealedBatch::decode`] returns exactly the batch that was encoded (same schema, values and
//! nulls), for the projected columns only, so a query pays only for the columns it reads.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, DictionaryArray, PrimitiveArray,
    StringArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::filter;
use arrow::datatypes::{
    DataType, Float64Type, SchemaRef, TimeUnit, TimestampMillisecondType, UInt8Type, UInt16Type,
    UInt64Type,
};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// Integers stored as offsets from a base, in the narrowest width that holds them.
#[derive(Debug, Clone)]
enum Narrow {
    U8(ScalarBuffer<u8>),
    U16(ScalarBuffer<u16>),
    U32(ScalarBuffer<u32>),
}

impl Narrow {
    /// Offsets `v - base` for values whose range (`max - base`) is `range`; `None` if it needs
    /// 64 bits.
    fn new(values: impl Iterator<Item = u64>, range: u64) -> Option<Narrow> {
        Some(if range <= u8::MAX as u64 {
            Narrow::U8(values.map(|v| v as u8).collect())
        } else if range <= u16::MAX as u64 {
            Narrow::U16(values.map(|v| v as u16).collect())
        } else if range <= u32::MAX as u64 {
            Narrow::U32(values.map(|v| v as u32).collect())
        } else {
            return None;
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Narrow::U8(b) => b.inner().capacity(),
            Narrow::U16(b) => b.inner().capacity(),
            Narrow::U32(b) => b.inner().capacity(),
        }
    }

    /// `base + offset` for every row, wrapping (the encoder chose `base` = the minimum).
    fn widen(&self, base: u64) -> ScalarBuffer<u64> {
        match self {
            Narrow::U8(b) => b.iter().map(|&o| base.wrapping_add(o as u64)).collect(),
            Narrow::U16(b) => b.iter().map(|&o| base.wrapping_add(o as u64)).collect(),
            Narrow::U32(b) => b.iter().map(|&o| base.wrapping_add(o as u64)).collect(),
        }
    }
}

/// One encoded column.
#[derive(Debug, Clone)]
enum Column {
    /// Stored as it came.
    Plain(ArrayRef),
    /// A non-null `UInt64` or millisecond timestamp column as frame of reference.
    Offsets {
        base: u64,
        offsets: Narrow,
        data_type: DataType,
    },
    /// A dictionary column: keys (dense, or only the non-null ones when `nulls` is set), 8-bit
    /// when the dictionary allows, and the dictionary values.
    Dict {
        keys: ArrayRef,
        nulls: Option<NullBuffer>,
        values: ArrayRef,
        data_type: DataType,
    },
    /// A nullable column without its null slots: the non-null values, in order.
    Sparse { values: ArrayRef, nulls: NullBuffer },
}

impl Column {
    fn encode(mut a: ArrayRef) -> Column {
        let a = &mut a;
        match a.data_type() {
            DataType::UInt64 if a.null_count() == 0 => {
                Self::offsets(a.as_primitive::<UInt64Type>().values(), a)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) if a.null_count() == 0 => {
                let v = a.as_primitive::<TimestampMillisecondType>().values();
                // order-preserving map of i64 onto u64, so min/max and offsets are unsigned
                let u: Vec<u64> = v.iter().map(|&x| (x as u64) ^ (1 << 63)).collect();
                Self::offsets(&u, a)
            }
            DataType::Dictionary(k, _) if **k == DataType::UInt16 => {
                let d = a.as_dictionary::<UInt16Type>();
                let keys = if d.values().len() <= 256 {
                    let k8: PrimitiveArray<UInt8Type> = PrimitiveArray::new(
                        d.keys().values().iter().map(|&k| k as u8).collect(),
                        None,
                    );
                    Arc::new(k8) as ArrayRef
                } else {
                    Arc::new(PrimitiveArray::<UInt16Type>::new(
                        d.keys().values().clone(),
                        None,
                    ))
                };
                Self::dict(keys, d.keys().nulls(), d.values(), a.data_type())
            }
            DataType::Dictionary(k, _) if **k == DataType::UInt8 => {
                let d = a.as_dictionary::<UInt8Type>();
                let keys = PrimitiveArray::<UInt8Type>::new(d.keys().values().clone(), None);
                Self::dict(Arc::new(keys), d.keys().nulls(), d.values(), a.data_type())
            }
            DataType::Utf8 | DataType::Float64 if a.null_count() > 0 => {
                let nulls = a.nulls().expect("null_count > 0").clone();
                Column::Sparse {
                    values: strip_nulls(compact(a, &nulls)),
                    nulls,
                }
            }
            _ => {
                // builders grow by doubling: give the slack back before the batch lives on
                a.shrink_to_fit();
                Column::Plain(a.clone())
            }
        }
    }

    /// Frame of reference over `v` (the column's values as order-preserving `u64`); the
    /// column `a` as it is when its range needs 64 bits.
    fn offsets(v: &[u64], a: &ArrayRef) -> Column {
        let (min, max) = v
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let min = min.min(max); // empty: (0, 0)
        match Narrow::new(v.iter().map(|&x| x - min), max - min) {
            Some(offsets) => Column::Offsets {
                base: min,
                offsets,
                data_type: a.data_type().clone(),
            },
            None => Column::Plain(a.clone()),
        }
    }

    fn dict(
        keys: ArrayRef,
        nulls: Option<&NullBuffer>,
        values: &ArrayRef,
        data_type: &DataType,
    ) -> Column {
        let (keys, nulls) = match nulls {
            Some(n) if n.null_count() > 0 => (compact(&keys, n), Some(n.clone())),
            _ => (keys, None),
        };
        Column::Dict {
            keys,
            nulls,
            values: values.clone(),
            data_type: data_type.clone(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Column::Plain(a) => a.get_array_memory_size(),
            Column::Offsets { offsets, .. } => offsets.bytes(),
            Column::Dict {
                keys,
                nulls,
                values,
                ..
            } => {
                keys.get_array_memory_size()
                    + nulls.as_ref().map_or(0, |n| n.buffer().capacity())
                    + values.get_array_memory_size()
            }
            Column::Sparse { values, nulls } => {
                values.get_array_memory_size() + nulls.buffer().capacity()
            }
        }
    }

    fn decode(&self) -> ArrayRef {
        match self {
            Column::Plain(a) => a.clone(),
            Column::Offsets {
                base,
                offsets,
                data_type,
            } => {
                let v = offsets.widen(*base);
                match data_type {
                    DataType::UInt64 => Arc::new(PrimitiveArray::<UInt64Type>::new(v, None)),
                    timestamp => {
                        let i: ScalarBuffer<i64> =
                            v.iter().map(|&x| (x ^ (1 << 63)) as i64).collect();
                        Arc::new(
                            PrimitiveArray::<TimestampMillisecondType>::new(i, None)
                                .with_data_type(timestamp.clone()),
                        )
                    }
                }
            }
            Column::Dict {
                keys,
                nulls,
                values,
                data_type,
            } => {
                let keys = match nulls {
                    Some(n) => scatter(keys, n),
                    None => keys.clone(),
                };
                let DataType::Dictionary(kt, _) = data_type else {
                    unreachable!("Dict columns are built from dictionary arrays")
                };
                if **kt == DataType::UInt8 {
                    let k = keys.as_primitive::<UInt8Type>().clone();
                    Arc::new(
                        DictionaryArray::<UInt8Type>::try_new(k, values.clone())
                            .expect("keys were valid when encoded"),
                    )
                } else {
                    let k = match keys.data_type() {
                        DataType::UInt8 => keys
                            .as_primitive::<UInt8Type>()
                            .unary::<_, UInt16Type>(|k| k as u16),
                        _ => keys.as_primitive::<UInt16Type>().clone(),
                    };
                    Arc::new(
                        DictionaryArray::<UInt16Type>::try_new(k, values.clone())
                            .expect("keys were valid when encoded"),
                    )
                }
            }
            Column::Sparse { values, nulls } => scatter(values, nulls),
        }
    }
}

/// The array's values at the valid positions of `nulls`, in order.
fn compact(a: &ArrayRef, nulls: &NullBuffer) -> ArrayRef {
    let mask = BooleanArray::new(nulls.inner().clone(), None);
    filter(a.as_ref(), &mask).expect("mask has the array's length")
}

/// Drops an all-valid null buffer (what `filter` leaves on a nullable input).
fn strip_nulls(a: ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Utf8 => {
            let (offsets, values, _) = a.as_string::<i32>().clone().into_parts();
            Arc::new(StringArray::new(offsets, values, None))
        }
        DataType::Float64 => {
            let v = a.as_primitive::<Float64Type>().values().clone();
            Arc::new(PrimitiveArray::<Float64Type>::new(v, None))
        }
        _ => a,
    }
}

/// Spreads compacted `values` back over the rows of `nulls`: the inverse of [`compact`].
fn scatter(values: &ArrayRef, nulls: &NullBuffer) -> ArrayRef {
    fn prim<T: ArrowPrimitiveType>(values: &ArrayRef, nulls: &NullBuffer) -> ArrayRef {
        let v = values.as_primitive::<T>();
        let mut it = v.values().iter();
        let out: ScalarBuffer<T::Native> = nulls
            .iter()
            .map(|ok| {
                if ok {
                    *it.next().expect("one value per valid row")
                } else {
                    T::Native::default()
                }
            })
            .collect();
        Arc::new(
            PrimitiveArray::<T>::new(out, Some(nulls.clone()))
                .with_data_type(v.data_type().clone()),
        )
    }
    match values.data_type() {
        DataType::Utf8 => {
            let s = values.as_string::<i32>();
            let mut lens = s.offsets().lengths();
            let offsets = OffsetBuffer::<i32>::from_lengths(nulls.iter().map(|ok| {
                if ok {
                    lens.next().expect("one value per valid row")
                } else {
                    0
                }
            }));
            Arc::new(StringArray::new(
                offsets,
                s.values().clone(),
                Some(nulls.clone()),
            ))
        }
        DataType::Float64 => prim::<Float64Type>(values, nulls),
        DataType::UInt8 => prim::<UInt8Type>(values, nulls),
        DataType::UInt16 => prim::<UInt16Type>(values, nulls),
        other => unreachable!("no sparse encoding for {other}"),
    }
}

/// An immutable batch of events in the compact encoding.
#[derive(Debug)]
pub struct SealedBatch {
    schema: SchemaRef,
    rows: usize,
    columns: Vec<Column>,
}

impl SealedBatch {
    /// Encodes `batch`; [`SealedBatch::decode`] gives it back exactly. Columns kept as they
    /// are lose their spare capacity (when `batch` is their only owner).
    pub fn encode(batch: RecordBatch) -> SealedBatch {
        let rows = batch.num_rows();
        let (schema, columns, _) = batch.into_parts();
        SealedBatch {
            schema,
            rows,
            columns: columns.into_iter().map(Column::encode).collect(),
        }
    }

    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Bytes held by the encoded buffers.
    pub fn memory_size(&self) -> usize {
        self.columns.iter().map(Column::bytes).sum()
    }

    /// The batch, or only the `projection` columns of it, as plain Arrow.
    pub fn decode(&self, projection: Option<&[usize]>) -> RecordBatch {
        let all: Vec<usize>;
        let idx = match projection {
            Some(p) => p,
            None => {
                all = (0..self.columns.len()).collect();
                &all
            }
        };
        let schema = Arc::new(
            self.schema
                .project(idx)
                .expect("projection indexes the events schema"),
        );
        let cols = idx.iter().map(|&i| self.columns[i].decode()).collect();
        RecordBatch::try_new_with_options(
            schema,
            cols,
            &RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )
        .expect("decoded columns match the encoded schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Float64Array, StringDictionaryBuilder, TimestampMillisecondArray, UInt64Array,
    };
    use arrow::datatypes::{Field, Schema};

    fn batch(n: usize, ts_step: i64, dict_card: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("seq", DataType::UInt64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("id", DataType::Utf8, false),
            Field::new("pass", DataType::Utf8, true),
            Field::new(
                "loc",
                DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("value", DataType::Float64, true),
        ]));
        let seq = UInt64Array::from_iter_values((0..n as u64).map(|i| 1_000_000 + i * 3));
        let ts = TimestampMillisecondArray::from_iter_values(
            (0..n as i64).map(|i| -5_000 + i * ts_step),
        )
        .with_timezone("UTC");
        let id = StringArray::from_iter_values((0..n).map(|i| format!("e{i}")));
        let pass = StringArray::from_iter((0..n).map(|i| (i % 3 != 0).then(|| format!("P{i}"))));
        let mut loc = StringDictionaryBuilder::<UInt16Type>::new();
        for i in 0..n {
            if i % 4 == 1 {
                loc.append_null();
            } else {
                loc.append_value(format!("l{}", i % dict_card));
            }
        }
        let value =
            Float64Array::from_iter((0..n).map(|i| (i % 10 == 0).then_some(i as f64 / 4.0)));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(seq),
                Arc::new(ts),
                Arc::new(id),
                Arc::new(pass),
                Arc::new(loc.finish()),
                Arc::new(value),
            ],
        )
        .unwrap()
    }

    #[test]
    fn decode_gives_back_exactly_what_was_encoded() {
        // narrow and wide ranges, small and large dictionaries, empty
        for (n, step, card) in [
            (1000, 1, 5),
            (1000, 1_000, 300),
            (70_000, 100_000, 40),
            (10, i64::MAX / 20, 2),
            (0, 1, 1),
        ] {
            let b = batch(n, step, card);
            let s = SealedBatch::encode(b.clone());
            assert_eq!(s.num_rows(), n);
            assert_eq!(s.decode(None), b, "n={n} step={step} card={card}");
            let p = s.decode(Some(&[4, 0]));
            assert_eq!(p, b.project(&[4, 0]).unwrap());
        }
    }

    #[test]
    fn encoding_is_smaller_than_plain_arrow() {
        let b = batch(60_000, 7, 8);
        let plain: usize = b.columns().iter().map(|c| c.get_array_memory_size()).sum();
        let s = SealedBatch::encode(b);
        // seq/ts fit in 32 bits, keys in 8, a third of pass and most values are null
        assert!(
            s.memory_size() * 10 < plain * 7,
            "{} encoded vs {plain} plain",
            s.memory_size()
        );
    }
}
