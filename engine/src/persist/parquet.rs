//! Parquet files of the `events` table: rows sorted by (ts, seq), split into one file per UTC
//! month (`events/month=YYYY-MM/`), ZSTD-compressed, with page statistics of the time columns
//! and the sort order recorded, so time filters prune files, row groups and pages. The Arrow schema is embedded, so
//! dictionary columns read back as dictionaries; DuckDB, pyarrow or Spark read the files as they
//! are.

use std::fs::File;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::fsio::{commit, create_tmp};
use super::{DataFile, PersistError, partition_dir};
use crate::schema::events_schema;
use crate::time;

/// Column positions in the events schema.
const SEQ: usize = 0;
pub(crate) const TS: usize = 4;

/// Rows interleaved per step: within the 16-bit dictionary keys, so merging the dictionaries of
/// many source batches can never overflow.
const CHUNK_ROWS: usize = u16::MAX as usize;

/// Columns written without min/max statistics (every column but `seq`, `ingested_at`, `ts`).
const NO_STATISTICS: [&str; 15] = [
    "id", "type", "pass", "program", "customer", "device", "platform", "location", "operator",
    "source", "campaign", "offer", "value", "result", "attrs",
];

/// Writer settings for events files.
pub fn writer_properties(row_group_rows: usize, zstd_level: i32) -> WriterProperties {
    let level = ZstdLevel::try_new(zstd_level).unwrap_or_default();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: TS as i32,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: SEQ as i32,
                descending: false,
                nulls_first: false,
            },
        ]))
        .set_created_by(format!("passpulse {}", env!("CARGO_PKG_VERSION")));
    // sorted integers: deltas compress far better than dictionaries
    for name in ["seq", "ingested_at", "ts"] {
        let c = ColumnPath::from(name);
        b = b
            .set_column_dictionary_enabled(c.clone(), false)
            .set_column_encoding(c, Encoding::DELTA_BINARY_PACKED);
    }
    // ids are unique: a dictionary is pure cost; they share prefixes, which prefix deltas keep
    let id = ColumnPath::from("id");
    b = b
        .set_column_dictionary_enabled(id.clone(), false)
        .set_column_encoding(id, Encoding::DELTA_BYTE_ARRAY);
    // serials, customer and device ids have as many values as rows have owners: interning each
    // value costs more than the few bytes a page dictionary saves after ZSTD
    for name in ["pass", "customer", "device"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    // min/max of the other columns cannot prune: files and pages are cut by time, so each holds
    // every type, location and programme of its period, and ids spread over the whole range.
    // Computing them (two string comparisons per value and column) was a sixth of a flush.
    for name in NO_STATISTICS {
        b = b.set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
    }
    b.build()
}

/// Writes the rows of `batches` (events schema) sorted by (ts, seq), one file per UTC month, named
/// `<stem>-<k>.parquet` under `root`. Files are durable when this returns.
pub fn write_sorted(
    root: &Path,
    stem: &str,
    batches: &[RecordBatch],
    props: &WriterProperties,
) -> Result<Vec<DataFile>, PersistError> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut keys: Vec<(i64, u64, u32, u32)> = Vec::with_capacity(total);
    for (bi, b) in batches.iter().enumerate() {
        let ts = b.column(TS).as_primitive::<TimestampMillisecondType>();
        let seq = b.column(SEQ).as_primitive::<UInt64Type>();
        for r in 0..b.num_rows() {
            keys.push((ts.value(r), seq.value(r), bi as u32, r as u32));
        }
    }
    // events usually arrive in time order: then the keys are sorted already
    if !keys.is_sorted() {
        keys.sort_unstable();
    }
    // Events usually arrive in time order: then each month is a run of whole rows of the input,
    // written as zero-copy slices instead of gathered row by row.
    let in_order = keys.windows(2).all(|w| (w[0].2, w[0].3) < (w[1].2, w[1].3));
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let day = time::day(keys[start].0);
        let month_end = time::month_bounds(day).1 as i64 * time::DAY_MS;
        let len = keys[start..].partition_point(|k| k.0 < month_end);
        let group = &keys[start..start + len];
        let rel = format!("{}/{stem}-{}.parquet", partition_dir(day), out.len());
        let path = root.join(&rel);
        let bytes = write_file(&path, &refs, group, in_order, props)?;
        out.push(DataFile {
            path: rel,
            day,
            rows: group.len() as u64,
            bytes,
            min_ts: group[0].0,
            max_ts: group[group.len() - 1].0,
            min_seq: group.iter().map(|k| k.1).min().unwrap_or(0),
            max_seq: group.iter().map(|k| k.1).max().unwrap_or(0),
        });
        start += len;
    }
    Ok(out)
}

fn write_file(
    path: &Path,
    batches: &[&RecordBatch],
    rows: &[(i64, u64, u32, u32)],
    in_order: bool,
    props: &WriterProperties,
) -> Result<u64, PersistError> {
    let (tmp, file) = create_tmp(path)?;
    let pq_err = |e: &dyn std::fmt::Display| {
        let _ = std::fs::remove_file(&tmp);
        PersistError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    };
    let mut w = ArrowWriter::try_new(&file, events_schema(), Some(props.clone()))
        .map_err(|e| pq_err(&e))?;
    if in_order {
        // rows is a contiguous run of the input, from (b0, r0) to (b1, r1) inclusive
        let (first, last) = (rows[0], rows[rows.len() - 1]);
        for bi in first.2..=last.2 {
            let b = batches[bi as usize];
            let from = if bi == first.2 { first.3 as usize } else { 0 };
            let to = if bi == last.2 {
                last.3 as usize + 1
            } else {
                b.num_rows()
            };
            w.write(&b.slice(from, to - from)).map_err(|e| pq_err(&e))?;
        }
        w.close().map_err(|e| pq_err(&e))?;
        return commit(&tmp, file, path);
    }
    let mut idx = Vec::with_capacity(CHUNK_ROWS.min(rows.len()));
    for chunk in rows.chunks(CHUNK_ROWS) {
        idx.clear();
        idx.extend(chunk.iter().map(|k| (k.2 as usize, k.3 as usize)));
        let rb = interleave_record_batch(batches, &idx).map_err(|e| pq_err(&e))?;
        w.write(&rb).map_err(|e| pq_err(&e))?;
    }
    w.close().map_err(|e| pq_err(&e))?;
    commit(&tmp, file, path)
}

/// Reads a whole events file back (for compaction and checks).
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>, PersistError> {
    let f = File::open(path).map_err(|e| PersistError::io(path, e))?;
    let err = |e: &dyn std::fmt::Display| PersistError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| err(&e))?
        .with_batch_size(CHUNK_ROWS)
        .build()
        .map_err(|e| err(&e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| err(&e))?;
        if b.schema() != events_schema() {
            return Err(err(&"schema differs from the events schema"));
        }
        out.push(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodedBatch, decode_line};
    use crate::store::HotStore;
    use std::time::Duration;

    #[test]
    fn rows_come_back_sorted_and_split_by_month() {
        let mut b = DecodedBatch::new();
        // three months (days 0, 40 and 80 of 1970, and the last hour of January), out of order,
        // with a high-cardinality location
        for i in 0..5_000u64 {
            let ts = match i as i64 * 7_919 % 4 {
                3 => 31 * time::DAY_MS - 3_600_000,
                k => k * 40 * time::DAY_MS,
            } + (i as i64 % 1000) * 1000;
            let line = format!(
                r#"{{"id":"e{i}","type":"scan","ts":{ts},"pass":"p{i}","location":"l{i}","device":"d","operator":"o"}}"#
            );
            decode_line(line.as_bytes(), 1, i + 1, &mut b).unwrap();
        }
        let mut s = HotStore::new(Duration::from_secs(3600));
        for e in b.iter() {
            s.append(&e, 1);
        }
        let batches: Vec<_> = s.take_for_flush().iter().map(|b| b.decode(None)).collect();
        let dir = tempfile::tempdir().unwrap();
        let props = writer_properties(1024, 3);
        let files = write_sorted(dir.path(), "part-1", &batches, &props).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 5_000);
        for f in &files {
            assert!(
                f.path
                    .starts_with(&format!("events/month={}/", time::format_month(f.day)))
            );
            assert_eq!(f.partition(), crate::persist::partition_dir(f.day));
            let (first, next) = time::month_bounds(f.day);
            let back = read_file(&dir.path().join(&f.path)).unwrap();
            let mut last = (i64::MIN, 0u64);
            let mut n = 0;
            for rb in &back {
                let ts = rb.column(TS).as_primitive::<TimestampMillisecondType>();
                let seq = rb.column(SEQ).as_primitive::<UInt64Type>();
                for r in 0..rb.num_rows() {
                    let k = (ts.value(r), seq.value(r));
                    assert!(k > last, "sorted by (ts, seq)");
                    assert!((first..next).contains(&time::day(k.0)));
                    last = k;
                    n += 1;
                }
            }
            assert_eq!(n, f.rows);
            assert_eq!(f.day, time::day(f.min_ts));
            assert_eq!((f.min_ts, f.max_ts), {
                let first = back[0]
                    .column(TS)
                    .as_primitive::<TimestampMillisecondType>();
                (first.value(0), last.0)
            });
        }
        // in-order input takes the zero-copy path and gives the same rows
        let mut b = DecodedBatch::new();
        for i in 0..3_000u64 {
            let line = format!(
                r#"{{"id":"o{i}","type":"scan","ts":{},"pass":"p","location":"l","device":"d","operator":"o"}}"#,
                i as i64 * 3_000_000
            );
            decode_line(line.as_bytes(), 1, i + 1, &mut b).unwrap();
        }
        let mut s = HotStore::new(Duration::from_secs(3600));
        for (k, e) in b.iter().enumerate() {
            s.append(&e, 1);
            if k == 1_000 {
                s.take_for_flush(); // two sealed batches
            }
        }
        let batches: Vec<_> = s.take_for_flush().iter().map(|b| b.decode(None)).collect();
        assert_eq!(batches.len(), 2);
        let files = write_sorted(dir.path(), "part-2", &batches, &props).unwrap();
        assert_eq!(files.len(), 4, "3,000 events 50 min apart span 4 months");
        let mut n = 0;
        for f in &files {
            for rb in read_file(&dir.path().join(&f.path)).unwrap() {
                let ts = rb.column(TS).as_primitive::<TimestampMillisecondType>();
                for r in 0..rb.num_rows() {
                    assert_eq!(ts.value(r), n * 3_000_000);
                    n += 1;
                }
            }
        }
        assert_eq!(n, 3_000);
        assert!(
            crate::persist::fsio::walk(dir.path())
                .iter()
                .all(|p| !p.to_string_lossy().ends_with(".tmp")),
            "no temp file left"
        );
    }
}
