//! The subset of FHIRPath that the R4 SearchParameter expressions use: paths (with choice types
//! such as `value` → `valueQuantity`), `|`, `where(...)`, `as`/`ofType`/`is`, `resolve()`,
//! `exists()`, `first()`, `extension(url)`, indexers, `=`/`!=` and `and`, string/boolean/number literals.
//!
//! Expressions are parsed once, when the registry loads; [`Expr::parse`] rejects anything
//! outside the subset, and the registry lists such parameters as unsupported.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The context item (`$this`), or the resource at the top level.
    This,
    /// A navigation step from the items of the inner expression.
    Child(Box<Expr>, String),
    Index(Box<Expr>, usize),
    Union(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Equals(Box<Expr>, Box<Expr>, bool),
    /// `as T` / `ofType(T)` / `as(T)`: the items of type T.
    OfType(Box<Expr>, String),
    /// `is T`
    Is(Box<Expr>, String),
    Where(Box<Expr>, Box<Expr>),
    Resolve(Box<Expr>),
    Exists(Box<Expr>),
    Extension(Box<Expr>, String),
    Str(String),
    Bool(bool),
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A JSON element with its FHIR type when known (from a choice element's name).
    /// The type is borrowed (from the resource's own keys, or a static name): evaluation
    /// allocates no type names, since every index entry of every write goes through it.
    Json(&'a Value, Option<&'a str>),
    /// The target of a reference, known only by its type (from `resolve()`).
    Resolved(&'a str),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unsupported FHIRPath at '{rest}': {reason}")]
pub struct ParseError {
    pub rest: String,
    pub reason: &'static str,
}

const PRIMITIVES: [&str; 19] = [
    "boolean",
    "integer",
    "string",
    "decimal",
    "uri",
    "url",
    "canonical",
    "base64Binary",
    "instant",
    "date",
    "dateTime",
    "time",
    "code",
    "oid",
    "id",
    "markdown",
    "unsignedInt",
    "positiveInt",
    "uuid",
];

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, position: 0 };
        let expr = parser.and()?;
        if parser.position != parser.tokens.len() {
            return Err(parser.error("unexpected trailing input"));
        }
        Ok(expr)
    }

    /// Evaluates the expression with `root` as the resource (and initial context).
    pub fn evaluate<'a>(&self, root: &'a Value) -> Vec<Item<'a>> {
        let resource_type = root.get("resourceType").and_then(Value::as_str).unwrap_or("");
        self.eval(&[Item::Json(root, Some(resource_type))], root, true)
    }

    /// Evaluates the expression relative to `element` (a composite parameter's components are
    /// evaluated on each item its own expression selected).
    pub fn evaluate_on<'a>(&self, element: &'a Value) -> Vec<Item<'a>> {
        self.eval(&[Item::Json(element, None)], element, false)
    }

    fn eval<'a>(&self, context: &[Item<'a>], root: &'a Value, at_root: bool) -> Vec<Item<'a>> {
        match self {
            Expr::This => context.to_vec(),
            Expr::Child(inner, name) => {
                let is_root_inner = matches!(**inner, Expr::This) && at_root;
                let items = inner.eval(context, root, at_root);
                if is_root_inner {
                    // A leading type name (`Patient.name`, `Resource.id`) names the resource itself.
                    let resource_type = root.get("resourceType").and_then(Value::as_str).unwrap_or("");
                    if name == resource_type || name == "Resource" || name == "DomainResource" {
                        return items;
                    }
                }
                items.iter().flat_map(|item| children(item, name)).collect()
            }
            Expr::Index(inner, index) => {
                inner.eval(context, root, at_root).into_iter().nth(*index).into_iter().collect()
            }
            Expr::Union(left, right) => {
                let mut items = left.eval(context, root, at_root);
                for item in right.eval(context, root, at_root) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                items
            }
            Expr::And(left, right) => {
                let truth = |e: &Expr| truthy(&e.eval(context, root, at_root));
                vec![Item::Bool(truth(left) && truth(right))]
            }
            Expr::Equals(left, right, equal) => {
                let (l, r) = (left.eval(context, root, at_root), right.eval(context, root, at_root));
                if l.is_empty() || r.is_empty() {
                    return Vec::new();
                }
                let same = l.len() == r.len() && l.iter().zip(&r).all(|(a, b)| same_value(a, b));
                vec![Item::Bool(same == *equal)]
            }
            Expr::OfType(inner, type_name) => inner
                .eval(context, root, at_root)
                .into_iter()
                .filter(|item| type_of(item) == Some(type_name.as_str()))
                .collect(),
            Expr::Is(inner, type_name) => {
                let items = inner.eval(context, root, at_root);
                match items.as_slice() {
                    [item] => vec![Item::Bool(type_of(item) == Some(type_name.as_str()))],
                    _ => Vec::new(),
                }
            }
            Expr::Where(inner, condition) => inner
                .eval(context, root, at_root)
                .into_iter()
                .filter(|item| truthy(&condition.eval(std::slice::from_ref(item), root, false)))
                .collect(),
            Expr::Resolve(inner) => inner.eval(context, root, at_root).iter().filter_map(resolve).collect(),
            Expr::Exists(inner) => vec![Item::Bool(!inner.eval(context, root, at_root).is_empty())],
            Expr::Extension(inner, url) => inner
                .eval(context, root, at_root)
                .iter()
                .flat_map(|item| children(item, "extension"))
                .filter(|item| matches!(item, Item::Json(v, _) if v.get("url").and_then(Value::as_str) == Some(url)))
                .collect(),
            Expr::Str(text) => vec![Item::Str(text.clone())],
            Expr::Bool(value) => vec![Item::Bool(*value)],
        }
    }
}

fn truthy(items: &[Item<'_>]) -> bool {
    match items {
        [Item::Bool(value)] => *value,
        [Item::Json(Value::Bool(value), _)] => *value,
        [] => false,
        _ => true,
    }
}

fn same_value(a: &Item<'_>, b: &Item<'_>) -> bool {
    let text = |item: &Item<'_>| match item {
        Item::Json(Value::String(s), _) => Some(s.clone()),
        Item::Str(s) => Some(s.clone()),
        Item::Json(Value::Bool(b), _) | Item::Bool(b) => Some(b.to_string()),
        Item::Json(Value::Number(n), _) => Some(n.to_string()),
        _ => None,
    };
    matches!((text(a), text(b)), (Some(x), Some(y)) if x == y)
}

/// The FHIR type of an item, where it is known.
fn type_of<'a>(item: &Item<'a>) -> Option<&'a str> {
    match item {
        Item::Json(value, hint) => hint.or_else(|| value.get("resourceType").and_then(Value::as_str)),
        Item::Resolved(type_name) => Some(type_name),
        _ => None,
    }
}

/// `resolve()` on a Reference: Braid does not load the target; the target's type, taken from
/// the reference string (or `Reference.type`), is all that `is` needs.
fn resolve<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    let Item::Json(value, _) = item else { return None };
    if let Some(type_name) = value.get("type").and_then(Value::as_str) {
        return Some(Item::Resolved(type_name));
    }
    let reference = value.get("reference").and_then(Value::as_str)?;
    let path = crate::fhir::reference::without_version(reference);
    let mut segments = path.rsplit('/');
    let _id = segments.next()?;
    let type_name = segments.next()?;
    crate::fhir::ResourceType::parse(type_name).map(|t| Item::Resolved(t.as_str()))
}

/// The children named `name` of an item, arrays flattened; for a choice element (`value[x]`)
/// every `valueXxx` child, typed `Xxx`.
fn children<'a>(item: &Item<'a>, name: &str) -> Vec<Item<'a>> {
    let Item::Json(Value::Object(map), _) = item else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |value: &'a Value, hint: Option<&'a str>| match value {
        Value::Array(items) => out.extend(items.iter().map(|v| Item::Json(v, hint))),
        other => out.push(Item::Json(other, hint)),
    };
    if let Some(value) = map.get(name) {
        push(value, None);
        return out;
    }
    for (key, value) in map {
        if let Some(suffix) = key.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                // `valueDateTime` is a `dateTime`, `valueQuantity` a `Quantity`.
                let primitive = PRIMITIVES.iter().find(|primitive| {
                    primitive.len() == suffix.len()
                        && primitive[..1].eq_ignore_ascii_case(&suffix[..1])
                        && primitive[1..] == suffix[1..]
                });
                push(value, Some(primitive.copied().unwrap_or(suffix)));
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(usize),
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let error = |i: usize, reason| ParseError { rest: chars[i..].iter().collect(), reason };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '\'' => {
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                if i == chars.len() {
                    return Err(error(i.saturating_sub(1), "unterminated string"));
                }
                i += 1;
                tokens.push(Token::Str(text));
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Symbol("!="));
                i += 2;
            }
            '.' | '(' | ')' | '[' | ']' | '|' | '=' | ',' => {
                tokens.push(Token::Symbol(match c {
                    '.' => ".",
                    '(' => "(",
                    ')' => ")",
                    '[' => "[",
                    ']' => "]",
                    '|' => "|",
                    '=' => "=",
                    _ => ",",
                }));
                i += 1;
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let number: String = chars[start..i].iter().collect();
                tokens.push(Token::Number(number.parse().map_err(|_| error(start, "number too large"))?));
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            _ => return Err(error(i, "unexpected character")),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn error(&self, reason: &'static str) -> ParseError {
        let rest = self.tokens[self.position.min(self.tokens.len())..]
            .iter()
            .map(|t| match t {
                Token::Ident(s) => s.clone(),
                Token::Str(s) => format!("'{s}'"),
                Token::Number(n) => n.to_string(),
                Token::Symbol(s) => (*s).to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        ParseError { rest, reason }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(s)) if s == word) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, symbol: &'static str) -> Result<(), ParseError> {
        if self.eat(symbol) { Ok(()) } else { Err(self.error("expected a symbol")) }
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.equality()?;
        while self.eat_word("and") {
            left = Expr::And(Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, ParseError> {
        let left = self.union()?;
        if self.eat("=") {
            return Ok(Expr::Equals(Box::new(left), Box::new(self.union()?), true));
        }
        if self.eat("!=") {
            return Ok(Expr::Equals(Box::new(left), Box::new(self.union()?), false));
        }
        Ok(left)
    }

    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.type_operation()?;
        while self.eat("|") {
            left = Expr::Union(Box::new(left), Box::new(self.type_operation()?));
        }
        Ok(left)
    }

    fn type_operation(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.postfix()?;
        loop {
            if self.eat_word("as") {
                left = Expr::OfType(Box::new(left), self.type_name()?);
            } else if self.eat_word("is") {
                left = Expr::Is(Box::new(left), self.type_name()?);
            } else {
                return Ok(left);
            }
        }
    }

    fn type_name(&mut self) -> Result<String, ParseError> {
        match self.peek().cloned() {
            Some(Token::Ident(name)) => {
                self.position += 1;
                // `FHIR.Patient` and `System.String` style names.
                if self.eat(".") {
                    return self.type_name();
                }
                Ok(name)
            }
            _ => Err(self.error("expected a type name")),
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.term()?;
        loop {
            if self.eat(".") {
                expr = self.invocation(expr)?;
            } else if self.eat("[") {
                let Some(Token::Number(index)) = self.peek().cloned() else {
                    return Err(self.error("expected an index"));
                };
                self.position += 1;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), index);
            } else {
                return Ok(expr);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        if self.eat("(") {
            let inner = self.and()?;
            self.expect(")")?;
            return Ok(inner);
        }
        match self.peek().cloned() {
            Some(Token::Str(text)) => {
                self.position += 1;
                Ok(Expr::Str(text))
            }
            Some(Token::Ident(word)) if word == "true" || word == "false" => {
                self.position += 1;
                Ok(Expr::Bool(word == "true"))
            }
            Some(Token::Ident(word)) if word == "$this" => {
                self.position += 1;
                Ok(Expr::This)
            }
            Some(Token::Ident(_)) => self.invocation(Expr::This),
            _ => Err(self.error("expected a path, a literal or '('")),
        }
    }

    fn invocation(&mut self, target: Expr) -> Result<Expr, ParseError> {
        let Some(Token::Ident(name)) = self.peek().cloned() else { return Err(self.error("expected a name")) };
        self.position += 1;
        if !self.eat("(") {
            return Ok(Expr::Child(Box::new(target), name));
        }
        let target = Box::new(target);
        let expr = match name.as_str() {
            "where" => Expr::Where(target, Box::new(self.and()?)),
            "resolve" => Expr::Resolve(target),
            "exists" => Expr::Exists(target),
            "first" => Expr::Index(target, 0),
            "as" | "ofType" => Expr::OfType(target, self.type_name()?),
            "is" => Expr::Is(target, self.type_name()?),
            "extension" => match self.peek().cloned() {
                Some(Token::Str(url)) => {
                    self.position += 1;
                    Expr::Extension(target, url)
                }
                _ => return Err(self.error("extension() needs a URL string")),
            },
            _ => return Err(self.error("unsupported function")),
        };
        self.expect(")")?;
        Ok(expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(expr: &str, resource: &Value) -> Vec<String> {
        Expr::parse(expr)
            .unwrap()
            .evaluate(resource)
            .into_iter()
            .map(|item| match item {
                Item::Json(v, hint) => format!(
                    "{}{}",
                    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()),
                    hint.map(|h| format!(":{h}")).unwrap_or_default()
                ),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn paths_unions_and_choice_types() {
        let observation = json!({"resourceType": "Observation", "code": {"text": "hr"},
            "valueQuantity": {"value": 60}, "component": [{"valueString": "a"}, {"valueQuantity": {"value": 1}}]});
        assert_eq!(strings("Observation.code.text", &observation), vec!["hr"]);
        assert_eq!(strings("(Observation.value as Quantity)", &observation), vec![r#"{"value":60}:Quantity"#]);
        assert_eq!(strings("Observation.value.as(string)", &observation), Vec::<String>::new());
        assert_eq!(strings("Observation.component.value.ofType(string)", &observation), vec!["a:string"]);
        assert_eq!(strings("Observation.code.text | Observation.code.text", &observation), vec!["hr"]);
        assert_eq!(strings("Resource.code.text", &observation), vec!["hr"]);
        assert_eq!(strings("Patient.name", &observation), Vec::<String>::new());
    }

    #[test]
    fn where_resolve_is_and_equality() {
        let account = json!({"resourceType": "Account", "subject": [{"reference": "Patient/1"}, {"reference": "Device/2"}],
            "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}]});
        assert_eq!(
            strings("Account.subject.where(resolve() is Patient)", &account),
            vec![r#"{"reference":"Patient/1"}"#]
        );
        assert_eq!(strings("Account.telecom.where(system='email').value", &account), vec!["a@b"]);
        let patient = json!({"resourceType": "Patient", "deceasedBoolean": false});
        assert_eq!(strings("Patient.deceased.exists() and Patient.deceased != false", &patient), vec!["Bool(false)"]);
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        assert_eq!(strings("Patient.deceased.exists() and Patient.deceased != false", &dead), vec!["Bool(true)"]);
    }

    #[test]
    fn indexers_and_extensions() {
        let bundle = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Composition"}}, {"resource": {}}],
            "extension": [{"url": "http://x", "valueString": "v"}]});
        assert_eq!(strings("Bundle.entry[0].resource", &bundle), vec![r#"{"resourceType":"Composition"}"#]);
        assert_eq!(strings("Bundle.extension('http://x').value", &bundle), vec!["v:string"]);
        assert_eq!(strings("Bundle.entry.first().resource", &bundle), vec![r#"{"resourceType":"Composition"}"#]);
    }

    #[test]
    fn anything_outside_the_subset_is_rejected() {
        for text in ["Patient.name.last()", "Patient.name + 1", "Patient.name.where(", "'open"] {
            assert!(Expr::parse(text).is_err(), "{text}");
        }
    }
}
