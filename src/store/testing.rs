//! Helpers for the store's unit tests: a store without the background collector (tests
//! collect when they choose), and closing one so that its file can be reopened.

use std::sync::Arc;
use std::time::Duration;

use super::{Action, Precondition, Store, StoreOptions, Target, WriteRequest};
use crate::fhir::{Id, ResourceType};
use crate::search::SearchIndexer;

pub fn open(path: &std::path::Path) -> Store {
    let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
    Store::open(path, options, Arc::new(SearchIndexer)).unwrap()
}

/// Drops `store` and waits until its writer has released the file.
pub fn close(store: Store) {
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// An update (create or replace) of `resource_type/id` with `body` (a JSON object).
pub fn put(resource_type: ResourceType, id: &str, body: serde_json::Value) -> WriteRequest {
    let serde_json::Value::Object(resource) = body else { panic!("a resource is a JSON object") };
    WriteRequest::single(Action::Update {
        resource_type,
        target: Target::Id(Id::parse(id).unwrap()),
        resource,
        precondition: Precondition::default(),
    })
}
