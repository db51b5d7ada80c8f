//! google.api.http path templates (`/v1/workflows/{id}:activate`): parsed once at start, then
//! matched against each request's path, binding the variables to request fields.
//!
//! The grammar is google/api/http.proto's:
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//! A variable without `=` matches one segment (`{id}` is `{id=*}`); `**` matches the rest of the
//! path and may only come last.

use std::fmt;

/// One parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    variables: Vec<Variable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
    /// `**`: the rest of the path (zero or more segments).
    Rest,
}

/// A variable: the request field it binds (`workflow.id` as `["workflow", "id"]`) and the
/// segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    first: usize,
    /// One past its last segment.
    end: usize,
}

/// Why a template does not parse (a contract bug: the service refuses to start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub template: String,
    pub reason: &'static str,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path template {:?}: {}", self.template, self.reason)
    }
}

impl std::error::Error for TemplateError {}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError { template: text.to_owned(), reason };
        let rest = text.strip_prefix('/').ok_or_else(|| fail("must start with '/'"))?;
        // The verb is the text after the last ':' outside braces, in the last segment.
        let (path, verb) = split_verb(rest);
        if let Some(verb) = verb
            && (verb.is_empty() || verb.contains(['/', '{', '}', '*']))
        {
            return Err(fail("the verb after ':' must be a literal"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for part in split_outside_braces(path, '/') {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| fail("a variable must be a whole segment"))?;
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|name| !is_ident(name)) {
                    return Err(fail("a variable must name a field path (ident.ident...)"));
                }
                let first = segments.len();
                for sub in pattern.split('/') {
                    segments.push(parse_plain_segment(sub).ok_or_else(|| fail("bad segment inside a variable"))?);
                }
                variables.push(Variable { field_path, first, end: segments.len() });
            } else {
                segments.push(parse_plain_segment(part).ok_or_else(|| fail("bad literal segment"))?);
            }
        }
        if let Some(position) = segments.iter().position(|s| *s == Segment::Rest)
            && position + 1 != segments.len()
        {
            return Err(fail("'**' may only be the last segment"));
        }
        Ok(Self { text: text.to_owned(), segments, verb: verb.map(str::to_owned), variables })
    }

    /// The template as written in the proto.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    pub fn has_verb(&self) -> bool {
        self.verb.is_some()
    }

    /// How many literal segments it has: among templates matching one path, the more literal
    /// one wins (`/v1/agents/{id}/config` over a hypothetical `/v1/agents/{id}/{x}`).
    pub fn literal_count(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }

    /// The OpenAPI spelling of the path: each variable as `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            out.push('/');
            match self.variables.iter().find(|v| v.first == index) {
                Some(variable) => {
                    out.push('{');
                    out.push_str(&variable.field_path.join("."));
                    out.push('}');
                    index = variable.end;
                }
                None => {
                    match &self.segments[index] {
                        Segment::Literal(literal) => out.push_str(literal),
                        Segment::Any => out.push('*'),
                        Segment::Rest => out.push_str("**"),
                    }
                    index += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// Matches `path` (as received: percent-encoded, without the query), answering each
    /// variable's decoded value, or None when the path is not this template's.
    pub fn matches(&self, path: &str) -> Option<Vec<(&Variable, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => {
                let (head, tail) = rest.rsplit_once(':')?;
                // The verb is in the last segment only.
                if tail.contains('/') || percent_decode(tail)? != *verb {
                    return None;
                }
                head
            }
            None => rest,
        };
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let ends_with_rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(ends_with_rest);
        if parts.len() < fixed || (!ends_with_rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(literal) => {
                    if percent_decode(part)? != *literal {
                        return None;
                    }
                }
                // A variable's segment is never empty: `/v1/workflows/` names no workflow.
                Segment::Any if part.is_empty() => return None,
                Segment::Any | Segment::Rest => {}
            }
        }
        let mut bound = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let end = if variable.end == self.segments.len() && ends_with_rest { parts.len() } else { variable.end };
            let raw = parts[variable.first..end].join("/");
            if raw.is_empty() {
                return None;
            }
            bound.push((variable, percent_decode(&raw)?));
        }
        Some(bound)
    }
}

/// The path and the verb of a template (without its leading '/').
fn split_verb(text: &str) -> (&str, Option<&str>) {
    let mut depth = 0usize;
    let mut last_slash = None;
    let mut verb_at = None;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                last_slash = Some(i);
                verb_at = None;
            }
            ':' if depth == 0 && last_slash.is_none_or(|s| s < i) => verb_at = Some(i),
            _ => {}
        }
    }
    match verb_at {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

fn split_outside_braces(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if c == separator && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_plain_segment(text: &str) -> Option<Segment> {
    match text {
        "*" => Some(Segment::Any),
        "**" => Some(Segment::Rest),
        "" => None,
        literal if literal.contains(['{', '}', '*', '=', ':']) => None,
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

fn is_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Percent-decodes a path segment; None when the result is not UTF-8 (no field can hold it).
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let template = PathTemplate::parse(template).unwrap();
        template.matches(path).map(|vars| vars.into_iter().map(|(v, value)| (v.field_path.join("."), value)).collect())
    }

    #[test]
    fn literal_paths_match_only_themselves() {
        assert_eq!(bound("/v1/workflows", "/v1/workflows"), Some(vec![]));
        assert_eq!(bound("/v1/workflows", "/v1/workflows/x"), None);
        assert_eq!(bound("/v1/workflows", "/v1/workflow"), None);
        assert_eq!(bound("/api/agents/installed", "/api/agents/installed"), Some(vec![]));
    }

    #[test]
    fn variables_bind_one_segment_decoded() {
        assert_eq!(bound("/v1/workflows/{id}", "/v1/workflows/abc"), Some(vec![("id".into(), "abc".into())]));
        assert_eq!(bound("/v1/workflows/{id}", "/v1/workflows/a%20b"), Some(vec![("id".into(), "a b".into())]));
        assert_eq!(bound("/v1/workflows/{id}", "/v1/workflows/a/b"), None);
        assert_eq!(bound("/v1/workflows/{id}", "/v1/workflows/"), None);
        assert_eq!(
            bound("/v1/workflows/{workflow.id}", "/v1/workflows/w1"),
            Some(vec![("workflow.id".into(), "w1".into())])
        );
    }

    #[test]
    fn several_variables_bind_in_order() {
        assert_eq!(
            bound("/v1/runs/{run_id}/steps/{step_id}:approve", "/v1/runs/r1/steps/s2:approve"),
            Some(vec![("run_id".into(), "r1".into()), ("step_id".into(), "s2".into())])
        );
    }

    #[test]
    fn verbs_must_match_exactly() {
        let t = "/v1/workflows/{id}:activate";
        assert_eq!(bound(t, "/v1/workflows/w1:activate"), Some(vec![("id".into(), "w1".into())]));
        assert_eq!(bound(t, "/v1/workflows/w1:archive"), None);
        assert_eq!(bound(t, "/v1/workflows/w1"), None);
        assert_eq!(bound("/v1/workflows:validateConfig", "/v1/workflows:validateConfig"), Some(vec![]));
        assert_eq!(bound("/v1/workflows:validateConfig", "/v1/workflows"), None);
        // Without a verb in the template, a colon is part of the segment.
        assert_eq!(bound("/v1/workflows/{id}", "/v1/workflows/w1:x"), Some(vec![("id".into(), "w1:x".into())]));
    }

    #[test]
    fn multi_segment_variables_and_rest() {
        assert_eq!(
            bound("/v1/{name=projects/*/flows/*}", "/v1/projects/p/flows/f"),
            Some(vec![("name".into(), "projects/p/flows/f".into())])
        );
        assert_eq!(bound("/v1/{name=projects/*/flows/*}", "/v1/projects/p/other/f"), None);
        assert_eq!(bound("/files/{path=**}", "/files/a/b/c"), Some(vec![("path".into(), "a/b/c".into())]));
        assert_eq!(bound("/files/**", "/files"), Some(vec![]));
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["v1/x", "/v1/{id", "/v1/{1x}", "/v1/**/x", "/v1/x:", "/v1//x", "/v1/{a}b"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn openapi_spelling_keeps_variables_and_verbs() {
        let t = PathTemplate::parse("/v1/workflows/{workflow.id}:activate").unwrap();
        assert_eq!(t.openapi_path(), "/v1/workflows/{workflow.id}:activate");
        let t = PathTemplate::parse("/v1/{name=projects/*}/x").unwrap();
        assert_eq!(t.openapi_path(), "/v1/{name}/x");
        // Literals inside a variable count too: they make the template more specific.
        assert_eq!(t.literal_count(), 3);
    }
}
