//! Jurisdictions: named sets of countries.
//!
//! The fence asks one question of a jurisdiction: does it contain this site's country? So a jurisdiction is
//! nothing but a set. Two are built in — `EU` (the 27 member states) and `EEA` (the EU plus Iceland,
//! Liechtenstein and Norway) — and operators define more in the topology file by union and difference of
//! sets and single countries: `EEA + GB + CH`, `EU - HU`, `(EU - HU) + NO`. Norway is the classic trap: a
//! site in Hamar is inside `EEA` but outside `EU`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::country::{Country, CountryError};

/// The 27 member states of the European Union (ISO codes: Greece is `GR`).
pub const EU_MEMBERS: [&str; 27] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT",
    "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// The EEA states that are not EU members.
pub const EEA_NON_EU: [&str; 3] = ["IS", "LI", "NO"];

#[derive(Clone, PartialEq, Eq)]
pub struct Jurisdiction {
    name: String,
    countries: BTreeSet<Country>,
}

impl Jurisdiction {
    pub fn new(name: impl Into<String>, countries: BTreeSet<Country>) -> Jurisdiction {
        Jurisdiction {
            name: name.into(),
            countries,
        }
    }

    pub fn eu() -> Jurisdiction {
        Jurisdiction::new("EU", EU_MEMBERS.iter().map(|code| Country::known(code)).collect())
    }

    pub fn eea() -> Jurisdiction {
        let mut countries = Jurisdiction::eu().countries;
        countries.extend(EEA_NON_EU.iter().map(|code| Country::known(code)));
        Jurisdiction::new("EEA", countries)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn contains(&self, country: Country) -> bool {
        self.countries.contains(&country)
    }

    pub fn countries(&self) -> &BTreeSet<Country> {
        &self.countries
    }
}

impl fmt::Debug for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.name, self.countries)
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a jurisdiction expression or definition is wrong. Offsets are byte offsets into the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JurisdictionError {
    #[error(
        "`{name}` is neither a jurisdiction defined so far (known: {known}) nor a country code: {reason}"
    )]
    UnknownSet {
        name: String,
        known: String,
        reason: CountryError,
    },
    #[error("unexpected `{found}` at offset {offset} in `{expression}`: expected {expected}")]
    Syntax {
        expression: String,
        offset: usize,
        found: String,
        expected: &'static str,
    },
    #[error("jurisdiction `{0}` is defined twice")]
    Duplicate(String),
    #[error(
        "`{0}` can't name a jurisdiction: it is a country code, so expressions using it would be ambiguous"
    )]
    NameIsCountry(String),
    #[error("jurisdiction name `{0}` must be letters, digits and `_`, starting with a letter")]
    BadName(String),
    #[error("jurisdiction `{0}` contains no country")]
    Empty(String),
}

/// The jurisdictions known to a topology: the built-ins and those it defines, in definition order so a
/// definition may only use the ones before it (no cycles by construction).
#[derive(Clone, Debug)]
pub struct Jurisdictions {
    by_name: BTreeMap<String, Jurisdiction>,
}

impl Default for Jurisdictions {
    fn default() -> Self {
        let mut by_name = BTreeMap::new();
        for builtin in [Jurisdiction::eu(), Jurisdiction::eea()] {
            by_name.insert(builtin.name.clone(), builtin);
        }
        Jurisdictions { by_name }
    }
}

impl Jurisdictions {
    pub fn get(&self, name: &str) -> Option<&Jurisdiction> {
        self.by_name.get(name)
    }

    /// Defines `name` as the value of `expression`.
    pub fn define(&mut self, name: &str, expression: &str) -> Result<&Jurisdiction, JurisdictionError> {
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(JurisdictionError::BadName(name.to_string()));
        }
        if Country::parse(name).is_ok() {
            return Err(JurisdictionError::NameIsCountry(name.to_string()));
        }
        if self.by_name.contains_key(name) {
            return Err(JurisdictionError::Duplicate(name.to_string()));
        }
        let countries = self.evaluate(expression)?;
        if countries.is_empty() {
            return Err(JurisdictionError::Empty(name.to_string()));
        }
        let jurisdiction = Jurisdiction::new(name, countries);
        Ok(self.by_name.entry(name.to_string()).or_insert(jurisdiction))
    }

    /// Resolves a policy's jurisdiction: a defined name, or an expression evaluated on the spot and named by
    /// its own text (so `EU - HU` in a policy reads as itself in every refusal).
    pub fn resolve(&self, expression: &str) -> Result<Jurisdiction, JurisdictionError> {
        let trimmed = expression.trim();
        if let Some(named) = self.by_name.get(trimmed) {
            return Ok(named.clone());
        }
        let countries = self.evaluate(trimmed)?;
        if countries.is_empty() {
            return Err(JurisdictionError::Empty(trimmed.to_string()));
        }
        Ok(Jurisdiction::new(trimmed, countries))
    }

    /// Evaluates `term (('+' | '-') term)*`, left to right, where a term is a jurisdiction name, a country
    /// code, or a parenthesised expression.
    pub fn evaluate(&self, expression: &str) -> Result<BTreeSet<Country>, JurisdictionError> {
        let tokens = tokenize(expression)?;
        let mut parser = Parser {
            expression,
            tokens: &tokens,
            position: 0,
            known: self,
        };
        let set = parser.expression()?;
        match parser.peek() {
            None => Ok(set),
            Some(token) => Err(parser.unexpected(token, "`+`, `-` or the end")),
        }
    }

    fn known_names(&self) -> String {
        self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    Name(String),
    Plus,
    Minus,
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

fn tokenize(expression: &str) -> Result<Vec<Token>, JurisdictionError> {
    let mut tokens = Vec::new();
    let mut chars = expression.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let kind = match c {
            c if c.is_whitespace() => continue,
            '+' => TokenKind::Plus,
            '-' => TokenKind::Minus,
            '(' => TokenKind::Open,
            ')' => TokenKind::Close,
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut name = String::from(c);
                while let Some(&(_, next)) = chars.peek() {
                    if !(next.is_ascii_alphanumeric() || next == '_') {
                        break;
                    }
                    name.push(next);
                    chars.next();
                }
                TokenKind::Name(name)
            }
            other => {
                return Err(JurisdictionError::Syntax {
                    expression: expression.to_string(),
                    offset,
                    found: other.to_string(),
                    expected: "a name, a country code, `+`, `-`, `(` or `)`",
                });
            }
        };
        tokens.push(Token { kind, offset });
    }
    Ok(tokens)
}

struct Parser<'a> {
    expression: &'a str,
    tokens: &'a [Token],
    position: usize,
    known: &'a Jurisdictions,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn unexpected(&self, token: &Token, expected: &'static str) -> JurisdictionError {
        let found = match &token.kind {
            TokenKind::Name(name) => name.clone(),
            TokenKind::Plus => "+".into(),
            TokenKind::Minus => "-".into(),
            TokenKind::Open => "(".into(),
            TokenKind::Close => ")".into(),
        };
        JurisdictionError::Syntax {
            expression: self.expression.to_string(),
            offset: token.offset,
            found,
            expected,
        }
    }

    fn end_of_input(&self, expected: &'static str) -> JurisdictionError {
        JurisdictionError::Syntax {
            expression: self.expression.to_string(),
            offset: self.expression.len(),
            found: "end of expression".into(),
            expected,
        }
    }

    fn expression(&mut self) -> Result<BTreeSet<Country>, JurisdictionError> {
        let mut set = self.term()?;
        while let Some(token) = self.peek() {
            match token.kind {
                TokenKind::Plus => {
                    self.position += 1;
                    set.extend(self.term()?);
                }
                TokenKind::Minus => {
                    self.position += 1;
                    let removed = self.term()?;
                    set.retain(|country| !removed.contains(country));
                }
                _ => break,
            }
        }
        Ok(set)
    }

    fn term(&mut self) -> Result<BTreeSet<Country>, JurisdictionError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.end_of_input("a jurisdiction name, a country code or `(`"));
        };
        self.position += 1;
        match token.kind {
            TokenKind::Name(name) => self.set_named(&name),
            TokenKind::Open => {
                let set = self.expression()?;
                match self.peek().cloned() {
                    Some(Token {
                        kind: TokenKind::Close,
                        ..
                    }) => {
                        self.position += 1;
                        Ok(set)
                    }
                    Some(other) => Err(self.unexpected(&other, "`)`")),
                    None => Err(self.end_of_input("`)`")),
                }
            }
            _ => Err(self.unexpected(&token, "a jurisdiction name, a country code or `(`")),
        }
    }

    fn set_named(&self, name: &str) -> Result<BTreeSet<Country>, JurisdictionError> {
        if let Some(jurisdiction) = self.known.get(name) {
            return Ok(jurisdiction.countries.clone());
        }
        match Country::parse(name) {
            Ok(country) => Ok(BTreeSet::from([country])),
            Err(reason) => Err(JurisdictionError::UnknownSet {
                name: name.to_string(),
                known: self.known.known_names(),
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country(code: &str) -> Country {
        Country::parse(code).unwrap()
    }

    #[test]
    fn norway_is_in_the_eea_but_not_in_the_eu() {
        let norway = country("NO");
        assert!(Jurisdiction::eea().contains(norway));
        assert!(!Jurisdiction::eu().contains(norway));
    }

    #[test]
    fn builtins_have_the_right_sizes_and_eu_is_a_subset_of_eea() {
        let (eu, eea) = (Jurisdiction::eu(), Jurisdiction::eea());
        assert_eq!(eu.countries().len(), 27);
        assert_eq!(eea.countries().len(), 30);
        assert!(eu.countries().is_subset(eea.countries()));
        for outside in ["GB", "CH", "US"] {
            assert!(!eea.contains(country(outside)), "{outside} is not in the EEA");
        }
        assert!(eu.contains(country("IE")) && eu.contains(country("GR")));
    }

    #[test]
    fn union_and_difference() {
        let mut known = Jurisdictions::default();
        let wide = known.define("EEA_GB_CH", "EEA + GB + CH").unwrap().clone();
        assert_eq!(wide.countries().len(), 32);
        assert!(wide.contains(country("GB")) && wide.contains(country("NO")));
        let eu_no_hu = known.define("EU_NO_HU", "EU - HU").unwrap().clone();
        assert_eq!(eu_no_hu.countries().len(), 26);
        assert!(!eu_no_hu.contains(country("HU")));
        // Left to right, with parentheses overriding.
        assert_eq!(known.evaluate("EU - HU + HU").unwrap().len(), 27);
        assert_eq!(known.evaluate("EU - (HU + NO)").unwrap().len(), 26);
        assert_eq!(
            known.evaluate("EEA - EU").unwrap(),
            BTreeSet::from([country("IS"), country("LI"), country("NO")])
        );
        // A later definition may use an earlier one.
        let reused = known.define("WIDER", "EEA_GB_CH - GB").unwrap();
        assert!(!reused.contains(country("GB")) && reused.contains(country("CH")));
    }

    #[test]
    fn bad_expressions_are_named_errors() {
        let mut known = Jurisdictions::default();
        assert!(
            matches!(known.evaluate("EU + NOPE"), Err(JurisdictionError::UnknownSet { name, .. }) if name == "NOPE")
        );
        assert!(
            matches!(known.evaluate("EU + UK"), Err(JurisdictionError::UnknownSet { name, .. }) if name == "UK")
        );
        assert!(matches!(
            known.evaluate("EU +"),
            Err(JurisdictionError::Syntax { .. })
        ));
        assert!(matches!(
            known.evaluate("(EU"),
            Err(JurisdictionError::Syntax { .. })
        ));
        assert!(matches!(
            known.evaluate("EU EEA"),
            Err(JurisdictionError::Syntax { .. })
        ));
        assert!(matches!(
            known.evaluate("EU * NO"),
            Err(JurisdictionError::Syntax { offset: 3, .. })
        ));
        assert!(matches!(
            known.evaluate(""),
            Err(JurisdictionError::Syntax { .. })
        ));
        assert!(matches!(
            known.define("EU", "EEA"),
            Err(JurisdictionError::Duplicate(_))
        ));
        assert!(matches!(
            known.define("NO", "EEA"),
            Err(JurisdictionError::NameIsCountry(_))
        ));
        assert!(matches!(
            known.define("bad-name", "EEA"),
            Err(JurisdictionError::BadName(_))
        ));
        assert!(matches!(
            known.define("NOTHING", "NO - NO"),
            Err(JurisdictionError::Empty(_))
        ));
        // A definition can't refer to one that comes later, so cycles can't be written.
        assert!(matches!(
            known.define("A1", "B1"),
            Err(JurisdictionError::UnknownSet { .. })
        ));
    }
}
