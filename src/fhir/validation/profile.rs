//! Profile rules as data (`profiles/*.rules.json`).
//!
//! A profile file names the resource type it constrains, when it applies (the resource claims
//! it in `meta.profile`, or carries a given coding), and a list of rules. Rules are a small,
//! closed vocabulary interpreted here, so adding a profile means adding a file, not code.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::fhir::error::Severity;
use crate::fhir::{Issue, IssueCode, ResourceType};

const UCUM: &str = "http://unitsofmeasure.org";
const LOINC: &str = "http://loinc.org";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub url: String,
    pub title: String,
    resource_type: String,
    applies_when: Vec<Condition>,
    rules: Vec<Rule>,
    #[serde(default)]
    ucum_units_by_loinc: HashMap<String, Vec<String>>,
}

/// The profile applies if any condition holds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    meta_profile: Vec<String>,
    coding: Option<CodingPattern>,
}

#[derive(Debug, Deserialize)]
struct CodingPattern {
    path: String,
    system: String,
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Rule {
    /// The element at `path` is present.
    Present { path: String, message: String },
    /// At least one of `paths` is present.
    AnyPresent { paths: Vec<String>, message: String },
    /// The CodeableConcept at `path` has a coding with `system` (and `code`, if given).
    Coding { path: String, system: String, code: Option<String>, message: String },
    /// `rules` hold for every element at `path`.
    Each { path: String, rules: Vec<Rule> },
    /// A Quantity at `quantity_path` is coded in UCUM, and if the LOINC code at `code_path` has
    /// an entry in `ucumUnitsByLoinc`, its unit is one of those listed.
    #[serde(rename_all = "camelCase")]
    UcumQuantity { quantity_path: String, code_path: String, message: String },
}

/// The profiles loaded at start, grouped by the resource type they constrain.
pub struct ProfileSet {
    profiles: Vec<Profile>,
}

impl ProfileSet {
    pub fn load(sources: &[&str]) -> Self {
        let profiles = sources
            .iter()
            .map(|text| serde_json::from_str::<Profile>(text).expect("profile rules in profiles/ are valid"))
            .collect::<Vec<_>>();
        for profile in &profiles {
            assert!(
                ResourceType::parse(&profile.resource_type).is_some(),
                "profile {} names an unknown type",
                profile.url
            );
        }
        ProfileSet { profiles }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.iter()
    }

    /// The profile with canonical URL `url` (a version suffix `|x` is ignored), or the one
    /// that a resource claiming `url` in `meta.profile` must follow.
    pub fn find(&self, url: &str) -> Option<&Profile> {
        let url = url.split('|').next().unwrap_or(url);
        self.profiles.iter().find(|profile| {
            profile.url == url || profile.applies_when.iter().any(|c| c.meta_profile.iter().any(|u| u == url))
        })
    }

    /// Checks `resource` against every applicable profile. A broken rule of a profile the
    /// resource claims in `meta.profile` is an error; a broken rule of a profile that applies
    /// only because of the resource's content (e.g. its category) is a warning: Braid is strict
    /// about what a resource claims and advisory about what it merely resembles.
    pub fn check(
        &self,
        resource_type: ResourceType,
        resource: &Value,
        errors: &mut Vec<Issue>,
        warnings: &mut Vec<Issue>,
    ) {
        for profile in self.profiles.iter().filter(|p| p.resource_type == resource_type.as_str()) {
            let target = match profile.applies_to(resource) {
                Applies::No => continue,
                Applies::Claimed => &mut *errors,
                Applies::ByContent => &mut *warnings,
            };
            let before = target.len();
            let root = resource_type.as_str().to_owned();
            for rule in &profile.rules {
                profile.check_rule(rule, resource, &root, target);
            }
            if std::ptr::eq(target, warnings) {
                for issue in &mut warnings[before..] {
                    issue.severity = Severity::Warning;
                }
            }
        }
    }
}

impl Profile {
    /// Whether this profile constrains resources of `resource_type`.
    pub fn applies_to_type(&self, resource_type: ResourceType) -> bool {
        self.resource_type == resource_type.as_str()
    }

    fn applies_to(&self, resource: &Value) -> Applies {
        let claimed: Vec<&str> = select(resource, "meta.profile", "")
            .into_iter()
            .filter_map(|(_, v)| v.as_str())
            .map(|url| url.split('|').next().unwrap_or(url))
            .collect();
        let conditions = &self.applies_when;
        if conditions.iter().any(|c| c.meta_profile.iter().any(|url| claimed.contains(&url.as_str()))) {
            Applies::Claimed
        } else if conditions
            .iter()
            .any(|c| c.coding.as_ref().is_some_and(|c| has_coding(resource, &c.path, &c.system, c.code.as_deref())))
        {
            Applies::ByContent
        } else {
            Applies::No
        }
    }

    fn check_rule(&self, rule: &Rule, value: &Value, at: &str, issues: &mut Vec<Issue>) {
        let fail = |issues: &mut Vec<Issue>, code, message: &str, expression: String| {
            issues.push(Issue::error(code, format!("{message} [{}]", self.url)).at(expression));
        };
        match rule {
            Rule::Present { path, message } => {
                if select(value, path, at).is_empty() {
                    fail(issues, IssueCode::Required, message, format!("{at}.{path}"));
                }
            }
            Rule::AnyPresent { paths, message } => {
                if paths.iter().all(|path| select(value, path, at).is_empty()) {
                    fail(issues, IssueCode::Required, message, format!("{at}.{}", paths[0]));
                }
            }
            Rule::Coding { path, system, code, message } => {
                if !has_coding(value, path, system, code.as_deref()) {
                    fail(issues, IssueCode::Value, message, format!("{at}.{path}"));
                }
            }
            Rule::Each { path, rules } => {
                for (expression, element) in select(value, path, at) {
                    for rule in rules {
                        self.check_rule(rule, element, &expression, issues);
                    }
                }
            }
            Rule::UcumQuantity { quantity_path, code_path, message } => {
                for (expression, quantity) in select(value, quantity_path, at) {
                    if quantity.get("system").and_then(Value::as_str) != Some(UCUM) {
                        fail(issues, IssueCode::Value, message, format!("{expression}.system"));
                    }
                    let Some(unit) = quantity.get("code").and_then(Value::as_str) else {
                        fail(issues, IssueCode::Required, message, format!("{expression}.code"));
                        continue;
                    };
                    let loinc_codes = codes(value, code_path, LOINC);
                    for loinc in loinc_codes {
                        if let Some(allowed) = self.ucum_units_by_loinc.get(loinc) {
                            if !allowed.iter().any(|a| a == unit) {
                                let text = format!(
                                    "LOINC {loinc} must be measured in {} (UCUM), not '{unit}'",
                                    allowed.join(" or ")
                                );
                                fail(issues, IssueCode::Value, &text, format!("{expression}.code"));
                            }
                        }
                    }
                }
            }
        }
    }
}

enum Applies {
    No,
    Claimed,
    ByContent,
}

/// The codes of the codings with `system` in the CodeableConcept(s) at `path`.
fn codes<'a>(value: &'a Value, path: &str, system: &str) -> Vec<&'a str> {
    select(value, &format!("{path}.coding"), "")
        .into_iter()
        .filter(|(_, coding)| coding.get("system").and_then(Value::as_str) == Some(system))
        .filter_map(|(_, coding)| coding.get("code").and_then(Value::as_str))
        .collect()
}

fn has_coding(value: &Value, path: &str, system: &str, code: Option<&str>) -> bool {
    select(value, &format!("{path}.coding"), "").into_iter().any(|(_, coding)| {
        coding.get("system").and_then(Value::as_str) == Some(system)
            && code.is_none_or(|code| coding.get("code").and_then(Value::as_str) == Some(code))
    })
}

/// The elements at a dotted `path` below `value`, with arrays flattened, each with its
/// FHIRPath expression (prefixed by `at`).
fn select<'a>(value: &'a Value, path: &str, at: &str) -> Vec<(String, &'a Value)> {
    let mut current = vec![(at.to_owned(), value)];
    for segment in path.split('.') {
        let mut next = Vec::new();
        for (expression, element) in current {
            match element.get(segment) {
                Some(Value::Array(items)) => {
                    for (index, item) in items.iter().enumerate() {
                        next.push((format!("{expression}.{segment}[{index}]"), item));
                    }
                }
                Some(child) => next.push((format!("{expression}.{segment}"), child)),
                None => {}
            }
        }
        current = next;
    }
    current
}
