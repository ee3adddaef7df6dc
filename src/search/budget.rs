//! A work budget for one search: every index entry it visits and every probe it makes is
//! charged, and a search that runs out (or past its deadline) stops with a clear "too costly"
//! OperationOutcome instead of occupying a worker for as long as the data makes it.
//!
//! [`Budgeted`] wraps the snapshot's [`IndexView`], so the planner, chains, `_has`, counting,
//! sorting and includes are all bounded by the same budget without each checking on its own.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::store::{IndexHit, IndexView};

/// The deadline is looked at once per this many units of work (reading the clock costs).
const CLOCK_EVERY: u64 = 1024;

/// How much one search may do.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Index entries visited plus probes made.
    pub work: u64,
    pub time: Duration,
}

/// An [`IndexView`] that charges every visited entry and probe to a [`Budget`].
pub struct Budgeted<'v> {
    inner: &'v dyn IndexView,
    budget: Budget,
    used: Cell<u64>,
    deadline: Instant,
    exhausted: Cell<bool>,
}

impl<'v> Budgeted<'v> {
    pub fn new(inner: &'v dyn IndexView, budget: Budget) -> Self {
        Budgeted {
            inner,
            budget,
            used: Cell::new(0),
            deadline: Instant::now() + budget.time,
            exhausted: Cell::new(false),
        }
    }

    /// Units of work used so far.
    pub fn used(&self) -> u64 {
        self.used.get()
    }

    /// Charges `units`; false once the budget or the time is used up.
    fn charge(&self, units: u64) -> bool {
        let before = self.used.get();
        let after = before.saturating_add(units);
        self.used.set(after);
        let over_time = before / CLOCK_EVERY != after / CLOCK_EVERY && Instant::now() > self.deadline;
        if after > self.budget.work || over_time {
            self.exhausted.set(true);
        }
        !self.exhausted.get()
    }

    fn too_costly(&self) -> FhirError {
        FhirError::new(
            Category::Incorrect,
            IssueCode::TooCostly,
            format!(
                "the search needs more work than one request may take (more than {} index entries or {} ms); \
                 add a more selective parameter, or ask for fewer results (_count, no _total, no _sort)",
                self.budget.work,
                self.budget.time.as_millis()
            ),
        )
    }

    fn check(&self) -> Result<(), FhirError> {
        if self.exhausted.get() { Err(self.too_costly()) } else { Ok(()) }
    }

    /// Runs a scan whose visitor is charged one unit per entry and stopped when the budget runs
    /// out; the scan then fails as too costly.
    fn scan(
        &self,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
        run: impl FnOnce(&mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>) -> Result<(), FhirError>,
    ) -> Result<(), FhirError> {
        self.check()?;
        let mut charged = |hit: IndexHit<'_>| if self.charge(1) { visit(hit) } else { ControlFlow::Break(()) };
        run(&mut charged)?;
        self.check()
    }

    fn scan_ids(
        &self,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
        run: impl FnOnce(&mut dyn FnMut(&str, u64) -> ControlFlow<()>) -> Result<(), FhirError>,
    ) -> Result<(), FhirError> {
        self.check()?;
        let mut charged =
            |id: &str, version: u64| if self.charge(1) { visit(id, version) } else { ControlFlow::Break(()) };
        run(&mut charged)?;
        self.check()
    }
}

impl IndexView for Budgeted<'_> {
    fn scan_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        after: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        self.scan(visit, |charged| self.inner.scan_index(resource_type, param, lo, hi, after, t, charged))
    }

    fn probe(
        &self,
        resource_type: ResourceType,
        id: &str,
        version: u64,
        param: &str,
    ) -> Result<Vec<Vec<u8>>, FhirError> {
        if !self.charge(1) {
            return Err(self.too_costly());
        }
        self.inner.probe(resource_type, id, version, param)
    }

    fn scan_type_rev(
        &self,
        resource_type: ResourceType,
        before: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        self.scan_ids(visit, |charged| self.inner.scan_type_rev(resource_type, before, t, charged))
    }

    fn scan_index_rev(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        before: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        self.scan(visit, |charged| self.inner.scan_index_rev(resource_type, param, lo, hi, before, t, charged))
    }

    fn count_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        t: u64,
    ) -> Result<usize, FhirError> {
        // Counting reads keys without decoding them, a few dozen times cheaper than a visit.
        self.check()?;
        let count = self.inner.count_index(resource_type, param, lo, hi, t)?;
        if !self.charge(count as u64 / 32 + 1) {
            return Err(self.too_costly());
        }
        Ok(count)
    }

    fn has_value(
        &self,
        resource_type: ResourceType,
        param: &str,
        value: &[u8],
        id: &str,
        version: u64,
        t: u64,
    ) -> Result<bool, FhirError> {
        if !self.charge(1) {
            return Err(self.too_costly());
        }
        self.inner.has_value(resource_type, param, value, id, version, t)
    }

    fn scan_type(
        &self,
        resource_type: ResourceType,
        after: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        self.scan_ids(visit, |charged| self.inner.scan_type(resource_type, after, t, charged))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::fhir::Id;
    use crate::search::SearchIndexer;
    use crate::search::engine::{self, Driver};
    use crate::search::query::parse_clause;
    use crate::store::{Action, Precondition, Store, StoreOptions, Target, WriteOp, WriteRequest};

    /// 600 patients: every third one female, every fifth born in 1990.
    fn store(dir: &std::path::Path) -> Store {
        let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
        let store = Store::open(&dir.join("budget.redb"), options, Arc::new(SearchIndexer)).unwrap();
        let ops = (0..600)
            .map(|n| {
                let serde_json::Value::Object(resource) = json!({"resourceType": "Patient", "id": format!("p{n}"),
                    "gender": if n % 3 == 0 { "female" } else { "male" },
                    "birthDate": if n % 5 == 0 { "1990-01-01" } else { "1980-01-01" }})
                else {
                    unreachable!()
                };
                WriteOp {
                    full_url: None,
                    action: Action::Update {
                        resource_type: ResourceType::PATIENT,
                        target: Target::Id(Id::parse(&format!("p{n}")).unwrap()),
                        resource,
                        precondition: Precondition::default(),
                    },
                }
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(store.write(WriteRequest { ops, ..Default::default() })).unwrap();
        store
    }

    #[test]
    fn a_search_past_its_budget_fails_as_too_costly_and_within_it_gives_the_same_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let snapshot = store.snapshot().unwrap();
        let index = snapshot.index();
        let patient = ResourceType::PATIENT;
        let clauses = vec![
            parse_clause(patient, "gender", "female", "").unwrap().unwrap(),
            parse_clause(patient, "birthdate", "1990", "").unwrap().unwrap(),
        ];
        let (query, _) = engine::Query::plan(&index, patient, &clauses, snapshot.t()).unwrap();
        let unbounded = engine::count(&query).unwrap();
        assert_eq!(unbounded, 40, "every fifteenth of 600");

        let roomy = Budgeted::new(&index, Budget { work: 100_000, time: Duration::from_secs(10) });
        assert_eq!(engine::count(&engine::Query { view: &roomy, ..query }).unwrap(), 40);
        assert!(roomy.used() >= 120, "at least the driver's 120 entries were charged: {}", roomy.used());

        let tight = Budgeted::new(&index, Budget { work: 50, time: Duration::from_secs(10) });
        let error = engine::count(&engine::Query { view: &tight, ..query }).unwrap_err();
        assert_eq!(error.status(), 400);
        let outcome = error.to_operation_outcome();
        assert_eq!(outcome["issue"][0]["code"], "too-costly");
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("more than 50 index entries"));
        // Every later call on an exhausted budget fails too: nothing half-done is reported.
        assert!(engine::Query::plan(&tight, patient, &clauses, snapshot.t()).is_err());
    }

    #[test]
    fn the_estimate_covers_the_whole_query_not_just_its_driver() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let snapshot = store.snapshot().unwrap();
        let index = snapshot.index();
        let patient = ResourceType::PATIENT;
        // gender=male has 400 entries (below the sample size): the estimate is exact.
        let clauses = vec![
            parse_clause(patient, "gender", "male", "").unwrap().unwrap(),
            parse_clause(patient, "birthdate", "1980", "").unwrap().unwrap(),
        ];
        let query = engine::Query {
            view: &index,
            resource_type: patient,
            clauses: &clauses,
            driver: Driver::Clause(0),
            t: snapshot.t(),
        };
        let estimate = engine::estimate(&query).unwrap();
        assert_eq!(estimate, engine::count(&query).unwrap());
        assert_eq!(estimate, 320);
        // Sampled from the first 100 of the driver's 400 candidates: close to 320.
        let sampled = engine::estimate_sampled(&query, 100).unwrap();
        assert!((280..=360).contains(&sampled), "{sampled}");
        // A type scan over 600 resources with a :not clause: also below the sample, exact.
        let negated = vec![parse_clause(patient, "gender:not", "female", "").unwrap().unwrap()];
        let scan = engine::Query { clauses: &negated, driver: Driver::TypeScan, ..query };
        assert_eq!(engine::estimate(&scan).unwrap(), 400);
    }
}
