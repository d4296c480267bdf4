//! `Swap<T>`: a value shared by many threads and replaced whole (the
//! access and recipient tables, and on SIGHUP the whole set of settings a
//! session or a delivery runs with, see `app::Generation`).
//!
//! Readers take the current `Arc` and keep it for as long as they need:
//! a reload never changes a value under a reader, so a session or a
//! delivery in flight finishes on the settings it started with, and the
//! old value is freed when its last reader lets go.

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(t: T) -> Swap<T> {
        Swap::from_arc(Arc::new(t))
    }

    pub fn from_arc(t: Arc<T>) -> Swap<T> {
        Swap(RwLock::new(t))
    }

    /// The current value (a poisoned lock still holds a whole `Arc`: the
    /// write below cannot panic half-way).
    pub fn load(&self) -> Arc<T> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn store(&self, t: T) {
        self.store_arc(Arc::new(t));
    }

    /// Replaces the value; readers from now on get `t`.
    pub fn store_arc(&self, t: Arc<T>) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = t;
    }
}
