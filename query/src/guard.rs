//! Stops a running query from inside its plan: every operator of a physical plan is wrapped in a
//! [`GuardExec`] that, between two batches, ends the query if it was cancelled (deadline, memory
//! ceiling, client gone) or if the batch it just received is over the batch size limit.
//!
//! Why: aborting the query's task only takes effect when the task yields, and an operator that
//! computes a big batch (a projection doubling a string, a join's output) does not yield in
//! between. Checking at each operator boundary bounds the work done after a cancellation to the
//! batch an operator is computing, and refuses batches whose size nothing else tracks.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::bounded_functions::ValueTooLarge;

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

/// Wraps every operator of the plan in a [`GuardExec`]; runs last.
#[derive(Debug, Default)]
pub(crate) struct GuardRule;

impl PhysicalOptimizerRule for GuardRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            Ok(Transformed::yes(
                Arc::new(GuardExec::new(p)) as Arc<dyn ExecutionPlan>
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

#[derive(Debug, Clone)]
pub(crate) struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
}

impl GuardExec {
    fn new(input: Arc<dyn ExecutionPlan>) -> GuardExec {
        GuardExec { input }
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
            (Some(input), true) => Ok(Arc::new(GuardExec::new(input))),
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
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
            .sum::<usize>();
        if bytes > self.stop.max_batch_bytes {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                what: "an operator's batch".into(),
                estimate: bytes as u64,
                limit: self.stop.max_batch_bytes as u64,
            })));
        }
        Ok(())
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
