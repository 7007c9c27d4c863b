//! passpulse query layer: the DataFusion session over the live engine (and, later, Parquet),
//! the read-only HTTP SQL API with streaming result formats, the insights and live-stats
//! endpoints, and the dashboard page.

pub mod bounded_functions;
pub mod dashboard;
pub mod format;
pub mod guard;
pub mod http;
pub mod insights;
pub mod limits;
pub mod metrics;
pub mod session;
pub mod tables;
mod watchdog;

pub use http::{QueryState, error_response, router};
pub use limits::SqlLimits;
pub use metrics::QueryMetrics;
pub use session::{QueryConfig, QueryError, QueryService};
pub use watchdog::default_process_ceiling;
