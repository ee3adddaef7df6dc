//! Chained parameters (`subject:Patient.name=peter`) and reverse chaining
//! (`_has:Observation:patient:code=1234-5`).
//!
//! Both are resolved when the search runs, on its snapshot and logical time: the inner search
//! is executed first, and its result becomes an ordinary clause of the outer one (exact
//! `Type/id` values of the reference parameter, or exact `_id` values), which the planner then
//! treats like any other.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::engine;
use super::query::{Clause, code_without_system, exact, parse_clause};
use super::registry::{ParamKind, registry};
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::store::IndexView;

/// Inner searches stop contributing beyond this many matches: a chain that selects more is
/// too broad to be a useful filter, and the client is told so.
pub const MAX_CHAIN_MATCHES: usize = 10_000;

/// The most links one parameter may follow: each `.` of a chain and each `_has:` counts as one
/// (`subject:Patient.organization.name` is two). Resolving a link recurses once and runs one
/// inner search, so this bounds both the stack and the work a single parameter can demand.
pub const MAX_CHAIN_DEPTH: usize = 4;

/// A parameter whose value depends on another search.
/// The clauses that bound an inner search of a type (see [`Deferred::resolve`]).
pub type InnerLimit<'a> = &'a dyn Fn(ResourceType) -> Result<Vec<Clause>, FhirError>;

/// No bound on inner searches.
pub fn unlimited(_: ResourceType) -> Result<Vec<Clause>, FhirError> {
    Ok(Vec::new())
}

#[derive(Debug, Clone)]
pub enum Deferred {
    Chain { resource_type: ResourceType, name: String, value: String },
    Has { resource_type: ResourceType, name: String, value: String },
}

impl Deferred {
    /// Recognises a chained or reverse-chained parameter; `None` for any other name.
    pub fn parse(resource_type: ResourceType, name: &str, value: &str) -> Result<Option<Deferred>, FhirError> {
        if name.starts_with("_has:") || name.contains('.') {
            check_depth(name)?;
        }
        if name.starts_with("_has:") {
            return Ok(Some(Deferred::Has { resource_type, name: name.to_owned(), value: value.to_owned() }));
        }
        let Some((head, _)) = name.split_once('.') else { return Ok(None) };
        let code = head.split(':').next().unwrap_or(head);
        match registry().get(resource_type, code) {
            Some(def) if def.kind == ParamKind::Reference => {
                Ok(Some(Deferred::Chain { resource_type, name: name.to_owned(), value: value.to_owned() }))
            }
            Some(_) => Err(incorrect(format!("'{code}' is not a reference parameter, so '{name}' cannot chain"))),
            None => Ok(None),
        }
    }

    pub fn written(&self) -> &str {
        match self {
            Deferred::Chain { name, .. } | Deferred::Has { name, .. } => name,
        }
    }

    /// Runs the inner search and returns the equivalent clause of the outer one.
    /// The clause this parameter stands for, found by searching its inner types as of `t`.
    /// `limit` gives the clauses that bound what may be found of each inner type (what the
    /// searcher may see; none for an unrestricted searcher), or refuses the type.
    pub fn resolve(
        &self,
        view: &dyn IndexView,
        t: u64,
        base: &str,
        limit: InnerLimit<'_>,
    ) -> Result<Clause, FhirError> {
        match self {
            Deferred::Chain { resource_type, name, value } => chain(view, *resource_type, name, value, t, base, limit),
            Deferred::Has { resource_type, name, value } => has(view, *resource_type, name, value, t, base, limit),
        }
    }
}

/// Refuses a chained or reverse-chained parameter that follows more than [`MAX_CHAIN_DEPTH`]
/// links, before anything recurses on it.
fn check_depth(name: &str) -> Result<(), FhirError> {
    let depth = name.matches('.').count() + name.matches("_has:").count();
    if depth > MAX_CHAIN_DEPTH {
        let shown: String = name.chars().take(80).collect();
        let ellipsis = if shown.len() < name.len() { "..." } else { "" };
        return Err(FhirError::incorrect(
            IssueCode::TooCostly,
            format!(
                "the parameter '{shown}{ellipsis}' chains {depth} levels deep; at most {MAX_CHAIN_DEPTH} are supported"
            ),
        )
        .at(shown));
    }
    Ok(())
}

fn incorrect(message: String) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

/// The ids matching `name=value` on `resource_type`, where `name` may itself chain.
/// `(id, version)` of the resources matching `name=value` on `resource_type` as of `t`, where
/// `name` may itself chain.
fn inner_matches(
    view: &dyn IndexView,
    resource_type: ResourceType,
    name: &str,
    value: &str,
    t: u64,
    base: &str,
    limit: InnerLimit<'_>,
) -> Result<Vec<(String, u64)>, FhirError> {
    let clause = match Deferred::parse(resource_type, name, value)? {
        Some(deferred) => deferred.resolve(view, t, base, limit)?,
        None => parse_clause(resource_type, name, value, base)?
            .ok_or_else(|| incorrect(format!("'{name}' is not a search parameter of {resource_type}")))?,
    };
    let mut clauses = vec![clause];
    clauses.extend(limit(resource_type)?);
    let (query, _) = engine::Query::plan(view, resource_type, &clauses, t)?;
    let page = engine::run(&query, None, Some(MAX_CHAIN_MATCHES))?;
    if page.next.is_some() {
        return Err(FhirError::new(
            crate::fhir::Category::Incorrect,
            IssueCode::TooCostly,
            format!(
                "the chained search {resource_type}?{name}={value} matches more than {MAX_CHAIN_MATCHES} resources"
            ),
        ));
    }
    Ok(page.matches)
}

fn chain(
    view: &dyn IndexView,
    resource_type: ResourceType,
    name: &str,
    value: &str,
    t: u64,
    base: &str,
    limit: InnerLimit<'_>,
) -> Result<Clause, FhirError> {
    let (head, rest) = name.split_once('.').ok_or_else(|| incorrect(format!("'{name}' is not a chain")))?;
    let (code, type_modifier) = match head.split_once(':') {
        Some((code, modifier)) => (
            code,
            Some(
                ResourceType::parse(modifier)
                    .ok_or_else(|| incorrect(format!("'{modifier}' is not a resource type")))?,
            ),
        ),
        None => (head, None),
    };
    let def = registry()
        .get(resource_type, code)
        .ok_or_else(|| incorrect(format!("'{code}' is not a parameter of {resource_type}")))?;
    let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
    let targets: Vec<ResourceType> = match type_modifier {
        Some(target) => vec![target],
        None => def
            .targets
            .iter()
            .copied()
            .filter(|t| registry().get(*t, inner_code).is_some() || inner_code.starts_with("_has"))
            .collect(),
    };
    if targets.is_empty() {
        return Err(incorrect(format!("no target type of {resource_type}.{code} has the parameter '{inner_code}'")));
    }
    let mut references = BTreeSet::new();
    for target in targets {
        for (id, _) in inner_matches(view, target, rest, value, t, base, limit)? {
            references.insert(format!("{target}/{id}"));
        }
    }
    Ok(Clause {
        def: Arc::clone(def),
        written: name.to_owned(),
        key: def.code.clone(),
        negated: false,
        missing: None,
        also_keys: Vec::new(),
        alternatives: references.into_iter().map(|reference| exact(reference.into_bytes())).collect(),
        any_of: Vec::new(),
    })
}

fn has(
    view: &dyn IndexView,
    resource_type: ResourceType,
    name: &str,
    value: &str,
    t: u64,
    base: &str,
    limit: InnerLimit<'_>,
) -> Result<Clause, FhirError> {
    // _has:Type:reference:rest, where rest is a parameter of Type (possibly another _has).
    let mut parts = name.splitn(4, ':');
    let (_, source, reference, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some(source), Some(reference), Some(rest)) = (source, reference, rest) else {
        return Err(incorrect(format!("'{name}' is not _has:Type:reference:parameter")));
    };
    let source = ResourceType::parse(source).ok_or_else(|| incorrect(format!("'{source}' is not a resource type")))?;
    let reference_def = registry()
        .get(source, reference)
        .filter(|d| d.kind == ParamKind::Reference)
        .ok_or_else(|| incorrect(format!("'{reference}' is not a reference parameter of {source}")))?;
    let mut ids = BTreeSet::new();
    let prefix = format!("{resource_type}/");
    for (source_id, version) in inner_matches(view, source, rest, value, t, base, limit)? {
        for value in view.probe(source, &source_id, version, &reference_def.code)? {
            if let Some(id) = String::from_utf8(value).ok().and_then(|v| v.strip_prefix(&prefix).map(str::to_owned)) {
                ids.insert(id);
            }
        }
    }
    let id_def = registry().get(resource_type, "_id").ok_or_else(|| FhirError::fault("_id is not registered"))?;
    Ok(Clause {
        def: Arc::clone(id_def),
        written: name.to_owned(),
        key: "_id".to_owned(),
        negated: false,
        missing: None,
        also_keys: Vec::new(),
        // `_id` is a token whose values have no system.
        alternatives: ids.iter().map(|id| code_without_system(id)).collect(),
        any_of: Vec::new(),
    })
}
