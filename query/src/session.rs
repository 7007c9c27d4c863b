//! The query service: one DataFusion `SessionContext` with every passpulse table registered, a
//! bounded memory pool, no URL tables, no file-listing cache, and its own Tokio runtime so a heavy
//! query cannot starve ingest. Statements are planned, checked read-only, then executed under a
//! deadline that covers planning and every batch of execution.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use passpulse_engine::{Engine, TableName};

use crate::insights::{INSIGHTS, InsightSettings, PASS_ORIGIN_VIEW};
use crate::tables::{EventsTable, LiveTable};

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
    /// Threads of the query runtime (and DataFusion partitions).
    pub threads: usize,
    /// Most bytes one response may carry.
    pub max_result_bytes: usize,
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
        let ctx = SessionContext::new_with_config_rt(session_cfg, rt_env);
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1))
            .thread_name("passpulse-query")
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("query runtime: {e}")))?;
        Ok(Arc::new(QueryService {
            ctx,
            cfg,
            runtime: Some(runtime),
        }))
    }

    pub fn config(&self) -> &QueryConfig {
        &self.cfg
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
        let state = self.ctx.state();
        let mut plan = state
            .create_logical_plan(sql)
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
        let df = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| QueryError::from_df(e, &self.cfg))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| QueryError::from_df(e, &self.cfg))?;
        Ok((schema, stream))
    }

    pub(crate) fn map_err(&self, e: DataFusionError) -> QueryError {
        QueryError::from_df(e, &self.cfg)
    }
}
