//! passpulse issuer: pass templates, .pkpass signing, Google Wallet save links, the PassKit web
//! service and APNs pushes. Lands with its own issue; the crate exists so the workspace layout
//! and dependency direction (issuer → ingest → engine) are fixed from the start.
