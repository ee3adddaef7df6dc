//! SMART App Launch scopes: parsing the `scope` parameter of authorization and token requests
//! into what a grant may do, and telling whether one set of scopes lies within another (a
//! refresh may narrow a grant, never widen it).
//!
//! Grammar (SMART App Launch 2.2, "Scopes for requesting clinical data"):
//!
//! ```text
//! resource scope = context "/" (ResourceType | "*") "." permissions ["?" filter]
//! context        = "patient" | "user" | "system"
//! permissions    = v2: one or more of "c" "r" "u" "d" "s", in that order, each once
//!                | v1: "read" (= "rs") | "write" (= "cud") | "*" (= "cruds")
//! filter         = name "=" value *("&" name "=" value)     (granular scopes, v2 only)
//! other scopes   = "launch" | "launch/patient" | "launch/encounter" | "openid" | "fhirUser"
//!                | "profile" | "offline_access" | "online_access"
//! ```
//!
//! Scopes are separated by spaces. A scope that does not follow the grammar is not an error: it
//! is reported as unknown and grants nothing, as the specification asks of servers ("a server
//! may grant fewer scopes than requested").

use std::fmt;

use percent_encoding::percent_decode_str;

use crate::fhir::ResourceType;

/// Longest `scope` parameter accepted, in bytes.
pub const MAX_SCOPE_TEXT: usize = 8 * 1024;

/// Most scopes in one `scope` parameter.
pub const MAX_SCOPES: usize = 200;

/// Most search parameters in one granular scope's filter.
pub const MAX_FILTER_PARAMS: usize = 10;

/// Why a `scope` parameter was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("the scope parameter is longer than {MAX_SCOPE_TEXT} bytes")]
    TooLong,
    #[error("the scope parameter names more than {MAX_SCOPES} scopes")]
    TooMany,
}

/// Whose data a resource scope reaches: the patient in context, what the user may see, or
/// anything (a backend service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// What a resource scope allows on its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// In the order of the v2 letters.
    const ALL: [Interaction; 5] =
        [Interaction::Create, Interaction::Read, Interaction::Update, Interaction::Delete, Interaction::Search];

    fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        1 << Interaction::ALL.iter().position(|i| *i == self).expect("every interaction is listed")
    }
}

/// A set of [`Interaction`]s. Never empty in a parsed scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    /// v1 `read`: read and search.
    pub const READ: Permissions = Permissions(0b1_0010);
    /// v1 `write`: create, update and delete.
    pub const WRITE: Permissions = Permissions(0b0_1101);
    /// v1 `*` and v2 `cruds`.
    pub const ALL: Permissions = Permissions(0b1_1111);

    pub fn allows(self, interaction: Interaction) -> bool {
        self.0 & interaction.bit() != 0
    }

    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// v2 letters (`cruds` order); `None` unless each letter appears at most once, in order.
    fn parse_v2(text: &str) -> Option<Permissions> {
        let mut bits = 0u8;
        let mut next = 0;
        for letter in text.chars() {
            let offset = Interaction::ALL[next..].iter().position(|i| i.letter() == letter)?;
            let interaction = Interaction::ALL[next + offset];
            bits |= interaction.bit();
            next += offset + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    /// The v2 letters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for interaction in Interaction::ALL {
            if self.allows(interaction) {
                write!(f, "{}", interaction.letter())?;
            }
        }
        Ok(())
    }
}

/// `context/Type.permissions?filter`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for `*` (every type).
    pub resource_type: Option<ResourceType>,
    pub permissions: Permissions,
    /// Granular scopes: the search parameters (percent-decoded `name`, `value`) a resource must
    /// match, all of them; empty when the scope has no filter.
    pub filter: Vec<(String, String)>,
}

impl ResourceScope {
    /// Whether this scope allows nothing that `granted` does not: the same context, the same
    /// type (or `granted` covers every type), no other interaction, and at least `granted`'s
    /// filter (more filter parameters select fewer resources).
    pub fn within(&self, granted: &ResourceScope) -> bool {
        self.context == granted.context
            && (granted.resource_type.is_none() || granted.resource_type == self.resource_type)
            && granted.permissions.contains(self.permissions)
            && granted.filter.iter().all(|pair| self.filter.contains(pair))
    }

    /// This scope narrowed to the types and resources `granted` allows, when `granted` allows
    /// this scope's interactions: what a server may grant when asked for more types or
    /// resources than it allows (a source asking for `system/*.cruds` gets it over its own
    /// records, on its own types). `None` when `granted` differs in context, in type, or allows
    /// fewer interactions.
    pub fn narrowed_to(&self, granted: &ResourceScope) -> Option<ResourceScope> {
        let resource_type = match (self.resource_type, granted.resource_type) {
            (asked, None) => asked,
            (None, granted) => granted,
            (Some(asked), Some(granted)) if asked == granted => Some(asked),
            _ => return None,
        };
        let fits = self.context == granted.context && granted.permissions.contains(self.permissions);
        fits.then(|| {
            let mut narrowed = ResourceScope { resource_type, ..self.clone() };
            for pair in &granted.filter {
                if !narrowed.filter.contains(pair) {
                    narrowed.filter.push(pair.clone());
                }
            }
            narrowed
        })
    }
}

impl fmt::Display for ResourceScope {
    /// The v2 form (a v1 scope is written as the v2 scope it stands for).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource_type = self.resource_type.map_or("*", ResourceType::as_str);
        write!(f, "{}/{resource_type}.{}", self.context.as_str(), self.permissions)?;
        for (index, (name, value)) in self.filter.iter().enumerate() {
            let encode = |text: &str| percent_encoding::utf8_percent_encode(text, FILTER_ENCODE).to_string();
            write!(f, "{}{}={}", if index == 0 { '?' } else { '&' }, encode(name), encode(value))?;
        }
        Ok(())
    }
}

/// What a filter's names and values must escape when written back: the characters that
/// separate the scope list and the filter's parts, and `%` itself.
const FILTER_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'%').add(b'&').add(b'=').add(b'?').add(b'#').add(b'+');

/// One granted scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource(ResourceScope),
    /// `launch`: the EHR launch context.
    Launch,
    /// `launch/patient`: ask for a patient to be chosen at a standalone launch.
    LaunchPatient,
    /// `launch/encounter`.
    LaunchEncounter,
    OpenId,
    FhirUser,
    Profile,
    OfflineAccess,
    OnlineAccess,
}

impl Scope {
    /// Whether `granted` already allows everything this scope does.
    pub fn within(&self, granted: &[Scope]) -> bool {
        match self {
            Scope::Resource(scope) => granted.iter().any(|g| matches!(g, Scope::Resource(g) if scope.within(g))),
            other => granted.contains(other),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(scope) => scope.fmt(f),
            Scope::Launch => f.write_str("launch"),
            Scope::LaunchPatient => f.write_str("launch/patient"),
            Scope::LaunchEncounter => f.write_str("launch/encounter"),
            Scope::OpenId => f.write_str("openid"),
            Scope::FhirUser => f.write_str("fhirUser"),
            Scope::Profile => f.write_str("profile"),
            Scope::OfflineAccess => f.write_str("offline_access"),
            Scope::OnlineAccess => f.write_str("online_access"),
        }
    }
}

/// A parsed `scope` parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// The scopes understood, each once, in the order first written.
    pub granted: Vec<Scope>,
    /// The scopes not understood, as written; they grant nothing.
    pub unknown: Vec<String>,
}

impl Scopes {
    /// Whether every scope of `self` lies within `granted` (a refresh may ask for this).
    pub fn within(&self, granted: &[Scope]) -> bool {
        self.granted.iter().all(|scope| scope.within(granted))
    }

    /// The `scope` text of a token response: the granted scopes, space-separated.
    pub fn text(&self) -> String {
        self.granted.iter().map(Scope::to_string).collect::<Vec<_>>().join(" ")
    }
}

/// Parses a `scope` parameter (scopes separated by spaces).
pub fn parse_scopes(text: &str) -> Result<Scopes, ScopeError> {
    if text.len() > MAX_SCOPE_TEXT {
        return Err(ScopeError::TooLong);
    }
    let mut scopes = Scopes::default();
    for (count, written) in text.split(' ').filter(|part| !part.is_empty()).enumerate() {
        if count == MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        match parse_scope(written) {
            Some(scope) if !scopes.granted.contains(&scope) => scopes.granted.push(scope),
            Some(_) => {}
            None => scopes.unknown.push(written.to_owned()),
        }
    }
    Ok(scopes)
}

/// One scope; `None` if it does not follow the grammar.
pub fn parse_scope(text: &str) -> Option<Scope> {
    let simple = match text {
        "launch" => Some(Scope::Launch),
        "launch/patient" => Some(Scope::LaunchPatient),
        "launch/encounter" => Some(Scope::LaunchEncounter),
        "openid" => Some(Scope::OpenId),
        "fhirUser" => Some(Scope::FhirUser),
        "profile" => Some(Scope::Profile),
        "offline_access" => Some(Scope::OfflineAccess),
        "online_access" => Some(Scope::OnlineAccess),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    let (context, rest) = text.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (resource, rest) = rest.split_once('.')?;
    let resource_type = match resource {
        "*" => None,
        name => Some(ResourceType::parse(name)?),
    };
    let (permissions, query) = match rest.split_once('?') {
        Some((permissions, query)) => (permissions, Some(query)),
        None => (rest, None),
    };
    let (permissions, v1) = match permissions {
        "read" => (Permissions::READ, true),
        "write" => (Permissions::WRITE, true),
        "*" => (Permissions::ALL, true),
        letters => (Permissions::parse_v2(letters)?, false),
    };
    let filter = match query {
        // Filters belong to v2 scopes.
        Some(_) if v1 => return None,
        Some(query) => parse_filter(query)?,
        None => Vec::new(),
    };
    Some(Scope::Resource(ResourceScope { context, resource_type, permissions, filter }))
}

/// `name=value&...`, percent-decoded; `None` if a pair lacks its name or value, or there are
/// more than [`MAX_FILTER_PARAMS`].
fn parse_filter(query: &str) -> Option<Vec<(String, String)>> {
    let mut filter = Vec::new();
    for pair in query.split('&') {
        if filter.len() == MAX_FILTER_PARAMS {
            return None;
        }
        let (name, value) = pair.split_once('=')?;
        let decode = |text: &str| percent_decode_str(text).decode_utf8().ok().map(|text| text.into_owned());
        let (name, value) = (decode(name)?, decode(value)?);
        if name.is_empty() || value.is_empty() {
            return None;
        }
        filter.push((name, value));
    }
    Some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn resource(text: &str) -> ResourceScope {
        match parse_scope(text) {
            Some(Scope::Resource(scope)) => scope,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn v2_scopes_name_a_context_a_type_and_letters_in_cruds_order() {
        let scope = resource("patient/Observation.rs");
        assert_eq!(scope.context, Context::Patient);
        assert_eq!(scope.resource_type, ResourceType::parse("Observation"));
        assert!(scope.permissions.allows(Interaction::Read) && scope.permissions.allows(Interaction::Search));
        assert!(!scope.permissions.allows(Interaction::Create) && !scope.permissions.allows(Interaction::Delete));
        assert_eq!(resource("user/*.cruds").permissions, Permissions::ALL);
        assert_eq!(resource("system/Patient.cud").permissions, Permissions::WRITE);
        assert_eq!(resource("user/*.cruds").resource_type, None);
        // Out of order, repeated, empty or unknown letters; unknown contexts and types.
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/Observation.rx",
            "patient/Observation",
            "clinic/Observation.rs",
            "patient/Nonsense.rs",
            "patient/observation.rs",
            "Patient/Observation.rs",
            "patient/Observation.rs/x",
        ] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
    }

    #[test]
    fn v1_scopes_stand_for_the_v2_letters() {
        assert_eq!(resource("patient/*.read").permissions, Permissions::READ);
        assert_eq!(resource("patient/*.read").to_string(), "patient/*.rs");
        assert_eq!(resource("user/Observation.write").to_string(), "user/Observation.cud");
        assert_eq!(resource("system/*.*").to_string(), "system/*.cruds");
        // v1 has no filters.
        assert_eq!(parse_scope("patient/Observation.read?category=laboratory"), None);
    }

    #[test]
    fn granular_scopes_carry_their_decoded_search_parameters() {
        let text =
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
        let scope = resource(text);
        assert_eq!(
            scope.filter,
            [(
                "category".to_owned(),
                "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".to_owned()
            )]
        );
        assert_eq!(scope.to_string(), text, "written back as received");
        let two = resource("patient/Condition.rs?category=problem-list-item&clinical-status=active%20x");
        assert_eq!(two.filter[1], ("clinical-status".to_owned(), "active x".to_owned()));
        assert_eq!(parse_scope(&two.to_string()), Some(Scope::Resource(two)));
        for bad in ["patient/Observation.rs?", "patient/Observation.rs?category", "patient/Observation.rs?=x"] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
        let many = (0..=MAX_FILTER_PARAMS).map(|n| format!("p{n}=v")).collect::<Vec<_>>().join("&");
        assert_eq!(parse_scope(&format!("patient/Observation.rs?{many}")), None, "at most {MAX_FILTER_PARAMS}");
    }

    #[test]
    fn a_scope_list_keeps_what_it_understands_once_and_reports_the_rest() {
        let scopes = parse_scopes(
            "launch/patient  openid fhirUser offline_access patient/Patient.r patient/Patient.r patient/*.read bogus user/Foo.r",
        )
        .unwrap();
        assert_eq!(
            scopes.text(),
            "launch/patient openid fhirUser offline_access patient/Patient.r patient/*.rs",
            "each once, in order"
        );
        assert_eq!(scopes.unknown, ["bogus", "user/Foo.r"]);
        assert_eq!(parse_scopes("").unwrap(), Scopes::default());
    }

    #[test]
    fn the_scope_parameter_is_bounded() {
        assert_eq!(parse_scopes(&"x".repeat(MAX_SCOPE_TEXT + 1)), Err(ScopeError::TooLong));
        let many = vec!["openid"; MAX_SCOPES + 1].join(" ");
        assert_eq!(parse_scopes(&many), Err(ScopeError::TooMany));
        let enough = vec!["openid"; MAX_SCOPES].join(" ");
        assert_eq!(parse_scopes(&enough).unwrap().granted, [Scope::OpenId]);
    }

    #[test]
    fn a_narrower_scope_lies_within_a_wider_one_and_not_the_other_way() {
        let granted = parse_scopes("patient/*.rs user/Observation.cruds offline_access openid").unwrap().granted;
        for narrower in [
            "patient/Observation.rs",
            "patient/Observation.r",
            "patient/Observation.rs?category=vital-signs",
            "user/Observation.rd",
            "offline_access",
            "",
        ] {
            assert!(parse_scopes(narrower).unwrap().within(&granted), "{narrower}");
        }
        for wider in
            ["patient/*.cruds", "user/Patient.r", "system/Observation.r", "patient/Observation.rs fhirUser", "launch"]
        {
            assert!(!parse_scopes(wider).unwrap().within(&granted), "{wider}");
        }
        // A filter narrows: the unfiltered scope is not within the filtered one.
        let filtered = parse_scopes("patient/Observation.rs?category=vital-signs").unwrap().granted;
        assert!(!parse_scopes("patient/Observation.rs").unwrap().within(&filtered));
        assert!(
            parse_scopes("patient/Observation.r?category=vital-signs&code=x").unwrap().within(&filtered),
            "more filter parameters, fewer resources"
        );
    }

    proptest! {
        /// Also the fuzz target's property (`fuzz/fuzz_targets/scope_parse.rs`): what is granted
        /// reads back the same when written out, as a token response's `scope` is at refresh.
        #[test]
        fn any_text_parses_without_panicking_and_what_it_grants_reads_back(
            text in "(\\PC{0,30}|patient/Observation\\.[crudsx*]{0,6}(\\?[a-z]{0,4}=?\\PC{0,8})?| )*"
        ) {
            if let Ok(scopes) = parse_scopes(&text) {
                let again = parse_scopes(&scopes.text()).unwrap();
                prop_assert_eq!(&again.granted, &scopes.granted);
                prop_assert!(again.unknown.is_empty());
                prop_assert!(scopes.within(&scopes.granted));
            }
        }

        #[test]
        fn written_scopes_parse_back_to_themselves(
            context in prop::sample::select(vec!["patient", "user", "system"]),
            resource in prop::sample::select(vec!["*", "Observation", "Patient", "Condition"]),
            bits in 1u8..32,
            filter in prop::collection::vec(("[a-z-]{1,8}", "[ -~]{1,12}"), 0..3),
        ) {
            let permissions = Permissions(bits);
            let query: Vec<String> = filter
                .iter()
                .map(|(name, value)| {
                    format!("{name}={}", percent_encoding::utf8_percent_encode(value, FILTER_ENCODE))
                })
                .collect();
            let mut text = format!("{context}/{resource}.{permissions}");
            if !query.is_empty() {
                text = format!("{text}?{}", query.join("&"));
            }
            let parsed = parse_scope(&text).expect("a written scope parses");
            prop_assert_eq!(parsed.to_string(), text);
            let Scope::Resource(scope) = parsed else { unreachable!() };
            prop_assert_eq!(scope.filter, filter);
        }
    }
}
