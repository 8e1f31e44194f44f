//! Glob patterns with `${variable}` placeholders, compiled once at config load.
//!
//! `*` matches any run of characters except `/`, `**` matches any run
//! including `/`, and `?` matches one character other than `/`. A variable is
//! replaced by the principal's value and then matched literally, so a name
//! that contains `*` can never widen a rule.

use std::fmt;

/// Why a pattern could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// `${` without a closing `}`.
    #[error("unclosed ${{ in pattern {0:?}")]
    UnclosedVariable(String),
    /// `${}` or a variable name with characters outside `[A-Za-z0-9_:.-]`.
    #[error("invalid variable name {1:?} in pattern {0:?}")]
    BadVariable(String, String),
    /// Three or more stars in a row.
    #[error("pattern {0:?} has more than two stars in a row")]
    TooManyStars(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Var(String),
    /// `?`
    One,
    /// `*`
    Segment,
    /// `**`
    Any,
}

/// A compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = pattern.char_indices().peekable();
        let flush = |literal: &mut String, tokens: &mut Vec<Token>| {
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(literal)));
            }
        };
        while let Some((i, c)) = chars.next() {
            match c {
                '$' if pattern[i..].starts_with("${") => {
                    chars.next();
                    let rest = &pattern[i + 2..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| GlobError::UnclosedVariable(pattern.to_owned()))?;
                    let name = &rest[..end];
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
                    {
                        return Err(GlobError::BadVariable(pattern.to_owned(), name.to_owned()));
                    }
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    flush(&mut literal, &mut tokens);
                    tokens.push(Token::Var(name.to_owned()));
                }
                '*' => {
                    flush(&mut literal, &mut tokens);
                    let mut stars = 1;
                    while chars.peek().map(|&(_, c)| c) == Some('*') {
                        chars.next();
                        stars += 1;
                    }
                    tokens.push(match stars {
                        1 => Token::Segment,
                        2 => Token::Any,
                        _ => return Err(GlobError::TooManyStars(pattern.to_owned())),
                    });
                }
                '?' => {
                    flush(&mut literal, &mut tokens);
                    tokens.push(Token::One);
                }
                c => literal.push(c),
            }
        }
        flush(&mut literal, &mut tokens);
        Ok(Glob {
            source: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern that matches only the empty string: a placeholder for a
    /// pattern that failed to compile, in a config that is refused anyway.
    pub fn empty() -> Self {
        Glob {
            source: String::new(),
            tokens: Vec::new(),
        }
    }

    /// `**`: matches everything, including the empty string.
    pub fn any() -> Self {
        Glob {
            source: "**".to_owned(),
            tokens: vec![Token::Any],
        }
    }

    /// A pattern that matches `text` exactly, whatever characters it holds.
    pub fn literal(text: &str) -> Self {
        Glob {
            source: text.to_owned(),
            tokens: vec![Token::Literal(text.to_owned())],
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Names of the variables the pattern uses.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().filter_map(|t| match t {
            Token::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Matches `text`, resolving variables with `vars`. An unknown variable
    /// makes the pattern fail to match: deny rather than guess.
    pub fn matches<'v>(&self, text: &str, vars: &dyn Fn(&str) -> Option<&'v str>) -> bool {
        match_tokens(&self.tokens, text, vars)
    }

    /// Matches `text` for a pattern known to have no variables.
    pub fn matches_plain(&self, text: &str) -> bool {
        self.matches(text, &|_| None)
    }
}

fn match_tokens<'v>(tokens: &[Token], text: &str, vars: &dyn Fn(&str) -> Option<&'v str>) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match first {
        Token::Literal(l) => text
            .strip_prefix(l.as_str())
            .is_some_and(|t| match_tokens(rest, t, vars)),
        Token::Var(v) => vars(v)
            .and_then(|value| text.strip_prefix(value))
            .is_some_and(|t| match_tokens(rest, t, vars)),
        Token::One => {
            let mut it = text.chars();
            match it.next() {
                Some(c) if c != '/' => match_tokens(rest, it.as_str(), vars),
                _ => false,
            }
        }
        Token::Segment | Token::Any => {
            let crosses = matches!(first, Token::Any);
            // Try every split point; patterns are short, so this stays cheap.
            let mut idx = 0;
            loop {
                if match_tokens(rest, &text[idx..], vars) {
                    return true;
                }
                let Some(c) = text[idx..].chars().next() else {
                    return false;
                };
                if c == '/' && !crosses {
                    return false;
                }
                idx += c.len_utf8();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).unwrap().matches(text, &|v| match v {
            "name" => Some("alice"),
            "weird" => Some("a*"),
            _ => None,
        })
    }

    #[test]
    fn stars_and_separators() {
        assert!(m("alice/*", "alice/demo"));
        assert!(!m("alice/*", "alice/x/demo"));
        assert!(m("alice/**", "alice/x/demo"));
        assert!(!m("alice/**", "alice"));
        assert!(m("**", "anything/at/all"));
        assert!(m("*", "top"));
        assert!(!m("*", "a/b"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("team-*", "team-x"));
        assert!(!m("team-*", "other"));
    }

    #[test]
    fn variables_substitute_literally() {
        assert!(m("${name}/**", "alice/demo"));
        assert!(!m("${name}/**", "bob/demo"));
        assert!(!m("${missing}/**", "alice/demo"));
        assert!(m("${weird}", "a*"));
        assert!(
            !m("${weird}", "abc"),
            "a value with * must not act as a glob"
        );
    }

    #[test]
    fn bad_patterns() {
        assert!(matches!(
            Glob::new("${name"),
            Err(GlobError::UnclosedVariable(_))
        ));
        assert!(matches!(Glob::new("${}"), Err(GlobError::BadVariable(..))));
        assert!(matches!(
            Glob::new("${a b}"),
            Err(GlobError::BadVariable(..))
        ));
        assert!(matches!(Glob::new("a***"), Err(GlobError::TooManyStars(_))));
    }

    proptest! {
        #[test]
        fn never_panics(p in "\\PC{0,30}", t in "\\PC{0,30}") {
            if let Ok(g) = Glob::new(&p) {
                let _ = g.matches(&t, &|_| Some("v"));
            }
        }

        #[test]
        fn literal_patterns_match_only_themselves(t in "[a-z0-9/._-]{0,20}", u in "[a-z0-9/._-]{0,20}") {
            let g = Glob::new(&t).unwrap();
            prop_assert!(g.matches_plain(&t));
            prop_assert_eq!(g.matches_plain(&u), t == u);
        }
    }
}
