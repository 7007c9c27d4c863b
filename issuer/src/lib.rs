//! passpulse issuer: pass templates, signed Apple Wallet `.pkpass` files and the certificates
//! that sign them, Google Wallet save links, the pass registry (JetStream key-value), the
//! issuing API and Apple's PassKit web service, APNs update pushes, and the automation flows that
//! issue, deliver and update passes from bus events. Every lifecycle signal it sees goes on the
//! event bus for the engine to count.

pub mod automation;
pub mod certs;
pub mod google;
pub mod google_api;
pub mod google_callback;
pub mod http;
pub mod lifecycle;
pub mod pkpass;
pub mod push;
mod rate_limit;
pub mod registry;
pub mod service;
pub mod template;

pub use certs::SigningIdentity;
pub use pkpass::{PassError, PassRequest, build_pkpass};
pub use service::{Issuer, IssuerConfig};
pub use template::Template;
