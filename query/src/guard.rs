//! Stops a running query from inside its plan: every operator of a physical plan is wrapped in a
//! [`GuardExec`] that, between two batches, ends the query if it was cancelled (deadline, memory
//! ceiling, client gone) or if the batch it just received is over the batch size limit; and the
//! computed expressions of projections, filters and nested-loop join filters are wrapped in a
//! [`GuardExpr`] that does the same check before each evaluation and refuses a value over the
//! limit as soon as one is computed.
//!
//! Why: aborting the query's task only takes effect when the task yields, and an operator that
//! computes a big batch (a projection doubling a string, a join's output) does not yield in
//! between. Checking at each operator boundary bounds the work done after a cancellation to the
//! batch an operator is computing, and refuses batches whose size nothing else tracks. Two shapes
//! do their work inside one batch: a nested-loop join whose filter keeps nothing evaluates its
//! filter over the whole build side without returning, and `s || s` nested through a chain of
//! CTEs doubles a value at every level of one expression. The expression guard reaches both: the
//! join stops at its next filter evaluation, the expression at its next level.
//!
//! The rule runs after every other optimizer rule: the rebuilt operators' plan properties (a
//! filter's inferred constants, its selectivity estimate) may then be less precise than the
//! originals', which changes what EXPLAIN shows, never the plan chosen.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::bounded_functions::{ValueTooLarge, array_bytes};

/// The per-query stop conditions, carried to the operators in the session config.
#[derive(Debug)]
pub struct QueryStop {
    cancelled: AtomicBool,
    deadline: Option<Instant>,
    trips: Option<watch::Receiver<u64>>,
    max_batch_bytes: usize,
}

/// Why an operator ended the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("query stopped at its deadline")]
    Deadline,
    #[error("query stopped: the process passed its memory ceiling")]
    Memory,
    #[error("query cancelled")]
    Cancelled,
}

impl QueryStop {
    /// Stops at `deadline`, when `trips` changes, or on [`QueryStop::cancel`].
    pub fn new(
        deadline: Option<Instant>,
        trips: Option<watch::Receiver<u64>>,
        max_batch_bytes: usize,
    ) -> QueryStop {
        QueryStop {
            cancelled: AtomicBool::new(false),
            deadline,
            trips,
            max_batch_bytes,
        }
    }

    /// Refuses `bytes` of one value or batch over the limit (`query.max_value_mb`).
    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_batch_bytes as u64 {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                what: what.into(),
                estimate: bytes,
                limit: self.max_batch_bytes as u64,
            })));
        }
        Ok(())
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> Option<Stopped> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Stopped::Deadline)
        } else if self
            .trips
            .as_ref()
            .is_some_and(|t| t.has_changed().unwrap_or(false))
        {
            Some(Stopped::Memory)
        } else if self.cancelled.load(Ordering::Relaxed) {
            Some(Stopped::Cancelled)
        } else {
            None
        }
    }
}

/// Where a plan's guards find their query's [`QueryStop`]: set by the first [`GuardExec`] the
/// query executes (the root), read by every guard of the plan.
type StopSlot = Arc<OnceLock<Arc<QueryStop>>>;

/// Wraps every operator of the plan in a [`GuardExec`], and the computed expressions of
/// projections, filters and nested-loop join filters in [`GuardExpr`]s; runs last.
#[derive(Debug, Default)]
pub(crate) struct GuardRule;

impl PhysicalOptimizerRule for GuardRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let slot = StopSlot::default();
        plan.transform_up(|p| {
            let p = guard_expressions(p, &slot)?;
            Ok(Transformed::yes(
                Arc::new(GuardExec::new(p, slot.clone())) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "passpulse_guard"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `p` with its computed expressions guarded, if it is an operator that evaluates them.
fn guard_expressions(p: Arc<dyn ExecutionPlan>, slot: &StopSlot) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(proj) = p.downcast_ref::<ProjectionExec>() {
        let exprs: Vec<ProjectionExpr> = proj
            .expr()
            .iter()
            .map(|e| {
                Ok(ProjectionExpr {
                    expr: guard_tree(&e.expr, slot)?,
                    alias: e.alias.clone(),
                })
            })
            .collect::<Result<_>>()?;
        let schema = proj.schema();
        return Ok(Arc::new(ProjectionExec::try_new_with_schema_metadata(
            exprs,
            proj.input().clone(),
            &schema,
        )?));
    }
    if let Some(f) = p.downcast_ref::<FilterExec>() {
        let predicate = guard_tree(f.predicate(), slot)?;
        return Ok(Arc::new(
            FilterExecBuilder::from(f)
                .with_predicate(predicate)
                .build()?,
        ));
    }
    if let Some(j) = p.downcast_ref::<NestedLoopJoinExec>()
        && let Some(filter) = j.filter()
    {
        let guarded = JoinFilter::new(
            guard_tree(filter.expression(), slot)?,
            filter.column_indices().to_vec(),
            filter.schema().clone(),
        );
        return Ok(Arc::new(
            datafusion::physical_plan::joins::NestedLoopJoinExecBuilder::new(
                j.left().clone(),
                j.right().clone(),
                *j.join_type(),
            )
            .with_filter(Some(guarded))
            .with_projection_ref(j.projection().clone())
            .build()?,
        ));
    }
    Ok(p)
}

/// Wraps every computed node of `e` (not its columns and literals, which compute nothing) in a
/// [`GuardExpr`].
fn guard_tree(e: &Arc<dyn PhysicalExpr>, slot: &StopSlot) -> Result<Arc<dyn PhysicalExpr>> {
    e.clone()
        .transform_up(|n| {
            if n.is::<Column>() || n.is::<Literal>() || n.is::<GuardExpr>() {
                return Ok(Transformed::no(n));
            }
            Ok(Transformed::yes(Arc::new(GuardExpr {
                inner: n,
                slot: slot.clone(),
            }) as Arc<dyn PhysicalExpr>))
        })
        .map(|t| t.data)
}

/// An expression node that checks its query's stop conditions before it evaluates, and refuses
/// a value over the batch size limit once computed. Transparent otherwise (type, display,
/// ordering properties).
#[derive(Debug)]
pub(crate) struct GuardExpr {
    inner: Arc<dyn PhysicalExpr>,
    slot: StopSlot,
}

impl PartialEq for GuardExpr {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for GuardExpr {}

impl Hash for GuardExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state)
    }
}

impl fmt::Display for GuardExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl PhysicalExpr for GuardExpr {
    fn data_type(&self, input_schema: &Schema) -> Result<datafusion::arrow::datatypes::DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let stop = self.slot.get();
        if let Some(why) = stop.and_then(|s| s.stopped()) {
            return Err(DataFusionError::External(Box::new(why)));
        }
        let value = self.inner.evaluate(batch)?;
        if let (Some(stop), ColumnarValue::Array(a)) = (stop, &value) {
            stop.check_size("an expression's value", array_bytes(&a.to_data()))?;
        }
        Ok(value)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match (children.pop(), children.is_empty()) {
            (Some(inner), true) => Ok(Arc::new(GuardExpr {
                inner,
                slot: self.slot.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "GuardExpr takes one child".into(),
            )),
        }
    }

    fn get_properties(
        &self,
        children: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<datafusion::logical_expr::sort_properties::ExprProperties> {
        children
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("GuardExpr takes one child".into()))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    slot: StopSlot,
}

impl GuardExec {
    fn new(input: Arc<dyn ExecutionPlan>, slot: StopSlot) -> GuardExec {
        GuardExec { input, slot }
    }
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuardExec")
    }
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &str {
        "GuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(GuardExec::new(input, self.slot.clone()))),
            _ => Err(DataFusionError::Internal(
                "GuardExec takes one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stop = context.session_config().get_extension::<QueryStop>();
        if let Some(stop) = &stop {
            // the plan is this query's own: its expression guards read the same stop
            let _ = self.slot.set(stop.clone());
        }
        let input = self.input.execute(partition, context)?;
        match stop {
            Some(stop) => Ok(Box::pin(GuardStream {
                schema: input.schema(),
                input,
                stop,
            })),
            None => Ok(input),
        }
    }
}

struct GuardStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    stop: Arc<QueryStop>,
}

impl GuardStream {
    fn check(&self, batch: &RecordBatch) -> Result<()> {
        let bytes = batch
            .columns()
            .iter()
            .map(|c| array_bytes(&c.to_data()))
            .fold(0u64, u64::saturating_add);
        self.stop.check_size("an operator's batch", bytes)
    }
}

impl Stream for GuardStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(why) = self.stop.stopped() {
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(why)))));
        }
        let item = self.input.poll_next_unpin(cx);
        match item {
            Poll::Ready(Some(Ok(batch))) => match self.check(&batch) {
                Ok(()) => match self.stop.stopped() {
                    Some(why) => Poll::Ready(Some(Err(DataFusionError::External(Box::new(why))))),
                    None => Poll::Ready(Some(Ok(batch))),
                },
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            other => other,
        }
    }
}

impl RecordBatchStream for GuardStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
