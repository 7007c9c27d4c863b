//! passpulse query layer: the DataFusion session over the live engine (and, later, Parquet),
//! the read-only HTTP SQL API with streaming result formats, the insights and live-stats
//! endpoints, and the dashboard page.

pub mod dashboard;
pub mod format;
pub mod http;
pub mod insights;
pub mod metrics;
pub mod session;
pub mod tables;

pub use http::{QueryState, error_response, router};
pub use metrics::QueryMetrics;
pub use session::{QueryConfig, QueryError, QueryService};
