//! passpulse issuer: pass templates, signed Apple Wallet `.pkpass` files and the certificates
//! that sign them. The PassKit web service, the pass registry, APNs pushes and Google Wallet
//! links build on these (see the issuer issue for what is still to come).

pub mod certs;
pub mod google;
pub mod pkpass;
pub mod template;

pub use certs::SigningIdentity;
pub use pkpass::{PassError, PassRequest, build_pkpass};
pub use template::Template;
