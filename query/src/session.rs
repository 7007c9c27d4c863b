//! The query service: one DataFusion `SessionContext` with every passpulse table registered, a
//! bounded memory pool, no URL tables, no file-listing cache, and its own Tokio runtime so a heavy
//! query cannot starve ingest. Statements are parsed and checked against the shape limits
//! ([`crate::limits`]), planned, checked read-only, then executed; the HTTP layer holds the
//! deadline and the process memory ceiling ([`crate::watchdog`]) from outside the query runtime.
//!
//! The query runtime's threads have a large stack (`QUERY_STACK_BYTES`): DataFusion's planner
//! and the traits derived on its trees recurse once per level, a stack overflow aborts the whole
//! process, and the shape limits are set well inside what this stack was measured to take.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use passpulse_engine::{Engine, TableName};

use crate::bounded_functions::{self, ValueTooLarge};
use crate::guard::{GuardRule, QueryStop, Stopped};
use crate::insights::{INSIGHTS, InsightSettings, PASS_ORIGIN_VIEW};
use crate::limits::{self, ShapeError, SqlLimits};
use crate::tables::{EventsTable, LiveTable};
use crate::watchdog::MemoryWatch;

/// Stack of each query runtime thread. Only the pages a query touches become resident.
const QUERY_STACK_BYTES: usize = 256 << 20;

/// Query runtime threads per DataFusion partition (`query.threads`).
const WORKERS_PER_PARTITION: usize = 4;

/// Views over `events` registered with every session: (name, SQL).
pub const VIEWS: [(&str, &str); 1] = [(
    "segments",
    // each member's newest `segment.entered` (event time, then stream order) is where they are
    "SELECT program, customer, segment, since FROM (\
       SELECT program, customer, result AS segment, ts AS since, \
              row_number() OVER (PARTITION BY program, customer ORDER BY ts DESC, seq DESC) AS rn \
       FROM events WHERE type = 'segment.entered') \
     WHERE rn = 1",
)];

/// Limits and sizing of the query service.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory the query engine may reserve for operators (hash tables, sorts).
    pub memory_limit: usize,
    /// Wall-clock limit of one query, planning and execution together.
    pub timeout: Duration,
    /// DataFusion partitions of one query; the query runtime has `WORKERS_PER_PARTITION` times
    /// as many threads.
    pub threads: usize,
    /// Most bytes one response may carry.
    pub max_result_bytes: usize,
    /// Limits on a statement's shape, checked before planning.
    pub limits: SqlLimits,
    /// Most bytes one call of a function whose output size the query chooses (`repeat`,
    /// `lpad`, `array_repeat`, `range`, …) may build for one batch.
    pub max_value_bytes: usize,
    /// Resident size of the whole process above which running queries are stopped (0: off).
    pub max_process_bytes: usize,
    /// Numbers the insights use (letter cost, silent period).
    pub insights: InsightSettings,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_limit: 1 << 30,
            timeout: Duration::from_secs(30),
            threads: 2,
            max_result_bytes: 1 << 30,
            limits: SqlLimits::default(),
            max_value_bytes: 64 << 20,
            max_process_bytes: 0,
            insights: InsightSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "the SQL endpoint is read-only: only SELECT, EXPLAIN, SHOW and DESCRIBE are accepted ({0})"
    )]
    ReadOnly(String),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Shape(ShapeError),
    #[error("{0}")]
    ValueTooLarge(String),
    #[error(
        "the server's memory passed its {} MiB ceiling for queries (query.max_process_mb) while \
         this query ran, so it was stopped: retry later, or ask for less (filters, LIMIT, \
         aggregates)", .0 >> 20
    )]
    ProcessMemory(usize),
    #[error("{0}")]
    Execution(String),
    #[error(
        "query exceeded the {limit}-byte memory limit: add filters, aggregate earlier or add a LIMIT ({detail})"
    )]
    Memory { limit: usize, detail: String },
    #[error(
        "query exceeded the {:.1} s time limit and was stopped: narrow the time range or add a LIMIT", .0.as_secs_f64()
    )]
    Timeout(Duration),
    #[error("result exceeded the {0}-byte limit: add a LIMIT or aggregate")]
    TooLarge(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    fn from_df(e: DataFusionError, cfg: &QueryConfig) -> Self {
        let root = e.find_root();
        match root {
            DataFusionError::External(inner) if inner.is::<Stopped>() => {
                match inner.downcast_ref::<Stopped>() {
                    Some(Stopped::Deadline) => QueryError::Timeout(cfg.timeout),
                    Some(Stopped::Memory) => QueryError::ProcessMemory(cfg.max_process_bytes),
                    _ => QueryError::Execution(inner.to_string()),
                }
            }
            DataFusionError::External(inner) if inner.is::<ValueTooLarge>() => {
                QueryError::ValueTooLarge(inner.to_string())
            }
            DataFusionError::ResourcesExhausted(m) => QueryError::Memory {
                limit: cfg.memory_limit,
                detail: m.clone(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => QueryError::Plan(root.to_string()),
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
                QueryError::Execution(root.to_string())
            }
            _ => QueryError::Internal(e.to_string()),
        }
    }
}

/// The query service shared by HTTP handlers.
pub struct QueryService {
    ctx: SessionContext,
    cfg: QueryConfig,
    runtime: Option<tokio::runtime::Runtime>,
    memory: MemoryWatch,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryService")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Drop for QueryService {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl QueryService {
    pub fn new(engine: Engine, cfg: QueryConfig) -> Result<Arc<Self>, QueryError> {
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(cfg.memory_limit),
            std::num::NonZeroUsize::new(3).expect("3 > 0"),
        );
        let rt_env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            // Parquet files appear under a running server: never cache directory listings.
            .with_object_list_cache_limit(0)
            // No spilling: a query is bounded by the memory limit and never fills the disk.
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let mut session_cfg = SessionConfig::new()
            .with_target_partitions(cfg.threads.max(1))
            .with_information_schema(true)
            .with_default_catalog_and_schema("passpulse", "public");
        // `CAST(… AS VARCHAR)` yields Utf8, as the tables' own strings. As Utf8View, every
        // batch sliced from an aggregate's output carries the whole output's string buffers, the
        // memory pool charges each batch for them, and a sort of 700k passes is refused under
        // 1 GiB (measured in BENCHMARKS.md). Utf8 is also what every Arrow client reads.
        session_cfg
            .options_mut()
            .sql_parser
            .map_string_types_to_utf8view = false;
        session_cfg.options_mut().sql_parser.recursion_limit =
            datafusion::config::ConfigNonZeroUsize::try_new(cfg.limits.max_nesting.max(1))
                .map_err(|e| QueryError::Internal(e.to_string()))?;
        // A recursive CTE's iterations are not bounded by anything DataFusion offers and its
        // fan-out builds batches outside the memory pool: refused (400), documented in README.
        session_cfg.options_mut().execution.enable_recursive_ctes = false;
        let state = SessionStateBuilder::new()
            .with_config(session_cfg)
            .with_runtime_env(rt_env)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(GuardRule))
            .with_analyzer_rule(Arc::new(bounded_functions::BoundStringConcat::new(
                cfg.max_value_bytes,
            )))
            .build();
        let ctx = SessionContext::new_with_state(state);
        bounded_functions::register(&ctx, cfg.max_value_bytes)
            .map_err(|e| QueryError::Internal(format!("bounded functions: {e}")))?;
        let reg = |name: &str, t: Arc<dyn datafusion::catalog::TableProvider>| {
            ctx.register_table(name, t)
                .map(|_| ())
                .map_err(|e| QueryError::Internal(e.to_string()))
        };
        reg("events", Arc::new(EventsTable::new(engine.clone())))?;
        reg(
            "dead_letters",
            Arc::new(LiveTable::dead_letters(engine.clone())),
        )?;
        for t in TableName::ALL {
            reg(
                t.as_str(),
                Arc::new(LiveTable::aggregate(engine.clone(), t)),
            )?;
        }
        let views = VIEWS
            .iter()
            .chain([&PASS_ORIGIN_VIEW])
            .map(|(name, sql)| (name.to_string(), sql.to_string()))
            .chain(
                INSIGHTS
                    .iter()
                    .map(|i| (i.view_name(), i.view_sql(&cfg.insights))),
            );
        for (name, sql) in views {
            // planning only reads table schemas: no I/O, so it can be driven here
            let plan = futures::executor::block_on(ctx.state().create_logical_plan(&sql))
                .map_err(|e| QueryError::Internal(format!("view {name}: {e}")))?;
            reg(
                &name,
                Arc::new(datafusion::datasource::ViewTable::new(plan, Some(sql))),
            )?;
        }
        // Some operators keep their thread inside one batch for long (a nested-loop join whose
        // filter keeps nothing loops over its whole build side without yielding). Spare threads
        // let the OS share the cores with the other queries instead of queueing them behind.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1) * WORKERS_PER_PARTITION)
            .thread_name("passpulse-query")
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("query runtime: {e}")))?;
        let memory = MemoryWatch::start(cfg.max_process_bytes);
        Ok(Arc::new(QueryService {
            ctx,
            cfg,
            runtime: Some(runtime),
            memory,
        }))
    }

    pub fn config(&self) -> &QueryConfig {
        &self.cfg
    }

    /// Changes when the process passes its memory ceiling from now on, and the ceiling.
    pub(crate) fn memory_trips(&self) -> (tokio::sync::watch::Receiver<u64>, usize) {
        (self.memory.subscribe(), self.memory.ceiling())
    }

    /// Handle of the dedicated query runtime.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
            .clone()
    }

    /// Plans `sql`, refuses anything that is not read-only, and starts execution.
    /// Call on the query runtime.
    pub async fn start(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        self.start_with(sql, Vec::new()).await
    }

    /// [`QueryService::start`] with values for the statement's named parameters (`$name`).
    pub async fn start_with(
        &self,
        sql: &str,
        params: Vec<(String, ScalarValue)>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let stop = QueryStop::new(None, None, self.cfg.max_value_bytes);
        self.start_stoppable(sql, params, Arc::new(stop)).await
    }

    /// [`QueryService::start_with`], whose operators end the query when `stop` says so.
    pub async fn start_stoppable(
        &self,
        sql: &str,
        params: Vec<(String, ScalarValue)>,
        stop: Arc<QueryStop>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let statement = limits::parse_checked(sql, &self.cfg.limits).map_err(|e| match e {
            ShapeError::Syntax(m) => QueryError::Plan(m),
            e => QueryError::Shape(e),
        })?;
        if !matches!(
            statement,
            DfStatement::Statement(_) | DfStatement::Explain(_)
        ) {
            return Err(QueryError::ReadOnly(format!(
                "refused {}",
                statement
                    .to_string()
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
            )));
        }
        let mut state = self.ctx.state();
        state.config_mut().set_extension(stop);
        let mut plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| QueryError::from_df(e, &self.cfg))?;
        if !params.is_empty() {
            plan = plan
                .with_param_values(params)
                .map_err(|e| QueryError::from_df(e, &self.cfg))?;
        }
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| QueryError::ReadOnly(e.find_root().to_string()))?;
        let df = DataFrame::new(state, plan);
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| QueryError::from_df(e, &self.cfg))?;
        Ok((schema, stream))
    }

    /// Stop conditions for a query: `deadline`, the memory ceiling, and the batch size limit.
    pub(crate) fn query_stop(&self, deadline: std::time::Instant) -> Arc<QueryStop> {
        Arc::new(QueryStop::new(
            Some(deadline),
            Some(self.memory.subscribe()),
            self.cfg.max_value_bytes,
        ))
    }

    pub(crate) fn map_err(&self, e: DataFusionError) -> QueryError {
        QueryError::from_df(e, &self.cfg)
    }
}
