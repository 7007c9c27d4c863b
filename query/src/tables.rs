//! DataFusion table providers over the live engine: `events` (the hot store's current snapshot)
//! and the aggregate tables (`install_base`, `location_peaks`, …), each materialised from the
//! engine's state when a query is planned. A query therefore sees one consistent snapshot.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use passpulse_engine::{Engine, TableName, schema::events_schema};

/// `events`: every event the engine holds.
#[derive(Debug)]
pub struct EventsTable {
    engine: Engine,
}

impl EventsTable {
    pub fn new(engine: Engine) -> Self {
        EventsTable { engine }
    }
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        events_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snap = self.engine.hot_snapshot();
        let n = state.config().target_partitions().max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (i, b) in snap.batches().enumerate() {
            parts[i % n].push(b.clone());
        }
        Ok(MemorySourceConfig::try_new_exec(
            &parts,
            self.schema(),
            projection.cloned(),
        )?)
    }
}

/// A live aggregate table.
#[derive(Debug)]
pub struct AggregateTable {
    engine: Engine,
    name: TableName,
}

impl AggregateTable {
    pub fn new(engine: Engine, name: TableName) -> Self {
        AggregateTable { engine, name }
    }
}

#[async_trait]
impl TableProvider for AggregateTable {
    fn schema(&self) -> SchemaRef {
        self.name.schema()
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
        let batch = self.engine.table(self.name);
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}
