//! Result encodings of the query API: `json` (an array of row objects), `jsonl`, `csv`, `arrow`
//! (IPC stream) and `parquet` (ZSTD). Every encoder writes into a shared buffer that the HTTP
//! layer drains after each batch, so large results stream batch by batch in bounded memory.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::csv;
use datafusion::arrow::datatypes::SchemaRef;
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
            Inner::Csv(w) => w.write(batch),
            Inner::Arrow(w) => w.write(batch),
            Inner::Parquet(w) => w
                .write(batch)
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
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
