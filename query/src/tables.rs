//! DataFusion table providers over the live engine: `events` (Parquet files ∪ the hot store, from
//! one engine snapshot) and the aggregate tables (`install_base`, `location_peaks`, …), each
//! materialised from the engine's state when a query is planned. A query therefore sees one
//! consistent snapshot: a flush swaps rows from memory to disk in a single step, so no row is
//! missing or counted twice.
//!
//! The file list comes from the engine, not from listing directories, so new files are visible at
//! once and no listing cache can hide them. Filters prune whole files by their recorded `ts` and
//! `seq` ranges before the scan is built, then row groups and pages inside the Parquet reader.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::{PrunableStatistics, PruningStatistics};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::object_store::{self as object_store, ObjectMeta};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use passpulse_engine::deadletters::DeadLetterLog;
use passpulse_engine::persist::{DataFile, FileSet};
use passpulse_engine::schema::UTC;
use passpulse_engine::store::HotSnapshot;
use passpulse_engine::{Engine, TableName, schema::events_schema};

/// Column positions used for file statistics.
const SEQ: usize = 0;
const TS: usize = 4;

/// `events`: every event the engine holds, on disk and in memory.
#[derive(Debug)]
pub struct EventsTable {
    engine: Engine,
}

impl EventsTable {
    pub fn new(engine: Engine) -> Self {
        EventsTable { engine }
    }
}

/// File statistics as the pruner sees them: `ts` and `seq` from the checkpoint, every other
/// column unknown. (DataFusion's `PrunableStatistics` logs a warning per file list and query
/// when asked for a column whose values are all unknown; this answers `None` without asking.)
struct FileRanges(PrunableStatistics);

impl FileRanges {
    fn known(c: &Column) -> bool {
        matches!(c.name(), "ts" | "seq")
    }
}

impl PruningStatistics for FileRanges {
    fn min_values(&self, c: &Column) -> Option<ArrayRef> {
        Self::known(c).then(|| self.0.min_values(c)).flatten()
    }

    fn max_values(&self, c: &Column) -> Option<ArrayRef> {
        Self::known(c).then(|| self.0.max_values(c)).flatten()
    }

    fn num_containers(&self) -> usize {
        self.0.num_containers()
    }

    fn null_counts(&self, c: &Column) -> Option<ArrayRef> {
        Self::known(c).then(|| self.0.null_counts(c)).flatten()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.0.row_counts()
    }

    #[allow(clippy::mutable_key_type)] // the trait's signature
    fn contained(&self, _c: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// What DataFusion may know about a file without opening it.
fn file_statistics(schema: &SchemaRef, f: &DataFile) -> Statistics {
    let mut s = Statistics::new_unknown(schema);
    s.num_rows = Precision::Exact(f.rows as usize);
    s.total_byte_size = Precision::Inexact(f.bytes as usize);
    let ts = |v| ScalarValue::TimestampMillisecond(Some(v), Some(UTC.into()));
    s.column_statistics[TS].min_value = Precision::Exact(ts(f.min_ts));
    s.column_statistics[TS].max_value = Precision::Exact(ts(f.max_ts));
    s.column_statistics[TS].null_count = Precision::Exact(0);
    s.column_statistics[SEQ].min_value = Precision::Exact(ScalarValue::UInt64(Some(f.min_seq)));
    s.column_statistics[SEQ].max_value = Precision::Exact(ScalarValue::UInt64(Some(f.max_seq)));
    s.column_statistics[SEQ].null_count = Precision::Exact(0);
    s
}

impl EventsTable {
    fn parquet_scan(
        &self,
        state: &dyn Session,
        files: &FileSet,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let schema = self.schema();
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(e) => Some(state.create_physical_expr(e, &DFSchema::try_from(schema.clone())?)?),
            None => None,
        };
        let stats: Vec<Arc<Statistics>> = files
            .files
            .iter()
            .map(|f| Arc::new(file_statistics(&schema, f)))
            .collect();
        // files whose ts/seq ranges cannot match the filters are not scanned at all
        let keep = match &predicate {
            Some(p) => match PruningPredicateBuilder::new()
                .with_file_schema(schema.clone())
                .try_build(p.clone())
            {
                Ok(pp) => pp.prune(&FileRanges(PrunableStatistics::new(
                    stats.clone(),
                    schema.clone(),
                )))?,
                Err(_) => vec![true; files.files.len()],
            },
            None => vec![true; files.files.len()],
        };
        let parts: Vec<PartitionedFile> = files
            .files
            .iter()
            .zip(stats)
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|((f, st), _)| {
                Ok(
                    PartitionedFile::new_from_meta(file_meta(&files.abs_path(f), f.bytes)?)
                        .with_statistics(st),
                )
            })
            .collect::<Result<_>>()?;
        if parts.is_empty() {
            return Ok(None);
        }
        let mut src = ParquetSource::new(schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone());
        if let Some(p) = predicate {
            src = src.with_predicate(p);
        }
        let groups = FileGroup::new(parts).split_files(state.config().target_partitions().max(1));
        let cfg = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(src))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .build();
        Ok(Some(DataSourceExec::from_data_source(cfg)))
    }
}

/// The object-store location of a data file. Built from the absolute path the way the local
/// object store reads it back (percent-encoding round-trips), so a data directory with spaces,
/// `%` or non-ASCII characters in its path is read correctly.
fn file_meta(abs: &std::path::Path, size: u64) -> Result<ObjectMeta> {
    let location = object_store::path::Path::from_absolute_path(abs)
        .map_err(|e| DataFusionError::Internal(format!("data file {}: {e}", abs.display())))?;
    Ok(ObjectMeta {
        location,
        last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        size,
        e_tag: None,
        version: None,
    })
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        events_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // used for pruning only: DataFusion still applies every filter to the rows
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snap = self.engine.hot_snapshot();
        let n = state.config().target_partitions().max(1);
        let schema = Arc::new(match projection {
            Some(p) => self.schema().project(p)?,
            None => self.schema().as_ref().clone(),
        });
        let batches = snap.batch_count();
        let parts: Vec<Arc<dyn PartitionStream>> = (0..n.min(batches.max(1)))
            .map(|p| {
                Arc::new(HotPartition {
                    snap: snap.clone(),
                    batches: (p..batches).step_by(n).collect(),
                    projection: projection.cloned(),
                    schema: schema.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let mem = Arc::new(StreamingTableExec::try_new(
            schema,
            parts,
            None,
            [],
            false,
            None,
        )?);
        match self.parquet_scan(state, &snap.files, filters, projection)? {
            Some(disk) => UnionExec::try_new(vec![disk, mem]),
            None => Ok(mem),
        }
    }
}

/// One partition of the hot store's part of a scan: the batches `i ≡ p (mod n)` of a snapshot,
/// each decoded (only the projected columns) when the stream reaches it, so a scan never holds
/// more than one decoded batch per partition.
#[derive(Debug)]
struct HotPartition {
    snap: Arc<HotSnapshot>,
    batches: Vec<usize>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
}

impl PartitionStream for HotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let snap = self.snap.clone();
        let projection = self.projection.clone();
        let batches = (self.batches.clone().into_iter())
            .map(move |i| Ok(snap.batch(i, projection.as_deref())));
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

/// A table materialised from live engine state each time a query is planned: the aggregate
/// tables (`install_base`, `location_peaks`, …) and `dead_letters`.
pub struct LiveTable {
    schema: SchemaRef,
    read: Box<dyn Fn() -> RecordBatch + Send + Sync>,
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl LiveTable {
    /// An aggregate table of the engine.
    pub fn aggregate(engine: Engine, name: TableName) -> Self {
        LiveTable {
            schema: name.schema(),
            read: Box::new(move || engine.table(name)),
        }
    }

    /// `dead_letters`: the recent refused events (newest 10,000), with reason, error, subject,
    /// sequence and a prefix of their bytes.
    pub fn dead_letters(engine: Engine) -> Self {
        LiveTable {
            schema: DeadLetterLog::schema(),
            read: Box::new(move || engine.dead_letter_log().batch()),
        }
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![(self.read)()]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}
