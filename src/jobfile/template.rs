//! Prompt templates: `"{animal}在{place}奔跑"`, filled from `vars`.
//!
//! A placeholder is `{name}`, where the name is any text without braces or whitespace. `{{` and
//! `}}` stand for literal braces.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as is.
    Literal(String),
    /// A placeholder, by name.
    Placeholder(String),
}

/// Why a template cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{` without its `}`.
    Unclosed,
    /// A `}` without its `{`.
    Unmatched,
    /// `{}` or a name with whitespace or a brace in it.
    BadName(String),
}

impl TemplateError {
    /// The message and hint for a diagnostic.
    pub fn describe(&self) -> (String, String) {
        match self {
            TemplateError::Unclosed => (
                "unclosed `{` in template".into(),
                "close the placeholder with `}`, or write `{{` for a literal brace".into(),
            ),
            TemplateError::Unmatched => (
                "unmatched `}` in template".into(),
                "write `}}` for a literal brace".into(),
            ),
            TemplateError::BadName(name) => (
                format!("bad placeholder `{{{name}}}` in template"),
                "a placeholder names a var: `{animal}`, without spaces or braces".into(),
            ),
        }
    }
}

/// Splits a template into literal text and placeholders.
pub fn parse(template: &str) -> Result<Vec<Segment>, TemplateError> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err(TemplateError::Unmatched),
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => return Err(TemplateError::Unclosed),
                        Some('}') => break,
                        Some(c) => name.push(c),
                    }
                }
                if !is_name(&name) {
                    return Err(TemplateError::BadName(name));
                }
                if !literal.is_empty() {
                    out.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                out.push(Segment::Placeholder(name));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        out.push(Segment::Literal(literal));
    }
    Ok(out)
}

/// Whether `name` can name a var (and so appear as a placeholder).
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '{' || c == '}')
}

/// The text of a template without its placeholders (for the character check).
pub fn literal_text(segments: &[Segment]) -> String {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Literal(t) => Some(t.as_str()),
            Segment::Placeholder(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }
    fn ph(s: &str) -> Segment {
        Segment::Placeholder(s.into())
    }

    #[test]
    fn placeholders_and_literals_split() {
        assert_eq!(
            parse("{animal}在{place}奔跑").unwrap(),
            [ph("animal"), lit("在"), ph("place"), lit("奔跑")]
        );
        assert_eq!(parse("{动物}").unwrap(), [ph("动物")]);
        assert_eq!(parse("无").unwrap(), [lit("无")]);
        assert_eq!(parse("").unwrap(), []);
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(parse("{{x}}{y}").unwrap(), [lit("{x}"), ph("y")]);
        assert_eq!(literal_text(&parse("{{x}}{y}z").unwrap()), "{x}z");
    }

    #[test]
    fn broken_templates_say_why() {
        assert_eq!(parse("猫{animal"), Err(TemplateError::Unclosed));
        assert_eq!(parse("猫}"), Err(TemplateError::Unmatched));
        assert_eq!(parse("{}"), Err(TemplateError::BadName(String::new())));
        assert_eq!(parse("{a b}"), Err(TemplateError::BadName("a b".into())));
        assert_eq!(parse("{a{b}"), Err(TemplateError::BadName("a{b".into())));
    }
}
