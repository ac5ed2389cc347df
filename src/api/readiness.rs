//! Whether this replica can decide: the limit store answers and the catalog
//! is loaded. gRPC health (`crate::server`) and `GET /readyz`
//! (`super::http`) both report this one condition.

use std::sync::Arc;

use crate::catalog::store::CatalogService;
use crate::store::{LimitStore, Store};

/// The store and the catalog, asked whether they are ready.
#[derive(Clone)]
pub struct Readiness {
    store: Store,
    catalog: Arc<CatalogService>,
}

impl Readiness {
    /// Readiness of `store` and `catalog`.
    pub fn new(store: Store, catalog: Arc<CatalogService>) -> Self {
        Self { store, catalog }
    }

    /// Whether the limit store can answer now.
    pub fn store_ready(&self) -> bool {
        self.store.is_ready()
    }

    /// Whether the catalog has been loaded.
    pub fn catalog_ready(&self) -> bool {
        self.catalog.is_ready()
    }

    /// Both: gRPC health's SERVING, `/readyz`'s 200.
    pub fn ready(&self) -> bool {
        self.store_ready() && self.catalog_ready()
    }

    /// The limit store: `memory` or `redis`, and with Redis its mode
    /// (`single`, `cluster`, `sentinel`).
    pub fn store_kind(&self) -> (&'static str, Option<&'static str>) {
        match &self.store {
            Store::Memory(_) => (self.store.name(), None),
            Store::Redis(r) => (self.store.name(), Some(r.mode().as_str())),
        }
    }

    /// The catalog's current snapshot (no I/O).
    pub fn catalog_snapshot(&self) -> Arc<crate::catalog::snapshot::Catalog> {
        self.catalog.snapshot()
    }

    /// The catalog's version (for the `tollgate_catalog_version` gauge).
    pub fn catalog_version(&self) -> u64 {
        self.catalog.version()
    }
}
