//! Result encodings of the query API: `json` (an array of row objects), `jsonl`, `csv`, `arrow`
//! (IPC stream) and `parquet` (ZSTD). Every encoder writes into a shared buffer that the HTTP
//! layer drains after each batch, so large results stream batch by batch in bounded memory.
//!
//! CSV is written to be opened in a spreadsheet safely, as OWASP's "CSV Injection" guidance
//! recommends: a text cell (string columns and the header) that begins with `=`, `+`, `-`, `@`,
//! a tab or a carriage return gets a leading `'`, so Excel, LibreOffice and Google Sheets show it
//! as text instead of running it as a formula; that includes text that looks like a negative
//! number (`"-1"` in a string column is written `"'-1"`), since a spreadsheet cannot tell it from
//! `-1+cmd|…`. Numeric columns are never touched (`-3.5` stays the number `-3.5`). Every
//! non-numeric field is quoted (quotes doubled), so a line break inside a value stays inside its
//! cell and cannot start a row. A reader that needs the raw values uses `json`, `jsonl`, `arrow`
//! or `parquet`.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::{self, writer::JsonArray, writer::LineDelimited};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use parking_lot::Mutex;

/// An output format of `/api/v1/query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Jsonl,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "arrow" => Some(Format::Arrow),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// A `Write` whose contents can be taken while the writer that owns a clone keeps going.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Json(json::Writer<SharedBuf, JsonArray>),
    Jsonl(json::Writer<SharedBuf, LineDelimited>),
    Csv(csv::Writer<SharedBuf>),
    Arrow(StreamWriter<SharedBuf>),
    Parquet(ArrowWriter<SharedBuf>),
}

pub struct Encoder {
    inner: Inner,
    buf: SharedBuf,
    schema: SchemaRef,
    wrote_any: bool,
}

impl Encoder {
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Encoder, ArrowError> {
        let buf = SharedBuf::default();
        let inner = match format {
            Format::Json => Inner::Json(
                json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, JsonArray>(buf.clone()),
            ),
            Format::Jsonl => Inner::Jsonl(
                json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, LineDelimited>(buf.clone()),
            ),
            Format::Csv => Inner::Csv(
                csv::WriterBuilder::new()
                    .with_header(true)
                    .with_quote_style(csv::QuoteStyle::NonNumeric)
                    .build(buf.clone()),
            ),
            Format::Arrow => Inner::Arrow(StreamWriter::try_new(buf.clone(), schema)?),
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                Inner::Parquet(
                    ArrowWriter::try_new(buf.clone(), schema.clone(), Some(props))
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?,
                )
            }
        };
        Ok(Encoder {
            inner,
            buf,
            schema: schema.clone(),
            wrote_any: false,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.wrote_any = true;
        match &mut self.inner {
            Inner::Json(w) => w.write(batch),
            Inner::Jsonl(w) => w.write(batch),
            Inner::Csv(w) => w.write(&spreadsheet_safe(batch)?),
            Inner::Arrow(w) => w.write(batch),
            Inner::Parquet(w) => w
                .write(batch)
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
        }
    }

    /// Bytes encoded but not yet handed to [`Encoder::take`]: Parquet's row group in progress
    /// (an estimate of its encoded size); 0 for the formats that write each batch at once.
    pub fn pending_bytes(&self) -> usize {
        match &self.inner {
            Inner::Parquet(w) => w.in_progress_size(),
            _ => 0,
        }
    }

    /// Bytes encoded since the last call.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.0.lock())
    }

    /// Finishes the encoding (closing brackets, IPC end marker, Parquet footer).
    pub fn finish(mut self) -> Result<Vec<u8>, ArrowError> {
        if !self.wrote_any && matches!(self.inner, Inner::Csv(_)) {
            // an empty result still gets its header line
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.write(&empty)?;
        }
        match self.inner {
            Inner::Json(mut w) => w.finish()?,
            Inner::Jsonl(mut w) => w.finish()?,
            Inner::Csv(_) => {}
            Inner::Arrow(mut w) => w.finish()?,
            Inner::Parquet(w) => {
                w.close()
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            }
        }
        Ok(std::mem::take(&mut *self.buf.0.lock()))
    }
}

/// Whether a spreadsheet would read `cell` as a formula (OWASP's list of leading characters).
fn runs_as_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// `cell`, prefixed with `'` if a spreadsheet would run it.
fn neutralise(cell: &str) -> Cow<'_, str> {
    if runs_as_formula(cell) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_text(values),
        _ => false,
    }
}

/// `batch` with every text cell and column name neutralised for spreadsheets; a column with
/// nothing to change is kept as it is (no copy).
fn spreadsheet_safe(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let column = if is_text(column.data_type()) {
            safe_text(column)?
        } else {
            column.clone()
        };
        fields.push(Field::new(
            neutralise(field.name()),
            column.data_type().clone(),
            field.is_nullable(),
        ));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A text column (any string or dictionary-of-string type) with its formula-like cells prefixed.
fn safe_text(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let strings = cast(column, &DataType::Utf8)?;
    let strings = strings.as_string::<i32>();
    if !strings.iter().flatten().any(runs_as_formula) {
        return Ok(column.clone());
    }
    let safe: StringArray = strings.iter().map(|v| v.map(neutralise)).collect();
    Ok(Arc::new(safe))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{
        DictionaryArray, Float64Array, Int64Array, LargeStringArray, StringViewArray,
    };
    use datafusion::arrow::datatypes::Int32Type;

    use super::*;

    fn csv_of(batch: &RecordBatch) -> String {
        let mut enc = Encoder::new(Format::Csv, &batch.schema()).unwrap();
        enc.write(batch).unwrap();
        String::from_utf8(enc.finish().unwrap()).unwrap()
    }

    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_neutralised() {
        let hostile = [
            Some("=HYPERLINK(\"http://x\")"),
            Some("=1+2"),
            Some("+1"),
            Some("-1"),
            Some("@SUM(A1)"),
            Some("\tx"),
            Some("\r\nx"),
            Some("<script>"),
            Some("a=b, \"c\""),
            None,
        ];
        let n = hostile.len();
        let dict: DictionaryArray<Int32Type> = hostile.iter().copied().collect();
        let batch = RecordBatch::try_from_iter([
            (
                "customer",
                Arc::new(StringArray::from(hostile.to_vec())) as ArrayRef,
            ),
            ("source", Arc::new(dict) as ArrayRef),
            (
                "large",
                Arc::new(LargeStringArray::from(hostile.to_vec())) as ArrayRef,
            ),
            (
                "view",
                Arc::new(StringViewArray::from(hostile.to_vec())) as ArrayRef,
            ),
            (
                "value",
                Arc::new(Float64Array::from(vec![-3.5; n])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![-7; n])) as ArrayRef),
            (
                "=label",
                Arc::new(StringArray::from(vec!["ok"; n])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = csv_of(&batch);
        let want_cells = [
            "\"'=HYPERLINK(\"\"http://x\"\")\"",
            "\"'=1+2\"",
            "\"'+1\"",
            "\"'-1\"",
            "\"'@SUM(A1)\"",
            "\"'\tx\"",
            "\"'\r\nx\"",
            "\"<script>\"",
            "\"a=b, \"\"c\"\"\"",
            "\"\"",
        ];
        let mut want = String::from(
            "\"customer\",\"source\",\"large\",\"view\",\"value\",\"n\",\"'=label\"\n",
        );
        for cell in want_cells {
            // the same cell in each of the four text types; the numbers stay bare numbers
            want.push_str(&format!("{cell},{cell},{cell},{cell},-3.5,-7,\"ok\"\n"));
        }
        assert_eq!(out, want);
    }

    #[test]
    fn csv_columns_with_nothing_to_neutralise_are_not_copied() {
        let col: ArrayRef = Arc::new(StringArray::from(vec!["email", "sms"]));
        let safe = safe_text(&col).unwrap();
        assert!(Arc::ptr_eq(&col, &safe));
        // an empty result still gets its (neutralised) header line
        let schema = Arc::new(Schema::new(vec![Field::new("-x", DataType::Utf8, true)]));
        let enc = Encoder::new(Format::Csv, &schema).unwrap();
        assert_eq!(enc.finish().unwrap(), b"\"'-x\"\n");
    }
}
