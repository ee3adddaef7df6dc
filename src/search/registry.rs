//! The search parameters Braid knows: the official R4 SearchParameter definitions
//! (`profiles/search-parameters.json`), loaded and parsed once.
//!
//! Each definition's FHIRPath expression is split per base resource type (the shared
//! definitions such as `clinical-patient` list thirty types in one union) and parsed with the
//! FHIRPath subset in [`super::fhirpath`]. Definitions that cannot be supported — special
//! parameters, expressions outside the subset — are kept in [`Registry::unsupported`], which is
//! logged at start and published in the CapabilityStatement instead of being silently skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use serde::Deserialize;
use serde_json::Value;

use super::fhirpath::Expr;
use crate::fhir::ResourceType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Date => "date",
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Composite => "composite",
            ParamKind::Quantity => "quantity",
            ParamKind::Uri => "uri",
            ParamKind::Special => "special",
        }
    }
}

/// One component of a composite parameter: the kind of the parameter it refers to, and the
/// expression evaluated on each item of the composite's own expression.
#[derive(Debug)]
pub struct Component {
    pub kind: ParamKind,
    pub expression: Expr,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct ParamDef {
    pub code: String,
    pub url: String,
    pub kind: ParamKind,
    pub expression: Expr,
    /// For references: the types they may point to.
    pub targets: Vec<ResourceType>,
    pub components: Vec<Component>,
    /// The union members of the expression for this type, normalised, for alias detection.
    pub parts: Vec<String>,
    /// Set when this parameter selects exactly what the listed parameters select together
    /// (R4's `combo-code` is `code` ∪ `component-code`): it is not indexed, and a query on it
    /// reads their index entries instead.
    pub alias_of: Vec<String>,
    /// Whether the writer's stamping can change this parameter's entries: worked out by the
    /// indexer (`indexer::depends_on_stored_form`) the first time it asks, since it asks for
    /// every parameter of every resource written.
    pub stored_form: std::sync::OnceLock<bool>,
}

#[derive(Debug, Clone)]
pub struct Unsupported {
    pub code: String,
    pub base: String,
    pub reason: String,
}

pub struct Registry {
    by_type: HashMap<ResourceType, BTreeMap<String, Arc<ParamDef>>>,
    unsupported: Vec<Unsupported>,
}

#[derive(Deserialize)]
struct Definition {
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: ParamKind,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDefinition>,
}

#[derive(Deserialize)]
struct ComponentDefinition {
    definition: String,
    expression: String,
}

static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::load(include_str!("../../profiles/search-parameters.json")));

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

impl Registry {
    pub fn load(bundle_text: &str) -> Registry {
        let bundle: Value = serde_json::from_str(bundle_text).expect("profiles/search-parameters.json is JSON");
        let definitions: Vec<Definition> = bundle["entry"]
            .as_array()
            .expect("a Bundle of SearchParameters")
            .iter()
            .map(|entry| serde_json::from_value(entry["resource"].clone()).expect("a SearchParameter"))
            .collect();
        let kinds_by_url: HashMap<&str, ParamKind> = definitions.iter().map(|d| (d.url.as_str(), d.kind)).collect();
        let mut registry = Registry { by_type: HashMap::new(), unsupported: Vec::new() };
        for definition in &definitions {
            let bases: Vec<ResourceType> = definition
                .base
                .iter()
                .flat_map(|base| match base.as_str() {
                    "Resource" => ResourceType::all().collect::<Vec<_>>(),
                    "DomainResource" => ResourceType::all()
                        .filter(|t| !matches!(t.as_str(), "Bundle" | "Binary" | "Parameters"))
                        .collect(),
                    other => ResourceType::parse(other).into_iter().collect(),
                })
                .collect();
            let mut unsupported = |reason: String| {
                registry.unsupported.push(Unsupported {
                    code: definition.code.clone(),
                    base: definition.base.join(","),
                    reason,
                });
            };
            let Some(expression) = definition.expression.as_deref().filter(|_| definition.kind != ParamKind::Special)
            else {
                unsupported("a special parameter without a FHIRPath expression".to_owned());
                continue;
            };
            let components = match definition
                .component
                .iter()
                .map(|c| {
                    let kind = *kinds_by_url
                        .get(c.definition.as_str())
                        .ok_or_else(|| format!("unknown component {}", c.definition))?;
                    let expression = Expr::parse(&c.expression).map_err(|e| e.to_string())?;
                    Ok(Component { kind, expression })
                })
                .collect::<Result<Vec<_>, String>>()
            {
                Ok(components) => components,
                Err(reason) => {
                    unsupported(reason);
                    continue;
                }
            };
            let targets: Vec<ResourceType> = definition.target.iter().filter_map(|t| ResourceType::parse(t)).collect();
            let mut failed = None;
            let mut parsed_for: Vec<(ResourceType, Expr)> = Vec::new();
            for base in &bases {
                match Expr::parse(&expression_for(expression, base.as_str())) {
                    Ok(expr) => parsed_for.push((*base, expr)),
                    Err(error) => failed = Some(error.to_string()),
                }
            }
            if let Some(reason) = failed {
                unsupported(reason);
                continue;
            }
            for (base, expr) in parsed_for {
                let parts = split_top_level_union(&expression_for(expression, base.as_str()))
                    .into_iter()
                    .map(normalise_part)
                    .collect();
                let def = ParamDef {
                    code: definition.code.clone(),
                    url: definition.url.clone(),
                    kind: definition.kind,
                    expression: expr,
                    targets: targets.clone(),
                    components: components
                        .iter()
                        .map(|c| Component { kind: c.kind, expression: c.expression.clone() })
                        .collect(),
                    parts,
                    alias_of: Vec::new(),
                    stored_form: std::sync::OnceLock::new(),
                };
                registry.by_type.entry(base).or_default().insert(definition.code.clone(), Arc::new(def));
            }
        }
        registry.detect_aliases();
        registry.check_key_hashes();
        registry
    }

    /// Index keys are stored as a 32-bit hash of `type·key`; two keys sharing a hash would mix
    /// their entries, so every key this registry can produce is checked once, at start.
    fn check_key_hashes(&self) {
        let mut seen: HashMap<u32, (ResourceType, String)> = HashMap::new();
        for resource_type in self.by_type.keys() {
            for key in self.index_keys(*resource_type) {
                let hash = crate::store::keys::search_param_value::param_hash(resource_type.as_str(), &key);
                if let Some((other_type, other_key)) = seen.insert(hash, (*resource_type, key.clone())) {
                    panic!("index key hash collision: {resource_type}.{key} and {other_type}.{other_key}");
                }
            }
        }
    }

    /// Every index key the indexer can write for `resource_type`: each parameter's code, the
    /// keys of its modifiers that have their own entries, and compartment membership.
    pub fn index_keys(&self, resource_type: ResourceType) -> Vec<String> {
        let mut keys = vec![crate::search::compartment::COMPARTMENT_KEY.to_owned()];
        for (code, def) in self.by_type.get(&resource_type).into_iter().flatten() {
            keys.push(code.clone());
            match def.kind {
                ParamKind::String => keys.push(format!("{code}:exact")),
                ParamKind::Token => keys.extend([format!("{code}:text"), format!("{code}:of-type")]),
                ParamKind::Reference => keys.push(format!("{code}:identifier")),
                ParamKind::Date => keys.push(format!("{code}{}", crate::search::values::DATE_END_SUFFIX)),
                _ => {}
            }
        }
        keys
    }

    /// Marks every parameter whose union members are exactly covered by other parameters of
    /// the same type and kind (with the same components, for composites).
    fn detect_aliases(&mut self) {
        for params in self.by_type.values_mut() {
            let mut aliases: Vec<(String, Vec<String>)> = Vec::new();
            for (code, def) in params.iter() {
                if def.parts.len() < 2 {
                    continue;
                }
                let covering: Vec<&Arc<ParamDef>> = params
                    .values()
                    .filter(|other| {
                        other.code != *code
                            && other.kind == def.kind
                            && other.parts.len() < def.parts.len()
                            && other.parts.iter().all(|p| def.parts.contains(p))
                            && same_components(def, other)
                    })
                    .collect();
                let mut covered: Vec<&String> = covering.iter().flat_map(|o| o.parts.iter()).collect();
                covered.sort();
                covered.dedup();
                if covered.len() == def.parts.len() {
                    aliases.push((code.clone(), covering.iter().map(|o| o.code.clone()).collect()));
                }
            }
            for (code, targets) in aliases {
                if let Some(def) = params.get_mut(&code).and_then(Arc::get_mut) {
                    def.alias_of = targets;
                }
            }
        }
    }

    /// The parameter `code` of `resource_type`, if Braid supports it.
    pub fn get(&self, resource_type: ResourceType, code: &str) -> Option<&Arc<ParamDef>> {
        self.by_type.get(&resource_type)?.get(code)
    }

    /// All supported parameters of a type, by code.
    pub fn params(&self, resource_type: ResourceType) -> impl Iterator<Item = &Arc<ParamDef>> {
        self.by_type.get(&resource_type).into_iter().flat_map(|params| params.values())
    }

    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }
}

/// The part of a shared expression that concerns `base`: the union members that start with the
/// type's name (or `Resource.`), so that a Condition is not evaluated against the thirty other
/// types' paths of `clinical-patient`. Falls back to the whole expression.
fn expression_for(expression: &str, base: &str) -> String {
    let parts = split_top_level_union(expression);
    let mine: Vec<&str> = parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| {
            let head = p.trim_start_matches('(');
            head.starts_with(&format!("{base}."))
                || head == base
                || head.starts_with("Resource.")
                || head.starts_with("DomainResource.")
        })
        .collect();
    if mine.is_empty() { expression.to_owned() } else { mine.join(" | ") }
}

/// A union member without surrounding parentheses and spaces.
fn normalise_part(part: &str) -> String {
    let mut text = part.trim();
    while text.starts_with('(') && text.ends_with(')') {
        text = text[1..text.len() - 1].trim();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn same_components(a: &ParamDef, b: &ParamDef) -> bool {
    a.components.len() == b.components.len()
        && a.components.iter().zip(&b.components).all(|(x, y)| x.kind == y.kind && x.expression == y.expression)
}

fn split_top_level_union(expression: &str) -> Vec<&str> {
    let (mut depth, mut in_string, mut start) = (0i32, false, 0usize);
    let mut parts = Vec::new();
    for (index, c) in expression.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            '|' if !in_string && depth == 0 => {
                parts.push(&expression[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&expression[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_parameters_load_and_the_unsupported_ones_are_listed() {
        let registry = registry();
        let patient = ResourceType::PATIENT;
        let observation = ResourceType::parse("Observation").unwrap();
        for code in ["name", "family", "birthdate", "identifier", "_id", "_lastUpdated", "gender", "deceased"] {
            assert!(registry.get(patient, code).is_some(), "Patient.{code}");
        }
        let subject = registry.get(observation, "subject").unwrap();
        assert_eq!(subject.kind, ParamKind::Reference);
        let combo = registry.get(observation, "code-value-quantity").unwrap();
        assert_eq!(combo.components.len(), 2);
        assert_eq!(combo.components[1].kind, ParamKind::Quantity);
        let combo = registry.get(observation, "combo-code").unwrap();
        assert_eq!(combo.alias_of, vec!["code".to_owned(), "component-code".to_owned()]);
        let combo_quantity = registry.get(observation, "combo-code-value-quantity").unwrap();
        assert_eq!(combo_quantity.alias_of.len(), 2, "{:?}", combo_quantity.alias_of);
        assert!(registry.get(observation, "code").unwrap().alias_of.is_empty());
        let unsupported: Vec<&str> = registry.unsupported().iter().map(|u| u.code.as_str()).collect();
        assert!(unsupported.contains(&"_text") && unsupported.contains(&"_content"), "{unsupported:?}");
        assert!(
            unsupported.len() < 10,
            "only the special parameters should be unsupported: {:?}",
            registry.unsupported()
        );
    }

    #[test]
    fn shared_expressions_are_split_per_type() {
        assert_eq!(expression_for("A.code | B.code | (C.x as Y)", "C"), "(C.x as Y)");
        assert_eq!(expression_for("Resource.id", "Patient"), "Resource.id");
        assert_eq!(split_top_level_union("a.where(x='|') | b"), vec!["a.where(x='|') ", " b"]);
    }
}
